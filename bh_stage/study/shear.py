"""Shear measurement on stamps and the shear bias (m, c) of a selection, on arrays.

Shapes: GalSim's HSM re-Gaussianisation (``galsim.hsm.EstimateShear``, REGAUSS; Hirata &
Seljak 2003, Mandelbaum et al. 2005), PSF-corrected distortions ``e = (a^2 - b^2) /
(a^2 + b^2)``. HSM is maintained inside GalSim, already a dependency, and is what HSC used;
the bench needs a standard, reproducible estimator, not the best one. A shear estimate is
``e / R`` with the responsivity ``R = 2 (1 - e_rms^2)`` (Bernstein & Jarvis 2002),
``e_rms^2`` the per-component variance of the sample's distortions.

Bias from a pair of images sheared by ``+g`` and ``-g`` with everything else equal (same
galaxies, PSF and noise): with ``g_hat = e / R``, ``m = (<g_hat+> - <g_hat->) / (2 g) - 1``
and ``c = (<g_hat+> + <g_hat->) / 2``, each mean over that image's selection. With one
common selection the shape noise cancels object by object (a paired difference).
"""

import numpy as np

from ..extras import require

__all__ = ["MAX_DISTORTION", "MIN_RESOLUTION", "SHAPE_DTYPE", "hsm_shapes", "responsivity",
           "shear_bias"]

MAX_DISTORTION = 2.0
"""A shape with ``|e|`` above this is not valid (REGAUSS can exceed 1 on noisy objects)."""
MIN_RESOLUTION = 1.0 / 3.0
"""A shape is valid when its resolution factor ``R2 = 1 - T_psf / T_gal`` reaches this
(the HSC and SDSS cut); it removes stars and unresolved objects."""

SHAPE_DTYPE = np.dtype([("E1", "f8"), ("E2", "f8"), ("RESOLUTION", "f8"), ("SIGMA_PIX", "f8"),
                        ("VALID", "?")])
"""Per stamp: REGAUSS distortions, resolution factor, the galaxy's adaptive-moment size
(pixels) and whether the shape is valid (HSM succeeded, ``|e| <= MAX_DISTORTION``,
``RESOLUTION >= MIN_RESOLUTION``)."""


def hsm_shapes(stamps, psf, sky_var_adu2, dx_pix=None, dy_pix=None):
    """Measure PSF-corrected REGAUSS distortions of stamps.

    Parameters
    ----------
    stamps : ndarray, shape (n, s, s)
        Background-subtracted stamps, ADU, odd side; neighbours left in.
    psf : ndarray, shape (p, p)
        The PSF as the pixels see it (pixel response included), any normalisation.
    sky_var_adu2 : float
        Noise variance per pixel, ADU^2.
    dx_pix, dy_pix : array_like, shape (n,), optional
        Offset of each detection from its stamp's centre pixel ``s // 2`` (the first guess of
        the centroid); default 0.

    Returns
    -------
    ndarray, dtype ``SHAPE_DTYPE``, shape (n,)
        NaN shapes where HSM fails.
    """
    galsim = require("galsim", "study")

    stamps = np.asarray(stamps, dtype=np.float64)
    n, side = len(stamps), stamps.shape[-1]
    dx = np.zeros(n) if dx_pix is None else np.asarray(dx_pix, dtype=np.float64)
    dy = np.zeros(n) if dy_pix is None else np.asarray(dy_pix, dtype=np.float64)
    psf_img = galsim.Image(np.asarray(psf, dtype=np.float64))
    out = np.zeros(n, dtype=SHAPE_DTYPE)
    for name in ("E1", "E2", "RESOLUTION", "SIGMA_PIX"):
        out[name] = np.nan
    centre = side // 2 + 1  # GalSim images are 1-based: numpy pixel side // 2 is side // 2 + 1
    for k in range(n):
        res = galsim.hsm.EstimateShear(
            galsim.Image(stamps[k]), psf_img, sky_var=float(sky_var_adu2),
            shear_est="REGAUSS", guess_centroid=galsim.PositionD(centre + dx[k],
                                                                 centre + dy[k]),
            strict=False)
        if res.correction_status != 0 or res.error_message:
            continue
        out[k] = (res.corrected_e1, res.corrected_e2, res.resolution_factor,
                  res.moments_sigma, False)
    e = np.hypot(out["E1"], out["E2"])
    out["VALID"] = (np.isfinite(e) & (e <= MAX_DISTORTION)
                    & (out["RESOLUTION"] >= MIN_RESOLUTION))
    return out


def responsivity(e1, e2):
    """Return ``R = 2 (1 - e_rms^2)``, ``e_rms^2 = <e1^2 + e2^2> / 2`` over the given shapes."""
    return 2.0 * (1.0 - 0.5 * float(np.mean(np.square(e1) + np.square(e2))))


def shear_bias(e_plus, e_minus, keep_plus, keep_minus, g, resp):
    """Multiplicative and additive shear bias of one component from a +g / -g image pair.

    Parameters
    ----------
    e_plus, e_minus : ndarray, shape (n,)
        Distortion component of each object on the image sheared by ``+g`` and by ``-g``.
    keep_plus, keep_minus : ndarray of bool, shape (n,)
        The selection made on each image; pass the same mask twice for a common selection.
    g : float
        Applied reduced shear of this component, > 0.
    resp : float
        Responsivity ``R``; the shear estimate is ``e / R``.

    Returns
    -------
    m, c : float
        NaN when a selection is empty.
    """
    if not (np.any(keep_plus) and np.any(keep_minus)):
        return float("nan"), float("nan")
    mean_plus = float(np.mean(e_plus[keep_plus])) / resp
    mean_minus = float(np.mean(e_minus[keep_minus])) / resp
    return (mean_plus - mean_minus) / (2.0 * g) - 1.0, 0.5 * (mean_plus + mean_minus)
