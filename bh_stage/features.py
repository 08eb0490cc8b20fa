"""Step 3 of the stage: what the stage measures on each stamp, from pixels and positions only.

Input: the stage's padded stamps ``(n, side, side)`` in ADU, background-subtracted, the
detection at the centre pixel ``side // 2``, the tile's sky rms, and the 0-based positions of
all detections. Output: ``stamp_features``, float32 ``(n, len(FEATURE_NAMES))``, the
features a position-only tile head reads beside the pixels. Nothing comes from a catalogue
column but the positions, so the same features can be measured on any catalogue with x/y and
on any image of the object (the metacalibration images). A head that also reads SExtractor
columns (``compact_cnn_stamp_catalogue_v1``) gets ``cues.sextractor_features`` after them.

SEP runs on each stamp with SExtractor's detection settings of ``example_config`` (threshold
1.5 x the tile rms, 5 pixels, the 3x3 pyramidal filter, 32 deblending thresholds, contrast
0.005). The *central source* is the SEP source whose segment holds the centre pixel (else
the nearest within ``CENTRE_MATCH_PIX``). Its features: flux and size, the offsets between
its peak, isophotal barycentre and windowed centroid (a merged pair has its peak on the
brighter galaxy and its barycentre between the two), whether SEP split it, and the nearest
other SEP source. Pure arrays; no file is read here.
"""

import contextlib

import numpy as np

from . import cues

__all__ = ["FEATURE_NAMES", "CATALOGUE_FEATURE_NAMES", "UNION_FEATURE_NAMES", "CENTRE_MATCH_PIX",
           "position_cues", "stamp_features", "measure_stamps", "sep_pixel_stack"]

FEATURE_NAMES = (
    "FOUND", "LOG10_SNR", "LOG10_NPIX", "LOG10_A_PIX", "ELONGATION", "FLUX_RADIUS_PIX",
    "PEAK_OFFSET_PIX", "WIN_OFFSET_PIX", "CENTRE_OFFSET_PIX", "LOG10_PEAK_FRACTION",
    "MERGED", "NSRC_CENTRAL33", "NEXT_DIST_PIX", "NEXT_FLUX_RATIO", "LOG10_NEAREST_PIX",
    "NDET_STAMP")
"""Columns of ``stamp_features``. SNR is the central source's flux over ``rms * sqrt(npix)``;
offsets are distances between the peak pixel, the isophotal barycentre, the windowed
centroid and the stamp centre (the catalogue position); PEAK_FRACTION is peak / flux;
MERGED is SEP's ``OBJ_MERGED`` flag; NSRC_CENTRAL33 counts SEP sources in the central 33x33;
NEXT_* describe the nearest other SEP source (``FAR_PIX`` and 0 without one); the last two
are ``cues`` of the catalogue positions. A stamp without a central source has FOUND 0 and
neutral values (``_MISSING``)."""

CENTRE_MATCH_PIX = 3.0
"""A source whose segment misses the centre pixel is central if its barycentre is this close."""

FAR_PIX = 36.0
"""NEXT_DIST_PIX of a stamp with one SEP source, pixels."""

_THRESH_RMS, _MINAREA_PIX, _NTHRESH, _CONT = 1.5, 5, 32, 0.005
_KERNEL_3X3 = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64)

_MISSING = {"FOUND": 0.0, "LOG10_SNR": 0.0, "LOG10_NPIX": 0.0, "LOG10_A_PIX": 0.0,
            "ELONGATION": 1.0, "FLUX_RADIUS_PIX": 0.0, "PEAK_OFFSET_PIX": 0.0,
            "WIN_OFFSET_PIX": 0.0, "CENTRE_OFFSET_PIX": 0.0, "LOG10_PEAK_FRACTION": 0.0,
            "MERGED": 0.0, "NSRC_CENTRAL33": 0.0, "NEXT_DIST_PIX": FAR_PIX,
            "NEXT_FLUX_RATIO": 0.0}
