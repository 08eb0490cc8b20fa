"""Tests of bh_stage.study.metrics: rates and ROC numbers on hand-made scores with ties, the
same numbers as scikit-learn's on random scores with ties, and the galaxy bootstrap against
the row bootstrap."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bh_stage.study import metrics

# --- ROC --------------------------------------------------------------------------------


@pytest.mark.parametrize("scores, labels, auc", [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),     # perfect
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),     # reversed
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),     # constant: every pair a tie
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),   # scikit-learn's example
    ([0.3, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.875),   # one tied pair of four counts 1/2
])
def test_roc_auc_known_answers(scores, labels, auc):
    assert metrics.roc_auc(scores, labels) == pytest.approx(auc, abs=1e-12)


def test_roc_auc_one_class_is_nan():
    assert np.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))
    assert np.isnan(metrics.roc_auc([0.1, 0.2], [0, 0]))


def test_accuracy_and_rates_known_answers():
    pred = np.array([1, 1, 0, 0, 1, 0, 0, 0])
    label = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    assert metrics.accuracy(pred, label) == pytest.approx(6 / 8)
    tpr, tnr = metrics.confusion_rates(pred, label)
    assert tpr == pytest.approx(2 / 3)
    assert tnr == pytest.approx(4 / 5)
    assert metrics.binary_auc(pred, label) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert np.isnan(metrics.accuracy([], []))
    assert np.isnan(metrics.confusion_rates([0, 1], [0, 0])[0])
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.accuracy([1, 0], [1])


def test_roc_auc_matches_trapezoid_of_roc_curve():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes ties
    fpr, tpr = metrics.roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert metrics.auc_from_points(fpr, tpr) == pytest.approx(metrics.roc_auc(scores, labels))


def test_auc_from_points():
    assert metrics.auc_from_points([0.2], [0.8]) == pytest.approx(0.8)
    assert metrics.auc_from_points([], []) == pytest.approx(0.5)
    # unsorted points with a NaN: sorted, NaN dropped
    # (0, 0) (0, 0.5) (0.5, 1) (1, 1): 0 + 0.5 * 0.75 + 0.5 * 1
    assert metrics.auc_from_points([0.5, 0.0, np.nan], [1.0, 0.5, 0.3]) == pytest.approx(0.875)


def test_accuracy_vs_separation_bins_blends_only():
    pred = np.array([1, 0, 1, 1, 0, 1, 1])
    label = np.array([1, 1, 1, 1, 1, 0, 0])
    sep = np.array([1.0, 3.0, 5.0, 10.0, 19.9, np.nan, np.nan])
    out = metrics.accuracy_vs_separation(pred, label, sep, [0, 5, 10, 20, 40])
    np.testing.assert_array_equal(out["n"], [2, 1, 2, 0])
    np.testing.assert_allclose(out["accuracy"][:3], [0.5, 1.0, 0.5])
    assert np.isnan(out["accuracy"][3])
    np.testing.assert_allclose(out["centres_pix"], [2.5, 7.5, 15, 30])


def test_roc_curve_steps_over_ties():
    fpr, tpr = metrics.roc_curve([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])  # the tie at 0.5 is one point
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])


# negatives 0.5, 0.5, 0.5, 0.1; positives 0.5, 0.9
TIED_SCORES = [0.5, 0.5, 0.5, 0.1, 0.5, 0.9]
TIED_LABELS = [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("fpr, realised, tpr", [
    (0.0, 0.0, 0.5),    # above every negative: only 0.9
    (0.5, 0.0, 0.5),    # 3 of 4 negatives tie at 0.5: taking them would give 0.75
    (0.74, 0.0, 0.5),
    (0.75, 0.75, 1.0),  # just above 0.1: the three tied negatives and both positives
    (0.99, 0.75, 1.0),
    (1.0, 1.0, 1.0),    # every negative allowed: threshold -inf
])
def test_threshold_and_tpr_at_fpr_never_split_ties(fpr, realised, tpr):
    scores, labels = np.array(TIED_SCORES), np.array(TIED_LABELS, bool)
    t = metrics.threshold_at_fpr(scores, labels, fpr)
    assert np.mean(scores[~labels] >= t) == pytest.approx(realised, abs=1e-12)
    assert metrics.tpr_at_fpr(scores, labels, fpr) == pytest.approx(tpr, abs=1e-12)


def test_threshold_at_fpr_is_just_above_a_negative():
    t = metrics.threshold_at_fpr(TIED_SCORES, TIED_LABELS, 0.5)
    assert t > 0.5 and t == np.nextafter(0.5, 1.0)
    assert metrics.threshold_at_fpr(TIED_SCORES, TIED_LABELS, 1.0) == -np.inf
    assert metrics.threshold_at_fpr([0.3], [1], 0.1) == -np.inf  # no negatives
    assert np.isnan(metrics.tpr_at_fpr([0.3, 0.4], [0, 0], 0.1))  # no positives


def test_threshold_at_fpr_reaches_a_decimal_target():
    scores = np.arange(100.0)
    t = metrics.threshold_at_fpr(scores, np.zeros(100, bool), 0.29)
    assert t == np.nextafter(70.0, np.inf)  # 29 negatives (71 ... 99) at or above t
    assert np.mean(scores >= t) == 0.29


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5001, 0.9, 1.0]),
                       min_size=1, max_size=40),
       data=st.data(), fpr=st.floats(0.0, 1.0))
def test_threshold_at_fpr_property(scores, data, fpr):
    """Few distinct scores, so most cases have ties: the realised FPR never exceeds the
    target, and the next lower negative score as threshold would exceed it."""
    labels = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores),
                                         max_size=len(scores))))
    scores = np.array(scores)
    neg = scores[~labels]
    t = metrics.threshold_at_fpr(scores, labels, fpr)
    if neg.size == 0:
        assert t == -np.inf
        return
    # threshold_at_fpr adds 1e-9 to fpr * n_negatives before flooring, so that a decimal
    # target such as 0.29 of 100 is reached (0.29 * 100 is 28.999999999999996)
    assert np.mean(neg >= t) <= fpr + 1e-9 / neg.size
    below = neg[neg < t]
    if below.size:  # t is the lowest threshold: one step lower takes too many negatives
        assert np.mean(neg >= below.max()) > fpr
    tpr = metrics.tpr_at_fpr(scores, labels, fpr)
    if labels.any():
        assert tpr == pytest.approx(np.mean(scores[labels] >= t), abs=1e-12)


# --- bootstrap by galaxy ----------------------------------------------------------------

def test_bootstrap_with_one_row_per_group_is_the_row_bootstrap():
    x = np.random.default_rng(4).normal(5.0, 1.0, 200)
    boot = metrics.group_bootstrap(np.arange(200), lambda rows: x[rows].mean(), n_boot=4000,
                                   seed=1)
    assert boot.shape == (4000,)
    se = x.std() / np.sqrt(200)  # the bootstrap's standard error of the mean
    assert boot.mean() == pytest.approx(x.mean(), abs=4 * se / np.sqrt(4000))
    assert boot.std() == pytest.approx(se, rel=0.05)


def test_bootstrap_of_identical_rows_in_groups_is_wider():
    """20 galaxies, each seen in 10 identical rows: the data hold 20 independent values, so
    the interval is sqrt(10) times the row bootstrap's, which wrongly counts 200."""
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(20), 10)
    x = rng.normal(0.0, 1.0, 20)[groups]

    def mean(rows):
        return x[rows].mean()

    lo_g, hi_g = metrics.interval(metrics.group_bootstrap(groups, mean, 2000, seed=2))
    lo_r, hi_r = metrics.interval(metrics.group_bootstrap(np.arange(200), mean, 2000, seed=2))
    assert (hi_g - lo_g) / (hi_r - lo_r) == pytest.approx(np.sqrt(10), rel=0.15)
    se_g = x[::10].std() / np.sqrt(20)
    assert hi_g - lo_g == pytest.approx(2 * 1.96 * se_g, rel=0.15)
    assert lo_g < x.mean() < hi_g


