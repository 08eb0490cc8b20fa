"""The tile-level study end to end on small tiles: simulate with truth, source-extractor with a
segmentation map, ``bh-stage train-tile``, then ``bh-stage evaluate-tile`` (about a minute);
and the tile head's pure pieces."""

import json

import numpy as np
import pytest

from bh_stage import tilehead
from bh_stage.nets import compact
from bh_stage.study import train_tile
from bh_stage.heads import load_head

from conftest import MULTIPLE_COSMOS_INDICES


def test_centre_and_scale_stamps():
    stamps = np.arange(2 * 65 * 65, dtype=np.float32).reshape(2, 65, 65)
    centre = compact.centre_stamps(stamps, 33)
    assert centre.shape == (2, 33, 33)
    assert centre[0, 16, 16] == stamps[0, 32, 32]  # the object pixel stays at the centre
    x = compact.scale_stamps(np.full((1, 3, 3), 30.0), rms_adu=10.0)
    assert x.shape == (1, 3, 3, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x, np.arcsinh(1.0), rtol=1e-6)


def test_dihedral_gives_the_eight_symmetries():
    stamp = np.arange(9.0).reshape(1, 3, 3, 1)  # no symmetry: every transform is different
    images = [compact.dihedral(stamp, k) for k in range(8)]
    assert len({im.tobytes() for im in images}) == 8
    assert (images[0] == stamp).all()
    assert images[1][0, 0, 0, 0] == stamp[0, 0, 2, 0]  # a quarter turn counter-clockwise
    assert (images[4] == stamp[:, :, ::-1]).all()  # the left-right flip
    import tensorflow as tf  # training augments with the TensorFlow twin: same order

    for k in range(8):
        np.testing.assert_array_equal(compact.dihedral_tf(tf.constant(stamp), tf.constant(k)),
                                      images[k])


def test_orientation_logits_average_the_rotations():
    """With a "network" that returns the top-left pixel, the mean over the 4 rotations is
    the mean of the four corners, and a rotated input gives the same mean."""
    stamps = np.random.default_rng(2).normal(size=(5, 7, 7, 1)).astype(np.float32)
    feats = np.zeros((5, 1), np.float32)
    corner = lambda x, f: x[:, 0, 0, 0]  # noqa: E731
    corners = stamps[:, [0, 0, -1, -1], [0, -1, 0, -1], 0].astype(np.float64).mean(axis=1)
    z = compact.orientation_logits(corner, stamps, feats, 4, batch_size=2)
    np.testing.assert_allclose(z, corners, rtol=1e-6)
    turned = compact.dihedral(stamps, 1)
    np.testing.assert_allclose(compact.orientation_logits(corner, turned, feats, 4), z,
                               rtol=1e-6)
    np.testing.assert_array_equal(compact.orientation_logits(corner, stamps, feats, 1),
                                  stamps[:, 0, 0, 0])


@pytest.mark.slow
def test_learning_rate_drops_after_epochs_without_a_better_auc():
    """With lr_drop_epochs=1 every epoch without a new best validation AUC multiplies the
    rate by 0.3; the others keep it; the weights returned are those of the best epoch."""
    rng = np.random.default_rng(5)
    img = rng.normal(size=(96, 9, 9, 1)).astype(np.float32)
    cat = rng.normal(size=(96, 2)).astype(np.float32)
    y = (rng.random(96) < 0.3).astype(np.int8)
    model, hist = train_tile.fit_tile_head((img[:64], cat[:64], y[:64]),
                                         (img[64:], cat[64:], y[64:]), batch_size=32,
                                         max_epochs=6, patience_epochs=6, lr_drop_epochs=1)
    rate, best = 1e-3, -np.inf
    for auc, after in zip(hist["valid_roc_auc"], hist["learning_rate_after"]):
        rate = rate if auc > best else rate * 0.3
        best = max(best, auc)
        assert after == pytest.approx(rate, rel=1e-5)
    assert len(set(hist["learning_rate_after"])) > 1  # random labels: some epoch is worse
    from bh_stage.study.metrics import roc_auc

    assert roc_auc(train_tile.tile_logits(model, img[64:], cat[64:]), y[64:]) == pytest.approx(
        max(hist["valid_roc_auc"]))


def _blob_stamps(rng, n, side=15):
    """Noise-free stamps (ADU): a faint off-centre blob in the positives only."""
    y = (np.arange(n) % 2).astype(np.int8)
    img = np.zeros((n, side, side, 1), np.float32)
    img[y == 1, 3:6, 9:12, 0] = 12.0
    return img, np.zeros((n, 0), np.float32), y


