"""Shear bias (m, c) of a selection, measured with metacalibration, on arrays.

Shapes are the moments of each detection's five metacalibration images
(``metacal.metacal_images``: noshear, 1p, 1m, 2p, 2m), cut as the stage cuts stamps
(neighbours left in) and with the correlated-noise correction: adaptive moments
(``metacal.adaptive_moments``) or moments under a fixed Gaussian weight of FWHM
``WEIGHT_FWHM_ARCSEC`` centred on the detection (``metacal.weighted_moments``, metadetect's
``wmom``). A selection is
recomputed on each image (``Selection``): on the noshear image it is the cut, on the sheared
ones it gives the selection response ``R_sel`` (Sheldon & Huff 2017), available only for
quantities measured on those images (``BLEND_PROB_1P``... of the stage, the moments' size),
not for SExtractor's columns or the truth.

The bench shears a tile by ``+g`` and ``-g`` on one component (the *main* one; everything else
equal: galaxies, noise, PSF) and a second shear plane on the other (*cross*) component. With
``g_hat = <e> / (R_shear + R_sel)`` per image, ``m = (g_hat+ - g_hat-) / (2 g) - 1`` and
``c = (g_hat+ + g_hat-) / 2`` on the main component, ``c_cross`` the same sum on the cross
component (the second plane's shear leaked into the main plane's detections). Intervals
resample units (true galaxies) with replacement: ``unit_sums`` adds each unit's detections
up once, so a bootstrap replicate is a weighted sum.
"""

import dataclasses

import numpy as np

from ..metacal import (DEFAULT_STEP, METACAL_TYPES, adaptive_moments, metacal_images,
                       metacal_moments, reconvolution_dilation, weighted_moments)
from ..stamps import cut_stamps, nearest_pixel

__all__ = ["SHAPE_STAMP_PIX", "MIN_SIZE_RATIO", "MIN_S2N", "WEIGHT_FWHM_ARCSEC", "SUM_KEYS", "metacal_shapes",
           "psf_sigma_pix", "size_cut", "Selection", "unit_sums", "shear_bias",
           "bootstrap_weights"]

SHAPE_STAMP_PIX = 51
"""Side of the stamps whose metacalibration images are measured, pixels (the stage's)."""

MIN_SIZE_RATIO = {"adaptive": 1.5, "weighted": 1.2}
"""Per estimator, a shape enters when its size ``T = 2 sigma^2`` is at least this many times
the reconvolved PSF's (resolved objects: metacalibration catalogues cut ``T_gal / T_psf >=
0.5`` on the PSF-corrected size, metadetect's ``wmom`` ``T / T_psf > 1.2``); measured on each
image, so the cut has a selection response."""

MIN_S2N = {"adaptive": None, "weighted": 10.0}
"""Per estimator, the lowest S/N of a shape (metadetect's ``wmom_s2n > 10``), measured on each
image like the size; None: no S/N cut (adaptive moments give no S/N)."""

WEIGHT_FWHM_ARCSEC = 1.2
"""FWHM of the fixed Gaussian weight of the ``weighted`` estimator (metadetect's ``wmom``)."""

SUM_KEYS = ("n", "e_main", "e_cross", "n_r", "r_main", "r_cross",
            "n_mp", "e_mp", "n_mm", "e_mm", "n_cp", "e_cp", "n_cm", "e_cm")
"""Per-unit sums of ``unit_sums``: ``n`` objects selected on the noshear image and the sums of
their noshear ``e`` on the main and cross components; ``n_r`` those of them whose four sheared
shapes are finite and the sums of their shear response ``R``; ``n_mp,
e_mp`` the objects selected on the image sheared by ``+step`` along the main component and
the sum of their noshear main ``e`` (``mm``: ``-step``; ``cp, cm``: along the cross
component, cross ``e``)."""


