"""SEP on the stage's stamps: the pixel stack ``classify_stamps`` sets against SEP's default.

Cuts the stage's 65x65 stamps at every detection of a tile (default: the 10k x 10k tile
``bench_stage.py`` made), runs ``sep_flags.classify_stamps`` on one core with its pixel stack
(twice the stamp) and with SEP's default one (300,000 pixels), checks that both give the same
sources and verdicts, prints the seconds and their ratio and writes a JSON.

    python bench/bench_sep.py --tile /tmp/bh_bench_stage/tile.fits
"""

import json
import time
from pathlib import Path

import numpy as np

from bh_stage import io, pixels, sep_flags, stage
from bh_stage.config import RunConfig, config_from_dict
from bh_stage.stamps import cut_stamps

import benchlib


def main():
    parser = benchlib.parser(__doc__, "sep_pixstack.json")
    parser.add_argument("--tile", type=Path, default=Path("/tmp/bh_bench_stage/tile.fits"))
    args = parser.parse_args()
    cfg = config_from_dict(RunConfig, {"weight": "{dir}/{stem}.weight.fits"})
    tile, cat_path, weight, _ = stage.resolve_paths(cfg, args.tile)
    image, bad, rms_adu = pixels.tile_pixels(tile, weight)
    cat = io.read_catalogue(cat_path, cfg.x_column, cfg.y_column, cfg.id_column,
                            cfg.catalogue_hdu)
    x, y = np.nan_to_num(cat.x_pix), np.nan_to_num(cat.y_pix)  # 0-based, as the stage
    stamps = cut_stamps(image, x, y, cfg.stamp.size_pix, cfg.stamp.pad_pix, bad=bad,
                        fill_sigma=rms_adu, seed=cfg.seed)[0]
    del image, bad

    seconds, verdicts = {}, {}
    # sep_default: SEP's own stack, what the stage used before 0.5
    for name, own in (("stage", True), ("sep_default", False)):
        t0 = time.perf_counter()
        verdicts[name] = sep_flags.classify_stamps(stamps, cfg.sep, own_pixel_stack=own)
        seconds[name] = time.perf_counter() - t0
    same = bool(np.array_equal(verdicts["stage"], verdicts["sep_default"]))
    out = {"tile": str(tile), "stamps": len(stamps), "seconds_stage_stack": seconds["stage"],
           "seconds_sep_default_stack": seconds["sep_default"],
           "speedup": seconds["sep_default"] / seconds["stage"], "identical": same,
           "sep_errors": int(verdicts["stage"]["error"].sum())}
    print(json.dumps(out, indent=1))
    print(f"SEP on {len(stamps)} stamps, one core: {seconds['stage']:.1f} s with the stage's "
          f"pixel stack, {seconds['sep_default']:.1f} s with SEP's default "
          f"({out['speedup']:.1f}x); identical verdicts: {same}")
    benchlib.write_result(args.output, out)


if __name__ == "__main__":
    main()
