"""Tile-level truth: what each SExtractor detection of a simulated tile really holds.

Inputs, all in memory: the segmentation map (each pixel the NUMBER of its detection, 0 for
sky), the detections' NUMBER, the tile's truth table and every true object's noise-free image
(``simulate_tile(..., keep_models=True)``). Output: one truth row per detection
(``TRUTH_CLASS_DTYPE``).

The flux ``F[j, s]`` of true object ``j`` inside segment ``s`` decides everything. The *main*
object of detection ``s`` is the one with the most flux in it. A second object is *merged*
into ``s`` when ``F[j, s] >= min_flux_ratio * F[main, s]`` and ``s`` is the detection holding
most of ``j``'s flux (``j`` has no detection of its own): the detection is then an
**unrecognised blend**, two objects reported as one, the case the catalogue cannot see.
The neighbourhood classes use true positions and the *neighbours* of the main object, other
objects with at least ``min_flux_ratio`` of its total flux: **close companion** (a neighbour
within ``close_max_pix``), **paper blend** (a neighbour inside the 51x51 stamp, the paper's
definition), **isolated** (no neighbour within ``isolated_min_pix``). A detection with no
object flux in its segment is *spurious* (``MAIN_ID`` -1, ``GROUP`` 0, every class 0).

Positions are 0-based pixels (numpy), as in the truth table's ``X_PIX0, Y_PIX0``.
"""

import zlib

import numpy as np

__all__ = ["TRUTH_CLASS_DTYPE", "TRUTH_CLASSES", "SPURIOUS_UNIT", "UNIT_STRIDE", "DRAWN_KINDS",
           "DRAWN_UNIT_BASE", "object_units",
           "segment_fluxes", "classify_detections"]

TRUTH_CLASS_DTYPE = np.dtype([
    ("NUMBER", "i8"), ("MAIN_ID", "i8"), ("GROUP", "i8"), ("MAIN_KIND", "S10"),
    ("MAIN_MAG", "f8"), ("MAIN_SNR", "f8"), ("UNRECOGNISED", "i1"), ("N_MERGED", "i2"),
    ("COMP_FLUX_RATIO", "f8"), ("COMP_SEPARATION_PIX", "f8"), ("NEAREST_TRUE_PIX", "f8"),
    ("CLOSE_COMPANION", "i1"), ("UNDETECTED_CLOSE", "i1"), ("PAPER_BLEND", "i1"),
    ("ISOLATED", "i1"),
])
"""Per detection: ``GROUP`` is the bootstrap unit of its main object (``object_units``: one
per distinct galaxy across all tiles, > 0; each star its own, < 0; ``SPURIOUS_UNIT`` (0)
for a spurious detection, which ``evaluate_tile.galaxy_groups`` makes its own unit);
``COMP_*`` describe the brightest merged object (NaN if none);
``NEAREST_TRUE_PIX`` is the distance from the main object to its nearest neighbour;
``UNDETECTED_CLOSE`` a close neighbour without a detection of its own."""

TRUTH_CLASSES = {
    "unrecognised": "UNRECOGNISED",
    "close": "CLOSE_COMPANION",
    "paper": "PAPER_BLEND",
    "isolated": "ISOLATED",
    "undetected close companion": "UNDETECTED_CLOSE",
}
"""Truth class name -> its column in ``TRUTH_CLASS_DTYPE``."""