@pytest.mark.slow
def test_noise_on_the_fly_and_distillation_targets():
    """With noise_sigma_adu the noise-free training stamps get noise each epoch and are
    scaled like scale_stamps; with teacher_prob (distill_weight 1) the network learns the
    teacher's targets, here the labels inverted."""
    rng = np.random.default_rng(6)
    img, cat, y = _blob_stamps(rng, 256)
    v_img, v_cat, v_y = _blob_stamps(rng, 128)
    v_scaled = compact.scale_stamps(v_img[..., 0] + rng.normal(0, 5.0, v_img.shape[:3]), 5.0)
    kw = dict(batch_size=32, max_epochs=4, patience_epochs=4, noise_sigma_adu=5.0)
    _, hist = train_tile.fit_tile_head((img, cat, y), (v_scaled, v_cat, v_y), **kw)
    assert max(hist["valid_roc_auc"]) > 0.9
    _, inverted = train_tile.fit_tile_head((img, cat, y), (v_scaled, v_cat, v_y),
                                         teacher_prob=1.0 - y, distill_weight=1.0, **kw)
    assert min(inverted["valid_roc_auc"]) < 0.1


def test_sigmoid_does_not_saturate_or_overflow():
    p = compact.sigmoid(np.array([-800.0, 0.0, 20.0, 30.0, 800.0]))
    assert p[1] == 0.5 and p[0] >= 0 and p[-1] == 1.0
    assert p[2] < p[3] < 1.0  # float64 keeps logits 20 and 30 apart (float32 does not)


def test_calibration_recovers_a_known_law():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, 20000)
    labels = rng.random(20000) < compact.sigmoid(0.5 * logits - 1.0)
    a, b = train_tile.calibrate_logits(logits, labels)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.07)


def test_isolated_threshold_flags_its_fpr_of_isolated_galaxies_only():
    """The threshold is read on isolated galaxies alone: 100 isolated at p = 0.00..0.99 and
    blends at p = 1 give the 95th percentile of the isolated ones, whatever the blends."""
    p = np.r_[np.arange(100) / 100.0, np.ones(50)]
    iso = np.r_[np.ones(100, int), np.zeros(50, int)]
    thr = train_tile.isolated_threshold(p, iso, 0.05)
    assert thr == pytest.approx(np.quantile(np.arange(100) / 100.0, 0.95))
    assert np.mean(p[:100] >= thr) == pytest.approx(0.05, abs=0.011)
    assert train_tile.isolated_threshold(p[::-1], iso[::-1], 0.05) == thr
    with pytest.raises(ValueError, match="no isolated"):
        train_tile.isolated_threshold(p[100:], iso[100:])


def test_reliability_bins_hold_every_detection():
    rng = np.random.default_rng(1)
    p = rng.random(1000)
    y = rng.random(1000) < p
    bins = train_tile.reliability(p, y, n_bins=5)
    assert sum(b["n"] for b in bins) == 1000
    for b in bins:  # a calibrated score: frequency close to the mean prediction
        assert abs(b["freq"] - b["p_mean"]) < 0.1


