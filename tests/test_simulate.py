"""Tests of bh_stage.study.simulate (GalSim stamp sets and tiles) and the io functions it uses."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from bh_stage import io
from bh_stage.config import SCHEMAS, SimulateConfig, config_from_dict, load_config
from bh_stage.errors import ConfigError, InputFileError, OutputExistsError
from bh_stage.stamps import add_noise, dataset_noise_seeds

REPO = Path(__file__).resolve().parents[1]
REAL_CAT = "real_galaxy_catalog_26_extension_example.fits"
PARAM_CAT = "real_galaxy_catalog_23.5_example.fits"


def _cosmos_path():
    """COSMOS samples folder: $BH_STAGE_COSMOS_DIR, default <repo>/../shared/cosmos.

    Skips when absent, except under CI (CI=true), where that is a failure.
    """
    path = Path(os.environ.get("BH_STAGE_COSMOS_DIR", REPO.parent / "shared" / "cosmos"))
    if not (path / PARAM_CAT).is_file() or not (path / REAL_CAT).is_file():
        reason = f"COSMOS samples not found in {path}; set BH_STAGE_COSMOS_DIR"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (required under CI)")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def cosmos():
    return _cosmos_path()


def make_cfg(cosmos, **kw):
    """A tiny in-process config."""
    data = {"n_stamps": 40, "n_workers": 1, "seed": 3, "cosmos_dir": str(cosmos),
            "set_kind": "parametric"}
    data.update(kw)
    return config_from_dict(SimulateConfig, data)


@pytest.fixture(scope="module")
def param_set(cosmos):
    from bh_stage.study.simulate import simulate_stamps

    return simulate_stamps(make_cfg(cosmos))


@pytest.fixture(scope="module")
def mixed_set(cosmos):
    from bh_stage.study.simulate import simulate_stamps

    return simulate_stamps(make_cfg(cosmos, set_kind="mixed", n_stamps=40, real_fraction=0.6))


@pytest.fixture(scope="module")
def real_set(cosmos):
    from bh_stage.study.simulate import simulate_stamps

    return simulate_stamps(make_cfg(cosmos, set_kind="real", n_stamps=20))


def test_shapes_labels_and_balance(param_set):
    from bh_stage.study.simulate import TRUTH_DTYPE

    stamps, truth, attrs = param_set
    assert stamps.shape == (40, 65, 65) and stamps.dtype == np.float32
    assert truth.dtype == TRUTH_DTYPE
    assert np.array_equal(truth["index"], np.arange(40))
    assert attrs["size_pix"] == 51 and attrs["pad_pix"] == 7
    counts = [np.sum(truth["split"] == s) for s in (0, 1, 2)]
    assert counts == [18, 18, 4]
    for s in (0, 1, 2):
        lab = truth["label"][truth["split"] == s]
        assert 2 * lab.sum() == lab.size
    iso = truth["label"] == 0
    assert np.all(np.isnan(truth["x1_pix"][iso])) and np.all(truth["gal_id1"][iso] == -1)
    assert np.all(np.isfinite(truth["separation_pix"][~iso]))
    assert np.all(truth["kind"] == b"parametric")
    # Padding is exactly zero (noise-free stamps).
    assert not stamps[:, :7].any() and not stamps[:, :, -7:].any()
    # Magnitudes within the law's limits; unit SNR finite for every galaxy.
    assert np.all((truth["mag0"] >= 20) & (truth["mag0"] <= 24.5))
    assert np.all(truth["snr_unit0"] > 0)
    np.testing.assert_allclose(truth["flux_ratio"][~iso],
                               truth["flux1_adu"][~iso] / truth["flux0_adu"][~iso])


def test_flux_matches_magnitude(param_set):
    """An isolated stamp sums to (nearly) its flux; flux follows the assigned magnitude."""
    from bh_stage.study.simulate import magnitude_zeropoint

    stamps, truth, _ = param_set
    iso = truth["label"] == 0
    ratio = stamps[iso].sum(axis=(1, 2)) / truth["flux0_adu"][iso]
    assert np.all(ratio < 1.001) and np.median(ratio) > 0.95
    zp = truth["mag0"] + 2.5 * np.log10(truth["flux0_adu"])
    assert abs(np.median(zp) - magnitude_zeropoint(300.0, 80216.0)) < 0.3


def test_sources_where_truth_says(cosmos):
    """SEP on bright, noise-free, well-separated blends finds both galaxies within 1 px."""
    import sep

    from bh_stage.study.simulate import simulate_stamps

    cfg = make_cfg(cosmos, n_stamps=16, seed=11,
                   magnitude={"mag_min": 20.0, "mag_max": 21.0},
                   separation={"min_separation_pix": 10.0})
    stamps, truth, attrs = simulate_stamps(cfg)
    pad = attrs["pad_pix"]
    checked = 0
    for stamp, row in zip(stamps, truth):
        if row["label"] != 1:
            continue
        edge = min(row["x1_pix"], row["y1_pix"], 50 - row["x1_pix"], 50 - row["y1_pix"])
        if edge < 6:
            continue
        objs = sep.extract(np.ascontiguousarray(stamp, dtype=np.float64), 2.0, minarea=5)
        for x, y in ((row["x0_pix"], row["y0_pix"]), (row["x1_pix"], row["y1_pix"])):
            d = np.hypot(objs["x"] - (x + pad), objs["y"] - (y + pad))
            assert d.min() < 1.0, (row["index"], x, y, objs[["x", "y"]])
        checked += 1
    assert checked >= 1


def test_same_seed_bit_identical(cosmos, param_set):
    from bh_stage.study.simulate import simulate_stamps

    stamps, truth, _ = simulate_stamps(make_cfg(cosmos, chunk_size=7))
    assert np.array_equal(stamps, param_set[0])
    assert truth.tobytes() == param_set[1].tobytes()
    other, _, _ = simulate_stamps(make_cfg(cosmos, n_stamps=8, seed=4))
    assert not np.array_equal(other, param_set[0][:8])


def test_workers_do_not_change_output(cosmos):
    from bh_stage.study.simulate import simulate_stamps

    one = simulate_stamps(make_cfg(cosmos, n_stamps=24, chunk_size=5, set_kind="mixed"))
    two = simulate_stamps(make_cfg(cosmos, n_stamps=24, chunk_size=5, set_kind="mixed",
                                   n_workers=2))
    assert np.array_equal(one[0], two[0])
    assert one[1].tobytes() == two[1].tobytes()


def test_noise_on_padded_border(param_set):
    stamps, truth, attrs = param_set
    sigma = 14.5
    noisy = add_noise(stamps, sigma, dataset_noise_seeds(attrs["seed"], sigma, 0,
                                                         truth["index"]))
    border = np.ones(stamps.shape[1:], bool)
    border[7:-7, 7:-7] = False
    measured = noisy[:, border].std()
    assert abs(measured / sigma - 1) < 0.03
    again = add_noise(stamps[5:6], sigma, dataset_noise_seeds(attrs["seed"], sigma, 0, [5]))
    assert np.array_equal(again[0], noisy[5])


def test_real_split_disjoint_and_used(cosmos, mixed_set, real_set):
    from astropy.io import fits

    _, truth, attrs = mixed_set
    train = set(attrs["real_train_gal_ids"].tolist())
    test = set(attrs["real_test_gal_ids"].tolist())
    assert train and test and not (train & test)
    n_real = len(fits.getdata(cosmos / REAL_CAT))
    assert len(train) + len(test) == n_real
    real = truth["kind"] == b"real"
    assert real.any() and (~real).any()
    ids = np.concatenate([truth["gal_id0"][real], truth["gal_id1"][real]])
    assert set(ids[ids >= 0].tolist()) <= train
    n_param = len(fits.getdata(cosmos / PARAM_CAT))
    pids = np.concatenate([truth["gal_id0"][~real], truth["gal_id1"][~real]])
    assert np.all(pids[pids >= 0] < n_param)
    # A realistic set uses the test half only.
    _, rtruth, rattrs = real_set
    assert rattrs["set_kind"] == "real" and np.all(rtruth["kind"] == b"real")
    rids = np.concatenate([rtruth["gal_id0"], rtruth["gal_id1"]])
    assert set(rids[rids >= 0].tolist()) <= test


def test_magnitude_cap_on_real_galaxies(cosmos, real_set, mixed_set):
    from astropy.io import fits

    mag_sample = np.asarray(fits.getdata(cosmos / REAL_CAT)["MAG"], dtype=float)
    for _, truth, _ in (real_set, mixed_set):
        real = truth["kind"] == b"real"
        for j in "01":
            ids, mags = truth["gal_id" + j][real], truth["mag" + j][real]
            ok = ids >= 0
            brightening = mag_sample[ids[ok]] - mags[ok]
            # at most 0.5 mag (the default), except the brightest galaxy of a half, used
            # where no galaxy is within 0.5 mag of a bright target
            attrs = mixed_set[2]
            brightest = {int(h[np.argmin(mag_sample[h])]) for h in (
                attrs["real_train_gal_ids"], attrs["real_test_gal_ids"])}
            over = brightening > 0.5 + 1e-9
            assert set(ids[ok][over].tolist()) <= brightest
            assert over.mean() < 0.2


def test_mixed_set_of_the_test_half(cosmos):
    """The second cross-validation fold trains on the test half: mixed_real_half='test'."""
    from bh_stage.study.simulate import simulate_stamps

    _, truth, attrs = simulate_stamps(make_cfg(cosmos, set_kind="mixed", n_stamps=16,
                                               real_fraction=1.0, mixed_real_half="test"))
    ids = np.concatenate([truth["gal_id0"], truth["gal_id1"]])
    assert set(ids[ids >= 0].tolist()) <= set(attrs["real_test_gal_ids"].tolist())


def test_size_follows_the_size_magnitude_relation(cosmos):
    """Dimming a galaxy by 3 mag shrinks it by 10**(-0.105 * 3) = 0.48 (default slope)."""
    from bh_stage.study.simulate import _galaxy, _settings, cosmos_catalogue, sample_mags

    cfg = make_cfg(cosmos)
    settings = _settings(cfg)
    cat = cosmos_catalogue(cosmos, PARAM_CAT, False, cfg.exptime_s, cfg.area_cm2)
    m_sample = sample_mags(cat, False)[7]
    hlr = [_galaxy(settings, "parametric", 7, m_sample + dm, 0.0)[0].drawImage(
        nx=201, ny=201, scale=0.03).calculateHLR() for dm in (0.0, 3.0)]
    assert hlr[1] / hlr[0] == pytest.approx(10 ** (-0.105 * 3), rel=0.03)
    settings["size_slope_dex_per_mag"] = 0.0
    same = _galaxy(settings, "parametric", 7, m_sample + 3.0, 0.0)[0].drawImage(
        nx=201, ny=201, scale=0.03).calculateHLR()
    assert same == pytest.approx(hlr[0], rel=0.01)


def test_dataset_round_trip(tmp_path, param_set):
    stamps, truth, attrs = param_set
    path = tmp_path / "set.h5"
    io.write_dataset(path, stamps, truth, attrs)
    assert [p.name for p in tmp_path.iterdir()] == ["set.h5"]
    data = io.read_dataset(path)
    assert np.array_equal(data.stamps, stamps)
    assert data.truth.tobytes() == truth.tobytes()
    assert data.attrs["seed"] == 3 and data.attrs["set_kind"] == "parametric"
    np.testing.assert_array_equal(data.attrs["noise_sigma_adu"], [5, 10, 15, 20, 25, 30, 35])
    sub = io.read_dataset(path, indices=[7, 2, 7])
    assert np.array_equal(sub.stamps, stamps[[7, 2, 7]])
    assert np.array_equal(sub.truth["index"], [7, 2, 7])


def test_read_dataset_errors(tmp_path):
    with pytest.raises(InputFileError, match="missing.h5"):
        io.read_dataset(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(InputFileError, match="bad.h5"):
        io.read_dataset(bad)


def test_missing_cosmos_dir(tmp_path):
    from bh_stage.study.simulate import run_simulate

    missing = tmp_path / "no_cosmos"
    out = tmp_path / "out.h5"
    cfg = config_from_dict(SimulateConfig, {"n_stamps": 8, "n_workers": 1,
                                            "cosmos_dir": str(missing), "output": str(out)})
    with pytest.raises(InputFileError, match="no_cosmos.*galsim_download_cosmos"):
        run_simulate(cfg)
    assert list(tmp_path.iterdir()) == []


def test_missing_catalogue_file(tmp_path, cosmos):
    from bh_stage.study.simulate import simulate_stamps

    cfg = make_cfg(cosmos, parametric_catalogue="nope.fits", n_stamps=8)
    with pytest.raises(InputFileError, match="nope.fits"):
        simulate_stamps(cfg)


@pytest.mark.parametrize("data, match", [
    ({"noise": {"sigma_grid_adu": [5.0, -1.0]}}, "sigma_grid_adu"),
    ({"tile": {"noise_sigma_adu": -14.5}}, "noise_sigma_adu"),
    ({"n_stamps": "many"}, "n_stamps"),
    ({"stamp": {"size_pix": 11}}, "smaller than 4 PSF FWHM"),
    ({"magnitude": {"mag_min": 24.0, "mag_max": 22.0}}, "mag_max"),
    ({"psf": {"moffat_fwhm_arcsec": 0.9}}, "moffat_fwhm_arcsec"),
    ({"set_kind": "cartoon"}, "set_kind"),
    ({"unknown_key": 1}, "unknown_key"),
])
def test_bad_config(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(SimulateConfig, data)


def test_refuses_to_overwrite(tmp_path, cosmos):
    from bh_stage.study.simulate import run_simulate

    out = tmp_path / "set.h5"
    out.write_bytes(b"keep")
    cfg = make_cfg(cosmos, n_stamps=8, output=str(out))
    with pytest.raises(OutputExistsError, match="overwrite"):
        run_simulate(cfg)
    assert out.read_bytes() == b"keep"


def test_run_simulate_stamps(tmp_path, cosmos):
    from bh_stage.study.simulate import run_simulate

    out = tmp_path / "sub" / "set.h5"
    cfg = make_cfg(cosmos, n_stamps=8, output=str(out))
    line = run_simulate(cfg)
    assert "8 parametric stamps" in line and "stamps/s" in line
    data = io.read_dataset(out)
    assert data.stamps.shape == (8, 65, 65)
    import yaml
    assert yaml.safe_load(data.attrs["config"])["n_stamps"] == 8


def test_close_fraction_knob(cosmos):
    from bh_stage.study.simulate import simulate_stamps

    stamps, truth, attrs = simulate_stamps(make_cfg(
        cosmos, n_stamps=40, separation={"close_fraction": 1.0, "min_separation_pix": 2.0}))
    sep_pix = truth["separation_pix"][truth["label"] == 1]
    assert np.all((sep_pix >= 2.0) & (sep_pix < 10.0))
    assert attrs["close_fraction"] == 1.0


@pytest.mark.parametrize("name", ["simulate.yml", "simulate_tile.yml"])
def test_example_configs_load(name):
    cfg = load_config(REPO / "example_config" / name, SCHEMAS["simulate"])
    assert isinstance(cfg, SimulateConfig)


def test_example_config_has_defaults():
    cfg = load_config(REPO / "example_config" / "simulate.yml", SCHEMAS["simulate"])
    assert dataclasses.asdict(cfg) == dataclasses.asdict(config_from_dict(SimulateConfig, {}))


@pytest.mark.parametrize("suffix", [".fits", ".fits.fz"])
def test_tile(tmp_path, cosmos, suffix):
    import fitsio

    from bh_stage.study.simulate import run_simulate

    tile = {"nx_pix": 300, "ny_pix": 200, "density_per_arcmin2": 60.0,
            "close_pair_fraction": 0.4, "mask_box_pix": 10,
            "image": str(tmp_path / f"t{suffix}"), "weight": str(tmp_path / f"w{suffix}"),
            "truth": str(tmp_path / "truth.fits")}
    cfg = make_cfg(cosmos, mode="tile", tile=tile)
    line = run_simulate(cfg)
    assert "300x200 tile" in line
    image, hdr = fitsio.read(tile["image"], header=True)
    weight = fitsio.read(tile["weight"])
    truth = fitsio.read(tile["truth"])
    assert image.shape == (200, 300) and weight.shape == (200, 300)
    assert np.all(np.isfinite(image))
    for key in ("GAIN", "SATURATE", "SEEING", "EXPTIME", "MAGZP", "CRVAL1", "CD2_2"):
        assert key in hdr
    assert hdr["CTYPE1"] == "RA---TAN"
    assert np.sum(weight == 0) == 100
    np.testing.assert_allclose(weight[weight > 0], 1 / 14.5 ** 2, rtol=1e-6)
    yy, xx = np.mgrid[:200, :300]
    far = weight > 0
    for x, y in zip(truth["X_PIX0"], truth["Y_PIX0"]):
        far &= (xx - x) ** 2 + (yy - y) ** 2 > 15 ** 2
    assert far.sum() > 5000
    assert abs(image[far].mean()) < 0.5  # sky-subtracted
    assert abs(image[far].std() / 14.5 - 1) < 0.05
    np.testing.assert_allclose(truth["X_IMAGE"], truth["X_PIX0"] + 1)
    pairs = truth["PAIR_ID"] >= 0
    assert pairs.sum() >= 2 and np.all(truth["PAIR_ID"][~pairs] == -1)
    sep_pix = truth["SEPARATION_PIX"][pairs]
    assert np.all((sep_pix >= 3) & (sep_pix <= 10))
    # The brightest galaxy is where the truth says (noise and neighbours aside).
    k = np.argmax(truth["FLUX_ADU"] * (truth["PAIR_ID"] < 0))
    x, y = int(round(truth["X_PIX0"][k])), int(round(truth["Y_PIX0"][k]))
    if 3 <= x < 297 and 3 <= y < 197:
        box = image[y - 3:y + 4, x - 3:x + 4]
        assert box.sum() > 5 * 14.5 * 7


def test_tile_reproducible(cosmos):
    from bh_stage.study.simulate import simulate_tile

    cfg = make_cfg(cosmos, mode="tile", tile={"nx_pix": 128, "ny_pix": 128})
    a = simulate_tile(cfg)
    b = simulate_tile(cfg)
    assert np.array_equal(a[0], b[0]) and a[2].tobytes() == b[2].tobytes()


def test_tile_shear_is_the_only_difference(cosmos):
    """Tiles of one seed sheared by +-0.02: same objects, stars, PSF and noise; sheared
    galaxies and sheared separations within every group that can blend."""
    from bh_stage.metacal import adaptive_moments, shear_matrix
    from bh_stage.study.simulate import simulate_tile

    tile = {"nx_pix": 200, "ny_pix": 200, "draw_size_pix": 32, "star_density_per_arcmin2": 40,
            "density_per_arcmin2": 60, "close_pair_fraction": 0.3}
    out = {}
    for g in (0.02, -0.02):
        cfg = make_cfg(cosmos, mode="tile", tile=dict(tile, shear_g1=g))
        out[g] = simulate_tile(cfg, keep_models=True)
    (im_p, _, tr_p, cards_p, mod_p), (im_m, _, tr_m, cards_m, mod_m) = out[0.02], out[-0.02]
    moved = {"SNR", "X_PIX0", "Y_PIX0", "X_IMAGE", "Y_IMAGE", "RA_DEG", "DEC_DEG", "SHEAR_G1"}
    for name in tr_p.dtype.names:  # the draws do not depend on the shear
        if name not in moved:
            assert tr_p[name].tobytes() == tr_m[name].tobytes(), name
    star = tr_p["KIND"] == b"star"
    assert (tr_p["SHEAR_G1"][~star] == 0.02).all() and (tr_m["SHEAR_G1"][~star] == -0.02).all()
    assert (tr_p["PLANE"][star] == -1).all() and (tr_p["PLANE"][~star] == 0).all()
    hdr_p, hdr_m = ({k: v for k, v, _ in c} for c in (cards_p, cards_m))
    assert (hdr_p["BH_PSFG1"], hdr_p["BH_PSFG2"]) == (hdr_m["BH_PSFG1"], hdr_m["BH_PSFG2"])
    assert (hdr_p["BH_SHRG1"], hdr_m["BH_SHRG1"]) == (0.02, -0.02)
    # every pair's separation: d+ = A(+g) d0 and d- = A(-g) d0 for one unsheared d0
    pairs = [np.flatnonzero(tr_p["PAIR_ID"] == k) for k in np.unique(tr_p["PAIR_ID"])
             if k >= 0]
    assert len(pairs) >= 2
    for a, b in pairs:
        d_p = np.array([tr_p["X_PIX0"][b] - tr_p["X_PIX0"][a], tr_p["Y_PIX0"][b] - tr_p["Y_PIX0"][a]])
        d_m = np.array([tr_m["X_PIX0"][b] - tr_m["X_PIX0"][a], tr_m["Y_PIX0"][b] - tr_m["Y_PIX0"][a]])
        d0 = np.linalg.solve(shear_matrix(0.02, 0.0), d_p)
        assert np.allclose(shear_matrix(-0.02, 0.0) @ d0, d_m, atol=1e-9)
        assert np.hypot(*d0) == pytest.approx(tr_p["SEPARATION_PIX"][a], abs=1e-9)
    # stars and noise identical: the difference is zero away from galaxies
    assert star.sum() >= 3
    near_galaxy = np.zeros(im_p.shape, bool)  # where any galaxy model is non-negligible
    for k in np.flatnonzero(~star):
        for x_lo, y_lo, arr in (mod_p[k], mod_m[k]):
            ys, xs = np.nonzero(np.abs(arr) > 1e-6)
            ys, xs = ys + y_lo, xs + x_lo
            ok = (ys >= 0) & (ys < 200) & (xs >= 0) & (xs < 200)
            near_galaxy[ys[ok], xs[ok]] = True
    assert (~near_galaxy).sum() > 5000
    assert np.array_equal(im_p[~near_galaxy], im_m[~near_galaxy])
    for k in np.flatnonzero(star):
        assert np.array_equal(mod_p[k][2], mod_m[k][2])
        assert tr_p["X_PIX0"][k] == tr_m["X_PIX0"][k]
    # galaxies sheared: the brightest galaxy model's observed e1 moves up, e2 hardly
    k = np.flatnonzero(~star)[np.argmax(tr_p["FLUX_ADU"][~star])]
    shapes = adaptive_moments(np.stack([mod_p[k][2], mod_m[k][2]]))
    assert 0.01 < shapes["E"][0, 0] - shapes["E"][1, 0] < 0.15
    assert abs(shapes["E"][0, 1] - shapes["E"][1, 1]) < 0.01


def test_lensed_positions_shear_every_close_separation():
    """Groups within the linking length: the brightest main-plane member stays, the others
    move by their own plane's shear about it; far galaxies and stars stay put."""
    from bh_stage.metacal import shear_matrix
    from bh_stage.study.simulate import lensed_positions

    x = np.array([100.0, 110.0, 118.0, 500.0, 505.0, 900.0, 104.0])
    y = np.array([100.0, 100.0, 106.0, 500.0, 497.0, 900.0, 96.0])
    plane = np.array([0, 0, 1, 0, 0, 0, -1])
    g_main, g_other = (0.03, -0.01), (0.0, 0.05)
    shears = np.array([g_main, g_main, g_other, g_main, g_main, g_main, (0, 0)])
    mags = np.array([23.0, 22.0, 21.0, 24.0, 25.0, 22.0, 18.0])
    xs, ys = lensed_positions(x, y, plane, shears, mags, link_pix=12.0)
    # group {0, 1, 2} (chained: 0-1 is 10 px, 1-2 is 10 px): anchor 1, the brightest on
    # the main plane (2 is brighter but on the second plane)
    assert (xs[1], ys[1]) == (110.0, 100.0)
    a_main, a_other = shear_matrix(*g_main), shear_matrix(*g_other)
    assert np.allclose([xs[0], ys[0]], [110, 100] + a_main @ [-10.0, 0.0])
    assert np.allclose([xs[2], ys[2]], [110, 100] + a_other @ [8.0, 6.0])
    # group {3, 4}: anchor 3 (brighter)
    assert (xs[3], ys[3]) == (500.0, 500.0)
    assert np.allclose([xs[4], ys[4]], [500, 500] + a_main @ [5.0, -3.0])
    assert (xs[5], ys[5]) == (900.0, 900.0)  # alone
    assert (xs[6], ys[6]) == (104.0, 96.0)  # a star, though within 12 px of galaxies
    # no shear: nothing moves
    xs0, ys0 = lensed_positions(x, y, plane, np.zeros((7, 2)), mags)
    assert np.array_equal(xs0, x) and np.array_equal(ys0, y)


