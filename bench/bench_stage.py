"""Benchmark of ``bh-stage run`` on a simulated CFIS-like tile (default 10k x 10k).

Simulates the tile once (cached in --workdir), then ``--repeats`` times in turn: times
``source-extractor`` on the tile and the whole ``bh-stage run`` command on its catalogue (a
new process each time, Python start and imports included; ``--head default``: with the
compact paper head; ``--head cfis_sigma15_clip_80k``: with the VGG16 one; ``--head none``:
tile head and SEP only; ``--tile-head``: the tile head). The ratio is of the fastest run of
each. Then times each network alone on the same number of stamps (same runtime and
precision) and reads the stage's peak RSS. Prints the ratios and writes
bench/results/stage_<head name or none>_<tile head name>_<precision>_<size>.json.

    python bench/bench_stage.py --size-pix 10000 --head none
    python bench/bench_stage.py --size-pix 10000 --head default
"""

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import benchlib

REPO = benchlib.REPO


def make_tile(workdir, size_pix, cosmos_dir):
    tile = workdir / "tile.fits"
    if tile.exists():
        return tile
    subprocess.run(["bh-stage", "-q", "simulate", "example_config/simulate_tile.yml",
                    "--set", f"cosmos_dir={cosmos_dir}", "--set", "n_workers=2",
                    "--set", f"tile.nx_pix={size_pix}", "--set", f"tile.ny_pix={size_pix}",
                    "--set", f"tile.image={tile}", "--set", f"tile.weight={workdir}/tile.weight.fits",
                    "--set", f"tile.truth={workdir}/truth.fits", "--set", "overwrite=true"],
                   cwd=REPO, check=True)
    return tile


def time_sextractor(workdir, tile):
    """Seconds of source-extractor on the tile; writes the catalogue the stage reads."""
    t0 = time.perf_counter()
    subprocess.run(["source-extractor", str(tile), "-c", "example_config/sextractor/bh.sex",
                    "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", f"{workdir}/tile.weight.fits",
                    "-CATALOG_NAME", str(workdir / "tile.cat"), "-VERBOSE_TYPE", "QUIET"],
                   cwd=REPO, check=True)
    return time.perf_counter() - t0


def time_stage(tile, settings):
    """Seconds, summary line and peak RSS (GB) of ``bh-stage run`` on the tile with
    ``--set`` ``settings``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(["bh-stage", "run", "example_config/config.yml", str(tile),
                                 *[f"--set={s}" for s in settings]], cwd=REPO, stdout=stdout,
                                text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"bh-stage run failed (exit status {status})")
        stdout.seek(0)
        summary = stdout.read().strip().splitlines()[-1]
    return seconds, summary, usage.ru_maxrss / 1024**2


def network_rate(predict, n_stamps, batch_size):
    """Stamps/s of ``predict(batch)`` over about ``n_stamps`` noise stamps, after a warm-up."""
    stamps = np.random.default_rng(0).normal(0, 14.5, (batch_size, 65, 65)).astype(np.float32)
    predict(stamps)
    n_batches = max(1, n_stamps // batch_size)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        predict(stamps)
    return n_batches * batch_size / (time.perf_counter() - t0)


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--size-pix", type=int, default=10000)
    parser.add_argument("--head", default="default",
                        help="paper head: default (the compact one at sigma 15), a name, or none")
    parser.add_argument("--tile-head", default="default", help="tile_head of the run")
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bh_bench_stage"))
    parser.add_argument("--cosmos-dir", default=str(REPO.parent / "shared" / "cosmos"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tile = make_tile(args.workdir, args.size_pix, args.cosmos_dir)
    settings = ["weight={dir}/{stem}.weight.fits", f"head={args.head}",
                f"tile_head={args.tile_head}", f"precision={args.precision}",
                f"batch_size={args.batch_size}", "overwrite=true", "output={dir}/{stem}_bh.cat"]
    sex_runs, stage_runs = [], []
    for _ in range(args.repeats):
        sex_runs.append(time_sextractor(args.workdir, tile))
        seconds, summary, rss_gb = time_stage(tile, settings)
        stage_runs.append(seconds)
    sex_seconds, stage_seconds = min(sex_runs), min(stage_runs)

    import fitsio

    from bh_stage import heads, model, tilehead

    n_objects = fitsio.FITS(str(args.workdir / "tile.cat"))["LDAC_OBJECTS"].get_nrows()
    stage_rate = n_objects / stage_seconds
    tile_head = tilehead.load_tile_head(tilehead.tile_head_path(args.tile_head))
    features = np.zeros((args.batch_size, len(tile_head.feature_names)), np.float32)
    rates = {"tile_head": network_rate(lambda s: tile_head.predict_proba(s, 14.5, features),
                                       n_objects, args.batch_size)}
    head_json = None if args.head == "none" else heads.head_path(args.head, 14.5)
    head = "none" if head_json is None else head_json.stem
    if head_json is not None:
        clf = model.load_classifier(head_json, precision=args.precision,
                                    batch_size=args.batch_size)
        rates["paper_head"] = network_rate(clf.predict_proba, n_objects,
                                           args.batch_size)
    net_rate = 1 / sum(1 / rate for rate in rates.values())

    tile_head_name = Path(tile_head.path).stem
    out = {"size_pix": args.size_pix, "head": head, "tile_head": tile_head_name,
           "tile_head_orientations": tile_head.n_orientations, "precision": args.precision,
           "objects": n_objects, "sextractor_seconds": sex_seconds,
           "stage_seconds": stage_seconds, "stage_over_sextractor": stage_seconds / sex_seconds,
           "sextractor_runs_seconds": sex_runs, "stage_runs_seconds": stage_runs,
           "stage_stamps_per_s": stage_rate,
           **{f"{name}_only_stamps_per_s": rate for name, rate in rates.items()},
           "networks_stamps_per_s": net_rate, "stage_over_networks": stage_rate / net_rate,
           "peak_rss_gb": rss_gb, "summary": summary}
    print(json.dumps(out, indent=1))
    print(f"stage {stage_seconds:.1f} s / source-extractor {sex_seconds:.1f} s = "
          f"{stage_seconds / sex_seconds:.2f}x (issue 15 target <= 3); end-to-end "
          f"{stage_rate:.1f} stamps/s / networks alone {net_rate:.1f} = "
          f"{stage_rate / net_rate:.2f}; peak RSS {rss_gb:.2f} GB (target <= 2.5)")
    benchlib.write_result(
        args.output or f"stage_{head}_{tile_head_name}_{args.precision}_{args.size_pix}.json",
        out)


if __name__ == "__main__":
    main()
