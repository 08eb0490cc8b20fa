"""Neighbour bench: metacalibration's bias on a galaxy whose neighbour has another shear.

Metacalibration shears the whole stamp, so it assumes a neighbour in the stamp has the
object's shear. A neighbour at another redshift has another one. Noise-free ring pairs
(``bh_stage.study.ringtest``: exponential galaxies, Moffat PSF 0.65 arcsec, 0.187 arcsec/px,
51x51) with one neighbour each, a second exponential of 0.3, 1 or 3 times the main
galaxy's flux, its half-light radius and intrinsic shape drawn as the main one's, at
``separation_pix`` from it in a random direction (the twin of a ring pair rotates the whole
scene by 90 degrees). The main galaxy is sheared by +-0.02 on g1 (then on g2); the neighbour:
- ``same``: the same shear, profile and offset (one plane; metacal should be unbiased);
- ``other``: +0.02 on the other component, its offset from the main galaxy sheared by it
  too (``simulate.lensed_positions``' rule, the shear bench's second plane);
Each also with the neighbour masked (``masked``): the pixels nearer the neighbour's centre
than the main galaxy's set to the stamps' token noise before metacalibration, a crude
stand-in for masking a neighbour's segmentation. The ``weighted`` moments are centred on the
main galaxy's true centre (a detection's centroid would also move with the neighbour: not
modelled); ``adaptive`` moments find their own centre, and with a bright neighbour they can
drift onto the pair or fail (fewer pairs kept). m and c_cross of ``g = <R>^-1 <e>`` as in
``ringtest.paired_bias`` (95 % intervals over ring pairs), per estimator: ``weighted`` (the
shear bench's default, Gaussian weight of FWHM 1.2 arcsec) and ``adaptive``. The noise is a
token 1e-6 of the flux, so what is left is the neighbour's effect.

    python bench/bench_neighbour_shear.py          # about 12 min on one core
    python bench/bench_neighbour_shear.py --quick  # smoke test, under a minute

Writes ``bench/results/neighbour_shear.json`` (``--quick``: ``/tmp/bh_neighbour_quick.json``).
"""

import time

import numpy as np

from bh_stage.extras import require
from bh_stage.metacal import shear_matrix
from bh_stage.psf import GAUSSIAN_FWHM_PER_SIGMA
from bh_stage.study import ringtest as tm
from bh_stage.study.shear import WEIGHT_FWHM_ARCSEC

import benchlib

SEPARATIONS_PIX = (4, 6, 8, 10, 12, 16, 20)
FLUX_RATIOS = (0.3, 1.0, 3.0)
PLANES = ("same", "other")
FLUX_ADU = 1000.0
NOISE_ADU = 1e-3
"""Noise of the stamps and of the correlated-noise correction: 1e-6 of the flux (the estimator
needs a finite noise; nothing of it is left in m)."""


def parse_args(argv=None):
    p = benchlib.parser(__doc__,
                        quick="smoke test: 20 pairs, two separations")
    p.add_argument("--pairs", type=int, default=300, help="ring pairs per setting")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    args.separations = SEPARATIONS_PIX
    if args.quick:
        args.pairs, args.separations = 20, (6, 12)
        args.output = args.output or "/tmp/bh_neighbour_quick.json"
    args.output = args.output or "neighbour_shear.json"
    return args


def neighbour_stamps(galsim, n_pairs, separation_pix, flux_ratio, plane, component, g, seed):
    """Ring-pair stamps (n, 2 members, 2 signs, 51, 51) of a main galaxy and one neighbour,
    without noise; the main galaxy's offset from the stamp's centre pixel (n, 2) and the
    neighbour's from the main galaxy (n, 2, 2, 2), pixels (x, y)."""
    rng = np.random.default_rng([seed, int(separation_pix * 10), int(flux_ratio * 10)])
    psf = tm.moffat_psf(galsim)
    hlr, g_int = rng.uniform(0.3, 0.6, (2, n_pairs)), np.minimum(
        np.abs(rng.normal(0.0, 0.25, (2, n_pairs))), 0.7)
    angle, direction = rng.uniform(0.0, np.pi, (2, n_pairs)), rng.uniform(0, 2 * np.pi, n_pairs)
    offset = rng.uniform(-0.5, 0.5, (n_pairs, 2))
    other = np.zeros(2)
    other[1 - component] = g
    out = np.empty((n_pairs, 2, 2, tm.SIDE_PIX, tm.SIDE_PIX))
    neighbour_pix = np.empty((n_pairs, 2, 2, 2))
    for i in range(n_pairs):
        for member in range(2):
            turn = member * np.pi / 2  # the twin: the whole scene turned by 90 degrees
            main, neighbour = (galsim.Exponential(half_light_radius=hlr[k, i],
                                                  flux=FLUX_ADU * (1.0, flux_ratio)[k])
                               .shear(g=g_int[k, i], beta=(angle[k, i] + turn) * galsim.radians)
                               for k in (0, 1))
            sep = separation_pix * np.array([np.cos(direction[i] + turn),
                                             np.sin(direction[i] + turn)])
            for s, sign in enumerate((1, -1)):
                g_main = np.zeros(2)
                g_main[component] = sign * g
                g_nb = {"same": g_main, "other": other}[plane]
                neighbour_pix[i, member, s] = shear_matrix(*g_nb) @ sep
                where = neighbour_pix[i, member, s] * tm.PIXEL_ARCSEC
                scene = (main.shear(g1=g_main[0], g2=g_main[1])
                         + neighbour.shear(g1=g_nb[0], g2=g_nb[1]).shift(*where))
                out[i, member, s] = tm.draw(galsim, galsim.Convolve(scene, psf),
                                            offset=offset[i])
    return out, offset, neighbour_pix


