"""Tests of bh_stage.study.evaluate: evaluate's use of the SEP rules, matched operating points,
and an end-to-end run on a tiny fake data set with a fake classifier (the metrics themselves
are tested in test_metrics.py)."""

import csv

import numpy as np
import pytest

from bh_stage.study import evaluate as ev
from bh_stage.study import evaluate_report
from bh_stage.study import metrics as mt
from bh_stage.config import EvaluateConfig, SepConfig, config_from_dict
from bh_stage.errors import ConfigError, OutputExistsError

# --- truth helpers and config -----------------------------------------------------------


def test_snr_mask_and_true_positions():
    from bh_stage.study.simulate import TRUTH_DTYPE

    t = np.zeros(3, TRUTH_DTYPE)
    t["label"] = [0, 1, 1]
    t["snr_unit0"] = [200, 200, 200]
    t["snr_unit1"] = [np.nan, 200, 50]
    t["x0_pix"], t["y0_pix"] = 25, 24
    t["x1_pix"], t["y1_pix"] = [np.nan, 30, 31], [np.nan, 20, 21]
    np.testing.assert_array_equal(ev.snr_mask(t, 10.0, 10.0), [True, True, False])
    xy = ev.true_positions(t, 7)
    np.testing.assert_allclose(xy[1], [[32, 31], [37, 27]])
    assert np.isnan(xy[0, 1]).all()


def test_config_checks():
    with pytest.raises(ConfigError, match="strictly increasing"):
        config_from_dict(EvaluateConfig, {"separation_bins_pix": [0, 5, 5]})
    with pytest.raises(ConfigError, match="repeats"):
        config_from_dict(EvaluateConfig, {"realisations": [0, 0]})
    with pytest.raises(ConfigError, match="at least one head"):
        config_from_dict(EvaluateConfig, {"heads": []})


# --- a tiny data set --------------------------------------------------------------------

PAD = 7


def _blob(xx, yy, x, y, flux, sigma=1.8):
    return flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (
        2 * np.pi * sigma**2)


