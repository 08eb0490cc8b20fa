"""Benchmark of ``bh-stage run`` on a simulated CFIS-like tile (default 10k x 10k).

Simulates the tile once (cached in --workdir), then ``--repeats`` times in turn: times
``source-extractor`` on the tile and the whole ``bh-stage run`` command on its catalogue (a
new process each time, Python start and imports included; ``--head default``: with the
compact paper head; ``--head cfis_sigma15_clip_80k``: with the VGG16 one; ``--head none``:
tile head and SEP only; ``--tile-head``: the tile head). The ratio is of the medians of the
runs (``--repeats``, default 3; the fastest runs are recorded too), and the machine's load
(1-minute average) is read before each run; the CPU seconds (user + system) of each command,
the stage's network and SEP children included, are recorded too (a measure of work that
another job on the machine changes less than the wall time). Then times each network alone
on the same number of stamps (same runtime and precision) and reads the stage's peak RSS (the
largest of the runs: of the ``bh-stage`` process, and of it with its children at any one
time, polled from /proc). Prints the ratios and writes
bench/results/stage_<head name or none>_<tile head name>_<precision>_<size>[_<tile name>].json.

A second kind of tile: ``--tile-set KEY=VALUE`` passes ``tile.KEY=VALUE`` to the simulation
(density, pairs, stars, a masked square, seed), and ``--nan-rows N`` then blanks a strip of N
full rows of the image (NaN, weight 0) and ``--nan-fraction F`` a fraction F of its pixels
scattered at random (NaN, weight 0), as bad columns and cosmic-ray masks leave them; name it
with ``--tile-name`` (its own folder in ``--workdir`` and its own result file).

    python bench/bench_stage.py --size-pix 10000 --head none
    python bench/bench_stage.py --size-pix 10000 --head default
    python bench/bench_stage.py --size-pix 10000 --head none --tile-name dense_masked_nan \
        --tile-set density_per_arcmin2=35 --tile-set close_pair_fraction=0.2 \
        --tile-set star_density_per_arcmin2=2 --tile-set mask_box_pix=1500 --tile-set seed=7 \
        --nan-rows 200 --nan-fraction 0.0005
"""

import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import benchlib

REPO = benchlib.REPO


def make_tile(workdir, size_pix, cosmos_dir, tile_set=(), nan_rows=0, nan_fraction=0.0):
    """Simulate the tile once (``tile.KEY=VALUE`` overrides ``tile_set``; ``seed=`` is the
    simulation's seed), then blank ``nan_rows`` rows from a third of its height and a
    fraction ``nan_fraction`` of its pixels (NaN in the image, 0 in the weight; seed 0)."""
    tile = workdir / "tile.fits"
    if tile.exists():
        return tile
    extra = []
    for item in tile_set:
        key, _, value = item.partition("=")
        extra += ["--set", f"seed={value}" if key == "seed" else f"tile.{item}"]
    weight = workdir / "tile.weight.fits"
    raw = workdir / "raw.fits" if nan_rows or nan_fraction else tile
    subprocess.run(["bh-stage", "-q", "simulate", "example_config/simulate_tile.yml",
                    "--set", f"cosmos_dir={cosmos_dir}", "--set", "n_workers=2",
                    "--set", f"tile.nx_pix={size_pix}", "--set", f"tile.ny_pix={size_pix}",
                    "--set", f"tile.image={raw}", "--set", f"tile.weight={weight}",
                    "--set", f"tile.truth={workdir}/truth.fits", "--set", "overwrite=true",
                    *extra], cwd=REPO, check=True)
    if raw != tile:
        import fitsio

        image, header = fitsio.read(str(raw), header=True)
        wmap, wheader = fitsio.read(str(weight), header=True)
        blank = np.zeros(image.shape, bool)
        first = image.shape[0] // 3
        blank[first:first + nan_rows] = True
        blank |= np.random.default_rng(0).random(image.shape) < nan_fraction
        image[blank] = np.nan
        wmap[blank] = 0
        fitsio.write(str(weight), wmap, header=wheader, clobber=True)
        fitsio.write(str(tile), image, header=header, clobber=True)
        raw.unlink()
    return tile