def metacal_shapes(image, bad, rms_adu, x_pix, y_pix, psf_image, seed=0, step=DEFAULT_STEP,
                   side_pix=SHAPE_STAMP_PIX, chunk_rows=1024, noise_index=None,
                   estimator="adaptive", weight_sigma_pix=None, target_psf="dilate"):
    """Moments of the five metacalibration images of every detection.

    Parameters
    ----------
    image, bad : ndarray, shape (ny, nx)
        Background-subtracted tile (ADU) and its bad pixels (``pixels.tile_pixels``).
    rms_adu : float
        The tile's noise rms: fill noise, and the correlated-noise correction.
    x_pix, y_pix : array_like, shape (n,)
        0-based detection positions; the stamp is centred on the nearest pixel.
    psf_image : ndarray, shape (p, p)
        The tile's PSF as the pixels see it, unit sum, odd side.
    seed : int
        Seed of the fill and the correction noise (per row).
    step, side_pix, chunk_rows
        Shear step; stamp side (odd); rows per ``metacal_images`` call.
    noise_index : array_like of int, shape (n,), optional
        Each row's correction-noise index (``metacal_images``); default the row.
    estimator, weight_sigma_pix
        ``metacal.metacal_moments``'s; the ``weighted`` estimator's weight is centred on
        ``(x_pix, y_pix)`` (its offset from the stamp's centre pixel).
    target_psf : {"dilate", "gauss"}
        ``metacal.metacal_images``'.

    Returns
    -------
    dict of str to ndarray
        ``METACAL_TYPES`` name -> ``metacal.MOMENTS_DTYPE`` array (n,).
    """
    x_pix, y_pix = np.asarray(x_pix, float), np.asarray(y_pix, float)
    parts = []
    for start in range(0, len(x_pix), chunk_rows):
        rows = slice(start, start + chunk_rows)
        stamps, _, _ = cut_stamps(image, x_pix[rows], y_pix[rows], side_pix, 0, bad=bad,
                                  fill_sigma=rms_adu, seed=seed, first_index=start)
        index = None if noise_index is None else np.asarray(noise_index)[rows]
        # stamps are cut at the nearest pixel (0-based positions): the rest is the offset
        offset = np.stack([x_pix[rows] - nearest_pixel(x_pix[rows]),
                           y_pix[rows] - nearest_pixel(y_pix[rows])], axis=1)
        parts.append(metacal_moments(stamps, psf_image, step, rms_adu, seed,
                                     first_index=start, noise_index=index,
                                     estimator=estimator, weight_sigma_pix=weight_sigma_pix,
                                     centre_offset_pix=offset, target_psf=target_psf))
    if not parts:
        return {name: adaptive_moments(np.zeros((0, side_pix, side_pix)))
                for name in METACAL_TYPES}
    return {name: np.concatenate([p[name] for p in parts]) for name in METACAL_TYPES}


def psf_sigma_pix(psf_image, step=DEFAULT_STEP, estimator="adaptive", weight_sigma_pix=None,
                  target_psf="dilate"):
    """Sigma of the metacalibration images' PSF, pixels: ``adaptive``, the PSF's
    adaptive-moment sigma times ``metacal.reconvolution_dilation(step)`` (``target_psf``
    ``dilate``) or the round target's adaptive-moment sigma (``gauss``); ``weighted``,
    ``weighted_moments`` of the target PSF itself (the noshear image of a point source)."""
    psf = np.asarray(psf_image, float)
    if estimator == "weighted" or target_psf != "dilate":
        target = metacal_images(psf[None], psf, step, types=("noshear",),
                                target_psf=target_psf)["noshear"]
        if estimator == "weighted":
            return float(weighted_moments(target, weight_sigma_pix)["SIGMA_PIX"][0])
        return float(adaptive_moments(target)["SIGMA_PIX"][0])
    sigma = adaptive_moments(psf[None])["SIGMA_PIX"][0]
    return float(sigma * reconvolution_dilation(step))


def size_cut(moments, psf_sigma, min_ratio=MIN_SIZE_RATIO["adaptive"], min_s2n=None):
    """True where the moments succeeded, ``(sigma / psf_sigma)^2 >= min_ratio`` and, given
    ``min_s2n``, ``S2N >= min_s2n``."""
    e_ok = np.isfinite(moments["E"]).all(axis=1)
    with np.errstate(invalid="ignore"):
        keep = e_ok & (moments["SIGMA_PIX"] ** 2 >= min_ratio * psf_sigma ** 2)
        return keep if min_s2n is None else keep & (moments["S2N"] >= min_s2n)


@dataclasses.dataclass
class Selection:
    """A selection recomputed on each metacalibration image.

    ``by_type`` maps each of ``METACAL_TYPES`` to a boolean array (n,); a selection that can
    only be made once (SExtractor's columns, the truth) uses the same array for every type
    and has ``metacalibratable`` False: combined with a recomputed one (``&``), the ``R_sel``
    measured is that of the recomputed part only, and the cut's own response is missing.
    """

    name: str
    by_type: dict
    metacalibratable: bool

    @classmethod
    def fixed(cls, name, keep):
        """A selection made once, on the unsheared data."""
        keep = np.asarray(keep, bool)
        return cls(name, {t: keep for t in METACAL_TYPES}, False)

    def __and__(self, other):
        """Both selections: metacalibratable if both are."""
        return Selection(f"{self.name} & {other.name}",
                         {t: self.by_type[t] & other.by_type[t] for t in METACAL_TYPES},
                         self.metacalibratable and other.metacalibratable)