def make_dataset(path, n=40, seed=3):
    """n noise-free padded stamps: half isolated, half pairs at 2-25 px; test split."""
    from bh_stage.io import write_dataset
    from bh_stage.study.simulate import SPLIT_TEST, SPLIT_TRAIN, TRUTH_DTYPE

    rng = np.random.default_rng(seed)
    side = 51 + 2 * PAD
    yy, xx = np.mgrid[:side, :side]
    stamps = np.zeros((n, side, side), np.float32)
    truth = np.zeros(n, TRUTH_DTYPE)
    for name in ("x1_pix", "y1_pix", "separation_pix", "flux_ratio", "mag1", "flux1_adu",
                 "snr_unit1"):
        truth[name] = np.nan
    truth["gal_id1"] = -1
    truth["index"] = np.arange(n)
    truth["gal_id0"] = np.arange(n) % 9  # 9 main galaxies, reused
    truth["split"] = SPLIT_TEST
    truth["split"][-4:] = SPLIT_TRAIN  # left out by split 'test'
    truth["kind"] = b"parametric"
    truth["x0_pix"] = truth["y0_pix"] = 25.0
    truth["flux0_adu"] = 3000.0
    for i in range(n):
        img = _blob(xx, yy, 25 + PAD, 25 + PAD, 3000.0)
        truth["snr_unit0"][i] = np.sqrt(np.sum(img**2))
        if i % 2:
            r = 2.0 + 23.0 * (i // 2) / (n // 2)
            ang = rng.uniform(0, 2 * np.pi)
            x1, y1 = 25 + r * np.cos(ang), 25 + r * np.sin(ang)
            flux1 = 800.0 if i % 4 == 1 else 3000.0
            comp = _blob(xx, yy, x1 + PAD, y1 + PAD, flux1)
            img = img + comp
            truth["label"][i] = 1
            truth["x1_pix"][i], truth["y1_pix"][i] = x1, y1
            truth["separation_pix"][i] = r
            truth["flux1_adu"][i] = flux1
            truth["snr_unit1"][i] = np.sqrt(np.sum(comp**2))
        stamps[i] = img
    attrs = {"seed": 11, "pad_pix": PAD, "size_pix": 51, "set_kind": "parametric",
             "noise_sigma_adu": np.array([5.0, 10.0])}
    write_dataset(path, stamps, truth, attrs)
    return path


def test_stamp_metrics_both_sep_rules_and_matched_points():
    """Known answers on 8 stamps: both SEP rules, the hybrid on the stage rule, BH moved to
    each rule's operating point."""
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    sep_pix = np.array([3.0, 5.0, 15.0, 20.0] + [np.nan] * 4)
    p = np.array([0.9, 0.8, 0.3, 0.7, 0.6, 0.2, 0.1, 0.05])
    paper = np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int8)      # FPR 0, TPR 0.5
    stage = np.array([0, 1, 1, 1, 0, 0, 0, 1], np.int8)      # FPR 0.25, TPR 0.75
    m = ev.stamp_metrics(p, (0.5, 0.85), paper, stage, label, sep_pix, 10.0)
    assert m["SEP_paper:tpr"] == 0.5 and m["SEP_paper:fpr"] == 0.0
    assert m["SEP_stage:tpr"] == 0.75 and m["SEP_stage:fpr"] == 0.25
    assert m["BH:accuracy"] == pytest.approx(6 / 8)          # misses 0.3, false 0.6
    # hybrid = stage rule or p >= 0.85: catches stamp 0, keeps stage's false positive
    assert m["hybrid:tpr"] == 1.0 and m["hybrid:fpr"] == 0.25
    assert m["hybrid-SEP_stage:accuracy"] == pytest.approx(1 / 8)
    assert m["hybrid-SEP_paper:accuracy"] == pytest.approx(7 / 8 - 6 / 8)
    # BH at FPR <= 0: threshold above 0.6 -> TPR 3/4; at TPR >= 0.5: t 0.8 -> FPR 0
    assert m["BH@SEP_paper:tpr_at_fpr"] == 0.75
    assert m["BH-SEP_paper:tpr_at_fpr"] == pytest.approx(0.25)
    assert m["BH@SEP_paper:fpr_at_tpr"] == 0.0
    # at TPR >= 0.75 (stage): t 0.7 -> FPR 0
    assert m["BH@SEP_stage:fpr_at_tpr"] == 0.0
    # close blends (3, 5 px): paper TPR 0; BH at FPR <= 0 + 1 pt: both caught, FPR 0
    assert m["SEP_paper:tpr_close"] == 0.0
    assert m["BH@SEP_paper:tpr_close_at_fpr"] == 1.0 and m["BH@SEP_paper:fpr_slack"] == 0.0
    assert m["BH-SEP_paper:tpr_close_at_fpr"] == 1.0
    assert m["BH:pauc"] == pytest.approx(
        mt.partial_auc(p, label, ev.MAX_FPR))
    assert "SEP_paper:pauc_scan" not in m


def test_galaxy_intervals_paired_zero_and_reused_galaxies():
    """A difference that is exactly 0 in every stamp has the interval [0, 0]; intervals of
    a metric on reused galaxies are wider than the stamp bootstrap's."""
    rng = np.random.default_rng(4)
    n = 400
    gal = np.repeat(np.arange(20), 20)            # 20 galaxies, 20 stamps each
    label = rng.integers(0, 2, n).astype(bool)
    good = rng.random(20) < 0.5                    # a galaxy is easy or hard for SEP
    p = np.where(label, 0.9, 0.1)
    sep = np.where(good[gal], label, ~label).astype(np.int8)
    data = {"p_blend": p, "sep_paper": sep, "sep_stage": sep, "label": label,
            "sep_pix": np.where(label, 15.0, np.nan), "gal_id0": gal,
            "sep_scan": np.zeros((0, n), bool)}
    # BH says what SEP says: the paired difference is 0 in every resample
    same = ev.galaxy_intervals(dict(data, p_blend=np.where(sep == 1, 0.9, 0.1)), (0.5, 0.5),
                               10.0, 300, 0)
    assert same["BH-SEP_paper:accuracy"] == (0.0, 0.0, 0.0, 0.0, 0.0)
    by_galaxy = ev.galaxy_intervals(data, (0.5, 0.5), 10.0, 300, 0)
    v = by_galaxy["BH-SEP_stage:accuracy"]
    assert v[3] <= v[1] <= v[0] <= v[2] <= v[4]
    data_stamps = dict(data, gal_id0=np.arange(n))
    by_stamp = ev.galaxy_intervals(data_stamps, (0.5, 0.5), 10.0, 300, 0)
    w_gal = v[4] - v[3]
    w_stamp = by_stamp["BH-SEP_stage:accuracy"][4] - by_stamp["BH-SEP_stage:accuracy"][3]
    assert w_gal > 2 * w_stamp
    # BH is perfect in every resample: its accuracy interval is [1, 1]
    assert by_galaxy["BH:accuracy"][1:] == (1.0, 1.0, 1.0, 1.0)


