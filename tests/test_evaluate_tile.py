"""Tests of the tuned catalogue-only baseline and the calibration numbers of
``bh-stage evaluate-tile`` (``cues.baseline_features``, ``evaluate_tile.tune_baseline``,
``reliability_bins``, ``calibration_summary``) on small hand-made arrays; the command itself
runs end to end in test_tile_study.py."""

import logging

import numpy as np
import pytest

from bh_stage import cues
from bh_stage.errors import ConfigError
from bh_stage.study import evaluate_tile as et
from bh_stage.study.metrics import roc_auc

# --- cues.baseline_features -------------------------------------------------------------


def _three_rows():
    """Every BASELINE_COLUMNS for 3 detections; the centres give 3-4-5 triangles."""
    columns = {name: np.array([1.0, 2.0, 3.0]) for name in cues.BASELINE_COLUMNS}
    columns.update({
        "X_IMAGE": np.array([10.0, 20.0, 30.0]), "Y_IMAGE": np.array([5.0, 5.0, 5.0]),
        "XWIN_IMAGE": np.array([10.0, 17.0, 30.0]), "YWIN_IMAGE": np.array([5.0, 9.0, 5.0]),
        "XPEAK_IMAGE": np.array([13.0, 20.0, 30.0]), "YPEAK_IMAGE": np.array([9.0, 5.0, 5.0]),
        "FLAGS": np.array([0.0, 3.0, 18.0]),
        "FLUX_AUTO": np.array([100.0, 50.0, 10.0]), "FLUXERR_AUTO": np.array([10.0, 5.0, 10.0]),
        "FLUX_RADIUS": np.array([2.0, np.nan, 4.0]),
        "KRON_RADIUS": np.full(3, np.nan)})
    # detections 0 and 1 are 5 px apart, detection 2 is 97 px and 4 px from detection 1
    return columns, np.array([0.0, 3.0, 100.0]), np.array([0.0, 4.0, 0.0])


def test_baseline_features_by_hand():
    columns, x, y = _three_rows()
    feats, names = cues.baseline_features(columns, x, y)
    assert names == cues.BASELINE_FEATURE_NAMES and feats.shape == (3, len(names))
    assert feats.dtype == np.float64
    f = dict(zip(names, feats.T))
    # XPEAK - X_IMAGE, X_IMAGE - XWIN, XPEAK - XWIN, the same in y, and their lengths
    np.testing.assert_array_equal(f["PEAK_ISO_DX_PIX"], [3, 0, 0])
    np.testing.assert_array_equal(f["PEAK_ISO_DY_PIX"], [4, 0, 0])
    np.testing.assert_allclose(f["PEAK_ISO_OFFSET_PIX"], [5, 0, 0], rtol=1e-12)
    np.testing.assert_array_equal(f["ISO_WIN_DX_PIX"], [0, 3, 0])
    np.testing.assert_array_equal(f["ISO_WIN_DY_PIX"], [0, -4, 0])
    np.testing.assert_allclose(f["ISO_WIN_OFFSET_PIX"], [0, 5, 0], rtol=1e-12)
    np.testing.assert_array_equal(f["PEAK_WIN_DX_PIX"], [3, 3, 0])
    np.testing.assert_array_equal(f["PEAK_WIN_DY_PIX"], [4, -4, 0])
    np.testing.assert_allclose(f["PEAK_WIN_OFFSET_PIX"], [5, 5, 0], rtol=1e-12)
    # FLAGS 0, 3 = 1 + 2, 18 = 2 + 16
    np.testing.assert_array_equal(f["FLAGS_NEIGHBOURS"], [0, 1, 0])
    np.testing.assert_array_equal(f["FLAGS_BLENDED"], [0, 1, 1])
    np.testing.assert_array_equal(f["FLAGS_APER_INCOMPLETE"], [0, 0, 1])
    np.testing.assert_array_equal(f["FLAGS_SATURATED"], [0, 0, 0])
    np.testing.assert_allclose(f["LOG10_SNR"], [1, 1, 0], atol=1e-12)
    # a missing value becomes the median of the others; a column with none becomes 0
    np.testing.assert_array_equal(f["FLUX_RADIUS"], [2, 3, 4])
    np.testing.assert_array_equal(f["KRON_RADIUS"], [0, 0, 0])
    np.testing.assert_array_equal(f["ELONGATION"], [1, 2, 3])  # columns pass as they are
    np.testing.assert_allclose(f["LOG10_NEAREST_PIX"],
                               np.log10([5.0, 5.0, np.hypot(97.0, 4.0)]), rtol=1e-12)
    np.testing.assert_array_equal(f["NDET_STAMP"], [1, 1, 0])


