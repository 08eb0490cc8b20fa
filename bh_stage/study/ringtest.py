"""Ring-pair simulations that validate metacalibration (tests/test_metacal.py and
bench/bench_metacal.py): exponential galaxies and their 90-degree-rotated twins, sheared by
+g and -g with the same noise, their metacal shapes and the paired (m, c) estimator."""

import numpy as np

from ..metacal import SHEAR_TYPES, metacal_moments, shear_response

__all__ = ["PIXEL_ARCSEC", "SIDE_PIX", "STEP", "G_TRUE", "moffat_psf", "psf_image", "draw",
           "simulate_ring_pairs", "measure_ring_pairs", "paired_bias"]

PIXEL_ARCSEC = 0.187
SIDE_PIX = 51
STEP = 0.01


def moffat_psf(galsim):
    """A 0.65 arcsec FWHM Moffat PSF (beta 3.5), the CFIS-like seeing of the stage."""
    return galsim.Moffat(beta=3.5, fwhm=0.65)


def psf_image(galsim, profile, side=SIDE_PIX, scale=PIXEL_ARCSEC):
    """The PSF as the pixels see it (pixel response included), normalised to sum 1."""
    image = profile.drawImage(nx=side, ny=side, scale=scale).array.astype(np.float64)
    return image / image.sum()


def draw(galsim, profile, side=SIDE_PIX, scale=PIXEL_ARCSEC, **kwargs):
    """A profile drawn with the pixel response, float64."""
    return profile.drawImage(nx=side, ny=side, scale=scale, **kwargs).array.astype(np.float64)


G_TRUE = 0.02
"""The applied shear, on g1 then on g2."""


def simulate_ring_pairs(galsim, n_pairs, g, seed, flux_adu=(600.0, 2400.0),
                        noise_sigma_adu=1.0, with_offsets=False, psf_profile=None):
    """Stamps of ring pairs sheared by +g and by -g with the same noise.

    Pair ``i``: an exponential galaxy (half-light radius uniform in 0.3-0.6 arcsec, flux
    uniform in ``flux_adu``, intrinsic |g| half-normal of sigma 0.25 capped at 0.7, random
    position angle, random sub-pixel offset) and the same galaxy rotated by 90 degrees;
    each is sheared by ``+g`` and by ``-g``, convolved with the PSF (``psf_profile``, a
    GalSim profile; default ``moffat_psf``), drawn at 0.187
    arcsec per pixel on 51x51, and gets white noise of ``noise_sigma_adu`` drawn from
    ``default_rng([seed, i, member])``, the same for both signs.

    Returns
    -------
    ndarray, shape (n_pairs, 2 members, 2 signs (+g, -g), 51, 51)
        The stamps; with ``with_offsets`` also each pair's ``(dx, dy)`` (n_pairs, 2), pixels,
        of the galaxies' centre from the stamp's centre pixel.
    """
    rng = np.random.default_rng(seed)
    psf = moffat_psf(galsim) if psf_profile is None else psf_profile
    hlr_arcsec = rng.uniform(0.3, 0.6, n_pairs)
    g_int = np.minimum(np.abs(rng.normal(0.0, 0.25, n_pairs)), 0.7)
    angle = rng.uniform(0.0, np.pi, n_pairs)
    offset = rng.uniform(-0.5, 0.5, (n_pairs, 2))
    flux = rng.uniform(*flux_adu, n_pairs)
    out = np.empty((n_pairs, 2, 2, SIDE_PIX, SIDE_PIX))
    for i in range(n_pairs):
        for member in range(2):
            galaxy = galsim.Exponential(half_light_radius=hlr_arcsec[i], flux=flux[i]).shear(
                g=g_int[i], beta=(angle[i] + member * np.pi / 2) * galsim.radians)
            noise = np.random.default_rng([seed, i, member]).normal(
                0.0, noise_sigma_adu, (SIDE_PIX, SIDE_PIX))
            for sign_index, sign in enumerate((1, -1)):
                sheared = galaxy.shear(g1=sign * g[0], g2=sign * g[1])
                out[i, member, sign_index] = draw(galsim, galsim.Convolve(sheared, psf),
                                                  offset=offset[i]) + noise
    return (out, offset) if with_offsets else out


