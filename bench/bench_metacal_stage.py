"""Cost of `metacal.enabled` in `bh-stage run`: the same run with and without the four sheared
images, and their ratio (issue target: <= 5x the plain stage on a 10k tile).

    python bench/bench_metacal_stage.py TILE.fits --tile-head HEAD.json \\
        [--psf fwhm --psf-fwhm-arcsec 0.65 --psf-moffat-beta 4.765 | --psf psfex] \
        [--set KEY=VALUE ...]

Each repeat runs the whole `bh-stage run` command (a new process: Python start, imports and
the tile head's load included) without metacal, then with it, on the same tile, catalogue
(`{dir}/{stem}.cat`) and weight map (`{dir}/{stem}.weight.fits`); the ratio is of the medians
of `--repeats` runs (default 3). A position-only tile head is needed (`bh-stage train-tile
--set features=stamp`). `--psf psfex` first runs source-extractor (example_config's
parameters plus VIGNET, psfex.param) and psfex on the tile, in the work folder, and times
them too; `--psf fwhm` uses a Moffat (or, without `--psf-moffat-beta`, Gaussian) PSF of the
given FWHM (the v2 tiles: 0.65", a Moffat 4.765 optical core in Kolmogorov seeing). The load
average before and after each run is recorded: other jobs on the machine slow both runs, so
the ratio of the fastest runs and the ratio of each pair are written too.
Writes bench/results/metacal_stage_<psf>.json unless --output says otherwise.
"""

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import fitsio
import numpy as np

import benchlib
from bench_stage import time_stage

REPO = benchlib.REPO
SEX_DIR = REPO / "example_config" / "sextractor"


