"""Benchmark of ``bh-stage run`` on a simulated CFIS-like tile (default 10k x 10k).

Simulates the tile and runs source-extractor once (cached in --workdir), then in this
process: times the stage end to end, times the classifier alone on the same number of
stamps (same runtime and precision), and reads the peak RSS. Prints the ratio and writes
bench/results/stage_<precision>_<size>.json.

    python bench/bench_stage.py --size-pix 10000 --precision f32
"""

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_tile(workdir, size_pix, cosmos_dir):
    tile = workdir / "tile.fits"
    if (workdir / "tile.cat").exists():
        return tile
    subprocess.run(["bh-stage", "-q", "simulate", "example_config/simulate_tile.yml",
                    "--set", f"cosmos_dir={cosmos_dir}", "--set", "n_workers=2",
                    "--set", f"tile.nx_pix={size_pix}", "--set", f"tile.ny_pix={size_pix}",
                    "--set", f"tile.image={tile}", "--set", f"tile.weight={workdir}/tile.weight.fits",
                    "--set", f"tile.truth={workdir}/truth.fits", "--set", "overwrite=true"],
                   cwd=REPO, check=True)
    t0 = time.perf_counter()
    subprocess.run(["source-extractor", str(tile), "-c", "example_config/sextractor/bh.sex",
                    "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", f"{workdir}/tile.weight.fits",
                    "-CATALOG_NAME", str(workdir / "tile.cat")], cwd=REPO, check=True)
    print(f"source-extractor: {time.perf_counter() - t0:.1f} s")
    return tile


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-pix", type=int, default=10000)
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bh_bench_stage"))
    parser.add_argument("--cosmos-dir", default=str(REPO.parent / "shared" / "cosmos"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tile = make_tile(args.workdir, args.size_pix, args.cosmos_dir)

    from bh_stage import model
    from bh_stage.config import RunConfig, config_from_dict
    from bh_stage.stage import run_stage

    cfg = config_from_dict(RunConfig, {
        "weight": "{dir}/{stem}.weight.fits", "precision": args.precision,
        "batch_size": args.batch_size, "overwrite": True, "output": "{dir}/{stem}_bh.cat"})
    result = run_stage(cfg, tile)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    stage_rate = result.n_objects / result.seconds

    clf = model.load_classifier(model.head_path("default"), precision=args.precision,
                                batch_size=args.batch_size)
    stamps = np.random.default_rng(0).normal(0, 14.5, (args.batch_size, 65, 65))
    clf.predict_proba(stamps)  # warm up
    n_batches = max(1, result.n_objects // args.batch_size)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        clf.predict_proba(stamps)
    net_rate = n_batches * args.batch_size / (time.perf_counter() - t0)

    out = {"size_pix": args.size_pix, "precision": args.precision, "objects": result.n_objects,
           "stage_seconds": result.seconds, "stage_stamps_per_s": stage_rate,
           "network_only_stamps_per_s": net_rate, "ratio": stage_rate / net_rate,
           "peak_rss_gb": rss_gb, "summary": result.summary()}
    print(json.dumps(out, indent=1))
    print(f"end-to-end {stage_rate:.1f} stamps/s / network alone {net_rate:.1f} stamps/s = "
          f"{stage_rate / net_rate:.2f} (target >= 0.85); peak RSS {rss_gb:.2f} GB "
          f"(target <= 2.5)")
    path = REPO / "bench" / "results" / f"stage_{args.precision}_{args.size_pix}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