def test_crossval_intervals_mean_of_folds_and_stratified():
    """The pooled value is the mean of the folds; identical folds pool to the same value with
    a narrower interval (twice the galaxies); fold intervals equal galaxy_intervals'."""
    rng = np.random.default_rng(5)
    n = 400
    gal = np.repeat(np.arange(20), 20)
    label = rng.integers(0, 2, n).astype(bool)
    p = np.clip(np.where(label, 0.7, 0.3) + rng.normal(0, 0.3, 20)[gal], 0, 1)
    sep = label.astype(np.int8)
    data = {"p_blend": p, "sep_paper": sep, "sep_stage": sep, "label": label,
            "sep_pix": np.where(label, 15.0, np.nan), "gal_id0": gal,
            "sep_scan": np.zeros((0, n), bool)}
    worse = dict(data, p_blend=np.clip(p + rng.normal(0, 0.3, n), 0, 1))
    one = ev.galaxy_intervals(data, (0.5, 0.5), 10.0, 300, 0)
    cv = ev.crossval_intervals([(data, (0.5, 0.5)), (worse, (0.4, 0.5))], 10.0, 300, 0)
    np.testing.assert_equal(cv["folds"][0], one)  # NaN where undefined (no close blends)
    other = ev.galaxy_intervals(worse, (0.4, 0.5), 10.0, 300, 1)
    np.testing.assert_equal(cv["folds"][1], other)
    for key in ("BH:accuracy", "BH:auc", "hybrid-SEP_stage:accuracy"):
        assert cv["pooled"][key][0] == pytest.approx((one[key][0] + other[key][0]) / 2)
    same = ev.crossval_intervals([(data, (0.5, 0.5)), (data, (0.5, 0.5))], 10.0, 300, 0)
    v, w = same["pooled"]["BH:accuracy"], one["BH:accuracy"]
    assert v[0] == w[0] and v[4] - v[3] < 0.85 * (w[4] - w[3])


def test_sep_outputs_use_true_positions_in_padded_stamp():
    """Two separated blobs at the true positions: SEP labels the stamp blended; true
    positions shifted by pad_pix matter (unshifted, the pair does not match)."""
    side = 65
    yy, xx = np.mgrid[:side, :side]
    img = _blob(xx, yy, 32, 32, 3000.0) + _blob(xx, yy, 44, 32, 3000.0)
    noisy = (img + np.random.default_rng(0).normal(0, 5.0, img.shape))[None].astype(
        np.float32)
    cfg = config_from_dict(EvaluateConfig, {"sep_scan_deblend_cont": [1.0, 0.005]})
    from bh_stage.study.simulate import TRUTH_DTYPE

    t = np.zeros(1, TRUTH_DTYPE)
    t["x0_pix"], t["y0_pix"], t["x1_pix"], t["y1_pix"] = 25, 25, 37, 25
    out = ev._sep_outputs(noisy, ev.true_positions(t, PAD), cfg)
    assert out["sep_paper"][0] == 1 and out["sep_stage"][0] == 1
    assert out["sep_scan"].shape == (2, 1)
    wrong = ev._sep_outputs(noisy, ev.true_positions(t, 0), cfg)
    assert wrong["sep_paper"][0] != 1


