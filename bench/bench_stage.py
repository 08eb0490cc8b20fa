"""Benchmark of ``bh-stage run`` on a simulated CFIS-like tile (default 10k x 10k).

Simulates the tile once (cached in --workdir), then in one run: times ``source-extractor``
on the tile, times the stage end to end (``--head default``: with the compact paper head;
``--head cfis_sigma15_clip_80k``: with the VGG16 one; ``--head none``: tile head and SEP
only), times each network alone on the same number of
stamps (same runtime and precision), and reads the peak RSS. Prints the ratios and writes
bench/results/stage_<head name or none>_<precision>_<size>.json.

    python bench/bench_stage.py --size-pix 10000 --head none
    python bench/bench_stage.py --size-pix 10000 --head default
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-pix", type=int, default=10000)
    parser.add_argument("--head", default="default",
                        help="paper head: default (the compact one at sigma 15), a name, or none")
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bh_bench_stage"))
    parser.add_argument("--cosmos-dir", default=str(REPO.parent / "shared" / "cosmos"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tile = make_tile(args.workdir, args.size_pix, args.cosmos_dir)
    sex_seconds = time_sextractor(args.workdir, tile)

    from bh_stage import model, tilehead
    from bh_stage.config import RunConfig, config_from_dict
    from bh_stage.stage import run_stage

    cfg = config_from_dict(RunConfig, {
        "weight": "{dir}/{stem}.weight.fits", "head": args.head, "precision": args.precision,
        "batch_size": args.batch_size, "overwrite": True, "output": "{dir}/{stem}_bh.cat"})
    result = run_stage(cfg, tile)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    stage_rate = result.n_objects / result.seconds

    tile_head = tilehead.load_tile_head(tilehead.tile_head_path("default"))
    features = np.zeros((args.batch_size, len(tile_head.metadata["catalogue_features"])),
                        np.float32)
    rates = {"tile_head": network_rate(lambda s: tile_head.predict_proba(s, 14.5, features),
                                       result.n_objects, args.batch_size)}
    head_json = None if args.head == "none" else model.head_path(args.head, 14.5)
    head = "none" if head_json is None else head_json.stem
    if head_json is not None:
        clf = model.load_classifier(head_json, precision=args.precision,
                                    batch_size=args.batch_size)
        rates["paper_head"] = network_rate(clf.predict_proba, result.n_objects,
                                           args.batch_size)
    net_rate = 1 / sum(1 / rate for rate in rates.values())

    out = {"size_pix": args.size_pix, "head": head, "precision": args.precision,
           "objects": result.n_objects, "sextractor_seconds": sex_seconds,
           "stage_seconds": result.seconds, "stage_over_sextractor": result.seconds / sex_seconds,
           "stage_stamps_per_s": stage_rate,
           **{f"{name}_only_stamps_per_s": rate for name, rate in rates.items()},
           "networks_stamps_per_s": net_rate, "stage_over_networks": stage_rate / net_rate,
           "peak_rss_gb": rss_gb, "summary": result.summary()}
    print(json.dumps(out, indent=1))
    print(f"stage {result.seconds:.1f} s / source-extractor {sex_seconds:.1f} s = "
          f"{result.seconds / sex_seconds:.1f}x (issue 15 target <= 3); end-to-end "
          f"{stage_rate:.1f} stamps/s / networks alone {net_rate:.1f} = "
          f"{stage_rate / net_rate:.2f}; peak RSS {rss_gb:.2f} GB (target <= 2.5)")
    name = f"stage_{head}_{args.precision}_{args.size_pix}.json"
    (REPO / "bench" / "results" / name).write_text(json.dumps(out, indent=1) + "\n")

if __name__ == "__main__":
    main()
