"""Metacalibration bench: speed of each route on 51x51 stamps, and the shear bias (m, c).

Speed, one thread (BLAS and OpenMP pinned to 1 before numpy loads): ``metacal_images`` of N
noisy exponential galaxies (the stamps of bh_stage.study.ringtest) with the correlated-noise
correction and all five images, per route (``fft``: N stamps, in float64 and in the stage's
float32; ``galsim``: fewer, it is slower), and ``adaptive_moments`` of those five images;
the median of 3 runs, in objects per second, and the ratio to the whole stage's stamps per
second as recorded in
``bench/results/stage_none_tile_unrecognised_o2_f32_10000.json`` (the example config's heads;
that run used every core of its machine, see its provenance).

Bias: tests/test_metacal.py's key test (bh_stage.study.ringtest) at more pairs: ring pairs
of exponential galaxies (S/N 50-260), Moffat PSF 0.65 arcsec at 0.187 arcsec/px, shear
+-0.02 on g1 then g2 with the same noise, ``g = <R>^-1 <e>``; m, c and the cross-component
terms with 95 % bootstrap intervals over pairs. Then without noise at g = 0.005, 0.02 and
0.04 (what is left is the response's second order, m ~ g^2), and at a quarter of the flux
(S/N 12-65) with and without the correlated-noise correction, to show what the correction
removes.

    python bench/bench_metacal.py            # about 5 min on one idle core
    python bench/bench_metacal.py --quick    # smoke test, under a minute
    python bench/bench_metacal.py --psf-leakage   # the target PSFs under an elongated PSF

Writes ``bench/results/metacal.json`` (``--quick``: ``/tmp/bh_metacal_quick.json``).

``--psf-leakage`` runs only this: the same ring pairs (S/N 50-260, with the correction) seen
through the Moffat PSF sheared by ``LEAKAGE_PSF_G1`` (an elongated PSF, fixed over the
field), measured with each target PSF of ``metacal.TARGET_PSFS``; the additive bias c on
each component is the PSF's leakage (the ring pairs cancel the intrinsic shapes). Writes
``bench/results/metacal_psf_leakage.json``.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread, set before numpy is imported below

import json
import statistics
import time

import numpy as np

from bh_stage import metacal
from bh_stage.extras import require

from bh_stage.study import ringtest as tm  # the simulation and estimator the tests use

import benchlib

STAGE_RESULT = benchlib.RESULTS_DIR / "stage_none_tile_unrecognised_o2_f32_10000.json"


def timed(function, runs=3):
    """Median wall-clock and CPU seconds of ``runs`` calls of ``function`` (one thread: the
    CPU time is the cost, the wall clock adds what other processes took)."""
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_seconds_runs": wall, "cpu_seconds_runs": cpu,
            "wall_seconds": statistics.median(wall), "cpu_seconds": statistics.median(cpu)}


def rates(timing, n):
    """Add objects per second and ms per object (wall clock and CPU) to a ``timed`` dict."""
    timing["objects"] = n
    for clock in ("wall", "cpu"):
        timing[f"objects_per_s_{clock}"] = n / timing[f"{clock}_seconds"]
        timing[f"ms_per_object_{clock}"] = 1e3 * timing[f"{clock}_seconds"] / n
    return timing


def speed(galsim, psf, n_fft, n_galsim):
    """Objects per second of each route (five images, noise correction) and of the shapes."""
    stamps = tm.simulate_ring_pairs(galsim, (n_fft + 3) // 4, (0.02, 0.0), seed=1)
    stamps = stamps.reshape(-1, tm.SIDE_PIX, tm.SIDE_PIX)[:n_fft]
    out = {}
    for key, method, n, dtype in (("fft", "fft", n_fft, np.float64),
                                  ("fft_float32", "fft", n_fft, np.float32),
                                  ("galsim", "galsim", n_galsim, np.float64)):
        out[key] = rates(timed(lambda: metacal.metacal_images(
            stamps[:n], psf, noise_sigma_adu=1.0, types=metacal.METACAL_TYPES,
            method=method, dtype=dtype)), n)
    images = metacal.metacal_images(stamps, psf, noise_sigma_adu=1.0, types=metacal.METACAL_TYPES)
    out["shapes_5_images"] = rates(timed(lambda: [metacal.adaptive_moments(images[t])
                                                  for t in metacal.METACAL_TYPES]), n_fft)
    out["fft_over_galsim_cpu"] = out["fft"]["objects_per_s_cpu"] / \
        out["galsim"]["objects_per_s_cpu"]
    out["fft_float32_over_fft_cpu"] = out["fft_float32"]["objects_per_s_cpu"] / \
        out["fft"]["objects_per_s_cpu"]
    if STAGE_RESULT.is_file():
        stage = json.loads(STAGE_RESULT.read_text())["stage_stamps_per_s"]
        out["stage_stamps_per_s_recorded"] = stage
        out["stage_result"] = STAGE_RESULT.name
        for key in ("fft", "fft_float32", "galsim", "shapes_5_images"):
            out[key]["cpu_rate_over_stage_rate"] = out[key]["objects_per_s_cpu"] / stage
    return out


def snr_range(galsim, n_pairs, flux_adu):
    """Percentiles (0, 5, 50, 95, 100) of the optimal S/N of the simulated galaxies at
    noise 1 ADU: sqrt(sum of the noise-free pixels squared)."""
    clean = tm.simulate_ring_pairs(galsim, n_pairs, (0.0, 0.0), seed=99, flux_adu=flux_adu,
                                   noise_sigma_adu=0.0)
    snr = np.sqrt((clean[:, :, 0] ** 2).sum(axis=(-2, -1)))
    return np.percentile(snr, [0, 5, 50, 95, 100]).tolist()


def bias(galsim, psf, n_pairs, flux_adu, corrections):
    """m, c per correction (``"corrected"``: noise_sigma_adu=1, ``"uncorrected"``: None) and
    per sheared component."""
    names = {True: "corrected", False: "uncorrected"}
    out = {names[fix]: {} for fix in corrections}
    for component in (0, 1):
        g = (tm.G_TRUE, 0.0) if component == 0 else (0.0, tm.G_TRUE)
        stamps = tm.simulate_ring_pairs(galsim, n_pairs, g, seed=1000 + component,
                                        flux_adu=flux_adu)
        for fix in corrections:
            t0 = time.perf_counter()
            e, r, ok = tm.measure_ring_pairs(stamps, psf, 1.0 if fix else None)
            result = tm.paired_bias(e[ok], r[ok], component)
            result["pairs_dropped"] = int((~ok).sum())
            result["seconds"] = time.perf_counter() - t0
            out[names[fix]][f"g{component + 1}"] = result
            print(f"flux {flux_adu}, correction {fix}, shear on g{component + 1}: "
                  + ", ".join(f"{k} {v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]"
                              for k, v in result.items() if isinstance(v, tuple)))
    return out


def noise_free(galsim, psf, n_pairs, g_values):
    """m, c without noise or correction at several shears (the response's second order)."""
    out = {}
    for g_true in g_values:
        for component in (0, 1):
            g = (g_true, 0.0) if component == 0 else (0.0, g_true)
            stamps = tm.simulate_ring_pairs(galsim, n_pairs, g, seed=2000 + component,
                                            noise_sigma_adu=0.0)
            e, r, ok = tm.measure_ring_pairs(stamps, psf, noise_sigma_adu=None)
            result = tm.paired_bias(e[ok], r[ok], component, g=g_true)
            out[f"g{component + 1}={g_true}"] = result
            print(f"noise-free, g{component + 1} = {g_true}: m {result['m'][0]:+.6f}, c "
                  f"{result['c'][0]:+.1e}, m_cross {result['m_cross'][0]:+.1e}")
    return out


LEAKAGE_PSF_G1 = 0.05
"""Shear of the Moffat PSF of ``--psf-leakage`` on g1 (|e| about 0.1)."""


def psf_leakage(galsim, n_pairs, flux_adu):
    """m, c of ring pairs under the elongated PSF, per target PSF and sheared component."""
    profile = tm.moffat_psf(galsim).shear(g1=LEAKAGE_PSF_G1)
    psf = tm.psf_image(galsim, profile)
    out = {"psf": f"Moffat beta 3.5, FWHM 0.65 arcsec, sheared g1 = {LEAKAGE_PSF_G1}",
           "pairs": n_pairs, "flux_adu": flux_adu,
           "round_target_sigma_pix": metacal.round_target_sigma_pix(psf, tm.STEP)}
    for component in (0, 1):
        g = (tm.G_TRUE, 0.0) if component == 0 else (0.0, tm.G_TRUE)
        stamps = tm.simulate_ring_pairs(galsim, n_pairs, g, seed=3000 + component,
                                        flux_adu=flux_adu, psf_profile=profile)
        for target in metacal.TARGET_PSFS:
            e, r, ok = tm.measure_ring_pairs(stamps, psf, 1.0, target_psf=target)
            result = tm.paired_bias(e[ok], r[ok], component)
            result["pairs_dropped"] = int((~ok).sum())
            out.setdefault(target, {})[f"g{component + 1}"] = result
            print(f"target {target}, shear on g{component + 1}: "
                  + ", ".join(f"{k} {v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}]"
                              for k, v in result.items() if isinstance(v, tuple)))
    return out


def main():
    parser = benchlib.parser(__doc__, None, quick="smoke test: few stamps and pairs")
    parser.add_argument("--psf-leakage", action="store_true",
                        help="only the target PSFs under an elongated PSF")
    args = parser.parse_args()
    galsim = require("galsim", "metacal")
    if args.psf_leakage:
        n = 50 if args.quick else 1000
        benchlib.write_result(args.output or ("/tmp/bh_metacal_psf_leakage_quick.json"
                                              if args.quick else "metacal_psf_leakage.json"),
                              psf_leakage(galsim, n, (600.0, 2400.0)))
        return
    psf = tm.psf_image(galsim, tm.moffat_psf(galsim))
    n_fft, n_galsim, n_pairs, n_low = (64, 8, 50, 50) if args.quick else (1024, 64, 2000, 1000)
    flux, low_flux = (600.0, 2400.0), (150.0, 600.0)

    result = {"stamp_side_pix": tm.SIDE_PIX, "pixel_arcsec": tm.PIXEL_ARCSEC,
              "psf": "Moffat beta 3.5, FWHM 0.65 arcsec", "step": tm.STEP,
              "g_true": tm.G_TRUE, "default_method": metacal.METHODS[0]}
    result["speed"] = speed(galsim, psf, n_fft, n_galsim)
    for key in ("fft", "fft_float32", "galsim", "shapes_5_images"):
        s = result["speed"][key]
        ratio = f"; {s['cpu_rate_over_stage_rate']:.3f} x the stage's recorded rate" \
            if "cpu_rate_over_stage_rate" in s else ""
        print(f"{key}: {s['objects_per_s_cpu']:.1f} objects/s of CPU ({s['ms_per_object_cpu']:.2f}"
              f" ms per object; wall clock {s['ms_per_object_wall']:.2f} ms), {s['objects']} "
              f"objects, one thread{ratio}")
    result["bias"] = {
        "pairs": n_pairs, "flux_adu": flux, "snr_percentiles_0_5_50_95_100":
            snr_range(galsim, 200, flux),
        **bias(galsim, psf, n_pairs, flux, (True,))}
    result["bias_noise_free"] = {"pairs": n_low // 4, "flux_adu": flux,
                                 **noise_free(galsim, psf, n_low // 4, (0.005, 0.02, 0.04))}
    result["bias_low_snr"] = {
        "pairs": n_low, "flux_adu": low_flux, "snr_percentiles_0_5_50_95_100":
            snr_range(galsim, 200, low_flux),
        **bias(galsim, psf, n_low, low_flux, (True, False))}
    benchlib.write_result(args.output or ("/tmp/bh_metacal_quick.json" if args.quick
                                          else "metacal.json"), result)


if __name__ == "__main__":
    main()