"""Values of a stamp whose centre SEP found nothing at (all but the position cues)."""

CATALOGUE_FEATURE_NAMES = tuple(f"CAT_{name}" for name in cues.FEATURE_NAMES[:7])
"""The SExtractor features of ``cues.FEATURE_NAMES`` (all but its position cues, which are
``FEATURE_NAMES``' last two), prefixed, that a ``compact_cnn_stamp_catalogue_v1`` head also
reads."""

UNION_FEATURE_NAMES = FEATURE_NAMES + CATALOGUE_FEATURE_NAMES
"""Columns of ``stamp_features`` for a head that also reads SExtractor columns: the stamp's
features, then ``CATALOGUE_FEATURE_NAMES`` (``cues.sextractor_features``)."""


def _central(objects, segmap, c):
    """Index of the central source of one stamp, or -1."""
    label = int(segmap[c, c])
    if label > 0:
        return label - 1
    if len(objects) == 0:
        return -1
    dist = np.hypot(objects["x"] - c, objects["y"] - c)
    k = int(np.argmin(dist))
    return k if dist[k] <= CENTRE_MATCH_PIX else -1


def _one_stamp(data, rms_adu):
    """The pixel features (``FEATURE_NAMES`` but the last two) of one stamp, as a dict."""
    import sep

    c = data.shape[0] // 2
    objects, segmap = sep.extract(data, _THRESH_RMS, err=rms_adu, minarea=_MINAREA_PIX,
                                  filter_kernel=_KERNEL_3X3, filter_type="conv",
                                  deblend_nthresh=_NTHRESH, deblend_cont=_CONT,
                                  segmentation_map=True)
    k = _central(objects, segmap, c)
    if k < 0:
        return dict(_MISSING)
    o = objects[k]
    flux = max(float(o["flux"]), 1e-3 * rms_adu)
    a, b = max(float(o["a"]), 1e-3), max(float(o["b"]), 1e-3)
    radius, _ = sep.flux_radius(data, np.array([o["x"]]), np.array([o["y"]]),
                                np.array([max(6.0 * a, 3.0)]), 0.5, normflux=np.array([flux]),
                                subpix=5)
    r50 = float(np.clip(radius[0], 0.1, c))
    xwin, ywin, _ = sep.winpos(data, np.array([o["x"]]), np.array([o["y"]]),
                               np.array([2.0 * r50 / 2.35]))
    others = np.delete(np.arange(len(objects)), k)
    central33 = ((np.abs(objects["x"] - c) <= 16) & (np.abs(objects["y"] - c) <= 16)).sum()
    next_dist, next_ratio = FAR_PIX, 0.0
    if others.size:
        dist = np.hypot(objects["x"][others] - o["x"], objects["y"][others] - o["y"])
        j = int(np.argmin(dist))
        next_dist = float(min(dist[j], FAR_PIX))
        next_ratio = float(np.clip(objects["flux"][others][j] / flux, 0.0, 10.0))
    return {"FOUND": 1.0,
            "LOG10_SNR": np.log10(flux / (rms_adu * np.sqrt(max(int(o["npix"]), 1)))),
            "LOG10_NPIX": np.log10(max(int(o["npix"]), 1)),
            "LOG10_A_PIX": np.log10(a), "ELONGATION": a / b, "FLUX_RADIUS_PIX": r50,
            "PEAK_OFFSET_PIX": np.hypot(o["xpeak"] - o["x"], o["ypeak"] - o["y"]),
            "WIN_OFFSET_PIX": float(np.hypot(xwin[0] - o["x"], ywin[0] - o["y"])),
            "CENTRE_OFFSET_PIX": np.hypot(o["x"] - c, o["y"] - c),
            "LOG10_PEAK_FRACTION": np.log10(max(float(o["peak"]), 1e-3 * rms_adu) / flux),
            "MERGED": float((int(o["flag"]) & sep.OBJ_MERGED) != 0),
            "NSRC_CENTRAL33": float(central33), "NEXT_DIST_PIX": next_dist,
            "NEXT_FLUX_RATIO": next_ratio}


