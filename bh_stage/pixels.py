"""Step 1 of the stage: tile pixels as the stage cuts its stamps.

``tile_pixels`` reads a tile (and its weight map) through ``io``, marks the pixels that must
not reach a network (``read_bad_pixels``: non-finite, SExtractor nulls, zero weight) and subtracts
SEP's background (``subtract_background``). Arrays are 0-based ``[y, x]``.
"""

import logging

import numpy as np

from . import io
from .errors import InputFileError

__all__ = ["read_bad_pixels", "subtract_background", "tile_pixels"]

log = logging.getLogger(__name__)


def _bad_block(image, weight, out, scratch):
    """The pixels of a block of rows that must not reach the network, into ``out``: the
    image's non-finite pixels and SExtractor nulls, and the weight map's pixels not above 0
    (NaN included). No temporaries (``scratch``: a bool array of the block's shape);
    ``image`` or ``weight`` may be None."""
    out[...] = False
    if image is not None:
        np.isfinite(image, out=scratch)
        np.logical_not(scratch, out=out)
        np.less_equal(image, io.SEXTRACTOR_NULL, out=scratch)
        out |= scratch
    if weight is not None:
        np.greater(weight, 0, out=scratch)
        np.logical_not(scratch, out=scratch)
        out |= scratch


def read_bad_pixels(image, weight_path, shape=None):
    """Pixels that must not reach the network (``_bad_block``), the weight map read a block
    of rows at a time (``io.tile_row_blocks``) and never whole: no tile-sized temporaries
    (the whole-array form of 0.8: the weight map, ``weight > 0`` and each comparison's
    result, 0.8 GB to allocate and fill on a 10k x 10k tile, about 1 s; this form: 0.3 s).

    Parameters
    ----------
    image : ndarray, shape (ny, nx), or None
        The tile; None: the weight map's zero pixels only (stamps from VIGNET).
    weight_path : str or pathlib.Path, or None
        The weight map; None: the image's non-finite and null pixels only.
    shape : tuple of int, optional
        ``(ny, nx)``; default the image's.

    Returns
    -------
    ndarray of bool, shape (ny, nx)

    Raises
    ------
    InputFileError
        The weight map is unreadable or its shape is not the tile's.
    """
    shape = tuple(image.shape if shape is None else shape)
    if weight_path is not None:
        weight_shape = io.tile_shape(weight_path)
        if weight_shape != shape:
            raise InputFileError(f"{weight_path}: weight map is {weight_shape[1]}x"
                                 f"{weight_shape[0]}, the tile {shape[1]}x{shape[0]}")
        blocks = io.tile_row_blocks(weight_path)
    else:
        blocks = ((first, None) for first in range(0, shape[0], io.TILE_BLOCK_ROWS))
    bad = np.empty(shape, dtype=bool)
    scratch = np.empty((io.TILE_BLOCK_ROWS, shape[1]), dtype=bool)
    for first, weight in blocks:
        rows = slice(first, min(first + io.TILE_BLOCK_ROWS, shape[0]))
        _bad_block(None if image is None else image[rows], weight, bad[rows],
                   scratch[:rows.stop - rows.start])
    return bad


def subtract_background(image, bad):
    """Subtract SEP's background in place and return the tile's global rms, in ADU.

    ``bad`` pixels are set to 0 and left out of the background. Where no pixel is bad, SEP
    runs without a mask: the same background (an all-False mask excludes nothing), 0.2-0.4 s
    sooner on a 10k x 10k tile.
    """
    import sep

    any_bad = bool(bad.any())
    if any_bad:
        image[bad] = 0.0
    bkg = sep.Background(image, mask=bad if any_bad else None)
    bkg.subfrom(image)
    if any_bad:
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
    bad = read_bad_pixels(image, weight_path)
    return image, bad, subtract_background(image, bad)