def test_weights_from_a_paper_head_is_refused_before_any_tile(tmp_path, capsys):
    """train-tile --set weights_from=<not a tile head>: one line naming the file and the key,
    exit code 2, no output folder made and no tile simulated."""
    from bh_stage.cli import main

    code = main(["-q", "train-tile", "example_config/train-tile.yml",
                 f"--set=tiles.work_dir={tmp_path / 'tiles'}",
                 f"--set=output_dir={tmp_path / 'heads'}",
                 "--set=weights_from=compact_paper_sigma15", "--set=n_orientations=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "compact_paper_sigma15.json: not a tile head" in err[0] and "weights_from" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_evaluate_tile_without_test_seeds_is_refused_before_any_tile(tmp_path, capsys):
    """evaluate-tile --set tiles.test_seeds=[]: one line naming the key, exit code 2, no
    tile simulated and no report written."""
    from bh_stage.cli import main

    code = main(["-q", "evaluate-tile", "example_config/evaluate-tile.yml",
                 f"--set=tiles.work_dir={tmp_path / 'tiles'}",
                 f"--set=output_dir={tmp_path / 'report'}", "--set=tiles.test_seeds=[]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tiles.test_seeds: empty" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_multiple_cutouts_without_the_cosmos_files_warns(tmp_path, caplog):
    """Tiles made elsewhere, no COSMOS real-galaxy catalogue here: none set apart, a warning
    naming the file."""
    import logging

    from bh_stage.config import TileSetConfig, load_config
    from bh_stage.study.evaluate_tile import multiple_cutouts_of

    tiles = load_config(None, TileSetConfig, [f"cosmos_dir={tmp_path}"])
    with caplog.at_level(logging.WARNING):
        got = multiple_cutouts_of(tiles, [])
    assert got.tolist() == []
    assert f"{tmp_path / 'real_galaxy_catalog_26_extension_example.fits'}: cannot read" \
        in caplog.text
    assert "no detection is reported apart" in caplog.text


@pytest.mark.slow
@pytest.mark.integration
def test_train_tile_then_evaluate_tile(tmp_path, cosmos_dir, sextractor):
    from bh_stage.cli import main

    from conftest import small_tile_set

    tiles = small_tile_set(tmp_path / "tiles", cosmos_dir, 600, [1, 2], [3], [4])
    heads = tmp_path / "heads"
    assert main(["-q", "train-tile", "example_config/train-tile.yml",
                 *tiles, f"--set=output_dir={heads}",
                 "--set=max_epochs=2", "--set=features=catalogue",
                 "--set=head_name=tile_unrecognised"]) == 0
    meta = json.loads((heads / "tile_unrecognised.json").read_text())
    assert meta["n_orientations"] == 4 and len(meta["history"]["learning_rate_after"]) == 2
    assert meta["target"] == "unrecognised_blend"
    assert meta["architecture"] == compact.ARCHITECTURE
    assert 0 < meta["valid"]["prevalence"] < 1 and meta["calibration"]["a"] != 0
    assert meta["tiles"]["train_seeds"] == [1, 2]
    # its 8-bit network, ranges from the training tiles, made from these weights
    assert meta["int8"]["ranges_from"]["tiles"] == ["train1", "train2"]
    assert meta["int8"]["weights_sha256"] == meta["weights_sha256"]
    assert tilehead.load_tile_head(heads / "tile_unrecognised.json", "auto").precision == "int8"
    # weights_from: the same network calibrated again; in the head's own orientations that
    # gives back its calibration and threshold, in 2 orientations new ones
    stale = heads / "o2.int8.tflite"  # left by an earlier head of that name
    stale.write_bytes(b"not this head's")
    for name, n in (("again", 4), ("o2", 2)):
        assert main(["-q", "train-tile", "example_config/train-tile.yml",
                     *tiles, f"--set=output_dir={heads}",
                     f"--set=weights_from={heads / 'tile_unrecognised.json'}",
                     f"--set=n_orientations={n}", f"--set=head_name={name}"]) == 0
    again, o2 = (json.loads((heads / f"{name}.json").read_text()) for name in ("again", "o2"))
    for key in ("a", "b"):
        assert again["calibration"][key] == pytest.approx(meta["calibration"][key], rel=1e-9)
    assert again["blend_threshold"] == pytest.approx(meta["blend_threshold"], rel=1e-9)
    assert o2["n_orientations"] == 2 and o2["calibration"]["a"] != meta["calibration"]["a"]
    assert o2["calibrated_from"] == {"head": "tile_unrecognised.json", "n_orientations": 4,
                                     "weights_sha256": meta["weights_sha256"]}
    assert o2["history"] == meta["history"] and o2["tiles"] == meta["tiles"]
    assert "int8" not in o2  # the source's 8-bit network is the source's file
    assert not stale.exists()
    assert tilehead.load_tile_head(heads / "o2.json", "auto").precision == "f32"
    for x, y in zip(load_head(heads / "o2.json").weights,
                    load_head(heads / "tile_unrecognised.json").weights):
        np.testing.assert_array_equal(x, y)
    run = tmp_path / "run.yml"
    run.write_text(f"tile_head: {heads / 'tile_unrecognised.json'}\n")
    out = tmp_path / "report"
    assert main(["-q", "evaluate-tile", "example_config/evaluate-tile.yml",
                 *tiles, f"--set=run_config={run}",
                 f"--set=output_dir={out}", "--set=n_bootstrap=20"]) == 0
    text = (out / "results.md").read_text()
    assert "## unrecognised vs all others (all:" in text and "BLEND_PROB" in text
    table = np.load(out / "detections.npz")["table"]
    import fitsio

    n_test = fitsio.FITS(str(tmp_path / "tiles" / "test4" / "tile.cat"))[
        "LDAC_OBJECTS"].get_nrows()
    assert len(table) == n_test > 20
    assert table["UNRECOGNISED"].sum() > 0 and table["ISOLATED"].sum() > 0
    assert np.isfinite(table["BLEND_PROB"]).mean() > 0.9
    # detections of the real galaxies whose HST cut-out holds a second source (the 11 COSMOS
    # indices found by SEP on the HST images, test_cutouts) are marked, and only those
    # (each detection's main object looked up in its tile's truth table: KIND and GAL_ID)
    marked = np.zeros(len(table), bool)
    for tile in np.unique(table["TILE"]):
        truth = fitsio.read(str(tmp_path / "tiles" / tile.decode() / "tile_truth.fits"),
                            ext="TRUTH")
        by_id = {int(i): (k.strip(), int(g)) for i, k, g in
                 zip(truth["ID"], truth["KIND"].astype(str), truth["GAL_ID"])}
        for row in np.flatnonzero(table["TILE"] == tile):
            kind, gal_id = by_id.get(int(table["MAIN_ID"][row]), ("", -1))
            marked[row] = kind == "real" and gal_id in MULTIPLE_COSMOS_INDICES
    np.testing.assert_array_equal(table["MULTIPLE_CUTOUT"] == 1, marked)
    assert marked.any()  # this seed's test tile draws some (26 of 118 detections)
    assert "## unrecognised vs all others (multiple cut-outs apart:" in text
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("subset,comparison,score")
    assert (out / "roc.png").stat().st_size > 10000


@pytest.mark.parametrize("name, architecture, n_orientations", [
    ("default", compact.STAMP_ARCHITECTURE, 2),
    ("tile_unrecognised_positions", compact.STAMP_ARCHITECTURE, 4),
    ("tile_unrecognised", compact.ARCHITECTURE, 4),
    ("tile_unrecognised_stamp_catalogue_o2", compact.STAMP_CATALOGUE_ARCHITECTURE, 2)])
def test_shipped_tile_head_loads_and_scores(name, architecture, n_orientations):
    """The shipped tile heads (the position-only default, in 2 orientations since issue 24,
    the same in 4, the catalogue head of 0.3-0.5, and the head reading both kinds of
    features of 0.16): their metadata says what they are,
    and they score stage stamps with probabilities strictly inside (0, 1) that follow the
    calibration of their logits, the same for a quarter-turned stamp where the 4 quarter
    turns are averaged."""
    from bh_stage import cues, features

    head = tilehead.load_tile_head(tilehead.tile_head_path(name))
    meta = head.metadata
    assert meta["target"] == "unrecognised_blend" and meta["architecture"] == architecture
    if architecture == compact.STAMP_ARCHITECTURE:
        assert head.catalogue_columns == () and head.feature_names == features.FEATURE_NAMES
    else:
        assert head.catalogue_columns == cues.CATALOGUE_COLUMNS
    if architecture == compact.STAMP_CATALOGUE_ARCHITECTURE:
        assert head.stamp_features and head.feature_names == features.FEATURE_NAMES + tuple(
            f"CAT_{name}" for name in cues.FEATURE_NAMES[:7])
    assert 0 < head.blend_threshold < 1 and meta["valid"]["roc_auc"] > 0.5
    rng = np.random.default_rng(0)
    stamps = rng.normal(0, 14.5, (6, 65, 65)).astype(np.float32)
    stamps[:3, 32, 32] += 3000.0  # a bright point source in half of them
    feats = np.tile(np.asarray(meta["feature_mean"], np.float32), (6, 1))
    p = head.predict_proba(stamps, 14.5, feats)
    assert p.shape == (6,) and ((p > 0) & (p < 1)).all()
    a, b = meta["calibration"]["a"], meta["calibration"]["b"]
    np.testing.assert_allclose(p, compact.sigmoid(a * head.logits(stamps, 14.5, feats) + b))
    assert head.n_orientations == meta["n_orientations"] == n_orientations
    if n_orientations == 4:
        turned = np.rot90(stamps, 1, axes=(1, 2))
        np.testing.assert_allclose(head.predict_proba(turned, 14.5, feats), p, rtol=1e-5)


@pytest.mark.parametrize("four, two", [("tile_unrecognised", "tile_unrecognised_o2"),
                                       ("tile_unrecognised_positions", "default")])
def test_fast_head_is_the_same_network_in_two_orientations(four, two):
    """tile_unrecognised_o2 is tile_unrecognised's network averaged over 2 orientations, and
    the default tile head (tile_unrecognised_positions_o2, issue 24) is
    tile_unrecognised_positions' network in 2 orientations: the same weights, logits the
    mean of the stamp's and its quarter turn's."""
    head = tilehead.load_tile_head(tilehead.tile_head_path(four))
    meta = head.metadata
    rng = np.random.default_rng(0)
    stamps = rng.normal(0, 14.5, (6, 65, 65)).astype(np.float32)
    stamps[:3, 32, 32] += 3000.0
    feats = np.tile(np.asarray(meta["feature_mean"], np.float32), (6, 1))
    # the faster head is the same network in 2 orientations, the stamp and its quarter turn
    two = tilehead.load_tile_head(tilehead.tile_head_path(two))
    assert two.n_orientations == 2 and two.metadata["calibrated_from"] == {
        "head": head.path.name, "n_orientations": 4, "weights_sha256": meta["weights_sha256"]}
    assert two.metadata["weights_sha256"] == meta["weights_sha256"]
    x = compact.scale_stamps(compact.centre_stamps(stamps), 14.5)
    turns = [head.input_logits(compact.dihedral(x, k), feats, 1) for k in (0, 1)]
    np.testing.assert_allclose(two.logits(stamps, 14.5, feats), np.mean(turns, axis=0),
                               rtol=1e-5)
