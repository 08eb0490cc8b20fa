"""The position-only tile head (``compact_cnn_stamp_v1``, ``train-tile --set features=stamp``):
its features are measured by the stage on the stamp, so a catalogue with only an id and x/y
runs end to end and gives the same BLEND_PROB as the full SExtractor catalogue."""

import json

import fitsio
import numpy as np
import pytest

from bh_stage import features
from bh_stage.cli import main

from conftest import gaussian_image, small_tile_set


def test_pair_features_differ_from_a_single_galaxy():
    """Worked by hand: a round Gaussian at the centre has its peak, barycentre and windowed
    centroid on the centre pixel and SEP finds one source; an equal pair 4 px apart along x
    (merged by SEP at this separation) is elongated along x, with a larger flux radius; an
    empty stamp has no central source (FOUND 0)."""
    single = gaussian_image((65, 65), [(32, 32)], noise_adu=1.0, seed=1)
    pair = gaussian_image((65, 65), [(30, 32), (34, 32)], noise_adu=1.0, seed=1)
    empty = np.random.default_rng(2).normal(0.0, 1.0, (65, 65)).astype(np.float32)
    out = dict(zip(features.FEATURE_NAMES[:-2],
                   features.measure_stamps(np.stack([single, pair, empty]), 1.0).T))
    assert out["FOUND"].tolist() == [1, 1, 0]
    assert out["CENTRE_OFFSET_PIX"][0] < 0.1 and out["PEAK_OFFSET_PIX"][0] < 0.5
    assert out["ELONGATION"][0] < 1.1 < 1.3 < out["ELONGATION"][1]
    assert out["FLUX_RADIUS_PIX"][1] > out["FLUX_RADIUS_PIX"][0] + 0.5
    # flux 4000 (single) and 8000 (pair) ADU: SNR = flux / (rms sqrt(npix))
    assert out["LOG10_SNR"][1] > out["LOG10_SNR"][0]
    assert out["NEXT_DIST_PIX"][0] == features.FAR_PIX and out["NEXT_FLUX_RATIO"][0] == 0


def test_position_cues_by_hand():
    """Three detections: two 3-4-5 px apart, one 100 px away alone."""
    cues = features.position_cues(np.array([0.0, 3.0, 100.0]), np.array([0.0, 4.0, 0.0]))
    np.testing.assert_allclose(cues[:, 0], np.log10([5.0, 5.0, np.hypot(97.0, 4.0)]),
                               rtol=1e-6)
    np.testing.assert_array_equal(cues[:, 1], [1, 1, 0])


def _positions_only(src, dst):
    """Copy a SExtractor FITS_LDAC catalogue keeping only NUMBER, XWIN_IMAGE, YWIN_IMAGE."""
    with fitsio.FITS(str(src)) as f:
        imhead = f["LDAC_IMHEAD"].read()
        objects = f["LDAC_OBJECTS"].read(columns=["NUMBER", "XWIN_IMAGE", "YWIN_IMAGE"])
    with fitsio.FITS(str(dst), "rw", clobber=True) as f:
        f.write(None)
        f.write(imhead, extname="LDAC_IMHEAD")
        f.write(objects, extname="LDAC_OBJECTS")


@pytest.mark.slow
@pytest.mark.integration
def test_position_only_head_runs_on_a_positions_only_catalogue(tmp_path, cosmos_dir,
                                                               sextractor):
    """train-tile with features=stamp writes a compact_cnn_stamp_v1 head that needs no
    catalogue column; `bh-stage run` with it gives the same BLEND_PROB on the full
    SExtractor catalogue and on a copy with only NUMBER, XWIN_IMAGE, YWIN_IMAGE."""
    tiles = small_tile_set(tmp_path / "tiles", cosmos_dir, 500, [1], [2], [3])
    heads = tmp_path / "heads"
    assert main(["-q", "train-tile", "example_config/train-tile.yml",
                 *tiles, f"--set=output_dir={heads}",
                 "--set=features=stamp", "--set=max_epochs=1", "--set=n_orientations=1",
                 "--set=head_name=v2"]) == 0
    meta = json.loads((heads / "v2.json").read_text())
    assert meta["architecture"] == "compact_cnn_stamp_v1"
    assert meta["catalogue_columns"] == [] and meta["stamp_features"] == list(
        features.FEATURE_NAMES)
    test = tmp_path / "tiles" / "train1"  # any SExtracted tile: the test half is not needed
    _positions_only(test / "tile.cat", tmp_path / "positions.cat")
    outputs = {}
    for name, cat in (("full", test / "tile.cat"), ("positions", tmp_path / "positions.cat")):
        out = tmp_path / f"{name}_bh.cat"
        assert main(["-q", "run", "example_config/config.yml", str(test / "tile.fits"),
                     "--catalogue", str(cat), "--weight", str(test / "tile.weight.fits"),
                     "--output", str(out), f"--set=tile_head={heads / 'v2.json'}"]) == 0
        outputs[name] = fitsio.read(str(out), ext="LDAC_OBJECTS")
    full, positions = outputs["full"], outputs["positions"]
    assert positions.dtype.names[:3] == ("NUMBER", "XWIN_IMAGE", "YWIN_IMAGE")
    assert np.isfinite(full["BLEND_PROB"]).mean() > 0.9
    np.testing.assert_array_equal(positions["BLEND_PROB"], full["BLEND_PROB"])
    np.testing.assert_array_equal(positions["BLEND_FLAG"], full["BLEND_FLAG"])