def test_baseline_features_leave_out_a_missing_column(caplog):
    columns, x, y = _three_rows()
    del columns["YPEAK_IMAGE"]
    full, _ = cues.baseline_features(_three_rows()[0], x, y)
    with caplog.at_level(logging.WARNING, logger="bh_stage.cues"):
        feats, names = cues.baseline_features(columns, x, y)
    gone = ("PEAK_ISO_DY_PIX", "PEAK_ISO_OFFSET_PIX", "PEAK_WIN_DY_PIX", "PEAK_WIN_OFFSET_PIX")
    assert names == tuple(n for n in cues.BASELINE_FEATURE_NAMES if n not in gone)
    keep = [cues.BASELINE_FEATURE_NAMES.index(n) for n in names]
    np.testing.assert_array_equal(feats, full[:, keep])  # the others are unchanged
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert "YPEAK_IMAGE" in caplog.messages[0] and "PEAK_WIN_OFFSET_PIX" in caplog.messages[0]
    assert "bh.param" in caplog.messages[0]


def test_baseline_features_of_positions_only(caplog):
    """No catalogue column at all: the two position cues remain."""
    with caplog.at_level(logging.WARNING, logger="bh_stage.cues"):
        feats, names = cues.baseline_features({}, [0.0, 3.0], [0.0, 4.0])
    assert names == ("LOG10_NEAREST_PIX", "NDET_STAMP")
    np.testing.assert_allclose(feats, [[np.log10(5.0), 1], [np.log10(5.0), 1]], rtol=1e-12)
    assert "FLUX_RADIUS" in caplog.messages[0]


def test_baseline_columns_are_in_the_parameter_file():
    from pathlib import Path

    param = Path(__file__).parents[1] / "example_config" / "sextractor" / "bh.param"
    assert set(cues.BASELINE_COLUMNS) <= set(param.read_text().split())
    assert set(cues.CATALOGUE_COLUMNS) <= set(cues.BASELINE_COLUMNS)


# --- tune_baseline ----------------------------------------------------------------------

def _label_plus_noise(rng, n):
    """Feature 0 is the label plus noise; features 1-3 are noise."""
    y = (rng.random(n) < 0.4).astype(np.int8)
    x = rng.normal(size=(n, 4))
    x[:, 0] = y + rng.normal(0, 0.8, n)
    return x, y


SMALL = {"learning_rate": 0.1, "max_iter": 20, "max_leaf_nodes": 3, "l2_regularization": 0.0}


def test_tuning_keeps_the_best_validation_auc():
    """One boosting configuration cannot split (min_samples_leaf = all training rows), so
    its score is constant and its validation AUC exactly 0.5; the one kept is the
    configuration of the highest validation AUC, and it scores the validation rows with it."""
    rng = np.random.default_rng(4)
    train, valid = _label_plus_noise(rng, 300), _label_plus_noise(rng, 300)
    grid = ({**SMALL, "min_samples_leaf": 300}, {**SMALL, "min_samples_leaf": 10})
    tuned = et.tune_baseline(train, valid, seed=0, boosting_grid=grid, c_grid=(1e-4, 1.0))
    assert [(t["model"], t["params"]) for t in tuned.trials] == et.baseline_configs(
        grid, (1e-4, 1.0))
    aucs = [t["valid_auc"] for t in tuned.trials]
    assert aucs[0] == 0.5
    best = int(np.argmax(aucs))
    assert (tuned.model, tuned.params) == (tuned.trials[best]["model"],
                                           tuned.trials[best]["params"])
    assert tuned.valid_auc == max(aucs)
    assert roc_auc(tuned.predict(valid[0]), valid[1]) == pytest.approx(tuned.valid_auc,
                                                                       abs=1e-12)
    assert all(t["converged"] for t in tuned.trials)
    again = et.tune_baseline(train, valid, seed=0, boosting_grid=grid, c_grid=(1e-4, 1.0))
    assert again.trials == tuned.trials  # seeded


def test_tuning_scores_shorter_boosting_along_the_longer_fit():
    """The settings differing only in max_iter share one fit; each one's validation AUC is
    that of its own fit. A shorter chosen model is fitted again to its length: settings
    that cannot split score 0.5 at every length, and the first of equals is kept."""
    rng = np.random.default_rng(6)
    train, valid = _label_plus_noise(rng, 200), _label_plus_noise(rng, 200)
    grid = [{**SMALL, "min_samples_leaf": 10, "max_iter": n} for n in (2, 7, 20)]
    tuned = et.tune_baseline(train, valid, seed=3, boosting_grid=grid, c_grid=())
    for trial, params in zip(tuned.trials, grid):
        alone = et._baseline_estimator("gradient boosting", params, 3).fit(*train)
        assert trial["valid_auc"] == roc_auc(alone.predict_proba(valid[0])[:, 1], valid[1])
    assert tuned.estimator.max_iter == tuned.params["max_iter"]
    flat = [{**SMALL, "min_samples_leaf": 200, "max_iter": n} for n in (2, 7)]
    short = et.tune_baseline(train, valid, seed=3, boosting_grid=flat, c_grid=())
    assert [t["valid_auc"] for t in short.trials] == [0.5, 0.5]
    assert short.params["max_iter"] == 2 and short.estimator.n_iter_ == 2