def mask_neighbour(stamps, offset, neighbour_pix):
    """Zero the pixels nearer the neighbour's centre than the main galaxy's (a copy)."""
    centre = tm.SIDE_PIX // 2
    y, x = np.mgrid[:tm.SIDE_PIX, :tm.SIDE_PIX] - centre  # from the centre pixel, 0-based
    main = offset[:, None, None, :, None, None]  # (n, 1, 1, 2, 1, 1)
    nb = main + neighbour_pix[..., None, None]  # (n, 2, 2, 2, 1, 1)
    nearer = ((x - nb[..., 0, :, :]) ** 2 + (y - nb[..., 1, :, :]) ** 2
              < (x - main[..., 0, :, :]) ** 2 + (y - main[..., 1, :, :]) ** 2)
    return np.where(nearer, 0.0, stamps)


def main(argv=None):
    args = parse_args(argv)
    galsim = require("galsim", "bench_neighbour_shear")
    psf = tm.psf_image(galsim, tm.moffat_psf(galsim))
    weight_sigma_pix = WEIGHT_FWHM_ARCSEC / tm.PIXEL_ARCSEC / GAUSSIAN_FWHM_PER_SIGMA
    t0 = time.perf_counter()
    rows = []
    for plane in PLANES:
        for ratio in FLUX_RATIOS:
            for sep in args.separations:
                for component in (0, 1):
                    stamps, offset, nb = neighbour_stamps(galsim, args.pairs, sep, ratio,
                                                          plane, component, tm.G_TRUE,
                                                          args.seed)
                    noise = np.random.default_rng([args.seed, 7]).normal(0.0, NOISE_ADU,
                                                                         stamps.shape[-2:])
                    for masked in (False, True):
                        image = (mask_neighbour(stamps, offset, nb) if masked else stamps)
                        for estimator in ("weighted", "adaptive"):
                            e, r, ok = tm.measure_ring_pairs(
                                image + noise, psf, NOISE_ADU, seed=5, estimator=estimator,
                                weight_sigma_pix=weight_sigma_pix, offsets_pix=offset)
                            b = tm.paired_bias(e[ok], r[ok], component, n_boot=500)
                            rows.append({"plane": plane, "masked": masked, "flux_ratio": ratio,
                                         "separation_pix": sep, "component": component,
                                         "estimator": estimator, "n_pairs": int(ok.sum()),
                                         "m": b["m"][0], "m_ci95": list(b["m"][1:]),
                                         "c_cross": b["c_cross"][0],
                                         "c_cross_ci95": list(b["c_cross"][1:])})
                            print(f"{plane:5s} {'masked' if masked else 'as is':6s} ratio "
                                  f"{ratio:.1f} sep {sep:2d} px g{component + 1} "
                                  f"{estimator:8s} m {b['m'][0]:+.4f} [{b['m'][1]:+.4f}, "
                                  f"{b['m'][2]:+.4f}]  c_cross {b['c_cross'][0]:+.5f}  "
                                  f"({int(ok.sum())} pairs)", flush=True)
    benchlib.write_result(args.output, {
        "settings": {"pairs": args.pairs, "seed": args.seed, "g": tm.G_TRUE,
                     "flux_adu": FLUX_ADU, "noise_adu": NOISE_ADU,
                     "weight_fwhm_arcsec": WEIGHT_FWHM_ARCSEC,
                     "separations_pix": list(args.separations), "flux_ratios": FLUX_RATIOS},
        "rows": rows, "seconds": time.perf_counter() - t0})
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
