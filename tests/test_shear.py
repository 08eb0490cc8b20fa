"""Tests of bh_stage.study.shear: the (m, c) estimator on known answers and HSM on known shears."""

import numpy as np
import pytest

from bh_stage.study.shear import hsm_shapes, responsivity, shear_bias


def _pair(m, c, g, resp, n=2000, seed=0):
    """Distortions of n objects on +g and -g images with bias (m, c) and shared shape noise."""
    rng = np.random.default_rng(seed)
    e_int = rng.normal(0.0, 0.3, n)
    return (e_int + resp * ((1 + m) * g + c), e_int + resp * (-(1 + m) * g + c))


def test_shear_bias_common_selection_recovers_m_and_c_exactly():
    e_plus, e_minus = _pair(m=0.05, c=0.003, g=0.02, resp=1.7)
    keep = np.arange(e_plus.size) % 3 != 0
    m, c = shear_bias(e_plus, e_minus, keep, keep, 0.02, 1.7)
    # intrinsic shapes cancel object by object, but their mean does not cancel in c
    assert m == pytest.approx(0.05, abs=1e-12)
    assert c == pytest.approx(np.mean(e_plus[keep] - 1.7 * 1.05 * 0.02) / 1.7, abs=1e-12)
    assert abs(c - 0.003) < 0.02  # the mean intrinsic shape, 0.3 / 1.7 / sqrt(1333)


def test_shear_bias_separate_selections_show_the_selection_response():
    """Keeping e > 0 on each image truncates each image's distribution at its own place:
    the means differ by less than the shear moved them, m drops."""
    e_plus, e_minus = _pair(m=0.0, c=0.0, g=0.02, resp=2.0, n=20000)
    m_common, _ = shear_bias(e_plus, e_minus, e_plus > 0, e_plus > 0, 0.02, 2.0)
    m_sep, _ = shear_bias(e_plus, e_minus, e_plus > 0, e_minus > 0, 0.02, 2.0)
    assert m_common == pytest.approx(0.0, abs=1e-12)
    assert m_sep < -0.3
    nan = shear_bias(e_plus, e_minus, e_plus > 9, e_plus > 0, 0.02, 2.0)
    assert np.all(np.isnan(nan))


def test_responsivity():
    assert responsivity(np.array([0.3, -0.3]), np.array([0.0, 0.0])) == pytest.approx(
        2 * (1 - 0.045))


def _psf():
    import galsim

    return galsim.Moffat(beta=4.765, fwhm=0.65).drawImage(nx=51, ny=51, scale=0.187).array


def test_hsm_shapes_of_a_sheared_round_galaxy_and_a_star():
    import galsim

    g = 0.05
    psf = galsim.Moffat(beta=4.765, fwhm=0.65)
    gal = galsim.Exponential(half_light_radius=0.6, flux=1e4).shear(g1=g, g2=-g / 2)
    gal_img = galsim.Convolve(gal, psf).drawImage(nx=51, ny=51, scale=0.187,
                                                   offset=(0.3, -0.2)).array
    star_img = psf.withFlux(1e4).drawImage(nx=51, ny=51, scale=0.187).array
    shapes = hsm_shapes(np.stack([gal_img, star_img]), _psf(), 1e-4, [0.3, 0.0], [-0.2, 0.0])
    shear = galsim.Shear(g1=g, g2=-g / 2)
    assert shapes["E1"][0] == pytest.approx(shear.e1, abs=0.01)
    assert shapes["E2"][0] == pytest.approx(shear.e2, abs=0.01)
    assert shapes["VALID"][0]
    assert not shapes["VALID"][1]  # a star is not resolved (HSM fails or R2 ~ 0)


@pytest.mark.integration
@pytest.mark.slow
def test_bench_shear_quick(tmp_path, cosmos_dir, sextractor, monkeypatch):
    """The bench's smoke scale runs end to end, its numbers hang together and its result
    file holds them and the run's provenance."""
    import importlib.util
    import json
    from pathlib import Path

    import bh_stage

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))  # as `python bench/bench_shear.py` has it
    path = bench_dir / "bench_shear.py"
    spec = importlib.util.spec_from_file_location("bench_shear", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figure = tmp_path / "m.png"
    res = bench.main(["--quick", "--work-dir", str(tmp_path), "--cosmos-dir", str(cosmos_dir),
                      "--figure", str(figure)])
    assert figure.stat().st_size > 10000
    assert res["matched_fraction"] > 0.9  # the shear moves no detection by 1 px
    assert 1.0 < res["responsivity"] < 2.0
    sel = res["selections"]
    kept = {name: r["separate"]["fraction_kept"] for name, r in sel.items()}
    assert 0.1 < kept["all valid shapes"] < 1
    assert kept["BLEND_PROB < 0.02"] <= kept["BLEND_PROB < 0.1"] <= kept["all valid shapes"]
    n = res["n_matched_pairs"]
    for name in ("BLEND_FLAG == 0", "BLEND_PROB < 0.1"):  # compared at equal fraction kept
        assert sel[f"catalogue, as {name}"]["separate"]["fraction_kept"] == pytest.approx(
            sel[name]["separate"]["fraction_kept"], abs=2 / n)
    common = sel["all valid shapes"]["common"]
    assert abs(common["m"]) < 0.5 and abs(common["c1"]) < 0.1
    lo, hi = common["m_95"]
    assert lo < common["m"] < hi
    written = json.loads((tmp_path / "shear_quick.json").read_text())
    assert written["n_matched_pairs"] == n
    assert written["provenance"]["bh_stage_version"] == bh_stage.__version__
