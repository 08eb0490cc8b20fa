"""Tests of bh_stage.study.shear: the metacalibration (m, c) estimator on known answers."""

import numpy as np
import pytest

from bh_stage.metacal import METACAL_TYPES
from bh_stage.study.shear import (SUM_KEYS, Selection, bootstrap_weights, metacal_shapes,
                                  psf_sigma_pix, shear_bias, size_cut, unit_sums)

from conftest import load_bench

STEP = 0.01


def _shapes(e_main, e_cross, r_main, r_cross, main):
    """Shapes dict whose noshear ``E`` is (e_main, e_cross) in the frame of ``main`` and
    whose sheared images give the per-object responses r_main, r_cross exactly."""
    n = len(e_main)
    e = np.zeros((n, 2))
    e[:, main], e[:, 1 - main] = e_main, e_cross
    r = np.zeros((n, 2))
    r[:, main], r[:, 1 - main] = r_main, r_cross
    out = {"noshear": {"E": e}}
    for i, (p, m) in enumerate((("1p", "1m"), ("2p", "2m"))):
        for name, sign in ((p, 1), (m, -1)):
            sheared = e.copy()
            sheared[:, i] += sign * r[:, i] * STEP
            out[name] = {"E": sheared}
    return out


def _everything(n):
    return Selection.fixed("all", np.ones(n, bool))


@pytest.mark.parametrize("main", [0, 1])
def test_shear_bias_recovers_m_c_and_the_cross_shear(main):
    """e = R ((1 + m) g + c) on +g and -g images, every object selected: m, c exactly; the
    cross component's mean shear is c_cross; units split the objects any way."""
    m_true, c_true, g, g_cross = -0.07, 0.004, 0.02, 0.003
    rng = np.random.default_rng(1)
    n = 50
    r = rng.uniform(0.3, 0.9, n)
    units = rng.integers(0, 7, n)
    sums = []
    for sign in (1, -1):
        e_main = r * ((1 + m_true) * sign * g + c_true)
        e_cross = r * g_cross
        sums.append(unit_sums(units, 7, _shapes(e_main, e_cross, r, r, main), _everything(n),
                              main))
    res = shear_bias(*sums, g, step=STEP)
    assert res["m"] == pytest.approx(m_true, abs=1e-12)
    assert res["c"] == pytest.approx(c_true, abs=1e-12)
    assert res["c_cross"] == pytest.approx(g_cross, abs=1e-12)
    assert res["r_shear"] == pytest.approx(r.mean(), abs=1e-12)
    assert res["r_sel"] == 0.0 and res["n"] == 2 * n
    assert set(sums[0]) == set(SUM_KEYS)


def test_selection_response_by_hand():
    """Objects that change membership between the 1p and 1m images: R_sel from the four
    noshear ellipticities worked out by hand, and it enters the response only when asked."""
    e_main = np.array([0.2, -0.2, 0.1, -0.1])
    shapes = _shapes(e_main, np.zeros(4), np.ones(4), np.ones(4), 0)
    everyone = np.ones(4, bool)
    by_type = {t: everyone for t in METACAL_TYPES}
    by_type["1p"] = np.array([True, True, True, False])
    by_type["1m"] = np.array([True, True, False, True])
    sel = Selection("s", by_type, True)
    sums = unit_sums(np.zeros(4, int), 1, shapes, sel, 0)
    # <e>_1p = 0.1 / 3, <e>_1m = -0.1 / 3: R_sel = (0.2 / 3) / (2 step)
    expected = (0.2 / 3) / (2 * STEP)
    res = shear_bias(sums, sums, 0.02, step=STEP)
    assert res["r_sel"] == pytest.approx(expected)
    assert res["r_shear"] == pytest.approx(1.0)
    # the same data as a +g and -g pair: g_hat = <e> / (R_shear + R_sel) on each image
    minus = unit_sums(np.zeros(4, int), 1, _shapes(-e_main, np.zeros(4), np.ones(4),
                                                   np.ones(4), 0), sel, 0)
    with_sel = shear_bias(sums, minus, 0.02, step=STEP)
    without = shear_bias(sums, minus, 0.02, step=STEP, with_selection=False)
    assert without["m"] == pytest.approx(-1.0)  # <e> = 0 on both images
    assert with_sel["r_sel"] == pytest.approx((expected - expected) / 2)  # sign flips


