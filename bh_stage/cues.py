"""Catalogue cues: what a SExtractor catalogue says about blending for free.

Input: 0-based detection positions and catalogue columns (in memory). Output: per-detection
cues, the distance to the nearest other detection and the number of other detections inside
the stamp (written by the stage as ``BH_NEAREST_PIX`` and ``BH_NDET_STAMP``), and the
feature matrix of the catalogue-only classifier and of the tile head
(``catalogue_features``). Pure arrays; no file is read here.
"""

import numpy as np

__all__ = ["CATALOGUE_COLUMNS", "FEATURE_NAMES", "nearest_detection_pix",
           "detections_in_stamp", "catalogue_features"]

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


def catalogue_features(columns, x_pix, y_pix, half_pix=25):
    """Return the catalogue feature matrix, shape (n, len(FEATURE_NAMES)), float32.

    Parameters
    ----------
    columns : dict of ndarray
        ``CATALOGUE_COLUMNS`` by name (NaN for SExtractor's missing values).
    x_pix, y_pix : ndarray
        0-based positions.
    half_pix : int
        Half side of the stamp for ``NDET_STAMP``.

    Missing values become the column's median (0 if all are missing), so every row scores.
    """
    c = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        elong = c["A_IMAGE"] / c["B_IMAGE"]
        snr = np.log10(np.clip(c["FLUX_AUTO"] / c["FLUXERR_AUTO"], 1e-3, None))
    flags = np.nan_to_num(c["FLAGS"]).astype(np.int64)
    nearest = np.log10(np.clip(nearest_detection_pix(x_pix, y_pix), 0.1, None))
    feats = np.column_stack([
        c["FLUX_RADIUS"], elong, c["MAG_AUTO"], snr, (flags & 1) > 0, (flags & 2) > 0,
        c["CLASS_STAR"], nearest, detections_in_stamp(x_pix, y_pix, half_pix)])
    feats = feats.astype(np.float64)
    for k in range(feats.shape[1]):
        bad = ~np.isfinite(feats[:, k])
        if bad.any():
            good = feats[~bad, k]
            feats[bad, k] = np.median(good) if good.size else 0.0
    return feats.astype(np.float32)