def measure_ring_pairs(stamps, psf, noise_sigma_adu=1.0, seed=5, method="fft",
                       estimator="adaptive", weight_sigma_pix=None, offsets_pix=None,
                       target_psf="dilate"):
    """Metacal shapes of ``simulate_ring_pairs`` stamps: per pair, member and sign the
    noshear ``e`` (n, 2, 2, 2) and ``R`` (n, 2, 2, 2, 2), and ``ok`` (n,), false where any of
    the pair's 20 measurements failed. The correction noise (``seed``) of a galaxy is the
    same for both signs (same ``first_index``). ``estimator``, ``weight_sigma_pix``:
    ``metacal_moments``'s; ``offsets_pix`` (n, 2), each pair's galaxy offset from the stamp's
    centre pixel, centres the weight on the galaxy (default: on the centre pixel);
    ``target_psf``: ``metacal_images``'."""
    n = len(stamps)
    e = np.empty((n, 2, 2, 2))
    r = np.empty((n, 2, 2, 2, 2))
    ok = np.ones(n, bool)
    centres = None if offsets_pix is None else np.repeat(np.asarray(offsets_pix), 2, axis=0)
    for sign in range(2):
        moments = metacal_moments(stamps[:, :, sign].reshape(-1, SIDE_PIX, SIDE_PIX), psf,
                                  STEP, noise_sigma_adu=noise_sigma_adu, seed=seed,
                                  method=method, estimator=estimator,
                                  weight_sigma_pix=weight_sigma_pix, centre_offset_pix=centres,
                                  target_psf=target_psf)
        e[:, :, sign] = moments["noshear"]["E"].reshape(n, 2, 2)
        r[:, :, sign] = shear_response(*(moments[t]["E"] for t in SHEAR_TYPES),
                                       step=STEP).per_object.reshape(n, 2, 2, 2)
        for m in moments.values():
            ok &= (m["FLAGS"] == 0).reshape(n, 2).all(axis=1)
    return e, r, ok


def paired_bias(e, r, component, g=G_TRUE, n_boot=1000, seed=0):
    """Multiplicative and additive bias of the calibrated estimator, with bootstrap intervals.

    For each sign, ``g_hat = <R>^-1 <e>`` (means over both members of every pair); with the
    shear ``+-g`` on ``component`` (0: g1, 1: g2), ``m = (g_hat+ - g_hat-) / (2 g) - 1`` and
    ``c = (g_hat+ + g_hat-) / 2`` on that component (the noise, identical for both signs,
    cancels in ``m``; the ring pairs cancel the intrinsic shapes in ``c``), and the cross
    component ``c_cross = (g_hat+ + g_hat-) / 2`` and ``m_cross = (g_hat+ - g_hat-) / (2 g)``
    on the other one. The 95 % intervals are percentiles of ``n_boot`` resamplings of the
    pairs.

    Returns
    -------
    dict
        ``m``, ``c``, ``m_cross``, ``c_cross``: each ``(value, low, high)``; ``n_pairs``.
    """
    e_pair, r_pair = e.sum(axis=1), r.sum(axis=1)  # (n, 2 signs, ...)

    def estimate(index):
        """Biases from the pairs ``index`` (..., n): arrays of shape index.shape[:-1]."""
        g_hat = np.linalg.solve(r_pair[index].sum(axis=-4),
                                e_pair[index].sum(axis=-3)[..., None])[..., 0]
        plus, minus = g_hat[..., 0, :], g_hat[..., 1, :]
        half_diff, mean = (plus - minus) / (2 * g), (plus + minus) / 2
        other = 1 - component
        return {"m": half_diff[..., component] - 1, "c": mean[..., component],
                "m_cross": half_diff[..., other], "c_cross": mean[..., other]}

    n = len(e)
    value = estimate(np.arange(n))
    boots = estimate(np.random.default_rng(seed).integers(0, n, (n_boot, n)))
    out = {k: (float(value[k]), *map(float, np.percentile(boots[k], [2.5, 97.5])))
           for k in value}
    out["n_pairs"] = n
    return out
