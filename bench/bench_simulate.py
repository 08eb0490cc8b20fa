"""Benchmark of ``bh_stage.study.simulate.simulate_stamps``: stamps/s, parametric and real.

Usage: ``python bench/bench_simulate.py [--n-stamps 400] [--workers 1 2]``. Warms GalSim
(Sersic tables, catalogues) with a small run first, then times each (kind, workers) case and
writes ``bench/results/simulate_<date>.json``.
"""

import os
import platform
import time

from bh_stage import __version__
from bh_stage.config import SimulateConfig, config_from_dict
from bh_stage.study.simulate import simulate_stamps

import benchlib

REPO = benchlib.REPO


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--n-stamps", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="+", default=["parametric", "real"])
    parser.add_argument("--cosmos-dir", default=os.environ.get(
        "BH_STAGE_COSMOS_DIR", str(REPO.parent / "shared" / "cosmos")))
    args = parser.parse_args()
    results = []
    for kind in args.kinds:
        warm = config_from_dict(SimulateConfig, {"n_stamps": 40, "n_workers": 1,
                                                 "set_kind": kind,
                                                 "cosmos_dir": args.cosmos_dir})
        simulate_stamps(warm)
        for workers in args.workers:
            cfg = config_from_dict(SimulateConfig, {
                "n_stamps": args.n_stamps, "n_workers": workers, "set_kind": kind,
                "seed": 1, "cosmos_dir": args.cosmos_dir})
            t0 = time.perf_counter()
            _, truth, attrs = simulate_stamps(cfg)
            dt = time.perf_counter() - t0
            row = {"kind": kind, "n_workers": workers, "n_stamps": args.n_stamps,
                   "seconds": round(dt, 2), "stamps_per_s": round(args.n_stamps / dt, 1),
                   "close_fraction": attrs["close_fraction"],
                   "edge_fraction": attrs["edge_fraction"],
                   "median_separation_pix": attrs["median_separation_pix"],
                   "median_snr_central_at_14.5": attrs["median_snr_central_at_realistic_sigma"]}
            results.append(row)
            print(f"{kind:10s} workers={workers} {row['stamps_per_s']:7.1f} stamps/s "
                  f"({args.n_stamps} stamps in {dt:.1f} s)")
    benchlib.write_result(args.output or f"simulate_{time.strftime('%Y%m%d_%H%M%S')}.json",
                          {"bh_stage_version": __version__, "machine": platform.node(),
                           "cpu_count": os.cpu_count(), "results": results})


if __name__ == "__main__":
    main()
