"""Tests of bh_stage.pixels: the bad-pixel mask read from a weight map a block of rows at a
time, checked against pixels placed by hand."""

import fitsio
import numpy as np
import pytest

from bh_stage import io
from bh_stage.errors import InputFileError
from bh_stage.pixels import read_bad_pixels

SHAPE = (600, 40)  # more rows than two blocks of io.TILE_BLOCK_ROWS: a partial last block
IMAGE_BAD = {(3, 5): np.nan, (300, 0): np.inf, (599, 39): -np.inf, (257, 7): -1e30}
"""Image pixels that are bad, by (y, x): non-finite or SExtractor's null."""
WEIGHT_BAD = {(0, 0): 0.0, (255, 39): -2.0, (256, 1): np.nan, (598, 20): 0.0}
"""Weight pixels not above 0 (NaN included); (10, 10) holds 1e-30, above 0: good."""


def _files(tmp_path, weight_bad=WEIGHT_BAD, weight_dtype=np.float32):
    image = np.random.default_rng(0).normal(0.0, 10.0, SHAPE).astype(np.float32)
    image[100, 10] = -1e28  # low, but above SExtractor's null: good
    for yx, value in IMAGE_BAD.items():
        image[yx] = value
    weight = np.ones(SHAPE, np.float64)
    if np.dtype(weight_dtype).kind == "f":
        weight[10, 10] = 1e-30
    for yx, value in weight_bad.items():
        weight[yx] = value
    path = tmp_path / "w.fits"
    fitsio.write(str(path), weight.astype(weight_dtype), clobber=True)
    return image, path


def _mask(*positions):
    out = np.zeros(SHAPE, bool)
    for group in positions:
        for yx in group:
            out[yx] = True
    return out


def test_mask_is_the_pixels_placed_by_hand(tmp_path):
    """Image and weight map: exactly the bad pixels of both, across the block boundaries
    (rows 255/256/257) and in the partial last block."""
    assert SHAPE[0] > 2 * io.TILE_BLOCK_ROWS
    image, path = _files(tmp_path)
    np.testing.assert_array_equal(read_bad_pixels(image, path), _mask(IMAGE_BAD, WEIGHT_BAD))


def test_mask_from_image_or_weight_alone(tmp_path):
    """No weight map: the image's bad pixels; no image (VIGNET stamps): the weight map's,
    for a weight map of integers too."""
    image, path = _files(tmp_path)
    np.testing.assert_array_equal(read_bad_pixels(image, None), _mask(IMAGE_BAD))
    only_zeros = {yx: v for yx, v in WEIGHT_BAD.items() if v == 0.0}  # int16 has no NaN
    _, int_path = _files(tmp_path, only_zeros, np.int16)
    assert fitsio.read(str(int_path)).dtype.kind == "i"
    np.testing.assert_array_equal(read_bad_pixels(None, int_path, SHAPE), _mask(only_zeros))


def test_weight_map_of_another_shape_is_refused(tmp_path):
    """One error naming the weight map and both shapes."""
    image, _ = _files(tmp_path)
    path = tmp_path / "small.fits"
    fitsio.write(str(path), np.ones((10, 12), np.float32))
    with pytest.raises(InputFileError, match=r"small.fits: weight map is 12x10, the tile 40x600"):
        read_bad_pixels(image, path)
