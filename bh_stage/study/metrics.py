"""Pure metrics of a score against truth, and intervals by galaxy.

Inputs are arrays: binary verdicts or scores (higher means more likely blended), 0/1
labels and, for intervals, the group (distinct galaxy) of each row. Stamps and tile
detections reuse few galaxies, so intervals come from a bootstrap that resamples galaxies,
never rows (``group_bootstrap``).
"""

import numpy as np

__all__ = ["accuracy", "confusion_rates", "binary_auc", "accuracy_vs_separation", "roc_auc",
           "roc_curve", "auc_from_points", "partial_auc", "tpr_at_fpr", "threshold_at_fpr",
           "fpr_at_tpr", "group_bootstrap", "interval"]


def _as_bool(pred):
    return np.asarray(pred).astype(bool)


def accuracy(pred, label):
    """Return the fraction of correct predictions.

    Parameters
    ----------
    pred, label : array_like of {0, 1} or bool, shape (n,)
        Prediction (1 blended) and truth.

    Returns
    -------
    float
        Accuracy in [0, 1]; NaN when ``n`` is 0.

    Examples
    --------
    >>> accuracy([1, 0, 1, 1], [1, 0, 0, 1])
    0.75
    """
    pred, label = _as_bool(pred), _as_bool(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} must have equal shapes")
    return float(np.mean(pred == label)) if pred.size else float("nan")


def confusion_rates(pred, label):
    """Return the true-positive and true-negative rates.

    Returns
    -------
    tpr : float
        Fraction of blends (label 1) predicted blended; NaN without blends.
    tnr : float
        Fraction of isolated stamps (label 0) predicted isolated; NaN without any.
        The false-positive rate is ``1 - tnr``.

    Examples
    --------
    >>> confusion_rates([1, 0, 1, 0], [1, 1, 0, 0])
    (0.5, 0.5)
    """
    pred, label = _as_bool(pred), _as_bool(label)
    pos, neg = label, ~label
    tpr = float(np.mean(pred[pos])) if pos.any() else float("nan")
    tnr = float(np.mean(~pred[neg])) if neg.any() else float("nan")
    return tpr, tnr


def binary_auc(pred, label):
    """Return the 2-point AUC of a binary verdict, ``(TPR + TNR) / 2``."""
    tpr, tnr = confusion_rates(pred, label)
    return (tpr + tnr) / 2.0


def accuracy_vs_separation(pred, label, separation_pix, bins):
    """Return the accuracy on blends in bins of separation (the paper's Figure 3).

    Parameters
    ----------
    pred, label : array_like, shape (n,)
        Prediction and truth; only blends (label 1 with a finite separation) are binned.
    separation_pix : array_like of float, shape (n,)
        Separation of the two galaxies, pixels (NaN for isolated stamps).
    bins : array_like of float
        Increasing bin edges, pixels; a bin holds ``edge[i] <= s < edge[i + 1]``.

    Returns
    -------
    dict
        ``edges_pix``, ``centres_pix`` (ndarray), ``accuracy`` (ndarray, NaN in empty bins;
        on blends this is the true-positive rate), ``n`` (ndarray of int).
    """
    pred, label = _as_bool(pred), _as_bool(label)
    sep = np.asarray(separation_pix, dtype=np.float64)
    edges = np.asarray(bins, dtype=np.float64)
    blend = label & np.isfinite(sep)
    which = np.digitize(sep[blend], edges) - 1
    nbin = len(edges) - 1
    inside = (which >= 0) & (which < nbin)
    n = np.bincount(which[inside], minlength=nbin)
    good = np.bincount(which[inside], weights=pred[blend][inside], minlength=nbin)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, good / np.maximum(n, 1), np.nan)
    return {"edges_pix": edges, "centres_pix": (edges[1:] + edges[:-1]) / 2,
            "accuracy": acc, "n": n}