def unit_sums(units, n_units, shapes, selection, main):
    """Add up one image's detections per unit (``SUM_KEYS``).

    Parameters
    ----------
    units : ndarray of int, shape (n,)
        Each detection's unit, ``0 <= unit < n_units``; detections outside the measured
        sample carry ``-1`` and are left out.
    shapes : dict
        ``metacal_shapes`` of the detections.
    selection : Selection
    main : int
        The component (0: g1, 1: g2) that carries the main plane's shear; the other is cross.

    Returns
    -------
    dict of str to ndarray, shape (n_units,)
    """
    cross = 1 - main
    e = shapes["noshear"]["E"]
    step_types = {"mp": ("1p", "2p")[main], "mm": ("1m", "2m")[main],
                  "cp": ("1p", "2p")[cross], "cm": ("1m", "2m")[cross]}
    response = [(shapes[("1p", "2p")[i]]["E"][:, i] - shapes[("1m", "2m")[i]]["E"][:, i])
                for i in (0, 1)]
    units = np.asarray(units)
    inside = units >= 0
    e_ok = np.isfinite(e).all(axis=1)

    def add(keep, values=None):
        keep = keep & inside & e_ok
        w = None if values is None else np.where(keep, values, 0.0)[keep]
        return np.bincount(units[keep], weights=w, minlength=n_units).astype(float)

    sel = selection.by_type["noshear"]
    r_ok = np.isfinite(response[0]) & np.isfinite(response[1])
    # <e> over the selection itself (as R_sel's means are); R_shear over those of its objects
    # whose four sheared shapes exist
    out = {"n": add(sel), "e_main": add(sel, e[:, main]), "e_cross": add(sel, e[:, cross]),
           "n_r": add(sel & r_ok), "r_main": add(sel & r_ok, response[main]),
           "r_cross": add(sel & r_ok, response[cross])}
    for key, t in step_types.items():
        component = main if key[0] == "m" else cross
        out["n_" + key] = add(selection.by_type[t])
        out["e_" + key] = add(selection.by_type[t], e[:, component])
    return out


def _g_hat(s, step, with_selection):
    """(g_main, g_cross, R_shear_main, R_sel_main) of aggregated sums (arrays over replicas)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r_main = s["r_main"] / s["n_r"] / (2 * step)
        r_cross = s["r_cross"] / s["n_r"] / (2 * step)
        sel_main = (s["e_mp"] / s["n_mp"] - s["e_mm"] / s["n_mm"]) / (2 * step)
        sel_cross = (s["e_cp"] / s["n_cp"] - s["e_cm"] / s["n_cm"]) / (2 * step)
        if not with_selection:
            sel_main, sel_cross = np.zeros_like(sel_main), np.zeros_like(sel_cross)
        g_main = s["e_main"] / s["n"] / (r_main + sel_main)
        g_cross = s["e_cross"] / s["n"] / (r_cross + sel_cross)
    return g_main, g_cross, r_main, sel_main


def shear_bias(sums_plus, sums_minus, g, weights=None, step=DEFAULT_STEP,
               with_selection=True):
    """m and c of a selection from the unit sums of the ``+g`` and ``-g`` images.

    Parameters
    ----------
    sums_plus, sums_minus : dict
        ``unit_sums`` of the two images (the same units).
    g : float
        The main component's shear magnitude (> 0).
    weights : ndarray, shape (n_units,) or (b, n_units), optional
        Unit weights (``bootstrap_weights``); default 1 for every unit.
    with_selection : bool
        Add ``R_sel`` to the response (a metacalibratable selection).

    Returns
    -------
    dict
        ``m``, ``c``, ``c_cross``, ``r_shear``, ``r_sel`` (each the mean of the two images'
        main component), ``n`` (objects kept, both images), floats or arrays over the rows
        of ``weights``.
    """
    keys = sums_plus.keys()
    if weights is None:
        weights = np.ones(len(sums_plus["n"]))
    w = np.asarray(weights, float)
    agg = [{k: w @ s[k] for k in keys} for s in (sums_plus, sums_minus)]
    (gp, cp, rp, sp), (gm, cm, rm, sm) = (_g_hat(a, step, with_selection) for a in agg)
    return {"m": (gp - gm) / (2 * g) - 1.0, "c": (gp + gm) / 2, "c_cross": (cp + cm) / 2,
            "r_shear": (rp + rm) / 2, "r_sel": (sp + sm) / 2,
            "n": agg[0]["n"] + agg[1]["n"]}


def bootstrap_weights(n_units, n_boot, seed=0):
    """``(n_boot, n_units)`` counts of each unit in ``n_boot`` resamples with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    return np.stack([np.bincount(d, minlength=n_units) for d in draws]).astype(float)