def _cfg(tmp_path, dataset, **kw):
    data = {"dataset": str(dataset), "heads": ["a", "b"], "noise_sigma_adu": [5.0, 10.0],
            "realisations": [0, 1], "split": "test", "max_stamps": None,
            "sep_scan_deblend_cont": [1.0, 0.005, 0.0001],
            "output_dir": str(tmp_path / "out"), "n_bootstrap": 50}
    data.update(kw)
    return config_from_dict(EvaluateConfig, data)


@pytest.fixture
def two_heads(fake_classifier, monkeypatch, tmp_path):
    """Fake heads 'a' (trained at 5 ADU) and 'b' (at 10 ADU)."""
    from bh_stage import model

    load = model.load_classifier

    def load_named(head, **kwargs):
        clf = load(head, **kwargs)
        clf.metadata["noise_sigma_adu"] = 5.0 if "a" in str(head) else 10.0
        return clf

    monkeypatch.setattr(model, "head_path", lambda name, **_: tmp_path / f"{name}.json")
    monkeypatch.setattr(model, "load_classifier", load_named)
    return fake_classifier


def test_evaluate_end_to_end(tmp_path, two_heads):
    ds = make_dataset(tmp_path / "tiny.h5")
    cfg = _cfg(tmp_path, ds)
    calls = []
    result = ev.evaluate(cfg, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (4, 4)
    out = tmp_path / "out"
    for name in ev.OUTPUT_NAMES:
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".inprogress*"))
    assert result["n_stamps"] == 36  # 4 training stamps left out
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result["rows"])
    assert {r["head"] for r in rows} == {"a", "b"}
    assert {r["stamps"] for r in rows} == {"all", "snr", "fig6_close", "fig6_far"}

    def value(method, metric, head="a", sigma=5.0, real=0, stamps="all"):
        (v,) = [r["value"] for r in result["rows"] if r["head"] == head and
                r["sigma_adu"] == sigma and r["realisation"] == real and
                r["stamps"] == stamps and r["method"] == method and r["metric"] == metric]
        return v

    # consistency: differences are the paired values
    for rule in ev.SEP_RULES:
        assert value(f"hybrid-{rule}", "accuracy") == pytest.approx(
            value("hybrid", "accuracy") - value(rule, "accuracy"))
        assert 0 <= value(f"BH@{rule}", "tpr_at_fpr") <= 1
    # SEP does not depend on the head
    assert value("SEP_paper", "accuracy", head="a") == value("SEP_paper", "accuracy", head="b")
    # bright, well-separated Gaussian pairs: SEP gets most far blends
    assert value("SEP_paper", "tpr_far") >= 0.7
    # pooled rows carry ordered intervals from the galaxy bootstrap
    pooled = [r for r in result["rows"] if r["realisation"] == "pooled"]
    assert {r["stamps"] for r in pooled} == {"all", "snr"}
    for r in pooled:
        if np.isfinite(r["lo95"]):
            assert r["lo95"] <= r["lo68"] <= r["hi68"] <= r["hi95"]
    (acc,) = [r for r in pooled if r["head"] == "a" and r["sigma_adu"] == 5.0 and
              r["stamps"] == "all" and r["method"] == "BH" and r["metric"] == "accuracy"]
    assert acc["lo95"] < acc["hi95"]
    assert result["n_galaxies"] == 9
    # scores.npz holds head a's stamps at the first sigma: its galaxy intervals are the
    # pooled rows (same stamps, thresholds, resamples and seed)
    from bh_stage.io import read_scores

    data, thresholds = read_scores(out / "scores.npz")
    assert len(thresholds) == 2 and all(0 < t < 1 for t in thresholds)
    assert 0 < len(data["label"]) == len(data["p_blend"]) <= 36 * len(cfg.realisations)
    (snr_acc,) = [r for r in pooled if r["head"] == "a" and r["sigma_adu"] == 5.0 and
                  r["stamps"] == "snr" and r["method"] == "BH" and r["metric"] == "accuracy"]
    ok = data["snr_ok"]
    assert ok.dtype == bool and snr_acc["value"] == pytest.approx(
        np.mean((data["p_blend"][ok] >= thresholds[0]) == data["label"][ok]))
    again = ev.galaxy_intervals(data, thresholds, cfg.close_max_pix, cfg.n_bootstrap,
                                cfg.seed)
    assert again["BH:accuracy"] == pytest.approx(
        (acc["value"], acc["lo68"], acc["hi68"], acc["lo95"], acc["hi95"]))
    md = (out / "results.md").read_text()
    # regression: results.md carried the absolute paths of the machine that made it
    assert str(tmp_path) not in md and "on `tiny.h5`" in md and "dataset: tiny.h5" in md
    assert md.count("PASS") + md.count("MISS") == 2 * len(ev.TARGETS)
    assert "McNemar" not in md.replace("No McNemar", "")
    h = result["headline"]
    verdict = {t[0]: t[3] for t in result["targets"]["all"]}
    v = h["hybrid-SEP_stage:accuracy"]
    assert verdict["hybrid - stage-rule SEP, accuracy"] == (
        "PASS" if v[0] >= 0.01 and v[3] > 0 else "MISS")
    assert verdict["BH alone - paper-rule SEP, accuracy"] == (
        "PASS" if h["BH-SEP_paper:accuracy"][0] >= -0.01 else "MISS")