def load_1min():
    """The machine's 1-minute load average (another job's CPU use shows here)."""
    return os.getloadavg()[0]


def time_sextractor(workdir, tile):
    """Seconds and CPU seconds (user + system) of source-extractor on the tile; writes the
    catalogue the stage reads."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["source-extractor", str(tile), "-c",
                             "example_config/sextractor/bh.sex", "-WEIGHT_TYPE", "MAP_WEIGHT",
                             "-WEIGHT_IMAGE", f"{workdir}/tile.weight.fits", "-CATALOG_NAME",
                             str(workdir / "tile.cat"), "-VERBOSE_TYPE", "QUIET"], cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"source-extractor failed (exit status {status})")
    return seconds, usage.ru_utime + usage.ru_stime


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def tree_rss_gb(pid):
    """Resident memory of process ``pid`` and all its descendants (the network and SEP
    processes), GB, read from /proc (0 where there is none)."""
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), int(fields[21]))  # ppid, rss pages
    tree, total = {pid}, 0
    for _ in range(4):  # children, grandchildren, ...
        tree |= {p for p, (ppid, _) in procs.items() if ppid in tree}
    for p in tree:
        total += procs.get(p, (0, 0))[1]
    return total * PAGE_BYTES / 1024**3


def time_stage(tile, settings):
    """Seconds, summary line, peak RSS (GB: of the process alone, as ``wait4`` gives it, and
    of the process with its children at any one time, polled every 0.2 s) and CPU seconds
    (user + system, its network and SEP children included) of ``bh-stage run`` on the tile
    with ``--set`` ``settings``."""
    t0 = time.perf_counter()
    peak = [0.0]
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(["bh-stage", "run", "example_config/config.yml", str(tile),
                                 *[f"--set={s}" for s in settings]], cwd=REPO, stdout=stdout,
                                text=True)
        done = threading.Event()

        def poll():
            while not done.wait(0.2):
                peak[0] = max(peak[0], tree_rss_gb(proc.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        done.set()
        poller.join()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"bh-stage run failed (exit status {status})")
        stdout.seek(0)
        summary = stdout.read().strip().splitlines()[-1]
    return (seconds, summary, usage.ru_maxrss / 1024**2, usage.ru_utime + usage.ru_stime,
            peak[0])


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
    parser.add_argument("--tile-head-precision", default="auto",
                        choices=("auto", "int8", "f32", "bf16"),
                        help="tile_head_precision of the run (the result's name ends _tint8 or "
                        "_tbf16 where the tile head ran so)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bh_bench_stage"))
    parser.add_argument("--cosmos-dir", default=str(REPO.parent / "shared" / "cosmos"))
    parser.add_argument("--tile-name", default=None,
                        help="a second kind of tile: its folder in --workdir, its result name")
    parser.add_argument("--tile-set", action="append", default=[], metavar="KEY=VALUE",
                        help="tile.KEY=VALUE for the simulation (seed=N: its seed)")
    parser.add_argument("--nan-rows", type=int, default=0,
                        help="rows of the image set to NaN (weight 0) from a third of its height")
    parser.add_argument("--nan-fraction", type=float, default=0.0,
                        help="fraction of pixels set to NaN (weight 0) at random")
    parser.add_argument("--simulate-only", action="store_true",
                        help="make the tile (and its catalogue) and stop")
    args = parser.parse_args()
    workdir = args.workdir / args.tile_name if args.tile_name else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    tile = make_tile(workdir, args.size_pix, args.cosmos_dir, args.tile_set, args.nan_rows,
                     args.nan_fraction)
    if args.simulate_only:
        if not (workdir / "tile.cat").exists():
            time_sextractor(workdir, tile)
        return
    settings = ["weight={dir}/{stem}.weight.fits", f"head={args.head}",
                f"tile_head={args.tile_head}", f"precision={args.precision}",
                f"tile_head_precision={args.tile_head_precision}",
                f"batch_size={args.batch_size}", "overwrite=true", "output={dir}/{stem}_bh.cat"]
    sex_runs, stage_runs, loads, rss_runs, sex_cpu, stage_cpu = [], [], [], [], [], []
    tree_rss_runs = []
    for _ in range(args.repeats):
        loads.append(load_1min())
        seconds, cpu = time_sextractor(workdir, tile)
        sex_runs.append(seconds)
        sex_cpu.append(cpu)
        seconds, summary, rss_gb, cpu, tree_gb = time_stage(tile, settings)
        stage_runs.append(seconds)
        rss_runs.append(rss_gb)
        tree_rss_runs.append(tree_gb)
        stage_cpu.append(cpu)
    loads.append(load_1min())
    sex_seconds, stage_seconds = float(np.median(sex_runs)), float(np.median(stage_runs))
    rss_gb = max(rss_runs)

    import fitsio

    from bh_stage import heads, model, tilehead

    n_objects = fitsio.FITS(str(workdir / "tile.cat"))["LDAC_OBJECTS"].get_nrows()
    stage_rate = n_objects / stage_seconds
    tile_head = tilehead.load_tile_head(tilehead.tile_head_path(args.tile_head),
                                        args.tile_head_precision)
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
    out = {"size_pix": args.size_pix, "tile_name": args.tile_name or "tile",
           "tile_set": args.tile_set, "nan_rows": args.nan_rows,
           "nan_fraction": args.nan_fraction, "head": head, "tile_head": tile_head_name,
           "tile_head_orientations": tile_head.n_orientations, "precision": args.precision,
           "tile_head_precision": tile_head.precision,
           "tile_head_precision_setting": args.tile_head_precision,
           "objects": n_objects, "statistic": f"median of {args.repeats}",
           "sextractor_seconds": sex_seconds,
           "stage_seconds": stage_seconds, "stage_over_sextractor": stage_seconds / sex_seconds,
           "sextractor_runs_seconds": sex_runs, "stage_runs_seconds": stage_runs,
           "fastest_over_fastest": min(stage_runs) / min(sex_runs),
           "sextractor_cpu_seconds_runs": sex_cpu, "stage_cpu_seconds_runs": stage_cpu,
           "cpu_seconds_ratio_of_medians": float(np.median(stage_cpu) / np.median(sex_cpu)),
           "load_1min_before_each_run_and_after": loads, "peak_rss_gb_runs": rss_runs,
           "peak_rss_with_children_gb_runs": tree_rss_runs,
           "peak_rss_with_children_gb": max(tree_rss_runs),
           "stage_stamps_per_s": stage_rate,
           **{f"{name}_only_stamps_per_s": rate for name, rate in rates.items()},
           "networks_stamps_per_s": net_rate, "stage_over_networks": stage_rate / net_rate,
           "peak_rss_gb": rss_gb, "summary": summary}
    print(json.dumps(out, indent=1))
    print(f"stage {stage_seconds:.1f} s / source-extractor {sex_seconds:.1f} s = "
          f"{stage_seconds / sex_seconds:.2f}x (medians of {args.repeats}; issue 24 target <= 2 "
          f"with head none, <= 2.5 with the paper head); end-to-end "
          f"{stage_rate:.1f} stamps/s / networks alone {net_rate:.1f} = "
          f"{stage_rate / net_rate:.2f}; CPU seconds {np.median(stage_cpu):.1f} / "
          f"{np.median(sex_cpu):.1f}; peak RSS {rss_gb:.2f} GB, with its children "
          f"{max(tree_rss_runs):.2f} GB (target <= 2); "
          f"load {', '.join(f'{v:.2f}' for v in loads)}")
    suffix = f"_{args.tile_name}" if args.tile_name else ""
    suffix += "" if tile_head.precision == "f32" else f"_t{tile_head.precision}"
    benchlib.write_result(
        args.output
        or f"stage_{head}_{tile_head_name}_{args.precision}_{args.size_pix}{suffix}.json", out)


if __name__ == "__main__":
    main()