def test_second_plane_galaxies(cosmos, tmp_path):
    """Pair companions and a fraction of singles on the second plane, from their own random
    stream: every other truth column is that of the one-plane tile; the truth file keeps
    the planes (-1 for stars) as written."""
    import fitsio

    from bh_stage import io
    from bh_stage.study.simulate import simulate_tile

    tile = {"nx_pix": 300, "ny_pix": 300, "draw_size_pix": 32, "density_per_arcmin2": 60,
            "close_pair_fraction": 0.3, "star_density_per_arcmin2": 30}
    one = simulate_tile(make_cfg(cosmos, mode="tile", tile=tile))[2]
    two = simulate_tile(make_cfg(cosmos, mode="tile", tile=dict(
        tile, other_plane_fraction=0.5, companion_other_plane=True, other_shear_g2=0.0)))[2]
    for name in one.dtype.names:
        if name != "PLANE":
            assert one[name].tobytes() == two[name].tobytes(), name
    star = one["KIND"] == b"star"
    assert star.any() and (one["PLANE"][star] == -1).all() and (one["PLANE"][~star] == 0).all()
    io.write_truth(tmp_path / "truth.fits", two, [], False)
    assert fitsio.read(str(tmp_path / "truth.fits"), ext="TRUTH")["PLANE"].tolist() == (
        two["PLANE"].tolist())
    two = two[~star]
    paired = two["PAIR_ID"] >= 0
    first = paired & (np.arange(len(two)) % 2 == np.flatnonzero(paired)[0] % 2)
    assert (two["PLANE"][first] == 0).all() and (two["PLANE"][paired & ~first] == 1).all()
    singles = two["PLANE"][~paired]
    assert 0.3 < singles.mean() < 0.7