def test_units_outside_the_sample_and_nonfinite_shapes_are_left_out():
    e_main = np.array([0.1, 0.2, np.nan, 0.4])
    shapes = _shapes(e_main, np.zeros(4), np.ones(4), np.ones(4), 0)
    sums = unit_sums(np.array([0, -1, 1, 1]), 2, shapes, _everything(4), 0)
    assert sums["n"].tolist() == [1.0, 1.0]
    assert sums["e_main"].tolist() == pytest.approx([0.1, 0.4])
    assert sums["r_main"].tolist() == pytest.approx([2 * STEP, 2 * STEP])


def test_bootstrap_weights_resample_units():
    w = bootstrap_weights(9, 40, seed=3)
    assert w.shape == (40, 9) and (w.sum(axis=1) == 9).all()
    assert (w >= 0).all() and not (w == 1).all()
    # weights of one give the point estimate
    rng = np.random.default_rng(0)
    r = rng.uniform(0.5, 1.0, 30)
    units = np.arange(30) % 9
    pair = [unit_sums(units, 9, _shapes(r * s * 0.02 * 0.9, np.zeros(30), r, r, 1),
                      _everything(30), 1) for s in (1, -1)]
    ones = shear_bias(*pair, 0.02, weights=np.ones((2, 9)), step=STEP)
    assert ones["m"] == pytest.approx([-0.1, -0.1])


def test_selections_combine():
    a = Selection("a", {t: np.array([True, False]) for t in METACAL_TYPES}, True)
    b = Selection.fixed("b", [True, True])
    both = a & b
    assert not both.metacalibratable and a.metacalibratable
    assert both.by_type["1p"].tolist() == [True, False]


def test_size_cut_and_psf_sigma():
    """A Gaussian PSF of sigma s pixels: adaptive moments see sqrt(s^2 + 1/12) (the pixel),
    the metacal images' PSF that times 1 + 2 step."""
    galsim = pytest.importorskip("galsim")
    s = 2.0
    psf = galsim.Gaussian(sigma=s).drawImage(nx=41, ny=41, scale=1.0).array
    expected = np.sqrt(s * s + 1 / 12) * (1 + 2 * STEP)
    assert psf_sigma_pix(psf / psf.sum(), STEP) == pytest.approx(expected, rel=2e-3)
    moments = {"E": np.array([[0.1, 0.0], [0.1, 0.0], [np.nan, 0.0]]),
               "SIGMA_PIX": np.array([1.0, 2.0, 3.0])}
    # (sigma / 1.5)^2 >= 1.5 needs sigma >= 1.837
    assert size_cut(moments, 1.5).tolist() == [False, True, False]
    moments["S2N"] = np.array([50.0, 9.0, 50.0])
    assert size_cut(moments, 1.5, 1.5, min_s2n=10).tolist() == [False, False, False]
    assert size_cut(moments, 1.5, 0.1, min_s2n=10).tolist() == [True, False, False]
    # the weighted estimator: the target PSF (the Gaussian dilated by 1 + 2 step, then the
    # pixel) under a weight of sigma w has sigma t w / sqrt(t^2 + w^2)
    w, t = 2.5, np.sqrt((s * (1 + 2 * STEP)) ** 2 + 1 / 12)
    assert psf_sigma_pix(psf / psf.sum(), STEP, "weighted", w) == pytest.approx(
        t * w / np.hypot(t, w), rel=2e-3)
    # the round target of an elongated PSF (axis ratio 1 / 1.5 at fixed area: variances
    # 1.5 s^2 along x and s^2 / 1.5 along y, plus the pixel's 1/12 on each axis): a round
    # Gaussian of the major axis, sqrt(1.5 s^2 + 1/12) (1 + 2 step), then the pixel again
    long = galsim.Gaussian(sigma=s).shear(q=1 / 1.5, beta=0 * galsim.degrees)
    psf = long.drawImage(nx=41, ny=41, scale=1.0).array
    round_target = np.sqrt((1.5 * s * s + 1 / 12) * (1 + 2 * STEP) ** 2 + 1 / 12)
    assert psf_sigma_pix(psf / psf.sum(), STEP, target_psf="gauss") == pytest.approx(
        round_target, rel=2e-3)