def test_tuning_refuses_a_validation_set_of_one_class():
    rng = np.random.default_rng(5)
    train = _label_plus_noise(rng, 100)
    valid = (rng.normal(size=(20, 4)), np.zeros(20, np.int8))
    with pytest.raises(ConfigError, match="valid_seeds"):
        et.tune_baseline(train, valid, seed=0, boosting_grid=(), c_grid=(1.0,))


def test_default_grid():
    configs = et.baseline_configs()
    boosting = [p for m, p in configs if m == "gradient boosting"]
    assert len(boosting) == len(et.BOOSTING_GRID) == 32
    assert len({tuple(sorted(p.items())) for p in boosting}) == 32  # all different
    assert {p["max_iter"] for p in boosting} == {100, 300}
    assert [p["C"] for m, p in configs if m == "logistic regression"] == list(
        et.LOGISTIC_C_GRID)


# --- reliability_bins, calibration_summary ----------------------------------------------

PROB = np.array([0.05, 0.15, 0.15, 0.55, 0.95, 1.0, np.nan])
LABEL = np.array([0, 0, 1, 1, 1, 0, 1])
FLAG = np.array([0, 0, 1, 1, 1, 0, 0])


def test_reliability_bins_by_hand():
    bins = et.reliability_bins(PROB, LABEL)
    np.testing.assert_allclose(bins["edges"], np.linspace(0, 1, 11))
    np.testing.assert_array_equal(bins["n"], [1, 2, 0, 0, 0, 1, 0, 0, 0, 2])  # NaN left out
    np.testing.assert_allclose(bins["p_mean"][[0, 1, 5, 9]], [0.05, 0.15, 0.55, 0.975])
    np.testing.assert_allclose(bins["freq"][[0, 1, 5, 9]], [0.0, 0.5, 1.0, 0.5])
    assert np.isnan(bins["freq"][[2, 3, 4, 6, 7, 8]]).all()
    # an edge belongs to the bin above it; 1 to the last bin
    np.testing.assert_array_equal(et.reliability_bins([0.0, 0.5, 1.0], [0, 0, 0], 2)["n"],
                                  [1, 2])


def test_calibration_summary_by_hand():
    """Scored rows: mean probability 2.85 / 6 = 0.475, 3 of 6 unrecognised, so the relative
    difference is 0.475 / 0.5 - 1 = -0.05; BLEND_FLAG over all 7 rows: 3 flagged, holding 3 of
    the 4 unrecognised blends, all 3 unrecognised. One unit for all rows: every resample is
    the whole set, so each interval is the value itself."""
    cal = et.calibration_summary(PROB, LABEL, FLAG, np.zeros(7, int), n_boot=20, seed=1)
    expect = {"mean_prob": 0.475, "positive_fraction": 0.5, "relative_difference": -0.05,
              "flagged_fraction": 3 / 7, "positives_flagged": 0.75, "flagged_positive": 1.0}
    assert (cal["n"], cal["n_scored"]) == (7, 6)
    for key, value in expect.items():
        assert cal[key] == pytest.approx(value, rel=1e-12), key
        np.testing.assert_allclose(cal[key + "_95"], (value, value), rtol=1e-12)
    assert len(cal["reliability"]) == 10
    last = cal["reliability"][9]
    assert (last["lo"], last["hi"], last["n"]) == (pytest.approx(0.9), 1.0, 2)
    assert last["p_mean"] == pytest.approx(0.975) and last["freq"] == 0.5
    np.testing.assert_allclose(last["freq_95"], (0.5, 0.5))
    assert cal["reliability"][2]["n"] == 0 and np.isnan(cal["reliability"][2]["freq"])


def test_calibration_summary_intervals_resample_units():
    """Each row its own unit: the intervals of a fraction lie within [0, 1] and hold
    the value; no flag at all gives NaN for the flagged rows' purity."""
    cal = et.calibration_summary(PROB, LABEL, np.zeros(7), np.arange(7), n_boot=200, seed=2)
    lo, hi = cal["positive_fraction_95"]
    assert 0 <= lo <= cal["positive_fraction"] <= hi <= 1
    assert cal["flagged_fraction"] == 0 and cal["positives_flagged"] == 0
    assert np.isnan(cal["flagged_positive"])


def test_report_json_has_no_nan_or_tuples():
    import json

    info = {"a": (1.0, float("nan")), "b": [np.float64(2.5), {"c": np.int64(3)}]}
    assert json.loads(json.dumps(et._jsonable(info), allow_nan=False)) == {
        "a": [1.0, None], "b": [2.5, {"c": 3}]}
