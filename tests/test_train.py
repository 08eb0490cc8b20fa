"""Tests of bh_stage.study.train: thresholds, augmentation, head fitting and a tiny end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest

from bh_stage import heads
from bh_stage.nets import compact, vgg
from bh_stage.study import train as bh_train
from bh_stage.config import TrainConfig, config_from_dict, load_config
from bh_stage.errors import ConfigError, OutputExistsError

TRUTH_DTYPE = [("index", "i8"), ("label", "i1"), ("split", "i1"), ("kind", "S10"),
               ("x0_pix", "f4"), ("y0_pix", "f4"), ("x1_pix", "f4"), ("y1_pix", "f4"),
               ("separation_pix", "f4"), ("snr_unit0", "f4"), ("snr_unit1", "f4"),
               ("mag0", "f4"), ("mag1", "f4"), ("gal_id0", "i8"), ("gal_id1", "i8")]


def _blob(size, x, y, flux, sigma):
    yy, xx = np.mgrid[:size, :size]
    return flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x)**2 + (yy - y)**2) / (2 * sigma**2))


def fake_stamps(n, rng, size_pix=51, pad_pix=7):
    """Noise-free padded stamps: isolated Gaussian blobs (label 0) and pairs (label 1)."""
    side = size_pix + 2 * pad_pix
    c = size_pix // 2
    stamps = np.zeros((n, side, side), np.float32)
    truth = np.zeros(n, TRUTH_DTYPE)
    truth["index"] = np.arange(n)
    truth["label"] = np.arange(n) % 2
    truth["kind"] = b"parametric"
    truth[["x1_pix", "y1_pix", "separation_pix"]] = (np.nan, np.nan, np.nan)
    for i in range(n):
        flux, sig = rng.uniform(3000, 8000), rng.uniform(1.5, 3.0)
        img = _blob(size_pix, c, c, flux, sig)
        truth["x0_pix"][i] = truth["y0_pix"][i] = c
        if truth["label"][i]:
            ang, sep = rng.uniform(0, 2 * np.pi), rng.uniform(6, 14)
            x1, y1 = c + sep * np.cos(ang), c + sep * np.sin(ang)
            img += _blob(size_pix, x1, y1, rng.uniform(0.5, 1) * flux, rng.uniform(1.5, 3))
            truth["x1_pix"][i], truth["y1_pix"][i], truth["separation_pix"][i] = x1, y1, sep
        stamps[i, pad_pix:pad_pix + size_pix, pad_pix:pad_pix + size_pix] = img
    return stamps, truth


def write_fake_dataset(path, n, seed=1, test_frac=0.2, valid_frac=0.2):
    """A tiny data set in the layout of ``io.write_dataset``."""
    from bh_stage import io

    rng = np.random.default_rng(seed)
    stamps, truth = fake_stamps(n, rng)
    u = rng.random(n)
    truth["split"] = np.where(u < test_frac, 2, np.where(u < test_frac + valid_frac, 1, 0))
    attrs = {"seed": seed, "noise_sigma_adu": np.array([15.0]), "n_realisations": 1,
             "size_pix": 51, "pad_pix": 7, "set_kind": "parametric", "config": "{}",
             "bh_stage_version": "test"}
    io.write_dataset(path, stamps, truth, attrs)
    return path


# --- thresholds -------------------------------------------------------------------------

def test_best_threshold_separable():
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    t, acc = bh_train.best_threshold(p, y)
    assert acc == 1.0
    assert 0.3 < t <= 0.7
    assert t == pytest.approx(0.5)  # midpoint between 0.3 and 0.7, closest to 0.5


def test_best_threshold_shifted():
    """The best cut is not 0.5 when the classes overlap there."""
    p = np.array([0.05, 0.1, 0.6, 0.65, 0.8, 0.9])
    y = np.array([0, 0, 0, 0, 1, 1])
    t, acc = bh_train.best_threshold(p, y)
    assert acc == 1.0
    assert t == pytest.approx(0.725)


def test_best_threshold_hybrid_always():
    """Stamps SEP calls blended count as blended whatever their probability."""
    p = np.array([0.1, 0.2, 0.9, 0.4, 0.3])
    y = np.array([0, 0, 1, 1, 0])
    sep = np.array([0, 0, 0, 1, 0], bool)
    t, acc = bh_train.best_threshold(p, y, always=sep)
    assert acc == 1.0 and 0.3 < t <= 0.9
    calib = bh_train.calibrate_thresholds(p, y, np.array([0, 0, -1, 1, 0]))
    assert calib["val_accuracy_hybrid"] == 1.0
    assert calib["val_accuracy_sep"] == pytest.approx(0.8)  # -1 (SEP failed) = not blended


# --- augmentation -----------------------------------------------------------------------

def test_augment_deterministic_and_flux_preserving():
    rng = np.random.default_rng(3)
    stamps, _ = fake_stamps(4, rng)
    a = bh_train.augment_stamps(stamps, np.random.default_rng(0))
    b = bh_train.augment_stamps(stamps, np.random.default_rng(0))
    assert a.shape == stamps.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, stamps)
    # zoom in [0.8, 1.2] per axis changes the total flux by at most 1/0.8**2
    ratio = a.sum(axis=(1, 2)) / stamps.sum(axis=(1, 2))
    assert np.all((ratio > 0.6) & (ratio < 1.6))


# --- head fitting -----------------------------------------------------------------------

def _cfg(**kw):
    base = {"max_epochs": 15, "patience_epochs": 5, "lr_patience_epochs": 2, "batch_size": 64,
            "seed": 0}
    base.update(kw)
    return config_from_dict(TrainConfig, base)


@pytest.mark.slow
def test_train_head_lowers_validation_loss():
    rng = np.random.default_rng(0)
    n = 400
    y = np.arange(n) % 2
    x = rng.normal(0, 1, (n, 2048)).astype(np.float32)
    x[:, :64] += 0.5 * y[:, None]
    cfg = _cfg()
    weights, hist = bh_train.train_head(x[:300], y[:300], x[300:], y[300:], cfg)
    assert hist["best_val_loss"] < hist["initial_val_loss"] - 0.05
    assert hist["best_val_loss"] == pytest.approx(min(hist["val_loss"]))
    assert len(weights) == 6
    # deterministic for a seed
    weights2, hist2 = bh_train.train_head(x[:300], y[:300], x[300:], y[300:], cfg)
    np.testing.assert_allclose(hist2["val_loss"], hist["val_loss"], rtol=1e-5)


# --- config -----------------------------------------------------------------------------

def test_train_config_checked():
    with pytest.raises(ConfigError, match="realisations"):
        config_from_dict(TrainConfig, {"realisations": []})
    with pytest.raises(ConfigError, match="preprocess"):
        config_from_dict(TrainConfig, {"preprocess": "rgb"})


def test_example_config_loads():
    path = Path(__file__).resolve().parent.parent / "example_config" / "train.yml"
    cfg = load_config(path, TrainConfig)
    assert cfg.backbone == "hed" and cfg.preprocess == "caffe_clip"


def test_feature_cache_is_keyed_on_the_data_set_content(tmp_path, monkeypatch):
    """Regression: the cache key held the file name, the seed and attrs['n_stamps'], which
    no data set has (always -1), so a data set simulated again under the same name and seed
    with other settings got the old set's features."""
    from bh_stage import io

    monkeypatch.setattr(vgg, "extract_features",
                        lambda stamps, *_: stamps.sum(axis=(1, 2), dtype=np.float32)[:, None])
    path, cache = tmp_path / "set.h5", tmp_path / "cache"
    stamps, truth = fake_stamps(6, np.random.default_rng(0))
    attrs = {"seed": 1, "noise_sigma_adu": np.array([15.0]), "size_pix": 51, "pad_pix": 7,
             "config": "magnitude: {mag_max: 24.5}\n"}

    def features():
        ds = io.read_dataset(path, stamps=False)
        return bh_train.dataset_features(path, dict(ds.attrs, n_stamps=len(ds.truth)),
                                         np.arange(6), 15.0, 0, 0, "caffe_clip", None,
                                         "0" * 64, cache)

    io.write_dataset(path, stamps, truth, attrs)
    first = features()
    io.write_dataset(path, stamps * 0.5, truth, dict(attrs, config="magnitude: {mag_max: 26}\n"),
                     overwrite=True)
    second = features()
    assert not np.allclose(first, second)
    assert len(list(cache.glob("set_*.npy"))) == 2
    np.testing.assert_array_equal(features(), second)  # same content: the cache is reused
    assert len(list(cache.glob("set_*.npy"))) == 2


