"""Pure metrics of a score against truth, and intervals by galaxy.

Inputs are arrays: scores (higher means more likely blended), 0/1 labels and, for
intervals, the group (distinct galaxy) of each row. Stamps and tile detections reuse few
galaxies, so intervals come from a bootstrap that resamples galaxies, never rows
(``group_bootstrap``).
"""

import numpy as np

__all__ = ["roc_auc", "roc_curve", "tpr_at_fpr", "threshold_at_fpr", "group_bootstrap",
           "interval"]


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