def test_weighted_shapes_centre_the_weight_on_the_detection():
    """A noise-free elliptical Gaussian (through a Gaussian PSF) drawn at a half-integer-ish
    tile position and the same galaxy at an integer one: metacal_shapes' weighted noshear
    shapes agree (the weight follows the 0-based position, not the stamp's centre pixel);
    with the position mirrored about the pixel centre they do not."""
    y, x = np.mgrid[0:25, 0:25] - 12
    psf = np.exp(-(x**2 + y**2) / (2 * 1.5**2))
    psf /= psf.sum()
    cov = np.array([[9.0, 2.0], [2.0, 5.0]]) + 1.5**2 * np.eye(2)
    inv = np.linalg.inv(cov)
    tile = np.zeros((80, 120))
    yy, xx = np.mgrid[0:80, 0:120].astype(float)
    for cx, cy in ((30.3, 40.7), (80.0, 40.0)):
        dx, dy = xx - cx, yy - cy
        tile += 100 * np.exp(-0.5 * (inv[0, 0] * dx**2 + 2 * inv[0, 1] * dx * dy
                                     + inv[1, 1] * dy**2))
    bad = np.zeros(tile.shape, bool)
    shapes = metacal_shapes(tile, bad, 1e-6, [30.3, 80.0, 29.7], [40.7, 40.0, 40.3], psf,
                            side_pix=41, estimator="weighted", weight_sigma_pix=2.7)
    e = shapes["noshear"]["E"]
    np.testing.assert_allclose(e[0], e[1], atol=1e-4)
    assert np.abs(e[2] - e[1]).max() > 5e-3  # centred 0.6 px off in x and y: 0.008


def test_noise_index_follows_the_object():
    """The correction noise of a stamp depends on its noise index, not its row: two calls
    with the rows in another order give the same images."""
    from bh_stage.metacal import metacal_images

    rng = np.random.default_rng(0)
    stamps = rng.normal(0, 1, (3, 21, 21))
    yy, xx = np.mgrid[-3:4, -3:4]
    psf = np.exp(-(xx ** 2 + yy ** 2) / 4.0)
    psf /= psf.sum()
    a = metacal_images(stamps, psf, noise_sigma_adu=1.0, noise_index=[10, 11, 12],
                       types=["1p"])["1p"]
    b = metacal_images(stamps[::-1], psf, noise_sigma_adu=1.0, noise_index=[12, 11, 10],
                       types=["1p"])["1p"]
    assert np.array_equal(a, b[::-1])
    c = metacal_images(stamps, psf, noise_sigma_adu=1.0, types=["1p"], first_index=10)["1p"]
    assert np.array_equal(a, c)  # the default index is first_index + row


def test_bench_shear_refuses_a_cache_of_another_tile_head(tmp_path, monkeypatch):
    """An image cached with one tile head is not read as another's: a cache that names its
    head, and one of 0.7-0.11 that does not (their head, tile_unrecognised_positions)."""
    bench = load_bench("bench_shear", monkeypatch)
    named, old = tmp_path / "named", tmp_path / "old"
    for folder in (named, old):
        folder.mkdir()
    np.savez(named / "shear_measure.npz", x=np.zeros(2), TILE_HEAD=np.array("some_head"))
    np.savez(old / "shear_measure.npz", x=np.zeros(2))
    bench.check_cached_head(named, "some_head")
    bench.check_cached_head(old, "tile_unrecognised_positions")
    bench.check_cached_head(tmp_path, "some_head")  # nothing cached
    with pytest.raises(SystemExit, match="named/shear_measure.npz: scored by tile head "
                                         "some_head, not other_head"):
        bench.check_cached_head(named, "other_head")
    with pytest.raises(SystemExit, match="tile_unrecognised_positions, not some_head"):
        bench.check_cached_head(old, "some_head")


def test_bench_shear_cut_fractions_one_per_label(monkeypatch):
    """The continuous cuts' fractions: every binary cut's (4 decimals) and the fixed ones, one
    per 3-decimal row label, a binary cut's own winning (0.90042 would name its row 0.900,
    as the fixed 0.9 does)."""
    bench = load_bench("bench_shear", monkeypatch)
    kept = {"FLAGS & 2 == 0": 0.90042, "BLEND_FLAG == 0": 0.67658,
            "BLEND_FLAG_NOSHEAR == 0": 0.63367, "truth oracle": 0.91889}
    fractions = bench.cut_fractions({n: {"kept_frac": f} for n, f in kept.items()})
    assert fractions == [0.95, 0.9189, 0.9004, 0.85, 0.8, 0.7, 0.6766, 0.6337]