def test_dataset_key_ignores_run_timing_only():
    attrs = {"seed": 1, "config": "n_stamps: 8\n", "noise_sigma_adu": np.array([5.0, 15.0]),
             "stamps_per_s": 51.2}
    assert bh_train.dataset_key(attrs) == bh_train.dataset_key(dict(attrs, stamps_per_s=9.0))
    assert bh_train.dataset_key(attrs) != bh_train.dataset_key(dict(attrs, n_stamps=8))
    assert bh_train.dataset_key(attrs) != bh_train.dataset_key(
        dict(attrs, noise_sigma_adu=np.array([5.0, 20.0])))


# --- end to end -------------------------------------------------------------------------

@pytest.mark.slow
def test_train_end_to_end(tmp_path, monkeypatch):
    """A tiny run writes a head that reloads, records its provenance and reuses its cache."""

    ds = write_fake_dataset(tmp_path / "fake.h5", 160)
    calls = []
    real = vgg.preprocess
    monkeypatch.setattr(vgg, "preprocess",
                        lambda s, mode="caffe_clip": calls.append(mode) or real(s, mode))
    cfg = _cfg(datasets=[str(ds)], output_dir=str(tmp_path / "heads"), head_name="tiny",
               cache_dir=str(tmp_path / "cache"), max_epochs=8)
    head_json, hist = bh_train.train(cfg)
    assert calls and set(calls) == {"caffe_clip"}  # training went through vgg.preprocess
    meta = json.loads(Path(head_json).read_text())
    assert meta["backbone"] == "hed" and meta["preprocess"] == "caffe_clip"
    assert meta["backbone_sha256"] == vgg.backbone_sha256("hed")
    assert meta["datasets"][0]["file"] == "fake.h5" and meta["datasets"][0]["seed"] == 1
    assert meta["noise_sigma_adu"] == 15.0 and meta["size_pix"] == 51 and meta["pad_pix"] == 7
    for key in ("blend_threshold", "hybrid_threshold", "val_loss", "val_accuracy",
                "test_accuracy", "bh_stage_version", "weights_sha256"):
        assert key in meta
    assert hist["best_val_loss"] < hist["initial_val_loss"]
    caches = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(caches) == 3  # train, valid, test
    with pytest.raises(OutputExistsError, match="overwrite"):
        bh_train.train(cfg)
    # Resumable: a rerun reuses the cached features and gives the same head.
    calls.clear()
    cfg2 = _cfg(datasets=[str(ds)], output_dir=str(tmp_path / "heads"), head_name="tiny",
                cache_dir=str(tmp_path / "cache"), max_epochs=8, overwrite=True)
    head_json2, hist2 = bh_train.train(cfg2)
    assert calls == []
    np.testing.assert_allclose(hist2["val_loss"], hist["val_loss"], rtol=1e-5)
    summary = bh_train.run_train(cfg2)
    assert "val accuracy" in summary and "tiny.json" in summary


