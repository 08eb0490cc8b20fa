"""Tests of bh_stage.cues on hand-made detection sets with distances known by hand."""

import numpy as np
import pytest

from bh_stage import cues

# --- nearest_detection_pix --------------------------------------------------------------


def test_nearest_detection_known_distances():
    # (0, 0) and (3, 4) are 5 apart; (10, 0) is 8.06 from (3, 4) and 10 from (0, 0)
    x = np.array([0.0, 3.0, 10.0, np.nan, 2.0])
    y = np.array([0.0, 4.0, 0.0, 1.0, np.inf])
    d = cues.nearest_detection_pix(x, y)
    assert d.shape == (5,) and d.dtype == np.float64
    np.testing.assert_allclose(d[:3], [5.0, 5.0, np.hypot(7.0, 4.0)], rtol=1e-12)
    assert np.isnan(d[3]) and np.isnan(d[4])  # no position: NaN, and no one's neighbour


def test_nearest_detection_lone_and_coincident():
    d = cues.nearest_detection_pix([5.0, np.nan], [5.0, 7.0])
    np.testing.assert_array_equal(d[:1], [cues.FAR_PIX])  # the only finite detection
    assert np.isnan(d[1])
    np.testing.assert_array_equal(cues.nearest_detection_pix([1.0], [2.0]), [cues.FAR_PIX])
    assert cues.nearest_detection_pix([], []).shape == (0,)
    np.testing.assert_array_equal(cues.nearest_detection_pix([4.0, 4.0], [1.0, 1.0]), [0, 0])


# --- detections_in_stamp ----------------------------------------------------------------

def test_detections_in_stamp_boundary():
    # P1 sits on the stamp's corner (|dx| = |dy| = 25) of P0; P2 is 25.5 to the left of P0
    x = np.array([0.0, 25.0, -25.5, np.nan, 0.0])
    y = np.array([0.0, 25.0, 0.0, 1.0, 25.01])
    n = cues.detections_in_stamp(x, y)
    assert n.dtype == np.int64
    # P4 is 25.01 above P0 (outside) but within 25 of P1 in x and y (|dx| 25, |dy| 0.01)
    np.testing.assert_array_equal(n, [1, 2, 0, -1, 1])
    np.testing.assert_array_equal(cues.detections_in_stamp(x, y, half_pix=26), [3, 2, 2, -1, 3])
    np.testing.assert_array_equal(cues.detections_in_stamp([np.nan], [0.0]), [-1])


# --- catalogue_features -----------------------------------------------------------------

def catalogue():
    """Four detections: the third alone far away, the last two on top of each other."""
    columns = {
        "FLUX_RADIUS": [1.0, 2.0, np.nan, 4.0],
        "A_IMAGE": [3.0, 2.0, 1.5, 5.0],
        "B_IMAGE": [1.5, 2.0, 0.0, 1.0],      # B = 0: elongation not finite -> median
        "FLUX_AUTO": [1000.0, 100.0, -5.0, 50.0],
        "FLUXERR_AUTO": [10.0, 10.0, 5.0, 5.0],
        "MAG_AUTO": [20.0, 22.5, np.nan, np.nan],
        "FLAGS": [0, 1, 2, 3],
        "CLASS_STAR": [np.nan] * 4,           # all missing -> 0
    }
    x = np.array([10.0, 13.0, 500.0, 600.0])
    y = np.array([10.0, 14.0, 500.0, 600.0])
    return columns, x, y


def test_shipped_tile_heads_read_these_features_in_this_order():
    """A tile head was trained on the columns of catalogue_features in FEATURE_NAMES' order,
    from the SExtractor columns CATALOGUE_COLUMNS: every shipped head that reads catalogue
    features lists the same ones, in the same order (a reordered or renamed feature would
    feed it the wrong inputs). The test catalogue above has every column."""
    import json

    from bh_stage.heads import HEADS_DIR

    metas = [json.loads(p.read_text()) for p in sorted(HEADS_DIR.glob("*.json"))]
    readers = [m for m in metas if "catalogue_features" in m]
    assert readers, "no shipped head reads catalogue features"
    for meta in readers:
        assert tuple(meta["catalogue_features"]) == cues.FEATURE_NAMES
        assert len(meta["feature_mean"]) == len(meta["feature_scale"]) == len(cues.FEATURE_NAMES)
        assert tuple(meta["catalogue_columns"]) == cues.CATALOGUE_COLUMNS
    assert set(cues.CATALOGUE_COLUMNS) == set(catalogue()[0])


