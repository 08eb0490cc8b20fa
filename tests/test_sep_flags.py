import numpy as np
import pytest

from bh_stage.config import SepConfig
from bh_stage.errors import SepError
from bh_stage.sep_flags import (BH_FLAGS, SEP_FAILED, SepProcesses, _verdict,
                                classify_stamps, decode_flags)

from conftest import gaussian_image

C = 32  # centre of a 65x65 stamp


def stamps_with(*sources_lists, noise_adu=1.0):
    return np.stack([gaussian_image((65, 65), s, noise_adu=noise_adu, seed=i)
                     for i, s in enumerate(sources_lists)])


def test_flag_bits_are_unique_powers_of_two():
    values = [f.value for f in BH_FLAGS]
    assert values == [1, 2, 4, 8]
    assert decode_flags(1 | 8) == ["BH_EDGE", "BH_SEP_ERROR"]


def test_stage_mode_isolated_and_far_pair():
    out = classify_stamps(stamps_with([(C, C)], [(C, C), (C + 12, C + 5)]), SepConfig())
    assert out["nsrc"].tolist() == [1, 2]
    assert out["blend"].tolist() == [0, 1]
    assert not out["error"].any()


def test_true_positions_rules():
    stamps = stamps_with([(C, C), (C + 12, C + 5)], [(C, C)], [(C, C), (C + 12, C + 5)])
    nan = [np.nan, np.nan]
    true_xy = np.array([[[C, C], [C + 12, C + 5]],
                        [[C, C], nan],
                        [[C, C], [C - 12, C - 5]]], dtype=float)  # last: wrong companion
    out = classify_stamps(stamps, SepConfig(), true_xy=true_xy)
    assert out["blend"].tolist() == [1, 0, 0]


def test_stamp_filled_by_one_object_fits_the_pixel_stack():
    # every pixel above threshold: one object of all 65x65 pixels, the most the pixel stack
    # classify_stamps sets must hold; SEP's own setting is restored afterwards
    import sep

    before = sep.get_extract_pixstack()
    stamp = 1000.0 + np.random.default_rng(0).normal(0.0, 1.0, (1, 65, 65))
    out = classify_stamps(stamp, SepConfig())
    assert out["nsrc"].tolist() == [1] and not out["error"].any()
    assert sep.get_extract_pixstack() == before
    sep.set_extract_pixstack(65 * 65)  # one pixel short: SEP overflows, as the bound says
    try:
        with pytest.raises(Exception, match="(?i)pixel stack|internal"):
            sep.extract(stamp[0], 1.5, err=1.0, minarea=5)
    finally:
        sep.set_extract_pixstack(before)


def objects(xy, merged):
    rec = np.zeros(len(xy), dtype=[("x", "f8"), ("y", "f8"), ("flag", "i2")])
    rec["x"], rec["y"] = np.array(xy, dtype=float).T if len(xy) else ([], [])
    rec["flag"] = np.where(merged, 1, 0)  # sep.OBJ_MERGED == 1
    return rec


@pytest.mark.parametrize("xy, merged, true_xy, stage, expected", [
    ([], [], [[C, C]], False, 0),
    ([[C, C]], [True], [[C, C], [C + 3, C]], False, 1),     # one merged source at the centre
    ([[C, C]], [False], [[C, C], [C + 3, C]], False, 0),    # one unmerged source
    ([[C + 9, C]], [True], [[C, C]], False, 0),             # merged, but not where expected
    ([[C, C], [C + 10, C + 1]], [0, 0], [[C, C], [C + 11, C]], False, 1),
    ([[C, C], [C + 20, C]], [0, 0], [[C, C], [C + 11, C]], False, 0),  # second misplaced
    ([[C, C], [C + 20, C]], [0, 0], [[C, C]], False, 0),    # isolated, 2 detections
    ([[C, C], [C + 11, C], [5, 5]], [0, 0, 0], [[C, C], [C + 11, C]], False, 1),
    ([[C, C], [C + 11, C], [5, 5]], [0, 0, 0], [[C, C]], False, SEP_FAILED),
    ([[C, C], [C + 20, C]], [0, 0], [[C, C]], True, 1),     # stage: >= 2 sources
    ([[C + 1.5, C]], [True], [[C, C]], True, 1),            # within 2 px
    ([[C + 2.5, C]], [True], [[C, C]], True, 0),
])
def test_verdict_rules(xy, merged, true_xy, stage, expected):
    assert _verdict(objects(xy, merged), np.array(true_xy, float), 2.0, stage) == expected


def test_sep_error_is_a_flag_not_an_exception(monkeypatch):
    from bh_stage import sep_flags

    def fail(stamp, cfg):
        raise Exception("internal pixel buffer full")  # what SEP raises, e.g. pixstack

    monkeypatch.setattr(sep_flags, "extract_sources", fail)
    out = classify_stamps(stamps_with([(C, C)]), SepConfig())
    assert out["error"][0] and out["nsrc"][0] == -1 and out["blend"][0] == 0


def test_sep_processes_answer_as_classify_stamps_in_order():
    stamps = stamps_with([(C, C)], [(C, C), (C + 12, C + 5)], [(C, C), (C + 3, C)],
                         noise_adu=2.0)
    with SepProcesses(2) as workers:
        jobs = [workers.submit(stamps[i:], SepConfig(), i) for i in range(3)]
        answers = [job.result() for job in jobs]
    for i, answer in enumerate(answers):
        assert answer.tobytes() == classify_stamps(stamps[i:], SepConfig()).tobytes()
    assert answers[0]["nsrc"][1] == 2


def test_sep_processes_raise_the_childs_error_and_report_a_dead_child():
    with SepProcesses(1) as workers:
        with pytest.raises(IndexError):  # a 0-d "batch": raised in the child, re-raised here
            workers.submit(np.float64(1.0), SepConfig()).result()
        workers._procs[0].kill()
        workers._procs[0].wait()
        with pytest.raises(SepError, match="SEP worker process stopped"):
            workers.submit(stamps_with([(C, C)]), SepConfig()).result()
