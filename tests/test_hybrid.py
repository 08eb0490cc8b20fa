"""Tests of sep_flags.hybrid_flag, the one hybrid rule of stage, evaluate and train."""

import numpy as np

from bh_stage import sep_flags

from bh_stage.study import train


def test_hybrid_flag_truth_table():
    sep = np.array([1, 1, 0, 0, -1, -1, 0])
    p = np.array([0.2, 0.95, 0.2, 0.95, 0.2, 0.95, np.nan])
    np.testing.assert_array_equal(sep_flags.hybrid_flag(sep, p, 0.9),
                                  [True, True, False, True, False, True, False])
    # the threshold is inclusive
    assert sep_flags.hybrid_flag([0], [0.9], 0.9).tolist() == [True]


def test_train_accuracy_applies_the_same_rule():
    """train.accuracy with SEP's verdict is the accuracy of hybrid_flag; SEP failed (-1)
    counts as not blended, as in the stage."""
    sep = np.array([1, -1, 0, 0])
    p = np.array([0.1, 0.1, 0.95, 0.3])
    label = np.array([1, 1, 1, 0])
    assert train.accuracy(p, label, 0.9, sep) == 0.75
    assert train.accuracy(p, label, 0.9) == 0.5
