"""Catalogue cues: what a SExtractor catalogue says about blending for free.

Input: 0-based detection positions and catalogue columns (in memory). Output: per-detection
cues, the distance to the nearest other detection and the number of other detections inside
the stamp (written by the stage as ``BH_NEAREST_PIX`` and ``BH_NDET_STAMP``), the
feature matrix of the tile head and of the untuned catalogue-only classifier
(``catalogue_features``), and the wider one of the tuned catalogue-only baseline
(``baseline_features``). Pure arrays; no file is read here.
"""

import logging

import numpy as np

__all__ = ["CATALOGUE_COLUMNS", "FEATURE_NAMES", "nearest_detection_pix",
           "detections_in_stamp", "sextractor_features", "catalogue_features",
           "BASELINE_COLUMNS",
           "BASELINE_FEATURE_NAMES", "baseline_features"]

log = logging.getLogger(__name__)

CATALOGUE_COLUMNS = ("FLUX_RADIUS", "A_IMAGE", "B_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO",
                     "MAG_AUTO", "FLAGS", "CLASS_STAR")
"""SExtractor columns the catalogue features need (all in example_config/sextractor/bh.param)."""

FEATURE_NAMES = ("FLUX_RADIUS", "ELONGATION", "MAG_AUTO", "LOG10_SNR", "FLAGS_NEIGHBOURS",
                 "FLAGS_BLENDED", "CLASS_STAR", "LOG10_NEAREST_PIX", "NDET_STAMP")
"""Columns of ``catalogue_features``: ELONGATION is A_IMAGE / B_IMAGE, SNR is FLUX_AUTO /
FLUXERR_AUTO, FLAGS bits 1 (bright neighbours) and 2 (deblended)."""

FAR_PIX = 1000.0
"""Nearest-detection distance given to a lone detection, pixels."""


def nearest_detection_pix(x_pix, y_pix):
    """Distance from each detection to the nearest other one, pixels.

    Non-finite positions get NaN and are ignored as neighbours; a detection with no finite
    neighbour gets ``FAR_PIX``.
    """
    from scipy.spatial import cKDTree

    x, y = np.asarray(x_pix, float), np.asarray(y_pix, float)
    ok = np.isfinite(x) & np.isfinite(y)
    out = np.full(x.size, np.nan)
    if ok.sum() < 2:
        out[ok] = FAR_PIX
        return out
    tree = cKDTree(np.column_stack([x[ok], y[ok]]))
    dist, _ = tree.query(np.column_stack([x[ok], y[ok]]), k=2)
    out[ok] = dist[:, 1]
    return out