def test_bootstrap_draws_whole_groups_and_is_seeded():
    groups = np.array([7, 3, 3, 3])  # sizes 1 and 3; labels need not be 0..k-1
    sizes = metrics.group_bootstrap(groups, len, n_boot=300, seed=0)
    assert set(sizes) == {2.0, 4.0, 6.0}  # two groups drawn: 1+1, 1+3 or 3+3 rows
    first = metrics.group_bootstrap(groups, lambda r: np.sort(r)[0], n_boot=50, seed=3)
    again = metrics.group_bootstrap(groups, lambda r: np.sort(r)[0], n_boot=50, seed=3)
    np.testing.assert_array_equal(first, again)
    vec = metrics.group_bootstrap(groups, lambda r: np.array([len(r), np.nan]), n_boot=5)
    assert vec.shape == (5, 2) and np.all(np.isnan(vec[:, 1]))


def test_interval_levels():
    samples = np.arange(1001.0)  # percentiles are exact: the q-th percentile is 10 q
    assert metrics.interval(samples) == pytest.approx((25.0, 975.0))
    assert metrics.interval(samples, level=0.68) == pytest.approx((160.0, 840.0))
    assert metrics.interval(samples, level=0.0) == pytest.approx((500.0, 500.0))
    with_nan = np.r_[samples, [np.nan] * 50]
    assert metrics.interval(with_nan, 0.9) == pytest.approx((50.0, 950.0))
    lo, hi = metrics.interval([np.nan, np.nan])
    assert np.isnan(lo) and np.isnan(hi)