@pytest.mark.integration
@pytest.mark.slow
def test_bench_shear_quick(tmp_path, cosmos_dir, sextractor, monkeypatch):
    """The bench's smoke scale runs end to end, its cuts hang together and its result file
    holds them and the run's provenance."""
    import json

    import bh_stage

    bench = load_bench("bench_shear", monkeypatch)
    figure = tmp_path / "m.png"
    res = bench.main(["--quick", "--work-dir", str(tmp_path), "--cosmos-dir", str(cosmos_dir),
                      "--figure", str(figure)])
    assert figure.stat().st_size > 10000
    cuts = {c["name"]: c for c in res["cuts"]}
    assert cuts["none"]["kept_frac"] == 1.0
    for name, meta in (("none", True), ("FLAGS & 2 == 0", False), ("BLEND_FLAG == 0", False),
                       ("BLEND_FLAG_NOSHEAR == 0", True), ("truth oracle", False)):
        assert cuts[name]["metacalibratable"] is meta
        assert np.isfinite(cuts[name]["R_sel"])  # the size cut's at least
        assert 0 < cuts[name]["kept_frac"] <= 1
    for c in cuts.values():  # continuous cuts keep the fraction they were set to
        if "target_kept" in c:
            assert c["kept_frac"] == pytest.approx(c["target_kept"], abs=0.02)
        lo, hi = c["m_ci95"]
        assert lo <= hi
    assert 0 <= res["pair_flips"]["main"] <= 1 and 0 <= res["pair_flips"]["control"] <= 1
    for kind in ("main", "control"):
        budget = res["noise_budget"][kind]
        assert set(budget) == {"galaxy", "instance", "seed", "kept_on_both",
                               "galaxy_persistence"}
        assert budget["seed"]["n_units"] == 1 and budget["instance"]["n_units"] >= \
            budget["galaxy"]["n_units"]
    written = json.loads((tmp_path / "shear_metacal_quick.json").read_text())
    assert written["control"]["n_kept"] == res["control"]["n_kept"] > 0
    assert written["provenance"]["bh_stage_version"] == bh_stage.__version__
    assert written["settings"]["tile_head"] == "tile_unrecognised_positions_o2"
    # the paired comparisons are differences of the cuts' own m
    for d in res["score_differences"]:
        assert d["m_a_minus_m_b"] == pytest.approx(cuts[d["a"]]["m"] - cuts[d["b"]]["m"])
    with np.load(tmp_path / "main_s401_p" / "shear_measure.npz") as z:
        assert str(z["TILE_HEAD"]) == "tile_unrecognised_positions_o2"
    # every cut but no cut and the truth's own is set against the truth at its own fraction
    truth_rows = {c["target_kept"]: c["name"] for c in cuts.values()
                  if c.get("score") == "truth ranked"}
    compared = {r["cut"]: r for r in res["truth_shares"]}
    assert set(compared) == {n for n, c in cuts.items() if n not in ("none", "truth oracle")
                             and c.get("score") != "truth ranked"}
    assert {d["b"] for d in res["score_differences"]} >= {"FLAGS & 2 == 0"}
    none = cuts["none"]["m"]
    for name, r in compared.items():
        own = cuts[name].get("target_kept", round(cuts[name]["kept_frac"], 4))
        assert r["truth"] == truth_rows[own]
        truth = cuts[r["truth"]]
        assert truth["kept_frac"] == pytest.approx(cuts[name]["kept_frac"], abs=0.02)
        assert r["m_minus_truth"] == pytest.approx(cuts[name]["m"] - truth["m"])
        if truth["m"] != none:
            assert r["share"] == pytest.approx((cuts[name]["m"] - none) / (truth["m"] - none))
    assert len({c["name"] for c in res["cuts"]}) == len(res["cuts"])  # no row overwritten
    # the truth subsets partition no cut's sample, and the truth oracle's
    subsets = {r["name"]: r["n_kept"] for r in res["truth_subsets"]["subsets"]}
    assert subsets["single"] + subsets["pair member"] == cuts["none"]["n_kept"]
    assert subsets["pair member, recognised"] + subsets["pair member, unrecognised"] == \
        subsets["pair member"]
    assert subsets["single, recognised"] + subsets["pair member, recognised"] == \
        cuts["truth oracle"]["n_kept"]
    assert subsets["pair member"] > 0
    assert subsets["no second-plane neighbour"] + subsets["second-plane neighbour"] == \
        cuts["none"]["n_kept"]
    assert subsets["second-plane neighbour, recognised"] + \
        subsets["second-plane neighbour, unrecognised"] == subsets["second-plane neighbour"]
    m_of = {r["name"]: r["m"] for r in res["truth_subsets"]["subsets"]}
    for d in res["truth_subsets"]["differences"]:
        assert d["m_a_minus_m_b"] == pytest.approx(m_of[d["a"]] - m_of[d["b"]])
    for kind in ("main", "control"):
        both = res["noise_budget"][kind]["kept_on_both"]
        assert 0 < both["n_kept_on_both"] <= both["n_units"]
        assert np.isfinite(both["sigma_m"])


