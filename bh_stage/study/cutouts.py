"""Other objects inside the real galaxies' HST cut-outs.

A real galaxy is drawn from its HST cut-out, with everything the cut-out holds. When the
cut-out holds a second source (a neighbour, or a clump the COSMOS catalogue counted as part of
the galaxy), each tile detection of that galaxy is two light sources that the truth calls one
galaxy: at the tiles' seeing they merge, and the truth can say "isolated" of a blend. Whether
the two are at one redshift (one shear) or not is unknown, so the tile study reports the
detections of such galaxies apart. The cut-outs are judged on the HST images alone, never
with the stage or its scores, by the rule the truth uses for a merged object
(``tiletruth.classify_detections``: a second source with at least ``min_flux_ratio`` of the
main one's flux).

Pixels are numpy/SEP 0-based; the main source is the one nearest the cut-out's centre.
"""

from pathlib import Path

import numpy as np

__all__ = ["CUTOUT_DTYPE", "REAL_CATALOGUE", "image_components", "cutout_images",
           "cutout_components", "multiple_cutouts", "real_galaxy_indices", "main_is_multiple"]

CUTOUT_DTYPE = np.dtype([
    ("INDEX", "i8"), ("IDENT", "i8"), ("MAG", "f8"), ("N_SOURCES", "i4"),
    ("SECOND_FLUX_RATIO", "f8"), ("SECOND_SEPARATION_ARCSEC", "f8"),
])
"""Per real galaxy (``INDEX`` in its catalogue, as ``GAL_ID`` of the tiles' truth): the SEP
sources of its cut-out, the largest flux of another source over the main one's (0 if none)
and that source's distance from the main one (NaN if none)."""


def image_components(image, noise_sigma, threshold_sigma=3.0, min_area_pix=10):
    """Sources of one image: ``(n_sources, second_flux_ratio, second_separation_pix)``;
    ``noise_sigma`` is the pixel noise in the image's units.

    SEP with SExtractor's default deblending (32 levels, contrast 0.005) at
    ``threshold_sigma`` times ``noise_sigma``, no background (the cut-outs are
    background-subtracted). The main source is the one nearest the image centre; the second
    is the brightest of the others (ratio 0 and separation NaN when there is none).
    """
    import sep

    image = np.ascontiguousarray(image, dtype=np.float64)
    objects = sep.extract(image, threshold_sigma, err=float(noise_sigma),
                          minarea=min_area_pix, deblend_nthresh=32, deblend_cont=0.005)
    if len(objects) < 2:
        return len(objects), 0.0, np.nan
    centre_y, centre_x = (np.array(image.shape) - 1) / 2.0
    main = np.argmin(np.hypot(objects["x"] - centre_x, objects["y"] - centre_y))
    others = np.delete(np.arange(len(objects)), main)
    second = others[np.argmax(objects["flux"][others])]
    ratio = objects["flux"][second] / objects["flux"][main]
    separation = np.hypot(objects["x"][second] - objects["x"][main],
                          objects["y"][second] - objects["y"][main])
    return len(objects), float(ratio), float(separation)


REAL_CATALOGUE = "real_galaxy_catalog_26_extension_example.fits"
"""The shared sample's real-galaxy catalogue (``SimulateConfig.real_catalogue``'s default)."""


def cutout_images(cosmos_dir, real_catalogue=REAL_CATALOGUE, indices=None):
    """Yield ``(index, catalogue row, image)`` of each galaxy of a GalSim real-galaxy catalogue
    (all, or those of ``indices``): its HST cut-out (``GAL_FILENAME``, ``GAL_HDU``) minus
    ``NOISE_MEAN``, float64."""
    import fitsio

    cosmos_dir = Path(cosmos_dir)
    cat = fitsio.read(str(cosmos_dir / real_catalogue), ext=1)
    files = {}
    try:
        for i in range(len(cat)) if indices is None else indices:
            row = cat[i]
            name = row["GAL_FILENAME"].strip()
            name = name.decode() if isinstance(name, bytes) else name
            if name not in files:
                files[name] = fitsio.FITS(str(cosmos_dir / name))
            image = files[name][int(row["GAL_HDU"])].read().astype(np.float64)
            yield int(i), row, image - float(row["NOISE_MEAN"])
    finally:
        for f in files.values():
            f.close()


def cutout_components(cosmos_dir, real_catalogue=REAL_CATALOGUE, threshold_sigma=3.0,
                      min_area_pix=10, indices=None):
    """``CUTOUT_DTYPE`` table of the galaxies of a GalSim real-galaxy catalogue (all, or
    ``indices``, e.g. those a set of tiles draws: the full COSMOS catalogue holds ~87,000):
    SEP at ``threshold_sigma`` times ``sqrt(NOISE_VARIANCE)`` on each ``cutout_images``
    image (``image_components``)."""
    rows = []
    for i, row, image in cutout_images(cosmos_dir, real_catalogue, indices):
        n, ratio, sep_pix = image_components(image, np.sqrt(float(row["NOISE_VARIANCE"])),
                                             threshold_sigma, min_area_pix)
        rows.append((i, row["IDENT"], row["MAG"], n, ratio,
                     sep_pix * float(row["PIXEL_SCALE"])))
    return np.array(rows, dtype=CUTOUT_DTYPE)


def multiple_cutouts(components, min_flux_ratio=0.1):
    """Catalogue indices of the cut-outs holding a second source with at least
    ``min_flux_ratio`` of the main source's flux (the truth's merged-object rule)."""
    keep = components["SECOND_FLUX_RATIO"] >= min_flux_ratio
    return np.sort(components["INDEX"][keep]).astype(np.int64)


def real_galaxy_indices(classes):
    """Per detection (``tiletruth.TRUTH_CLASS_DTYPE``): the catalogue index (``GAL_ID``) of
    its main object where that is a real galaxy, else -1. A real galaxy's ``GROUP`` is its
    unit, ``kind code * UNIT_STRIDE + GAL_ID`` (``tiletruth.object_units``)."""
    from .tiletruth import UNIT_STRIDE

    kinds = np.char.strip(np.asarray(classes["MAIN_KIND"]).astype("S"))
    groups = np.asarray(classes["GROUP"], dtype=np.int64)
    return np.where((kinds == b"real") & (groups > 0), groups % UNIT_STRIDE, -1)


def main_is_multiple(classes, multiple_indices):
    """Per detection (``tiletruth.TRUTH_CLASS_DTYPE``): its main object is a real galaxy whose
    cut-out is in ``multiple_indices``."""
    index = real_galaxy_indices(classes)
    return (index >= 0) & np.isin(index, np.asarray(multiple_indices, dtype=np.int64))