def measure_stamps(stamps, rms_adu):
    """The pixel features of ``stamp_features`` (all but the position cues), float32
    ``(n, len(FEATURE_NAMES) - 2)``.

    Parameters
    ----------
    stamps : ndarray, shape (n, side, side)
        Background-subtracted stamps in ADU, odd side, the detection at the centre pixel.
    rms_adu : float
        Sky rms of the stamps, ADU (the tile's; on metacalibration images, theirs): the SEP
        threshold is 1.5 times it, the same for every stamp.

    A stamp where SEP fails (it raises a bare ``Exception`` on C-level errors) gets the
    values of a stamp without a central source.
    """
    names = FEATURE_NAMES[:-2]
    stamps = np.asarray(stamps)
    out = np.zeros((len(stamps), len(names)), dtype=np.float32)
    with sep_pixel_stack(stamps.shape[-2] * stamps.shape[-1]):
        for i, stamp in enumerate(stamps):
            data = np.ascontiguousarray(stamp, dtype=np.float64)
            try:
                values = _one_stamp(data, float(rms_adu))
            except Exception:  # SEP's bare Exception: one stamp's failure is not the run's
                values = _MISSING
            out[i] = [values[name] for name in names]
    return out


def position_cues(x_pix, y_pix, half_pix=25, nearest_pix=None, ndet_stamp=None):
    """The position cues of ``FEATURE_NAMES`` (``LOG10_NEAREST_PIX``, ``NDET_STAMP``) of every
    detection, from the 0-based positions of all of them: float32 ``(n, 2)``.

    ``nearest_pix`` and ``ndet_stamp``, if given, are ``cues.nearest_detection_pix(x_pix,
    y_pix)`` and ``cues.detections_in_stamp(x_pix, y_pix, half_pix)``, already computed (the
    stage writes them as columns too)."""
    if nearest_pix is None:
        nearest_pix = cues.nearest_detection_pix(x_pix, y_pix)
    if ndet_stamp is None:
        ndet_stamp = cues.detections_in_stamp(x_pix, y_pix, half_pix)
    nearest = np.log10(np.clip(np.nan_to_num(nearest_pix, nan=cues.FAR_PIX), 0.1, None))
    ndet = np.maximum(ndet_stamp, 0)
    return np.column_stack([nearest, ndet]).astype(np.float32)


def stamp_features(pixel_features, position_features):
    """``FEATURE_NAMES`` of some detections: their ``measure_stamps`` pixel features beside
    their rows of ``position_cues``, float32 ``(n, len(FEATURE_NAMES))``; with
    ``cues.sextractor_features`` after the position cues, ``UNION_FEATURE_NAMES``."""
    return np.column_stack([pixel_features, position_features]).astype(np.float32)


@contextlib.contextmanager
def sep_pixel_stack(n_pixels):
    """Set SEP's pixel stack (``sep.set_extract_pixstack``) to twice ``n_pixels``, then
    restore it.

    The stack holds the above-threshold pixels of the objects being extracted, at most every
    pixel of the stamp, and SEP overflows only when it is full, so twice the stamp cannot
    overflow. SEP's default stack (300,000 pixels) is initialised on every ``sep.extract``
    call: on the 18,641 65x65 stamps of a 10k tile ``classify_stamps`` took 14.1 s with it
    and 4.3 s with this one, same sources (sep 1.4.1, ``bench/bench_sep.py``).
    """
    import sep

    previous = sep.get_extract_pixstack()
    sep.set_extract_pixstack(2 * n_pixels)
    try:
        yield
    finally:
        sep.set_extract_pixstack(previous)