def segment_fluxes(segmentation, corners_xy_pix, images):
    """Return the flux of every true object in every segment it touches.

    Parameters
    ----------
    segmentation : ndarray, int, shape (ny, nx)
        SExtractor segmentation map, 0-based ``[y, x]``.
    corners_xy_pix : ndarray, int, shape (n, 2)
        0-based tile pixel (x, y) of each image's lower-left corner.
    images : ndarray, float, shape (n, d, d)
        Noise-free image of each object, ADU.

    Returns
    -------
    obj, label : ndarray of int64
        Object index and segment NUMBER of each (object, segment) pair with positive flux;
        label 0 is the sky.
    flux_adu : ndarray of float64
    """
    ny, nx = segmentation.shape
    d = images.shape[1]
    objs, labels, fluxes = [], [], []
    for j, (x_lo, y_lo) in enumerate(np.asarray(corners_xy_pix)):
        y0, y1 = max(y_lo, 0), min(y_lo + d, ny)
        x0, x1 = max(x_lo, 0), min(x_lo + d, nx)
        if y1 <= y0 or x1 <= x0:
            continue
        seg = segmentation[y0:y1, x0:x1].ravel()
        img = images[j, y0 - y_lo:y1 - y_lo, x0 - x_lo:x1 - x_lo].ravel().astype(np.float64)
        uniq, inverse = np.unique(seg, return_inverse=True)
        sums = np.bincount(inverse, weights=img, minlength=uniq.size)
        keep = sums > 0
        objs.append(np.full(keep.sum(), j))
        labels.append(uniq[keep])
        fluxes.append(sums[keep])
    if not objs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (np.concatenate(objs).astype(np.int64), np.concatenate(labels).astype(np.int64),
            np.concatenate(fluxes))


SPURIOUS_UNIT = 0
"""``GROUP`` of a spurious detection (no true object): neither a galaxy (> 0) nor a star (< 0)."""

UNIT_STRIDE = 10**7
"""Galaxy units are ``kind code * UNIT_STRIDE + GAL_ID``; star units ``-(tile * UNIT_STRIDE +
row + 1)``. GAL_ID (a COSMOS row) and tile rows stay below it."""

DRAWN_KINDS = (b"sersicdraw",)
"""``KIND`` of galaxies drawn anew per object (``simulate.DRAW_KIND``): ``GAL_ID`` is the
object's tile row, so the unit also holds the tile."""

DRAWN_UNIT_BASE = 2**21 * UNIT_STRIDE
"""Drawn galaxies' units are ``DRAWN_UNIT_BASE + tile * UNIT_STRIDE + GAL_ID``, above every
kind-coded unit (kind codes are at most 2**20 + 1)."""


def object_units(truth, tile_key):
    """Global bootstrap unit of each true object of one tile.

    A galaxy's unit is its sample and COSMOS index, the same number on every tile that draws
    it (``kind code * UNIT_STRIDE + GAL_ID``, kind code from the ``KIND`` text, > 0). A star
    (``GAL_ID < 0``) is its own unit, negative and distinct across tiles
    (``-(tile_key * UNIT_STRIDE + row + 1)``), so galaxies and stars can be counted apart.
    A galaxy drawn anew per object (``KIND`` in ``DRAWN_KINDS``) is its own unit,
    ``DRAWN_UNIT_BASE + tile_key * UNIT_STRIDE + GAL_ID`` (its ``GAL_ID`` is its tile row):
    the same on a twin of the tile (same seed, e.g. another shear), distinct across seeds.

    Parameters
    ----------
    truth : structured ndarray
        The tile's truth table (``KIND``, ``GAL_ID``).
    tile_key : int
        A number unique to the tile within a study (its simulation seed), >= 0.
    """
    gal_id = np.asarray(truth["GAL_ID"], dtype=np.int64)
    if (gal_id >= UNIT_STRIDE).any():
        raise ValueError(f"GAL_ID >= {UNIT_STRIDE}: galaxy units would collide")
    kinds = np.asarray(truth["KIND"]).astype("S")  # bytes from numpy, str from fitsio
    codes = np.array([zlib.crc32(k.strip()) % 2**20 + 1 for k in kinds], dtype=np.int64)
    star = -(int(tile_key) * UNIT_STRIDE + np.arange(len(truth), dtype=np.int64) + 1)
    drawn = np.isin(np.char.strip(kinds), DRAWN_KINDS)
    galaxy = np.where(drawn, DRAWN_UNIT_BASE + int(tile_key) * UNIT_STRIDE + gal_id,
                      codes * UNIT_STRIDE + gal_id)
    return np.where(gal_id >= 0, galaxy, star)