def detections_in_stamp(x_pix, y_pix, half_pix=25):
    """Number of other detections within ``|dx|, |dy| <= half_pix`` (the stamp); -1 where
    the position is not finite."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(x_pix, float), np.asarray(y_pix, float)
    ok = np.isfinite(x) & np.isfinite(y)
    out = np.full(x.size, -1, dtype=np.int64)
    if ok.any():
        points = np.column_stack([x[ok], y[ok]])
        tree = cKDTree(points)
        counts = tree.query_ball_point(points, r=half_pix, p=np.inf, return_length=True)
        out[ok] = np.asarray(counts) - 1
    return out


def sextractor_features(columns):
    """The SExtractor part of ``catalogue_features`` (its columns but the last two, the
    position cues), float32 ``(n, 7)``, missing values filled as there."""
    c = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        elong = c["A_IMAGE"] / c["B_IMAGE"]
        snr = np.log10(np.clip(c["FLUX_AUTO"] / c["FLUXERR_AUTO"], 1e-3, None))
    flags = np.nan_to_num(c["FLAGS"]).astype(np.int64)
    feats = np.column_stack([c["FLUX_RADIUS"], elong, c["MAG_AUTO"], snr, (flags & 1) > 0,
                             (flags & 2) > 0, c["CLASS_STAR"]])
    return _fill_median(feats.astype(np.float64)).astype(np.float32)


def catalogue_features(columns, x_pix, y_pix, half_pix=25, nearest_pix=None, ndet_stamp=None):
    """Return the catalogue feature matrix, shape (n, len(FEATURE_NAMES)), float32.

    Parameters
    ----------
    columns : dict of ndarray
        ``CATALOGUE_COLUMNS`` by name (NaN for SExtractor's missing values).
    x_pix, y_pix : ndarray
        0-based positions.
    half_pix : int
        Half side of the stamp for ``NDET_STAMP``.
    nearest_pix, ndet_stamp : ndarray, optional
        ``nearest_detection_pix(x_pix, y_pix)`` and ``detections_in_stamp(x_pix, y_pix,
        half_pix)``, if already computed.

    Missing values become the column's median (0 if all are missing), so every row scores.
    """
    if nearest_pix is None:
        nearest_pix = nearest_detection_pix(x_pix, y_pix)
    if ndet_stamp is None:
        ndet_stamp = detections_in_stamp(x_pix, y_pix, half_pix)
    nearest = np.log10(np.clip(nearest_pix, 0.1, None))
    position = _fill_median(np.column_stack([nearest, ndet_stamp]).astype(np.float64))
    return np.column_stack([sextractor_features(columns), position.astype(np.float32)])


def _fill_median(feats):
    """Replace the non-finite values of each column of a float64 matrix, in place, by the
    column's median (0 if no value is finite); return the matrix."""
    for k in range(feats.shape[1]):
        bad = ~np.isfinite(feats[:, k])
        if bad.any():
            good = feats[~bad, k]
            feats[bad, k] = np.median(good) if good.size else 0.0
    return feats


_DIRECT_COLUMNS = ("FLUX_RADIUS", "A_IMAGE", "B_IMAGE", "ELONGATION", "FLUX_AUTO",
                   "FLUXERR_AUTO", "MAG_AUTO", "CLASS_STAR", "FWHM_IMAGE", "ISOAREA_IMAGE",
                   "FLUX_MAX", "SNR_WIN", "MU_MAX", "X2_IMAGE", "Y2_IMAGE", "XY_IMAGE",
                   "X2WIN_IMAGE", "Y2WIN_IMAGE", "XYWIN_IMAGE", "KRON_RADIUS", "PETRO_RADIUS",
                   "FLUX_PETRO", "BACKGROUND")

_FLAG_BITS = {"FLAGS_NEIGHBOURS": 1, "FLAGS_BLENDED": 2, "FLAGS_SATURATED": 4,
              "FLAGS_TRUNCATED": 8, "FLAGS_APER_INCOMPLETE": 16, "FLAGS_ISO_INCOMPLETE": 32}

_CENTRES = {"PEAK": "{}PEAK_IMAGE", "ISO": "{}_IMAGE", "WIN": "{}WIN_IMAGE"}
_OFFSETS = (("PEAK", "ISO"), ("ISO", "WIN"), ("PEAK", "WIN"))


def _baseline_recipes():
    """(feature name, SExtractor columns it needs, function of the column dict)."""
    out = [(name, (name,), lambda c, name=name: c[name]) for name in _DIRECT_COLUMNS]

    def snr(c):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(np.clip(c["FLUX_AUTO"] / c["FLUXERR_AUTO"], 1e-3, None))

    out.append(("LOG10_SNR", ("FLUX_AUTO", "FLUXERR_AUTO"), snr))
    for name, bit in _FLAG_BITS.items():
        out.append((name, ("FLAGS",),
                    lambda c, bit=bit: (np.nan_to_num(c["FLAGS"]).astype(np.int64) & bit) > 0))
    for a, b in _OFFSETS:
        cols = tuple(_CENTRES[k].format(axis) for axis in "XY" for k in (a, b))
        xa, xb, ya, yb = cols
        out.append((f"{a}_{b}_DX_PIX", (xa, xb), lambda c, p=xa, q=xb: c[p] - c[q]))
        out.append((f"{a}_{b}_DY_PIX", (ya, yb), lambda c, p=ya, q=yb: c[p] - c[q]))
        out.append((f"{a}_{b}_OFFSET_PIX", cols,
                    lambda c, p=xa, q=xb, r=ya, s=yb: np.hypot(c[p] - c[q], c[r] - c[s])))
    return out


_BASELINE_RECIPES = _baseline_recipes()

BASELINE_COLUMNS = tuple(dict.fromkeys(col for _, cols, _ in _BASELINE_RECIPES
                                       for col in cols))
"""SExtractor columns of the tuned catalogue-only baseline (all in
example_config/sextractor/bh.param); each is optional in ``baseline_features``."""

BASELINE_FEATURE_NAMES = tuple(name for name, _, _ in _BASELINE_RECIPES) + (
    "LOG10_NEAREST_PIX", "NDET_STAMP")
"""Columns of ``baseline_features`` when every ``BASELINE_COLUMNS`` is given: the free
SExtractor columns as they are; LOG10_SNR, log10(FLUX_AUTO / FLUXERR_AUTO); FLAGS bits 1,
2, 4, 8, 16 and 32 (0 or 1); the offsets between the peak pixel (``XPEAK_IMAGE``), the
isophotal barycentre (``X_IMAGE``) and the windowed centroid (``XWIN_IMAGE``), in x
(``*_DX_PIX``, first minus second), y and length (``*_OFFSET_PIX``), pixels; and the
position cues, log10 of ``nearest_detection_pix`` and ``detections_in_stamp``."""


def baseline_features(columns, x_pix, y_pix, half_pix=25):
    """Return the feature matrix of the tuned catalogue-only baseline and its column names.

    Parameters
    ----------
    columns : dict of ndarray
        SExtractor columns by name (NaN for SExtractor's missing values), any subset of
        ``BASELINE_COLUMNS``; other keys are ignored.
    x_pix, y_pix : ndarray, shape (n,)
        0-based positions, for the position cues.
    half_pix : int
        Half side of the stamp for ``NDET_STAMP``. Default 25.

    Returns
    -------
    features : ndarray, float64, shape (n, len(names))
        Missing values become the column's median (0 if all are missing), so every row
        scores.
    names : tuple of str
        The ``BASELINE_FEATURE_NAMES`` whose columns are all in ``columns``, in that order;
        the position cues are always there.

    A feature with a column absent from ``columns`` is left out and a warning logged
    (catalogues SExtracted before bh.param gained the columns lack them).
    """
    missing = [col for col in BASELINE_COLUMNS if col not in columns]
    c = {k: np.asarray(columns[k], dtype=np.float64) for k in BASELINE_COLUMNS
         if k in columns}
    recipes = [r for r in _BASELINE_RECIPES if all(col in c for col in r[1])]
    if missing:
        dropped = [name for name, _, _ in _BASELINE_RECIPES if name not in
                   {r[0] for r in recipes}]
        log.warning("catalogue lacks %s: baseline features %s left out; SExtract with "
                    "example_config/sextractor/bh.param to get them", ", ".join(missing),
                    ", ".join(dropped))
    nearest = np.log10(np.clip(nearest_detection_pix(x_pix, y_pix), 0.1, None))
    values = [np.asarray(f(c), dtype=np.float64) for _, _, f in recipes]
    values += [nearest, detections_in_stamp(x_pix, y_pix, half_pix).astype(np.float64)]
    names = tuple(name for name, _, _ in recipes) + BASELINE_FEATURE_NAMES[-2:]
    return _fill_median(np.column_stack(values)), names