# --- operating points and partial AUC ---------------------------------------------------


def test_partial_auc_perfect_random_and_known():
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    perfect = np.r_[np.zeros(100), np.ones(100)]
    assert metrics.partial_auc(perfect, labels, 0.05) == pytest.approx(1.0)
    # a constant score is the random classifier TPR = FPR: area 0.05^2 / 2, over 0.05
    assert metrics.partial_auc(np.full(200, 0.5), labels, 0.05) == pytest.approx(0.025)
    # ROC (0, 0) -> (0, 0.5) -> (0.5, 1) -> (1, 1) cut at FPR 0.1: y(0.1) = 0.6
    assert metrics.auc_from_points([0.0, 0.5], [0.5, 1.0], max_fpr=0.1) == pytest.approx(
        (0.5 + 0.6) / 2)
    assert metrics.auc_from_points([0.0, 0.5], [0.5, 1.0]) == pytest.approx(0.875)
    assert np.isnan(metrics.partial_auc([0.1, 0.2], [1, 1]))


def test_tpr_at_fpr_and_fpr_at_tpr_known_answers():
    # negatives 0.1..0.4 and 0.6, positives 0.5, 0.7, 0.8, 0.9
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.5, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    assert metrics.tpr_at_fpr(scores, labels, 0.0) == 0.75   # t just above 0.6
    assert metrics.tpr_at_fpr(scores, labels, 0.2) == 1.0    # one negative allowed
    assert metrics.fpr_at_tpr(scores, labels, 0.75) == 0.0   # t = 0.7
    assert metrics.fpr_at_tpr(scores, labels, 1.0) == 0.2    # t = 0.5 lets 0.6 in
    assert metrics.fpr_at_tpr(scores, labels, 0.0) == 0.0    # at least one positive: 0.9