@pytest.mark.slow
def test_train_compact_end_to_end(tmp_path):
    """``architecture: compact_cnn_paper_v1`` writes a paper head that ``load_classifier``
    turns into a ``CompactClassifier``: it separates the fake pairs from single blobs, its
    probability does not change under a quarter turn (the orientations it averages are the
    same set), it runs f32 whatever the precision asked, and it is refused as a teacher."""
    from bh_stage import model as bh_model

    ds = write_fake_dataset(tmp_path / "fake.h5", 400, valid_frac=0.3)
    cfg = _cfg(datasets=[str(ds)], output_dir=str(tmp_path / "heads"), head_name="tinyc",
               architecture="compact_cnn_paper_v1", max_epochs=6, patience_epochs=6)
    head_json, hist = bh_train.train(cfg)
    meta = json.loads(Path(head_json).read_text())
    assert meta["architecture"] == "compact_cnn_paper_v1" and "compact" in meta["architecture"]
    assert meta["target"] == heads.PAPER_TARGET and meta["backbone"] == "none"
    assert meta["stamp_side_pix"] == 51 and meta["input_shape"] == [65, 65, 1]
    assert meta["n_orientations"] == 4 and meta["teacher"] is None
    assert 0 < meta["blend_threshold"] < 1 and "val_accuracy_hybrid" in meta
    clf = bh_model.load_classifier(head_json)
    assert isinstance(clf, bh_model.CompactClassifier)
    stamps, truth = fake_stamps(200, np.random.default_rng(7))
    noisy = stamps + np.random.default_rng(8).normal(0, 15.0, stamps.shape).astype(np.float32)
    p = clf.predict_proba(noisy, 15.0)
    assert p.dtype == np.float64 and p.shape == (200,)
    from bh_stage.study.metrics import roc_auc
    assert roc_auc(p, truth["label"]) > 0.9
    np.testing.assert_allclose(clf.predict_proba(np.rot90(noisy, 1, axes=(1, 2)), 15.0), p,
                               atol=1e-5)
    # the rms scales the input: the default is the head's training noise
    np.testing.assert_allclose(clf.predict_proba(noisy), p, atol=1e-6)
    assert not np.allclose(clf.predict_proba(noisy, 60.0), p, atol=1e-3)
    assert compact.build_compact(51, 0, "compact_cnn_paper_v1").count_params() == len(
        np.concatenate([w.ravel() for w in heads.load_head(head_json).weights]))
    assert bh_model.load_classifier(head_json, precision="bf16").precision == "f32"
    cfg_t = _cfg(datasets=[str(ds)], output_dir=str(tmp_path / "heads"), head_name="t2",
                 architecture="compact_cnn_paper_v1", teacher=str(head_json), max_epochs=1)
    with pytest.raises(ConfigError, match="compact head; distil from a VGG16 head"):
        bh_train.train(cfg_t)
    # distilled from the shipped VGG16 head: the head records its teacher
    cfg_d = _cfg(datasets=[str(ds)], output_dir=str(tmp_path / "heads"), head_name="t3",
                 architecture="compact_cnn_paper_v1", teacher="cfis_sigma15_clip_80k",
                 distill_weight=0.3, n_orientations=1, max_epochs=1)
    meta_d = json.loads(Path(bh_train.train(cfg_d)[0]).read_text())
    assert meta_d["teacher"]["head"] == "cfis_sigma15_clip_80k.json"
    assert meta_d["teacher"]["distill_weight"] == 0.3 and meta_d["n_orientations"] == 1
    assert meta_d["teacher"]["weights_sha256"] == heads.load_head(
        heads.head_path("cfis_sigma15_clip_80k")).metadata["weights_sha256"]