def roc_auc(scores, labels):
    """Return the area under the ROC curve (Mann-Whitney U, ties count one half).

    Parameters
    ----------
    scores : array_like of float, shape (n,)
        Higher means more likely blended (``BLEND_PROB``).
    labels : array_like of {0, 1}, shape (n,)

    Returns
    -------
    float
        P(score of a random blend > score of a random isolated stamp) + 0.5 P(tie):
        1 for a perfect classifier, 0 for a reversed one, 0.5 for a constant score; NaN if
        either class is empty.

    Examples
    --------
    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties share half the credit
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores, labels):
    """Return the ROC curve (FPR, TPR) of a score, one point per distinct threshold.

    Returns
    -------
    fpr, tpr : ndarray
        From (0, 0) to (1, 1), for thresholds from above the highest score down.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, int)
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def auc_from_points(fpr, tpr, max_fpr=1.0):
    """Return the trapezoid area under ROC points, closed with (0, 0) and (1, 1), up to
    ``max_fpr`` and divided by ``max_fpr``.

    Points are sorted by FPR (then TPR); NaN points are dropped; the segment that crosses
    ``max_fpr`` is cut there by linear interpolation. With ``max_fpr = 1`` a single point
    gives ``(TPR + TNR) / 2``, the 2-point AUC of a binary classifier. Normalised this way,
    a perfect classifier scores 1 and a random one (TPR = FPR) ``max_fpr / 2``.

    Examples
    --------
    >>> auc_from_points([0.2], [0.8])
    0.8
    >>> round(auc_from_points([0.0], [1.0], max_fpr=0.05), 12)
    1.0
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    ok = np.isfinite(fpr) & np.isfinite(tpr)
    x = np.r_[0.0, fpr[ok], 1.0]
    y = np.r_[0.0, tpr[ok], 1.0]
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    x0, x1, y0, y1 = x[:-1], x[1:], y[:-1], y[1:]
    cut = (x0 < max_fpr) & (x1 > max_fpr)
    with np.errstate(invalid="ignore", divide="ignore"):
        y1 = np.where(cut, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0), y1)
    width = np.minimum(x1, max_fpr) - np.minimum(x0, max_fpr)
    return float(np.sum(width * (y0 + y1) / 2.0) / max_fpr)


def partial_auc(scores, labels, max_fpr=0.05):
    """Return the area under the ROC curve of a score over FPR <= ``max_fpr``, divided by
    ``max_fpr`` (``auc_from_points`` of ``roc_curve``): 1 for a perfect classifier,
    ``max_fpr / 2`` for a random one; NaN if either class is empty.

    Examples
    --------
    >>> partial_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    1.0
    """
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return auc_from_points(*roc_curve(scores, labels), max_fpr=max_fpr)


def threshold_at_fpr(scores, labels, fpr):
    """Return the lowest threshold ``t`` such that the fraction of negatives with
    ``score >= t`` is at most ``fpr`` (ties are never split).

    Examples
    --------
    >>> threshold_at_fpr([0.1, 0.2, 0.3, 0.4, 0.9], [0, 0, 0, 0, 1], 0.25) > 0.3
    True
    """
    scores = np.asarray(scores, dtype=np.float64)
    neg = np.sort(scores[~np.asarray(labels).astype(bool)])[::-1]
    if neg.size == 0:
        return -np.inf
    k = int(np.floor(fpr * neg.size + 1e-9))  # negatives allowed at or above t
    if k >= neg.size:
        return -np.inf
    return float(np.nextafter(neg[k], np.inf))  # just above the (k+1)-th highest negative


def tpr_at_fpr(scores, labels, fpr):
    """True-positive rate at the threshold ``threshold_at_fpr(scores, labels, fpr)``.

    Examples
    --------
    >>> tpr_at_fpr([0.1, 0.2, 0.3, 0.4, 0.9, 0.25], [0, 0, 0, 0, 1, 1], 0.25)
    0.5
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return float("nan")
    t = threshold_at_fpr(scores, labels, fpr)
    return float(np.mean(scores[labels] >= t))


def fpr_at_tpr(scores, labels, tpr):
    """False-positive rate at the highest threshold whose true-positive rate is >= ``tpr``
    (ties are never split); NaN if either class is empty.

    Examples
    --------
    >>> fpr_at_tpr([0.1, 0.2, 0.3, 0.4, 0.9, 0.25], [0, 0, 0, 0, 1, 1], 0.5)
    0.0
    >>> fpr_at_tpr([0.1, 0.2, 0.3, 0.4, 0.9, 0.25], [0, 0, 0, 0, 1, 1], 1.0)
    0.5
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    pos = np.sort(scores[labels])[::-1]
    if pos.size == 0 or labels.all():
        return float("nan")
    k = min(max(int(np.ceil(tpr * pos.size - 1e-9)), 1), pos.size)  # positives needed
    return float(np.mean(scores[~labels] >= pos[k - 1]))


def group_bootstrap(groups, statistic, n_boot=1000, seed=0):
    """Bootstrap a statistic by resampling groups (galaxies) with replacement.

    Parameters
    ----------
    groups : array_like of int, shape (n,)
        Group of each row; every row of a drawn group enters the resample.
    statistic : callable
        ``statistic(rows)`` -> float or 1-D array, with ``rows`` an int index array.
    n_boot : int
        Resamples.
    seed : int

    Returns
    -------
    ndarray, shape (n_boot,) or (n_boot, k)
        The statistic of each resample (NaN rows where it is undefined).
    """
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(np.bincount(inverse, minlength=uniq.size))]
    members = [order[starts[g]:starts[g + 1]] for g in range(uniq.size)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        pick = rng.integers(uniq.size, size=uniq.size)
        out.append(statistic(np.concatenate([members[g] for g in pick])))
    return np.asarray(out, dtype=np.float64)


def interval(samples, level=0.95):
    """Central interval of 1-D bootstrap samples (NaNs ignored; all NaN: (NaN, NaN)), e.g.
    ``level=0.68`` or 0.95."""
    lo = 50 * (1 - level)
    samples = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(samples).any():
        return (float("nan"), float("nan"))
    return tuple(float(v) for v in np.nanpercentile(samples, [lo, 100 - lo], axis=0))