def test_head_reading_other_features_is_refused(tmp_path, small_tile, capsys):
    """A tile head whose feature names (or order) differ from what this version measures is
    refused with one line naming the head: exit 2, no output, the inputs untouched."""
    import hashlib
    import shutil

    from bh_stage.heads import HEADS_DIR

    for suffix in (".json", ".weights.npz"):
        shutil.copy(HEADS_DIR / f"tile_unrecognised_positions{suffix}", tmp_path / f"old{suffix}")
    meta = json.loads((tmp_path / "old.json").read_text())
    meta["weights_file"] = "old.weights.npz"
    meta["stamp_features"] = meta["stamp_features"][::-1]
    (tmp_path / "old.json").write_text(json.dumps(meta))
    (small_tile / "config.yml").write_text(f"tile_head: {tmp_path / 'old.json'}\n")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in small_tile.iterdir() if p.is_file()}
    code = main(["-q", "run", str(small_tile / "config.yml"), str(small_tile / "tile.fits")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "old.json: the head reads the features NDET_STAMP" in err
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in small_tile.iterdir() if p.is_file()} == before


@pytest.mark.slow
@pytest.mark.integration
def test_head_that_also_reads_sextractor_columns(tmp_path, cosmos_dir, sextractor, capsys):
    """train-tile with features=stamp+catalogue writes a compact_cnn_stamp_catalogue_v1 head:
    the stamp's features, then 7 SExtractor features, which training reads as worked out
    here from the catalogue's columns. `bh-stage run` feeds the network what training fed
    it: its BLEND_PROB is the head's calibrated probability of the training arrays. A
    positions-only catalogue and metacal.enabled are refused, one line each, exit 2."""
    from bh_stage.nets.compact import sigmoid
    from bh_stage.study import train_tile
    from bh_stage.tilehead import load_tile_head

    tiles = small_tile_set(tmp_path / "tiles", cosmos_dir, 500, [1], [2], [3])
    heads = tmp_path / "heads"
    assert main(["-q", "train-tile", "example_config/train-tile.yml",
                 *tiles, f"--set=output_dir={heads}",
                 "--set=features=stamp+catalogue", "--set=max_epochs=1",
                 "--set=n_orientations=2", "--set=head_name=u"]) == 0
    meta = json.loads((heads / "u.json").read_text())
    assert meta["architecture"] == "compact_cnn_stamp_catalogue_v1"
    assert meta["catalogue_columns"] == ["FLUX_RADIUS", "A_IMAGE", "B_IMAGE", "FLUX_AUTO",
                                         "FLUXERR_AUTO", "MAG_AUTO", "FLAGS", "CLASS_STAR"]
    assert meta["stamp_features"] == list(features.FEATURE_NAMES) + [
        "CAT_FLUX_RADIUS", "CAT_ELONGATION", "CAT_MAG_AUTO", "CAT_LOG10_SNR",
        "CAT_FLAGS_NEIGHBOURS", "CAT_FLAGS_BLENDED", "CAT_CLASS_STAR"]
    tile = tmp_path / "tiles" / "valid2"
    x, feats, _ = train_tile.role_arrays([tile], 0, "stamp+catalogue")
    c = fitsio.read(str(tile / "tile.cat"), ext="LDAC_OBJECTS")
    by_hand = np.column_stack([
        c["FLUX_RADIUS"], c["A_IMAGE"] / c["B_IMAGE"], c["MAG_AUTO"],
        np.log10(c["FLUX_AUTO"] / c["FLUXERR_AUTO"]), c["FLAGS"] & 1, (c["FLAGS"] & 2) > 0,
        c["CLASS_STAR"]])
    good = np.isfinite(by_hand).all(axis=1) & (c["FLUX_AUTO"] > 0)
    np.testing.assert_allclose(feats[good, 16:], by_hand[good], rtol=1e-5)
    assert good.mean() > 0.9

    out = tmp_path / "u_bh.cat"
    assert main(["-q", "run", "example_config/config.yml", str(tile / "tile.fits"),
                 "--catalogue", str(tile / "tile.cat"), "--weight",
                 str(tile / "tile.weight.fits"), "--output", str(out),
                 f"--set=tile_head={heads / 'u.json'}", "--set=tile_head_precision=f32"]) == 0
    prob = fitsio.read(str(out), ext="LDAC_OBJECTS")["BLEND_PROB"]
    head = load_tile_head(heads / "u.json")
    a, b = meta["calibration"]["a"], meta["calibration"]["b"]
    expected = sigmoid(a * head.input_logits(x, feats) + b)
    scored = np.isfinite(prob)
    assert scored.mean() > 0.9
    np.testing.assert_allclose(prob[scored], expected[scored], rtol=1e-4, atol=1e-6)

    _positions_only(tile / "tile.cat", tmp_path / "positions.cat")
    capsys.readouterr()
    for extra, says in (
            (["--catalogue", str(tmp_path / "positions.cat")],
             "positions.cat: no column FLUX_RADIUS, A_IMAGE"),
            (["--catalogue", str(tile / "tile.cat"), "--set=metacal.enabled=true",
              "--set=metacal.psf_fwhm_arcsec=0.65"], "u.json reads SExtractor columns")):
        bad = tmp_path / "bad_bh.cat"
        assert main(["-q", "run", "example_config/config.yml", str(tile / "tile.fits"),
                     *extra, "--output", str(bad), f"--set=tile_head={heads / 'u.json'}"]) == 2
        err = capsys.readouterr().err
        assert not bad.exists() and err.count("\n") == 1 and says in err