def test_results_paths_are_relative_or_file_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert evaluate_report.shown_path("sim/x.h5") == "sim/x.h5"
    assert evaluate_report.shown_path(tmp_path / "sim" / "x.h5") == "sim/x.h5"
    assert evaluate_report.shown_path("/elsewhere/sim/x.h5") == "x.h5"


def test_evaluate_refuses_overwrite_then_replaces(tmp_path, two_heads):
    ds = make_dataset(tmp_path / "tiny.h5", n=16)
    cfg = _cfg(tmp_path, ds, heads=["a"], noise_sigma_adu=[5.0], realisations=[0],
               split="all", sep_scan_deblend_cont=[])
    line = ev.run_evaluate(cfg)
    assert line.startswith("evaluated 16 stamps of 9 main galaxies") and "targets" in line
    with pytest.raises(OutputExistsError, match="overwrite"):
        ev.evaluate(cfg)
    cfg.overwrite = True
    res = ev.evaluate(cfg)
    # one realisation: no spread is shown, never "± 0"
    assert "±" not in (tmp_path / "out" / "results.md").read_text()
    # without a scan, no partial AUC of SEP's scan
    assert not [r for r in res["rows"] if r["metric"] == "pauc_scan"]


def test_evaluate_is_reproducible(tmp_path, two_heads, monkeypatch):
    """Same config, same numbers; also when io can read the truth alone (then only the
    selected stamps are read)."""
    from bh_stage import io

    ds = make_dataset(tmp_path / "tiny.h5", n=16)

    def run(out):
        return ev.evaluate(_cfg(tmp_path, ds, heads=["a"], noise_sigma_adu=[10.0],
                                realisations=[1], split="all", max_stamps=10,
                                output_dir=str(tmp_path / out)))

    a = run("o1")
    b = run("o2")
    monkeypatch.setattr(io, "read_truth", lambda path: io.read_dataset(path).truth,
                        raising=False)
    c = run("o3")
    for other in (b, c):
        assert [r["value"] for r in a["rows"]] == pytest.approx(
            [r["value"] for r in other["rows"]], nan_ok=True)
    assert a["n_stamps"] == 10


def test_sep_config_is_reused():
    cfg = config_from_dict(EvaluateConfig, {"sep": {"deblend_cont": 0.01}})
    assert isinstance(cfg.sep, SepConfig) and cfg.sep.deblend_cont == 0.01


def test_read_scores_names_a_missing_file(tmp_path):
    from bh_stage.errors import InputFileError
    from bh_stage.io import read_scores

    missing = tmp_path / "fold" / "scores.npz"
    with pytest.raises(InputFileError, match=r"fold/scores.npz: no such file"):
        read_scores(missing)