def test_group_bootstrap_of_a_paired_difference():
    """A paired difference that is 0 in every galaxy has the interval [0, 0]; with whole
    galaxies right or wrong, the galaxy interval is wider than the stamp interval."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(30), 25)
    a_ok = np.repeat(rng.random(30) < 0.8, 25).astype(float)   # method A per galaxy
    zero = metrics.group_bootstrap(groups, lambda r: a_ok[r].mean() - a_ok[r].mean(), 200)
    lo, hi = metrics.interval(zero, 0.95)
    assert lo <= 0 <= hi and hi - lo == 0
    b_ok = np.full(a_ok.size, 0.8)
    diff = metrics.group_bootstrap(groups, lambda r: a_ok[r].mean() - b_ok[r].mean(), 400)
    rows = metrics.group_bootstrap(np.arange(groups.size),
                                   lambda r: a_ok[r].mean() - b_ok[r].mean(), 400)
    w_gal = np.subtract(*metrics.interval(diff, 0.95)[::-1])
    w_row = np.subtract(*metrics.interval(rows, 0.95)[::-1])
    assert w_gal > 3 * w_row
    assert np.subtract(*metrics.interval(diff, 0.68)[::-1]) < w_gal


# --- against scikit-learn ---------------------------------------------------------------

SEEDS = range(20)


@pytest.fixture(scope="module")
def skm():
    """sklearn.metrics, the reference (scikit-learn comes with the [study] extra)."""
    return pytest.importorskip("sklearn.metrics")


def tied_scores(seed):
    """Random scores with many ties (rounded to 0-2 decimals) and 0/1 labels of both classes,
    from 2 to 400 rows, 5-95 % blends, the classes separated by 0-2 sigma."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 401))
    labels = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * rng.uniform(0.0, 2.0), 1.0), int(rng.integers(0, 3)))
    assert np.unique(scores).size < n  # ties, always
    return scores, labels, rng


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_is_sklearns(skm, seed):
    scores, labels, _ = tied_scores(seed)
    assert metrics.roc_auc(scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.roc_auc(-scores, labels) == pytest.approx(
        skm.roc_auc_score(labels, -scores), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_curve_is_sklearns_without_dropped_points(skm, seed):
    """One point per distinct score, (0, 0) first: scikit-learn's curve with
    ``drop_intermediate=False``, the same floats."""
    scores, labels, _ = tied_scores(seed)
    fpr, tpr = metrics.roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)
    assert metrics.auc_from_points(fpr, tpr) == pytest.approx(skm.auc(sk_fpr, sk_tpr),
                                                              abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_operating_points_are_sklearns(skm, seed):
    """At an FPR target, the threshold's (FPR, TPR) is scikit-learn's ROC point of highest TPR
    with FPR <= target; at a TPR target, its FPR is the lowest FPR of the points with TPR >=
    target. Random targets (plus 0 and 1) stay clear of the 1e-9 slack that lets a decimal
    target such as 0.29 count 29 of 100 (test_threshold_at_fpr_reaches_a_decimal_target)."""
    scores, labels, rng = tied_scores(seed)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    negatives = scores[labels == 0]
    for target in np.r_[0.0, 1.0, rng.random(15)]:
        best = np.flatnonzero(sk_fpr <= target)[-1]  # the curve rises: the last one is best
        t = metrics.threshold_at_fpr(scores, labels, target)
        assert np.mean(negatives >= t) == pytest.approx(sk_fpr[best], abs=1e-12)
        assert metrics.tpr_at_fpr(scores, labels, target) == pytest.approx(sk_tpr[best],
                                                                           abs=1e-12)
    for target in np.r_[1.0, 1.0 - rng.random(15)]:  # (0, 1]
        assert metrics.fpr_at_tpr(scores, labels, target) == pytest.approx(
            sk_fpr[sk_tpr >= target].min(), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_fpr", [0.05, 0.2, 0.5, 1.0])
def test_partial_auc_is_sklearns_before_mcclish(skm, seed, max_fpr):
    """scikit-learn's ``roc_auc_score(max_fpr=m)`` is McClish's standardisation of the raw
    area A up to m, 1/2 (1 + (A - m^2/2) / (m - m^2/2)); partial_auc is A / m."""
    scores, labels, _ = tied_scores(seed)
    area = metrics.partial_auc(scores, labels, max_fpr) * max_fpr
    mcclish = skm.roc_auc_score(labels, scores, max_fpr=max_fpr)
    low, high = max_fpr**2 / 2, max_fpr  # the random and the perfect classifier
    assert area == pytest.approx(low + (2 * mcclish - 1) * (high - low), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_rates_are_sklearns(skm, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    label = rng.integers(0, 2, n)
    label[:2] = [0, 1]
    pred = np.where(rng.random(n) < 0.7, label, 1 - label)
    assert metrics.accuracy(pred, label) == pytest.approx(skm.accuracy_score(label, pred),
                                                          abs=1e-12)
    tpr, tnr = metrics.confusion_rates(pred, label)
    assert tpr == pytest.approx(skm.recall_score(label, pred, pos_label=1), abs=1e-12)
    assert tnr == pytest.approx(skm.recall_score(label, pred, pos_label=0), abs=1e-12)
    assert metrics.binary_auc(pred, label) == pytest.approx(
        skm.balanced_accuracy_score(label, pred), abs=1e-12)
    # a binary verdict's ROC AUC is its 2-point AUC
    assert metrics.binary_auc(pred, label) == pytest.approx(skm.roc_auc_score(label, pred),
                                                            abs=1e-12)
