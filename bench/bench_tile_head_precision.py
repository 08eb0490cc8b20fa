"""What ``tile_head_precision: bf16`` (or ``int8``) changes in the stage's output, tile by tile.

Runs ``bh-stage run`` (default config but ``--set``) on each tile with ``tile_head_precision``
f32 and the other precision and compares ``BLEND_PROB`` (median, 99th percentile and largest
|difference|) and ``BLEND_FLAG`` (detections whose flag changes). The accuracy of the other
precision (validation AUC) is ``bench_tile_head_variants.py --precisions f32,bf16``; its speed
``bench_stage.py --tile-head-precision bf16``.

    python bench/bench_tile_head_precision.py WORKDIR/tiles/valid201/tile.fits \
        WORKDIR/tiles/valid202/tile.fits [--precision int8 --output NAME.json]

Writes bench/results/tile_head_precision_outputs.json (bf16) or tile_head_int8_outputs.json.
"""

import subprocess
import tempfile
from pathlib import Path

import fitsio
import numpy as np

import benchlib


def stage_output(tile, precision, folder, settings):
    """``BLEND_PROB`` and ``BLEND_FLAG`` of a run of the stage on ``tile``."""
    out = Path(folder) / f"{Path(tile).parent.name}_{precision}.cat"
    subprocess.run(["bh-stage", "-q", "run", "example_config/config.yml", str(tile),
                    "--output", str(out), f"--set=tile_head_precision={precision}",
                    *[f"--set={s}" for s in settings]], cwd=benchlib.REPO, check=True,
                   stdout=subprocess.DEVNULL)
    cat = fitsio.read(str(out), ext="LDAC_OBJECTS", columns=["BLEND_PROB", "BLEND_FLAG"])
    return cat["BLEND_PROB"], cat["BLEND_FLAG"]


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("tiles", nargs="+", type=Path)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "int8"),
                        help="the precision compared with f32")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of both runs")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for tile in args.tiles:
            p32, f32 = stage_output(tile, "f32", folder, args.set)
            p16, f16 = stage_output(tile, args.precision, folder, args.set)
            ok = np.isfinite(p32) & np.isfinite(p16)
            diff = np.abs(p16 - p32)[ok]
            rows.append({"tile": str(tile), "detections": int(len(p32)),
                         "scored": int(ok.sum()),
                         "median_abs_dprob": float(np.median(diff)),
                         "p99_abs_dprob": float(np.percentile(diff, 99)),
                         "max_abs_dprob": float(diff.max()),
                         "blend_flag_f32": int(f32.sum()),
                         f"blend_flag_{args.precision}": int(f16.sum()),
                         "blend_flag_changed": int((f32 != f16).sum())})
            r = rows[-1]
            print(f"{tile}: {r['scored']} scored, |dBLEND_PROB| median {r['median_abs_dprob']:.2e}"
                  f", 99 % {r['p99_abs_dprob']:.2e}, max {r['max_abs_dprob']:.2e}; BLEND_FLAG "
                  f"{r['blend_flag_f32']} -> {int(f16.sum())}, {r['blend_flag_changed']} "
                  f"changed", flush=True)
    name = ("tile_head_precision_outputs.json" if args.precision == "bf16"
            else f"tile_head_{args.precision}_outputs.json")
    benchlib.write_result(args.output or name, {"precision": args.precision,
                                                "settings": args.set,
                                        "rows": rows})


if __name__ == "__main__":
    main()
