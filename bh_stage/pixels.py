"""Step 1 of the stage: tile pixels as the stage cuts its stamps.

``tile_pixels`` reads a tile (and its weight map) through ``io``, marks the pixels that must
not reach a network (``bad_pixels``: non-finite, SExtractor nulls, zero weight) and subtracts
SEP's background (``subtract_background``). Arrays are 0-based ``[y, x]``.
"""

import logging

import numpy as np

from . import io
from .errors import InputFileError

__all__ = ["bad_pixels", "subtract_background", "tile_pixels", "read_weight"]

log = logging.getLogger(__name__)


def bad_pixels(image, weight):
    """Pixels that must not reach the network: non-finite, SExtractor nulls, zero weight."""
    bad = ~np.isfinite(image) | (image <= io.SEXTRACTOR_NULL)
    if weight is not None:
        bad |= ~(weight > 0)
    return bad


def subtract_background(image, bad):
    """Subtract SEP's background in place and return the tile's global rms, in ADU."""
    import sep

    image[bad] = 0.0
    bkg = sep.Background(image, mask=bad)
    bkg.subfrom(image)
    image[bad] = 0.0
    return float(bkg.globalrms)


def tile_pixels(tile_path, weight_path=None):
    """Read a tile as the stage cuts its stamps: background-subtracted, with its bad pixels.

    Parameters
    ----------
    tile_path : str or pathlib.Path
        The tile, plain or tile-compressed FITS.
    weight_path : str or pathlib.Path, optional
        Its weight map; pixels of weight 0 count as bad.

    Returns
    -------
    image : ndarray, float32, shape (ny, nx)
        ADU, SEP's background subtracted, 0 at bad pixels.
    bad : ndarray of bool, shape (ny, nx)
        Non-finite, SExtractor's -1e30, or zero weight.
    rms_adu : float
        The tile's global rms (SEP), header key ``BH_RMS`` of the output.

    Raises
    ------
    InputFileError
        A file is unreadable, or the weight map's shape differs from the tile's.
    """
    image, _ = io.read_tile(tile_path)
    weight = None if weight_path is None else read_weight(weight_path, image.shape)
    bad = bad_pixels(image, weight)
    del weight
    return image, bad, subtract_background(image, bad)


def read_weight(weight_path, shape):
    """Read a weight map, refusing one whose shape ``(ny, nx)`` is not the tile's."""
    weight, _ = io.read_tile(weight_path)
    if weight.shape != tuple(shape):
        raise InputFileError(f"{weight_path}: weight map is {weight.shape[1]}x"
                             f"{weight.shape[0]}, the tile {shape[1]}x{shape[0]}")
    return weight
