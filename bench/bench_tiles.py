"""Benchmark of ``bh-stage run`` on many tiles: tiles per hour in sequence and on Dask.

Simulates ``--tiles`` CFIS-like tiles and runs source-extractor on each (cached in
--workdir), then times three runs of the same command line, each from a fresh process so
that start-up (TensorFlow import, model load, cluster start) is counted as a user sees it:

1. one process, tiles in sequence (``--serial``);
2. a local Dask cluster with 1 worker (1 thread);
3. a local Dask cluster with 2 workers (1 thread each).

Prints tiles per hour and the ratios to (1); writes bench/results/tiles_<date>.json.
Run it on an otherwise idle machine (check ``uptime``):

    python bench/bench_tiles.py --tiles 8 --size-pix 2000
    python bench/bench_tiles.py --tiles 2 --size-pix 300 --output /tmp/tiles_smoke.json
"""

import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchlib

REPO = benchlib.REPO
MODES = {"serial": ["--serial"], "dask_1_worker": ["--workers", "1"],
         "dask_2_workers": ["--workers", "2"]}


def make_tiles(workdir, n_tiles, size_pix, cosmos_dir):
    """Simulate ``n_tiles`` tiles (seeds 0..n-1) and their source-extractor catalogues."""
    tiles = []
    for seed in range(n_tiles):
        tile = workdir / f"tile_{size_pix}_{seed:03d}.fits"
        stem = tile.with_suffix("")
        cat = stem.with_suffix(".cat")
        weight = Path(f"{stem}.weight.fits")
        if not cat.exists():
            subprocess.run(
                ["bh-stage", "-q", "simulate", "example_config/simulate_tile.yml",
                 "--set", f"cosmos_dir={cosmos_dir}", "--set", f"seed={seed}",
                 "--set", f"tile.nx_pix={size_pix}", "--set", f"tile.ny_pix={size_pix}",
                 "--set", f"tile.image={tile}", "--set", f"tile.weight={weight}",
                 "--set", f"tile.truth={stem}_truth.fits", "--set", "overwrite=true"],
                cwd=REPO, check=True)
            subprocess.run(
                ["source-extractor", str(tile), "-c", "example_config/sextractor/bh.sex",
                 "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", str(weight),
                 "-CATALOG_NAME", str(cat)], cwd=REPO, check=True, capture_output=True)
        tiles.append(tile)
    return tiles


def count_objects(tiles):
    import fitsio

    return sum(fitsio.FITS(str(t.with_suffix(".cat")))["LDAC_OBJECTS"].get_nrows()
               for t in tiles)


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--tiles", type=int, default=8, help="number of tiles")
    parser.add_argument("--size-pix", type=int, default=2000, help="side of each tile")
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bh_bench_tiles"))
    parser.add_argument("--cosmos-dir", default=str(REPO.parent / "shared" / "cosmos"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tiles = make_tiles(args.workdir, args.tiles, args.size_pix, args.cosmos_dir)
    n_objects = count_objects(tiles)
    config = args.workdir / "config.yml"
    config.write_text("weight: '{dir}/{stem}.weight.fits'\n"
                      f"precision: {args.precision}\n"
                      "output: '{dir}/out/{stem}_bh.cat'\n")
    out_dir = args.workdir / "out"

    load_before = os.getloadavg()
    timings = {}
    for mode, flags in MODES.items():
        shutil.rmtree(out_dir, ignore_errors=True)  # every mode computes every tile
        out_dir.mkdir()
        command = ["bh-stage", "-q", "run", str(config), *map(str, tiles), *flags]
        t0 = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        timings[mode] = {"command": " ".join(command), "seconds": seconds,
                         "tiles_per_hour": 3600 * len(tiles) / seconds}
        print(f"{mode:15s} {seconds:8.1f} s  {timings[mode]['tiles_per_hour']:8.1f} tiles/h")
    base = timings["serial"]["tiles_per_hour"]
    for mode in MODES:
        timings[mode]["ratio_to_serial"] = timings[mode]["tiles_per_hour"] / base
    print("ratios to serial: " + ", ".join(f"{m} {t['ratio_to_serial']:.2f}"
                                           for m, t in timings.items()))
    load = os.getloadavg()
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "tiles": len(tiles), "size_pix": args.size_pix, "objects": n_objects,
              "precision": args.precision, "cpu_count": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": load,
              "python": sys.version.split()[0], "modes": timings}
    benchlib.write_result(args.output or f"tiles_{datetime.date.today():%Y%m%d}.json", result)


if __name__ == "__main__":
    main()