def test_catalogue_features_known_values():
    columns, x, y = catalogue()
    y[3] = 500.0  # detection 3 is now 100 px right of detection 2: nearest 100, none in stamp
    f = cues.catalogue_features(columns, x, y)
    assert f.shape == (4, len(cues.FEATURE_NAMES)) and f.dtype == np.float32
    col = {name: f[:, k] for k, name in enumerate(cues.FEATURE_NAMES)}
    np.testing.assert_allclose(col["FLUX_RADIUS"], [1.0, 2.0, 2.0, 4.0])  # NaN -> median
    np.testing.assert_allclose(col["ELONGATION"], [2.0, 1.0, 2.0, 5.0])   # A/B; inf -> median
    np.testing.assert_allclose(col["MAG_AUTO"], [20.0, 22.5, 21.25, 21.25])
    # log10(FLUX_AUTO / FLUXERR_AUTO); a negative flux is clipped to SNR 1e-3
    np.testing.assert_allclose(col["LOG10_SNR"], [2.0, 1.0, -3.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(col["FLAGS_NEIGHBOURS"], [0, 1, 0, 1])  # bit 1
    np.testing.assert_array_equal(col["FLAGS_BLENDED"], [0, 0, 1, 1])     # bit 2
    np.testing.assert_array_equal(col["CLASS_STAR"], [0, 0, 0, 0])
    np.testing.assert_allclose(col["LOG10_NEAREST_PIX"], [np.log10(5.0)] * 2 + [2.0] * 2,
                               rtol=1e-6)
    np.testing.assert_array_equal(col["NDET_STAMP"], [1, 1, 0, 0])


def test_catalogue_features_coincident_missing_and_half_pix():
    columns, x, y = catalogue()
    columns["FLAGS"] = [np.nan, 16, 4, 1]  # missing FLAGS is 0; bits 3 and 5 are not cues
    x[1], y[1] = np.nan, np.nan            # a detection without a position
    x[3], y[3] = 500.0, 500.0              # on top of detection 2: distance clipped to 0.1
    f = cues.catalogue_features(columns, x, y, half_pix=5)
    col = {name: f[:, k] for k, name in enumerate(cues.FEATURE_NAMES)}
    np.testing.assert_array_equal(col["FLAGS_NEIGHBOURS"], [0, 0, 0, 1])
    np.testing.assert_array_equal(col["FLAGS_BLENDED"], [0, 0, 0, 0])
    # detection 0 is 490 * sqrt(2) from detection 2; NaN for detection 1 becomes the
    # median, -1
    np.testing.assert_allclose(col["LOG10_NEAREST_PIX"],
                               [np.log10(490 * np.sqrt(2)), -1.0, -1.0, -1.0], rtol=1e-6)
    # -1 (no position) is a value, not a missing one
    np.testing.assert_array_equal(col["NDET_STAMP"], [0, -1, 1, 1])
    assert np.all(np.isfinite(f))
    # the stage passes the cues it has already computed, and reads the SExtractor part alone
    given = cues.catalogue_features(columns, x, y, 5, cues.nearest_detection_pix(x, y),
                                    cues.detections_in_stamp(x, y, 5))
    np.testing.assert_array_equal(given, f)
    np.testing.assert_array_equal(cues.sextractor_features(columns), f[:, :7])


def test_catalogue_features_missing_column_is_a_key_error():
    columns, x, y = catalogue()
    del columns["B_IMAGE"]
    with pytest.raises(KeyError, match="B_IMAGE"):
        cues.catalogue_features(columns, x, y)