def _persistence(bench, monkeypatch, m_by_seed, g=0.02, r=0.5):
    """``bench.galaxy_persistence`` of seeds whose one object per galaxy unit u has
    e = r (1 + m_by_seed[s][u]) (+-g) on the main component (g1) of the +g and -g images."""
    n_units = m_by_seed.shape[1]

    def sums(data, units, n, make_selection):
        totals = []
        for sign in (1, -1):
            s = [unit_sums(np.arange(n_units), n_units,
                           _shapes(r * (1 + m_by_seed[k]) * sign * g, np.zeros(n_units),
                                   np.full(n_units, r), np.full(n_units, r), 0),
                           _everything(n_units), 0) for k, *_ in data]
            totals.append({q: sum(x[q] for x in s) for q in s[0]})
        return totals

    monkeypatch.setattr(bench, "summed_sums", sums)
    monkeypatch.setattr(bench, "unit_index", lambda data: (None, n_units))
    args = type("Args", (), {"g": g})()
    data = [(k, 0, None, None) for k in range(len(m_by_seed))]
    return bench.galaxy_persistence(args, data), bench.galaxy_influences(
        args, data, (None, n_units))


def test_galaxy_persistence_tells_galaxies_from_instances(monkeypatch):
    """With e = r (1 + m_u) g, m of no cut is the mean of the m_u and a galaxy's influence
    (m_u - mean) / n: a bias each galaxy keeps in every seed is all persistent, and its floor
    is the standard error std(m_u) / sqrt(n); noise drawn anew per seed is not."""
    bench = load_bench("bench_shear", monkeypatch)
    rng = np.random.default_rng(3)
    n = 40
    galaxy_m = rng.normal(0.0, 0.3, n)
    kept, influences = _persistence(bench, monkeypatch, np.tile(galaxy_m, (4, 1)))
    (d, present) = influences
    assert present.all()
    assert d.sum() == pytest.approx(0.0, abs=1e-9)  # m does not move if every weight does
    assert d == pytest.approx((galaxy_m - galaxy_m.mean()) / n, rel=1e-2, abs=1e-6)
    assert kept["n_galaxies_both"] == n
    assert kept["correlation"] == pytest.approx(1.0)
    assert kept["persistent_share"] == pytest.approx(1.0)
    assert kept["sigma_m_persistent"] == pytest.approx(galaxy_m.std() / np.sqrt(n), rel=1e-2)
    fresh, _ = _persistence(bench, monkeypatch, rng.normal(0.0, 0.3, (4, n)))
    lo, hi = fresh["correlation_ci95"]
    assert lo < 0 < hi and abs(fresh["persistent_share"]) < 0.5
    assert _persistence(bench, monkeypatch, galaxy_m[None, :])[0] == {"n_galaxies_both": 0}


@pytest.mark.parametrize("main", [0, 1])
def test_a_shape_cut_is_calibrated_by_its_selection_response(main):
    """Objects e = e_int + R s g (s = +-1) on the main component, e_int uniform on (-0.5,
    0.5), kept where e < 0.1 on each image (the cut recomputed on the sheared images too).
    Kept e is uniform on (-0.5 + R s g, 0.1), so <e>_s = (-0.4 + R s g) / 2: R_shear alone
    gives m = 1/2 - 1 = -0.5. On the image sheared by +step the cut keeps e < 0.1 - R step,
    so R_sel = -R / 2 and R_shear + R_sel = R / 2 gives m = 0."""
    n, g, r = 200000, 0.02, 0.8
    e_int = (np.arange(n) + 0.5) / n - 0.5  # uniform on (-0.5, 0.5), no sampling noise
    sums = []
    for sign in (1, -1):
        e_main = e_int + r * sign * g
        shapes = _shapes(e_main, np.zeros(n), np.full(n, r), np.full(n, r), main)
        keep = {t: shapes[t]["E"][:, main] < 0.1 for t in METACAL_TYPES}
        sums.append(unit_sums(np.arange(n) % 10, 10, shapes, Selection("e", keep, True),
                              main))
    calibrated = shear_bias(*sums, g, step=STEP)
    uncalibrated = shear_bias(*sums, g, step=STEP, with_selection=False)
    assert uncalibrated["m"] == pytest.approx(-0.5, abs=1e-3)
    assert calibrated["r_sel"] == pytest.approx(-r / 2, abs=1e-3)
    assert abs(calibrated["m"]) < 1e-3


def test_shear_matrix_is_galsims():
    """The positions are sheared with the matrix GalSim shears profiles with."""
    galsim = pytest.importorskip("galsim")
    from bh_stage.metacal import shear_matrix

    for g1, g2 in ((0.02, 0.0), (0.0, -0.03), (0.1, 0.05)):
        assert np.allclose(shear_matrix(g1, g2),
                           galsim.Shear(g1=g1, g2=g2).getMatrix(), atol=1e-14)