def time_run(tile, settings):
    """``bench_stage.time_stage`` of one `bh-stage run` (seconds, summary line, peak RSS in
    GB of the process and of it with its children, CPU seconds) as a dict, with the load
    averages (1 min) before and after the run."""
    load_before = os.getloadavg()[0]
    seconds, summary, rss_gb, cpu_s, tree_rss_gb = time_stage(tile, settings)
    return {"seconds": seconds, "summary": summary, "peak_rss_gb": rss_gb,
            "peak_rss_with_children_gb": tree_rss_gb, "cpu_seconds": cpu_s,
            "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]}


def make_psfex(tile, weight, workdir):
    """source-extractor (with VIGNET) then psfex on the tile: the .psf path and the seconds
    of each."""
    cat = workdir / "psfex.cat"
    t0 = time.perf_counter()
    subprocess.run(["source-extractor", str(tile), "-c", str(SEX_DIR / "bh.sex"),
                    "-PARAMETERS_NAME", str(SEX_DIR / "psfex.param"), "-FILTER_NAME",
                    str(SEX_DIR / "default.conv"), "-WEIGHT_TYPE", "MAP_WEIGHT",
                    "-WEIGHT_IMAGE", str(weight), "-CATALOG_NAME", str(cat)], cwd=workdir,
                   check=True)
    t1 = time.perf_counter()
    config = workdir / "default.psfex"
    config.write_text(subprocess.run(["psfex", "-dd"], capture_output=True, text=True,
                                     check=True).stdout)
    subprocess.run(["psfex", str(cat), "-c", str(config), "-PSF_DIR", str(workdir),
                    "-CHECKPLOT_TYPE", "NONE", "-CHECKIMAGE_TYPE", "NONE", "-WRITE_XML", "N",
                    "-VERBOSE_TYPE", "QUIET"], cwd=workdir, check=True)
    return workdir / "psfex.psf", t1 - t0, time.perf_counter() - t1


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("tile", type=Path)
    parser.add_argument("--tile-head", required=True,
                        help="a position-only tile head (.json or shipped name)")
    parser.add_argument("--psf", choices=("fwhm", "psfex"), default="fwhm")
    parser.add_argument("--psf-fwhm-arcsec", type=float, default=0.65)
    parser.add_argument("--psf-moffat-beta", type=float, default=4.765)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of both runs (e.g. tile_head_precision=bf16)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bh_bench_metacal_stage"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tile = args.tile.resolve()
    weight = tile.parent / f"{tile.name.removesuffix('.fits')}.weight.fits"
    common = [f"weight={weight}", f"tile_head={args.tile_head}", "overwrite=true", *args.set]
    out = {"tile": str(tile), "tile_head": args.tile_head, "psf": args.psf,
           "repeats": args.repeats, "settings": args.set}
    if args.psf == "psfex":
        psf_file, sex_s, psfex_s = make_psfex(tile, weight, args.workdir)
        metacal = [f"metacal.psf_file={psf_file}"]
        out.update(psf_file=str(psf_file), psfex_sextractor_seconds=sex_s,
                   psfex_seconds=psfex_s)
    else:
        metacal = [f"metacal.psf_fwhm_arcsec={args.psf_fwhm_arcsec}",
                   f"metacal.psf_moffat_beta={args.psf_moffat_beta}"]
        out.update(psf_fwhm_arcsec=args.psf_fwhm_arcsec, psf_moffat_beta=args.psf_moffat_beta)
    runs = {"plain": [], "metacal": []}
    outputs = {"plain": args.workdir / "plain_bh.cat", "metacal": args.workdir / "mcal_bh.cat"}
    for _ in range(args.repeats):  # interleaved, so that both see the same machine load
        runs["plain"].append(time_run(tile, common + [f"output={outputs['plain']}"]))
        runs["metacal"].append(time_run(tile, common + [
            f"output={outputs['metacal']}", "metacal.enabled=true", *metacal]))
        print(f"plain {runs['plain'][-1]['seconds']:.1f} s, metacal "
              f"{runs['metacal'][-1]['seconds']:.1f} s", flush=True)
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    mcal = fitsio.read(str(outputs["metacal"]), ext="LDAC_OBJECTS")
    header = fitsio.read_header(str(outputs["metacal"]), ext="LDAC_OBJECTS")
    scored = np.isfinite(mcal["BLEND_PROB"])
    flagged = {c: int(mcal[c].sum()) for c in ("BLEND_FLAG", "BLEND_FLAG_1P", "BLEND_FLAG_1M",
                                                "BLEND_FLAG_2P", "BLEND_FLAG_2M")}
    out.update({
        "objects": len(mcal), "scored": int(scored.sum()),
        "plain_seconds_median": median["plain"], "metacal_seconds_median": median["metacal"],
        "ratio": median["metacal"] / median["plain"],
        "ratio_of_minima": (min(r["seconds"] for r in runs["metacal"])
                            / min(r["seconds"] for r in runs["plain"])),
        "pair_ratios": [m["seconds"] / p["seconds"]
                        for p, m in zip(runs["plain"], runs["metacal"])],
        "metacal_extra_ms_per_object": 1e3 * (median["metacal"] - median["plain"]) / len(mcal),
        "runs": runs, "bh_mcrms_over_bh_rms": header["BH_MCRMS"] / header["BH_RMS"],
        "bh_psfsr": header["BH_PSFSR"], "tile_head_precision": header["BH_TPREC"],
        "flagged": flagged,
        "median_abs_dprob_1p_vs_plain": float(np.median(np.abs(
            mcal["BLEND_PROB_1P"] - mcal["BLEND_PROB"])[scored])),
        "median_abs_dprob_1p_vs_1m": float(np.median(np.abs(
            mcal["BLEND_PROB_1P"] - mcal["BLEND_PROB_1M"])[scored])),
    })
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    print(f"{len(mcal)} objects: plain {median['plain']:.1f} s, metacal "
          f"{median['metacal']:.1f} s (medians of {args.repeats}): {out['ratio']:.2f}x "
          f"(target <= 5; minima {out['ratio_of_minima']:.2f}x, pairs "
          f"{', '.join(f'{r:.2f}' for r in out['pair_ratios'])}); load average now "
          f"{os.getloadavg()}")
    tprec = "" if header["BH_TPREC"] == "f32" else f"_t{header['BH_TPREC']}"
    benchlib.write_result(args.output or f"metacal_stage_{args.psf}{tprec}.json", out)


if __name__ == "__main__":
    main()