def classify_detections(segmentation, numbers, truth, corners_xy_pix, images,
                        min_flux_ratio=0.1, close_max_pix=10.0, stamp_half_pix=25,
                        isolated_min_pix=36.0, tile_key=0):
    """Give every detection its truth classes.

    Parameters
    ----------
    segmentation : ndarray, int, shape (ny, nx)
        SExtractor segmentation map.
    numbers : ndarray of int, shape (m,)
        NUMBER of each catalogue row (its segment label).
    truth : structured ndarray
        The tile's truth table (``simulate.TILE_TRUTH_DTYPE``), one row per object image.
    corners_xy_pix, images
        As ``segment_fluxes``.
    min_flux_ratio : float
        Merged objects and neighbours need this fraction of the main object's flux
        (in the segment, resp. in total). Default 0.1.
    close_max_pix : float
        Close companion: a neighbour nearer than this, pixels. Default 10.
    stamp_half_pix : int
        Paper blend: a neighbour with ``|dx|, |dy| <= this`` (the 51x51 stamp). Default 25.
    isolated_min_pix : float
        Isolated: no neighbour within this, pixels. Default 36.
    tile_key : int
        The tile's number for ``object_units`` (its simulation seed). Default 0.

    Returns
    -------
    ndarray, ``TRUTH_CLASS_DTYPE``, shape (m,)
    """
    obj, label, flux = segment_fluxes(segmentation, corners_xy_pix, images)
    n_obj = len(truth)
    total = images.reshape(n_obj, -1).sum(axis=1).astype(np.float64)
    # The detection holding most of each object's flux (0: none).
    home = np.zeros(n_obj, dtype=np.int64)
    best = np.zeros(n_obj)
    for j, s, f in zip(obj, label, flux):
        if s > 0 and f > best[j]:
            home[j], best[j] = s, f
    by_label = {}
    for j, s, f in zip(obj, label, flux):
        if s > 0:
            by_label.setdefault(int(s), []).append((f, int(j)))
    x, y = truth["X_PIX0"], truth["Y_PIX0"]
    groups = object_units(truth, tile_key)
    out = np.zeros(len(numbers), dtype=TRUTH_CLASS_DTYPE)
    out["NUMBER"] = numbers
    out["MAIN_ID"] = -1
    out["GROUP"] = SPURIOUS_UNIT
    for field in ("MAIN_MAG", "MAIN_SNR", "COMP_FLUX_RATIO", "COMP_SEPARATION_PIX",
                  "NEAREST_TRUE_PIX"):
        out[field] = np.nan
    for r, s in enumerate(np.asarray(numbers)):
        members = sorted(by_label.get(int(s), []), reverse=True)
        if not members:
            continue
        f_main, main = members[0]
        row = out[r]
        row["MAIN_ID"], row["GROUP"] = truth["ID"][main], groups[main]
        row["MAIN_KIND"], row["MAIN_MAG"] = truth["KIND"][main], truth["MAG"][main]
        row["MAIN_SNR"] = truth["SNR"][main]
        merged = [(f, j) for f, j in members[1:]
                  if f >= min_flux_ratio * f_main and home[j] == s]
        row["N_MERGED"] = len(merged)
        if merged:
            f_comp, comp = merged[0]
            row["UNRECOGNISED"] = 1
            row["COMP_FLUX_RATIO"] = f_comp / f_main
            row["COMP_SEPARATION_PIX"] = np.hypot(x[comp] - x[main], y[comp] - y[main])
        neighbour = total >= min_flux_ratio * total[main]
        neighbour[main] = False
        dx, dy = x[neighbour] - x[main], y[neighbour] - y[main]
        dist = np.hypot(dx, dy)
        if dist.size:
            row["NEAREST_TRUE_PIX"] = dist.min()
        close = dist < close_max_pix
        row["CLOSE_COMPANION"] = close.any()
        row["UNDETECTED_CLOSE"] = np.isin(home[neighbour][close], (0, s)).any()
        row["PAPER_BLEND"] = ((np.abs(dx) <= stamp_half_pix)
                              & (np.abs(dy) <= stamp_half_pix)).any()
        row["ISOLATED"] = not (dist < isolated_min_pix).any()
        out[r] = row
    return out
