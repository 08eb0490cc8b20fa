import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bh_stage.stamps import (add_noise, cut_stamps, dataset_noise_seeds, nearest_pixel,
                             pad_stamps)


def test_nearest_pixel_rounds_half_up():
    """x.5 goes to the upper pixel, never to the even one (np.round would give 2 for 2.5)."""
    assert nearest_pixel([2.5, 3.5, -0.5, 1.49999]).tolist() == [3, 4, 0, 1]


def test_delta_lands_on_stamp_centre():
    image = np.zeros((40, 50), dtype=np.float32)
    image[17, 23] = 1.0
    stamps, edge, mask = cut_stamps(image, [23.3], [16.6], 11, pad_pix=2)
    assert stamps.shape == (1, 15, 15)
    assert stamps[0, 7, 7] == 1.0 and stamps.sum() == 1.0
    assert edge[0] == 0 and mask[0] == 0


@settings(max_examples=50, deadline=None)
@given(x=st.integers(5, 44), y=st.integers(5, 34))
def test_stamp_equals_direct_slice(x, y):
    image = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    stamps, _, _ = cut_stamps(image, [x], [y], 11)
    np.testing.assert_array_equal(stamps[0], image[y - 5:y + 6, x - 5:x + 6])


def test_edge_fraction_and_fill_noise():
    image = np.full((30, 30), 100.0, dtype=np.float32)
    stamps, edge, mask = cut_stamps(image, [0.0], [15.0], 11, pad_pix=3, fill_sigma=2.0,
                                    seed=1)
    # Columns x = -5..-1 (5 of 11) are off the tile.
    assert edge[0] == pytest.approx(5 / 11)
    assert mask[0] == 0
    inner = stamps[0, 3:14, 3:14]
    np.testing.assert_array_equal(inner[:, 5:], 100.0)
    off = np.concatenate([inner[:, :5].ravel(), stamps[0, :3].ravel()])
    assert abs(off.mean()) < 1.0 and off.std() == pytest.approx(2.0, rel=0.25)


def test_masked_and_nonfinite_pixels_are_filled_and_counted():
    image = np.ones((21, 21), dtype=np.float32)
    image[10, 10] = np.nan
    image[9, 9] = -1e30
    bad = image <= -1e29
    stamps, edge, mask = cut_stamps(image, [10], [10], 5, bad=bad, fill_sigma=1.0)
    assert np.isfinite(stamps).all()
    assert np.abs(stamps).max() < 10
    assert mask[0] == pytest.approx(2 / 25)


def test_fill_depends_on_object_index_not_batch():
    image = np.zeros((20, 20), dtype=np.float32)
    whole, _, _ = cut_stamps(image, [3, 15], [3, 15], 9, 2, fill_sigma=1.0, seed=7)
    second, _, _ = cut_stamps(image, [15], [15], 9, 2, fill_sigma=1.0, seed=7, first_index=1)
    np.testing.assert_array_equal(whole[1], second[0])


def test_position_off_tile_is_all_fill():
    stamps, edge, mask = cut_stamps(np.zeros((10, 10)), [100], [100], 5)
    assert edge[0] == 1 and (stamps == 0).all()


def test_even_size_refused():
    with pytest.raises(ValueError, match="odd"):
        cut_stamps(np.zeros((10, 10)), [5], [5], 4)


def test_pad_and_noise_are_reproducible():
    stamps = pad_stamps(np.ones((3, 5, 5)), 2)
    assert stamps.shape == (3, 9, 9) and stamps.sum() == 75
    seeds = dataset_noise_seeds(3, 14.5, 1, range(3))
    a, b = add_noise(stamps, 14.5, seeds), add_noise(stamps[1:], 14.5, seeds[1:])
    np.testing.assert_array_equal(a[1:], b)
    assert not np.array_equal(a[0], a[1])
    other = add_noise(stamps, 14.5, dataset_noise_seeds(3, 14.5, 2, range(3)))
    assert not np.array_equal(a, other)


@pytest.mark.parametrize("dx, dy", [(0, 0), (3, -2), (-7, 5), (60, 0)])
def test_shift_stamps_is_the_window_at_the_shifted_centre(dx, dy):
    """Shifting the window of an ``arange`` image centred on (x, y) by (dx, dy) gives the
    window centred on (x + dx, y + dy) wherever the shifted stamp had pixels; the rest is
    marked outside: (51 - |dx|) * (51 - |dy|) pixels come from inside (none beyond 51)."""
    from bh_stage.stamps import shift_stamps, window_pixels

    image = np.arange(200 * 200, dtype=np.float64).reshape(200, 200)
    x, y = np.array([100]), np.array([90])
    shifted, outside = shift_stamps(window_pixels(image, x, y, 51, -1.0), [dx], [dy], -5.0)
    direct = window_pixels(image, x + dx, y + dy, 51, -1.0)
    np.testing.assert_array_equal(shifted[~outside], direct[~outside])
    assert (shifted[outside] == -5.0).all()
    assert (~outside).sum() == max(51 - abs(dx), 0) * max(51 - abs(dy), 0)
