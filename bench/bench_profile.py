"""Where `bh-stage run` spends its time, phase by phase, beside `source-extractor` on the tile.

    python bench/bench_profile.py TILE.fits --catalogue TILE.cat [--weight TILE.weight.fits] \
        [--set KEY=VALUE ...] [--repeats 3]

Each run is a new process, as `bh-stage run` is (Python and bh_stage imported in it; since
issue 24 TensorFlow in the stage's network process): its wall time is the total, and its
``run_stage`` runs under cProfile (the main thread), each phase the cumulative time of the
functions that do it (``PHASES``: reading the catalogue, cues, reading tile and weight, bad
pixels and background, waiting for the tile head's network, cutting stamps, the networks
when they run in this process, waiting for the SEP and network processes, writing);
"start-up" is the process's time outside ``run_stage``. SEP and the networks run in child
processes beside the main thread, so "waiting" is only the part it could not hide. The
median of ``--repeats`` runs of each phase is reported, and `source-extractor` on the same
tile (example_config/sextractor/bh.sex), timed in the same run after each, gives the ratio
of the medians. `import tensorflow` alone is timed in a new process for reference. Writes
bench/results/profile_<tile>.json.
"""

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import benchlib

PHASES = {
    "reading the catalogue": [("bh_stage/io.py", "read_catalogue"),
                              ("bh_stage/io.py", "read_columns")],
    "catalogue cues": [("bh_stage/cues.py", "catalogue_features", "run_stage"),
                       ("bh_stage/cues.py", "nearest_detection_pix", "run_stage"),
                       ("bh_stage/cues.py", "detections_in_stamp", "run_stage"),
                       ("bh_stage/features.py", "position_cues", "run_stage")],
    "loading the tile head (its files)": [("bh_stage/tilehead.py", "load_tile_head")],
    "starting the network process": [("bh_stage/stage.py", "_start_networks")],
    "reading tile and weight": [("bh_stage/io.py", "read_tile"),
                                ("bh_stage/io.py", "tile_row_blocks")],
    "bad pixels and background": [("bh_stage/pixels.py", "_bad_block"),
                                  ("bh_stage/pixels.py", "subtract_background")],
    "waiting for the tile head's network (TensorFlow's import, the build)": [
        ("", "build", "run_stage")],
    "loading the paper head": [("", "load_classifier", "run_stage")],
    "starting SEP processes": [("bh_stage/sep_flags.py", "__init__")],
    "cutting stamps": [("bh_stage/stamps.py", "cut_stamps")],
    "tile head network (in this process)": [("bh_stage/tilehead.py", "predict_proba")],
    "paper head network (in this process)": [("bh_stage/nets/vgg.py", "predict_proba")],
    "waiting for the SEP processes (and the network process)": [
        ("concurrent/futures/_base.py", "result", "finish_oldest"),
        ("concurrent/futures/_base.py", "result", "_stamp_features")],
    "writing the output": [("bh_stage/io.py", "write_catalogue")],
}
"""Phase -> (file suffix, function[, calling function]) whose cumulative times add up to it
(with a calling function: only the time of the calls it makes). Only the main thread is
profiled: what the network process, the SEP processes and the threads that talk to them do
shows as waiting."""


def startup_seconds(code):
    """Wall time of ``python -c code`` in a new process, seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def phase_seconds(stats):
    """Cumulative seconds of each phase from a ``pstats.Stats``."""
    out = {name: 0.0 for name in PHASES}
    for (path, _, func), (_, _, _, cumulative, callers) in stats.stats.items():
        for name, keys in PHASES.items():
            for suffix, fn, *caller in keys:
                if not (path.endswith(suffix) and func == fn):
                    continue
                if not caller:
                    out[name] += cumulative
                else:
                    out[name] += sum(times[3] for (_, _, by), times in callers.items()
                                     if by == caller[0])
    return out


def sextractor_seconds(tile, weight, folder):
    """Wall time of source-extractor on the tile with the project's config, seconds."""
    exe = shutil.which("source-extractor") or shutil.which("sex")
    args = [exe, str(tile), "-c", "example_config/sextractor/bh.sex",
            "-CATALOG_NAME", str(folder / "sex.cat")]
    if weight:
        args += ["-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", str(weight)]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - t0


def profile_run(args):
    """The child: ``run_stage`` under cProfile; prints its phases as JSON."""
    t_import = time.perf_counter()
    from bh_stage.config import RunConfig, load_config
    from bh_stage.stage import run_stage

    imports = time.perf_counter() - t_import
    cfg = load_config("example_config/config.yml", RunConfig, [
        f"catalogue={args.catalogue}", f"output={args.child}",
        f"weight={args.weight if args.weight else 'null'}", *args.set])
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    result = run_stage(cfg, args.tile)
    profile.disable()
    total = time.perf_counter() - t0
    phases = phase_seconds(pstats.Stats(profile))
    phases["other"] = total - sum(phases.values())
    print(json.dumps({"run_stage": total, "import bh_stage.stage": imports,
                      "n_objects": int(result.n_objects), **phases}))


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("tile", type=Path)
    parser.add_argument("--catalogue", type=Path, required=True)
    parser.add_argument("--weight", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: one run
    args = parser.parse_args()
    if args.child:
        return profile_run(args)

    runs, sextractor, loads = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            loads.append(os.getloadavg()[0])
            command = [sys.executable, __file__, str(args.tile), "--catalogue",
                       str(args.catalogue), "--child", str(tmp / "out.cat"),
                       *([f"--weight={args.weight}"] if args.weight else []),
                       *[f"--set={item}" for item in args.set]]
            t0 = time.perf_counter()
            out = subprocess.run(command, check=True, capture_output=True, text=True,
                                 cwd=benchlib.REPO)
            total = time.perf_counter() - t0
            run = json.loads(out.stdout.strip().splitlines()[-1])
            n_objects = run.pop("n_objects")
            run = {"total": total, "start-up (Python, imports)": total - run["run_stage"],
                   **run}
            runs.append(run)
            sextractor.append(sextractor_seconds(args.tile, args.weight, tmp))
    loads.append(os.getloadavg()[0])
    start = {"import bh_stage.cli": startup_seconds("import bh_stage.cli"),
             "import tensorflow": startup_seconds("import tensorflow")}
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    sex = float(np.median(sextractor))
    print(f"{args.tile}: {n_objects} objects; median of {args.repeats} runs, each a new process")
    for name, seconds in median.items():
        print(f"  {name:28s} {seconds:7.2f} s")
    for name, seconds in start.items():
        print(f"  for reference, {name:18s} {seconds:7.2f} s (new process)")
    total = median["total"]
    print(f"  source-extractor {sex:.2f} s; stage {total:.2f} s: {total / sex:.2f}x; load "
          f"{', '.join(f'{v:.2f}' for v in loads)}")
    benchlib.write_result(args.output or f"profile_{args.tile.stem}.json", {
        "tile": str(args.tile), "catalogue": str(args.catalogue), "set": args.set,
        "n_objects": n_objects, "repeats": args.repeats, "median_seconds": median,
        "runs": runs, "startup_seconds": start, "sextractor_seconds": sextractor,
        "sextractor_median_seconds": sex, "ratio_to_sextractor": total / sex,
        "load_1min_before_each_run_and_after": loads})


if __name__ == "__main__":
    main()
