"""``bh-stage train``: train a BlendHunter head on simulated data sets (paper section 3).

Input: simulated data sets (``bh_stage.io.read_dataset``: noise-free padded stamps, truth
with labels and train/valid/test splits) and a ``TrainConfig``. Output: a head
(``<name>.weights.npz`` + ``<name>.json``, see ``bh_stage.heads.save_head``) with its
thresholds calibrated on the validation split, and the training history.

Steps: Gaussian noise of ``noise_sigma_adu`` is added to each stamp from its own seed
(``stamps.dataset_noise_seeds``), optionally augmented copies are made (shear, zoom, flip),
``nets.vgg.preprocess`` and the frozen backbone turn them into bottleneck features, cached on
disk once per (data set, noise, realisation, preprocessing, backbone, copy, rows); the head is
fitted as in the paper (BCE, Adam 1e-3, batch 250, best validation loss, early stopping 10,
learning rate halved after 5); then ``blend_threshold`` (P >= t) and ``hybrid_threshold``
(SEP says blended or P >= t) are chosen to maximise validation accuracy. A compact
``architecture`` skips the backbone and trains a small CNN on the stamps (``train_compact``).
"""

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from .. import io as bh_io
from .. import heads
from .. import model as bh_model
from ..nets import compact, vgg
from .. import stamps as bh_stamps
from ..config import TrainConfig, config_to_dict
from ..errors import ConfigError, OutputExistsError
from ..sep_flags import hybrid_flag
from .simulate import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID

__all__ = ["train", "run_train", "train_head", "train_compact", "best_threshold",
           "calibrate_thresholds", "augment_stamps", "split_indices", "noisy_stamps",
           "SPLIT_TRAIN", "SPLIT_VALID", "SPLIT_TEST"]

log = logging.getLogger(__name__)

AUGMENT_SHEAR_DEG = 0.2
"""Keras ``ImageDataGenerator(shear_range=0.2)``: shear angle drawn in +-0.2 *degrees*."""
AUGMENT_ZOOM = 0.2
"""Keras ``zoom_range=0.2``: x and y zoom factors drawn independently in [0.8, 1.2]."""

READ_CHUNK = 2048
"""Stamps read, noised and passed through the backbone at a time."""


# --- thresholds -------------------------------------------------------------------------

def best_threshold(p_blend, label, always=None):
    """Return the threshold t maximising the accuracy of ``always | (p_blend >= t)`` (with
    ``always`` SEP's verdict, the hybrid rule ``sep_flags.hybrid_flag``, counted in closed form).

    Candidates are the midpoints between consecutive distinct probabilities, 0 and 1;
    among equally accurate thresholds the one closest to 0.5 is taken.

    Parameters
    ----------
    p_blend : array_like, shape (n,)
        P(blend).
    label : array_like, shape (n,)
        1 blended, 0 isolated.
    always : array_like of bool, shape (n,), optional
        Stamps predicted blended whatever their probability (the hybrid's SEP verdict).

    Returns
    -------
    threshold : float
    accuracy : float
        Accuracy at that threshold.
    """
    p = np.asarray(p_blend, dtype=np.float64)
    y = np.asarray(label).astype(bool)
    a = np.zeros_like(y) if always is None else np.asarray(always).astype(bool)
    if p.size == 0:
        raise ValueError("best_threshold: no stamps")
    u = np.unique(p[~a])
    cand = np.unique(np.clip(np.concatenate([[0.0, 0.5, 1.0], (u[1:] + u[:-1]) / 2]), 0, 1))
    pos = np.sort(p[~a & y])
    neg = np.sort(p[~a & ~y])
    correct = (np.count_nonzero(a & y)
               + pos.size - np.searchsorted(pos, cand, side="left")
               + np.searchsorted(neg, cand, side="left"))
    acc = correct / p.size
    best = np.flatnonzero(acc == acc.max())
    i = best[np.argmin(np.abs(cand[best] - 0.5))]
    return float(cand[i]), float(acc[i])


def accuracy(p_blend, label, threshold, sep_blend=None):
    """Accuracy of ``p_blend >= threshold`` against ``label``; with ``sep_blend`` (SEP's
    verdict, 1 blended), of the hybrid ``sep_flags.hybrid_flag``."""
    sep = np.zeros(np.shape(p_blend), np.int8) if sep_blend is None else sep_blend
    pred = hybrid_flag(sep, p_blend, threshold)
    return float(np.mean(pred == np.asarray(label).astype(bool)))


def calibrate_thresholds(p_blend, label, sep_blend):
    """Choose ``blend_threshold`` and ``hybrid_threshold`` on the validation split.

    Parameters
    ----------
    p_blend : ndarray, shape (n,)
        P(blend) of the validation stamps.
    label : ndarray, shape (n,)
        1 blended, 0 isolated.
    sep_blend : ndarray of int, shape (n,)
        SEP's stage verdict (``sep_flags.classify_stamps(...)["blend"]``): 1 blended,
        0 isolated, -1 SEP failed (counted as not blended).

    Returns
    -------
    dict
        ``blend_threshold``, ``val_accuracy``, ``hybrid_threshold``,
        ``val_accuracy_hybrid``, ``val_accuracy_sep``, ``val_accuracy_at_0.5``.
    """
    sep = np.asarray(sep_blend) == 1
    t, acc = best_threshold(p_blend, label)
    th, acc_h = best_threshold(p_blend, label, always=sep)
    return {"blend_threshold": t, "val_accuracy": acc, "hybrid_threshold": th,
            "val_accuracy_hybrid": acc_h,
            "val_accuracy_sep": float(np.mean(sep == np.asarray(label).astype(bool))),
            "val_accuracy_at_0.5": accuracy(p_blend, label, 0.5)}


# --- augmentation -----------------------------------------------------------------------

def augment_stamps(stamps, rng):
    """Return randomly sheared, zoomed and flipped copies, as Keras' ImageDataGenerator.

    Each stamp gets a shear angle in +-0.2 degrees (Keras reads ``shear_range`` in degrees),
    independent x and y zooms in [0.8, 1.2] about the centre and a left-right flip with
    probability 1/2; linear interpolation, edges continued by the nearest pixel (Keras'
    ``fill_mode='nearest'``).

    Parameters
    ----------
    stamps : ndarray, shape (n, ny, nx)
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, float32, shape (n, ny, nx)
    """
    from scipy import ndimage

    stamps = np.asarray(stamps, dtype=np.float32)
    out = np.empty_like(stamps)
    centre = (np.array(stamps.shape[1:], dtype=np.float64) - 1) / 2
    for i, s in enumerate(stamps):
        shear = np.deg2rad(rng.uniform(-AUGMENT_SHEAR_DEG, AUGMENT_SHEAR_DEG))
        zy, zx = rng.uniform(1 - AUGMENT_ZOOM, 1 + AUGMENT_ZOOM, 2)
        flip = rng.random() < 0.5
        # Output (row, col) -> input (row, col), as keras' apply_affine_transform.
        matrix = np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]]) @ np.diag([zy, zx])
        offset = centre - matrix @ centre
        out[i] = ndimage.affine_transform(s, matrix, offset, order=1, mode="nearest")
        if flip:
            out[i] = out[i][:, ::-1]
    return out


# --- data and features ------------------------------------------------------------------

def split_indices(truth, split, recipe="mixed"):
    """Rows of a truth table in one split; the 'paper' recipe keeps parametric stamps only."""
    keep = truth["split"] == split
    if recipe == "paper":
        kind = np.char.strip(np.asarray(truth["kind"]).astype("S"))
        keep &= kind == b"parametric"
    return np.flatnonzero(keep)


def _subsample(index_lists, cap, rng):
    """Keep at most ``cap`` rows in total, spread over the data sets in proportion."""
    total = sum(len(ix) for ix in index_lists)
    if cap is None or total <= cap:
        return index_lists
    out = []
    for ix in index_lists:
        k = int(math.floor(cap * len(ix) / total + 0.5))
        out.append(np.sort(rng.choice(ix, size=min(k, len(ix)), replace=False)))
    return out


def noisy_stamps(path, attrs, rows, sigma_adu, realisation=0, aug=0, seed=0):
    """Read rows of a data set, add their noise and, for ``aug > 0``, augment them."""
    from ..io import read_dataset

    ds = read_dataset(path, rows)
    seeds = bh_stamps.dataset_noise_seeds(attrs["seed"], sigma_adu, realisation, rows)
    noisy = bh_stamps.add_noise(ds.stamps, sigma_adu, seeds)
    if aug > 0:
        rng = np.random.default_rng([int(seed), int(attrs["seed"]), int(realisation),
                                     int(aug), int(rows[0]) if len(rows) else 0])
        noisy = augment_stamps(noisy, rng)
    return noisy


RUN_ATTRS = ("stamps_per_s",)
"""Data set attributes that measure the simulation run, not its content."""


def dataset_key(attrs):
    """Return the sha256 of a data set's content as its attributes record it: the simulation
    config, seeds, noise grid, galaxy split, size and version (``RUN_ATTRS`` left out).

    ``train`` adds ``n_stamps``, the number of stamps, to the attributes it reads.
    """
    def plain(value):
        return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value

    content = {k: plain(v) for k, v in attrs.items() if k not in RUN_ATTRS}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def dataset_features(path, attrs, rows, sigma_adu, realisation, aug, mode, backbone,
                     backbone_sha, cache_dir, seed=0, batch_size=256, progress=None):
    """Bottleneck features of rows of a data set, read from or written to the cache.

    The cache file name holds the data set's name, noise, realisation, augmented copy,
    preprocessing, backbone sha256 and a hash of the data set's content (``dataset_key``),
    the rows (and the seed for augmented copies), so any change makes a new file; files are
    written atomically.

    Returns
    -------
    ndarray, float32, shape (len(rows), 2048)
    """
    rows = np.asarray(rows, dtype=np.int64)
    key = hashlib.sha256(json.dumps([
        dataset_key(attrs), float(sigma_adu), int(realisation), int(aug),
        int(seed) if aug else 0, mode, backbone_sha]).encode() + rows.tobytes()).hexdigest()[:16]
    name = (f"{Path(path).stem}_s{sigma_adu:g}_r{realisation}_a{aug}_{mode}_"
            f"{backbone_sha[:8]}_{key}.npy")
    cache = Path(cache_dir) / name
    feats = bh_io.read_array(cache)
    if feats is not None and feats.shape[0] == len(rows):
        log.info("features: reusing %s", cache)
        return feats
    t0 = time.perf_counter()
    parts = []
    for start in range(0, len(rows), READ_CHUNK):
        chunk = rows[start:start + READ_CHUNK]
        noisy = noisy_stamps(path, attrs, chunk, sigma_adu, realisation, aug, seed)
        parts.append(vgg.extract_features(noisy, backbone, mode, batch_size))
        if progress is not None:
            progress(start + len(chunk), len(rows), "features")
    feats = (np.concatenate(parts) if parts
             else np.zeros((0, int(np.prod(backbone.output_shape[1:]))), np.float32))
    dt = time.perf_counter() - t0
    log.info("features: %d stamps of %s in %.1f s (%.0f stamps/s) -> %s", len(rows),
             Path(path).name, dt, len(rows) / max(dt, 1e-9), cache)
    bh_io.write_array(cache, feats)
    return feats


# --- head training ----------------------------------------------------------------------

def train_head(x_train, y_train, x_valid, y_valid, cfg, progress=None):
    """Fit the paper's head on bottleneck features.

    BCE loss, Adam (``cfg.learning_rate``, beta 0.9/0.999, eps 1e-8), batch
    ``cfg.batch_size``, at most ``cfg.max_epochs`` epochs, shuffled, learning rate halved
    after ``cfg.lr_patience_epochs`` and stopped after ``cfg.patience_epochs`` epochs
    without a lower validation loss; the weights of the best validation loss are returned.
    Deterministic for ``cfg.seed``.

    Parameters
    ----------
    x_train, x_valid : ndarray, float32, shape (n, 2048) or (n, 2, 2, 512)
        Bottleneck features.
    y_train, y_valid : ndarray, shape (n,)
        1 blended, 0 isolated.
    cfg : TrainConfig
    progress : callable, optional
        ``progress(epoch, max_epochs, "epochs")`` after each epoch.

    Returns
    -------
    weights : list of ndarray
        Best weights, ``build_head().get_weights()`` order.
    history : dict
        Per-epoch ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``learning_rate``,
        and ``initial_val_loss`` (untrained head), ``best_epoch``, ``best_val_loss``,
        ``seconds``.
    """
    import keras

    shape = vgg.FEATURE_SHAPE
    x_train = np.asarray(x_train, dtype=np.float32).reshape(-1, *shape)
    x_valid = np.asarray(x_valid, dtype=np.float32).reshape(-1, *shape)
    y_train = np.asarray(y_train, dtype=np.float32)
    y_valid = np.asarray(y_valid, dtype=np.float32)
    keras.utils.set_random_seed(cfg.seed)
    head = vgg.build_head(shape)
    head.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate,
                                                 beta_1=0.9, beta_2=0.999, epsilon=1e-8),
                 loss="binary_crossentropy", metrics=["accuracy"])

    class _Best(keras.callbacks.Callback):
        """Keep the best weights and halve the learning rate on plateaus.

        The halving is Keras' ``ReduceLROnPlateau(factor=0.5, min_delta=1e-4, cooldown=0)``
        rewritten here: Keras' reads the rate with ``np.array(variable)``, which NumPy 2
        reports as a DeprecationWarning.
        """

        def __init__(self):
            super().__init__()
            self.best, self.weights, self.epoch = np.inf, None, -1
            self.lr_best, self.lr_wait, self.lrs = np.inf, 0, []

        def on_epoch_end(self, epoch, logs=None):
            val_loss = float(logs["val_loss"])
            lr_var = self.model.optimizer.learning_rate
            self.lrs.append(float(lr_var.numpy()))
            if val_loss < self.best:
                self.best, self.epoch = val_loss, epoch
                self.weights = self.model.get_weights()
            if val_loss < self.lr_best - 1e-4:
                self.lr_best, self.lr_wait = val_loss, 0
            else:
                self.lr_wait += 1
                if self.lr_wait >= cfg.lr_patience_epochs:
                    lr_var.assign(self.lrs[-1] * 0.5)
                    self.lr_wait = 0
                    log.debug("epoch %d: learning rate halved to %.3g", epoch,
                              self.lrs[-1] * 0.5)
            log.debug("epoch %d: loss %.4f val_loss %.4f val_accuracy %.4f", epoch,
                      logs["loss"], val_loss, logs["val_accuracy"])
            if progress is not None:
                progress(epoch + 1, cfg.max_epochs, "epochs")

    p0 = np.clip(head(x_valid, training=False).numpy().reshape(-1), 1e-7, 1 - 1e-7)
    initial_val_loss = float(-np.mean(y_valid * np.log(p0) + (1 - y_valid) * np.log(1 - p0)))
    best = _Best()
    t0 = time.perf_counter()
    fit = head.fit(
        x_train, y_train, batch_size=cfg.batch_size, epochs=cfg.max_epochs,
        validation_data=(x_valid, y_valid), shuffle=True, verbose=0,
        callbacks=[best, keras.callbacks.EarlyStopping(monitor="val_loss",
                                                       patience=cfg.patience_epochs)])
    seconds = time.perf_counter() - t0
    history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
    history["learning_rate"] = best.lrs
    history.update(initial_val_loss=initial_val_loss, best_epoch=best.epoch,
                   best_val_loss=best.best, seconds=seconds)
    log.info("head: %d epochs in %.1f s, best val_loss %.4f at epoch %d",
             len(history["loss"]), seconds, best.best, best.epoch)
    return best.weights, history


def _predict_head(weights, features):
    import tensorflow as tf

    head = vgg.build_head(vgg.FEATURE_SHAPE)
    head.set_weights(weights)
    x = np.asarray(features, np.float32).reshape(-1, *vgg.FEATURE_SHAPE)
    fn = tf.function(lambda v: head(v, training=False), autograph=False)
    return np.concatenate([fn(x[i:i + 4096]).numpy().reshape(-1)
                           for i in range(0, len(x), 4096)] or [np.zeros(0, np.float32)])


def _sep_verdict(paths, rows_list, attrs_list, sigma_adu, realisation, sep_cfg):
    """SEP's stage verdict on the noisy padded stamps of rows of several data sets."""
    from ..sep_flags import classify_stamps

    out = []
    for path, rows, attrs in zip(paths, rows_list, attrs_list):
        for start in range(0, len(rows), READ_CHUNK):
            chunk = rows[start:start + READ_CHUNK]
            noisy = noisy_stamps(path, attrs, chunk, sigma_adu, realisation, 0, 0)
            out.append(np.asarray(classify_stamps(noisy, sep_cfg)["blend"]))
    return np.concatenate(out) if out else np.zeros(0, np.int8)


# --- the subcommand ---------------------------------------------------------------------

def default_head_name(cfg):
    """``<backbone>_<recipe>_sigma<noise>``, e.g. ``hed_mixed_sigma15``."""
    bb = cfg.backbone if cfg.backbone in heads.BACKBONES else Path(cfg.backbone).stem
    return f"{bb}_{cfg.recipe}_sigma{cfg.noise_sigma_adu:g}"


def train(cfg, progress=None):
    """Train a head and save it with calibrated thresholds.

    Parameters
    ----------
    cfg : TrainConfig
    progress : callable, optional
        ``progress(done, total, step)``; steps are ``"features"`` and ``"epochs"``.

    Returns
    -------
    head_json : pathlib.Path
        The saved head's metadata file.
    history : dict
        See ``train_head``; plus ``calibration`` and ``test`` (accuracies) and
        ``feature_seconds``.

    Raises
    ------
    ConfigError
        No data sets, or a data set's stamp geometry differs from ``cfg.stamp``.
    InputFileError
        A data set is missing or unreadable.
    OutputExistsError
        The head exists and ``overwrite`` is false.
    """
    from ..io import read_dataset

    if not cfg.datasets:
        raise ConfigError("datasets: give at least one simulated data set (.h5 written by "
                          "`bh-stage simulate`)")
    name = cfg.head_name or default_head_name(cfg)
    head_json = Path(cfg.output_dir) / f"{name}.json"
    if head_json.exists() and not cfg.overwrite:
        raise OutputExistsError(f"{head_json} exists; remove it, choose another head_name "
                                f"or set overwrite: true")
    # Truth tables and attributes only.
    attrs_list, truths = [], []
    for path in cfg.datasets:
        ds = read_dataset(path, stamps=False)
        size, pad = int(ds.attrs["size_pix"]), int(ds.attrs["pad_pix"])
        if (size, pad) != (cfg.stamp.size_pix, cfg.stamp.pad_pix):
            raise ConfigError(f"{path}: stamps are size_pix {size}, pad_pix {pad}; the "
                              f"config asks stamp.size_pix {cfg.stamp.size_pix}, pad_pix "
                              f"{cfg.stamp.pad_pix}; make them equal")
        truths.append(ds.truth)
        attrs_list.append(dict(ds.attrs, n_stamps=len(ds.truth)))  # for dataset_key
    rng = np.random.default_rng([cfg.seed, 20211016])
    cap = cfg.max_train_stamps
    rows = {}
    for split, split_cap in ((SPLIT_TRAIN, cap), (SPLIT_VALID, None if cap is None else
                                                  max(1, (cap + 1) // 2)),
                             (SPLIT_TEST, None if cap is None else max(1, (cap + 1) // 2))):
        rows[split] = _subsample([split_indices(t, split, cfg.recipe) for t in truths],
                                 split_cap, rng)
    for split, label in ((SPLIT_TRAIN, "train"), (SPLIT_VALID, "valid")):
        if sum(len(r) for r in rows[split]) == 0:
            raise ConfigError(f"datasets: no {label} stamps for recipe {cfg.recipe!r} in "
                              f"{', '.join(cfg.datasets)}")
    if cfg.architecture != "vgg16":
        return train_compact(cfg, head_json, attrs_list, truths, rows, progress)
    backbone_sha = vgg.backbone_sha256(cfg.backbone)
    backbone = vgg.build_backbone(cfg.backbone)
    t0 = time.perf_counter()

    def features(split, realisation, aug):
        return np.concatenate([
            dataset_features(path, attrs, r, cfg.noise_sigma_adu, realisation, aug,
                             cfg.preprocess, backbone, backbone_sha, cfg.cache_dir,
                             cfg.seed, cfg.feature_batch_size, progress)
            for path, attrs, r in zip(cfg.datasets, attrs_list, rows[split])])

    x_train, y_train = [], []
    for realisation in cfg.realisations:
        for aug in range(cfg.n_augment + 1):
            x_train.append(features(SPLIT_TRAIN, realisation, aug))
            y_train.append(_split_labels(truths, rows[SPLIT_TRAIN]))
    x_train, y_train = np.concatenate(x_train), np.concatenate(y_train)
    r0 = cfg.realisations[0]
    x_valid, y_valid = features(SPLIT_VALID, r0, 0), _split_labels(truths, rows[SPLIT_VALID])
    n_test = sum(len(r) for r in rows[SPLIT_TEST])
    x_test = features(SPLIT_TEST, r0, 0) if n_test else None
    feature_seconds = time.perf_counter() - t0

    weights, history = train_head(x_train, y_train, x_valid, y_valid, cfg, progress)
    p_valid = _predict_head(weights, x_valid)
    sep_valid = _sep_verdict(cfg.datasets, rows[SPLIT_VALID], attrs_list,
                             cfg.noise_sigma_adu, r0, cfg.sep)
    calib = calibrate_thresholds(p_valid, y_valid, sep_valid)
    test = {}
    if n_test:
        y_test = _split_labels(truths, rows[SPLIT_TEST])
        p_test = _predict_head(weights, x_test)
        sep_test = _sep_verdict(cfg.datasets, rows[SPLIT_TEST], attrs_list,
                                cfg.noise_sigma_adu, r0, cfg.sep)
        test = {"test_accuracy": accuracy(p_test, y_test, calib["blend_threshold"]),
                "test_accuracy_at_0.5": accuracy(p_test, y_test, 0.5),
                "test_accuracy_hybrid": accuracy(p_test, y_test, calib["hybrid_threshold"],
                                                 sep_test),
                "test_accuracy_sep": float(np.mean((sep_test == 1) == y_test.astype(bool)))}
    val_loss = float(history["best_val_loss"])
    metadata = {
        "target": heads.PAPER_TARGET,
        "backbone": str(cfg.backbone), "backbone_sha256": backbone_sha,
        "preprocess": cfg.preprocess, "input_shape": list(vgg.INPUT_SHAPE),
        "size_pix": cfg.stamp.size_pix, "pad_pix": cfg.stamp.pad_pix,
        "noise_sigma_adu": cfg.noise_sigma_adu, "realisations": list(cfg.realisations),
        "recipe": cfg.recipe, "n_augment": cfg.n_augment, "seed": cfg.seed,
        "datasets": _datasets_metadata(cfg, attrs_list, rows),
        "n_train_features": int(len(x_train)),
        "val_loss": val_loss, "best_epoch": int(history["best_epoch"]),
        "epochs": len(history["loss"]), "train_seconds": round(history["seconds"], 2),
        "feature_seconds": round(feature_seconds, 2),
        **calib, **test,
        "train_config": config_to_dict(cfg),
    }
    if cfg.recipe == "paper":
        metadata["paper_threshold"] = 0.5
    heads.save_head(head_json, weights, metadata, overwrite=cfg.overwrite)
    history.update(calibration=calib, test=test, feature_seconds=feature_seconds)
    return head_json, history


def _split_labels(truths, split_rows):
    """Labels of one split's rows of every data set, concatenated."""
    return np.concatenate([t["label"][r] for t, r in zip(truths, split_rows)])


def _datasets_metadata(cfg, attrs_list, rows):
    """A head's ``datasets``: file, seed, kind and split sizes of each training data set."""
    return [{"file": Path(p).name, "seed": int(a["seed"]), "set_kind": str(a.get("set_kind", "")),
             "n_train": len(rows[SPLIT_TRAIN][i]), "n_valid": len(rows[SPLIT_VALID][i]),
             "n_test": len(rows[SPLIT_TEST][i])}
            for i, (p, a) in enumerate(zip(cfg.datasets, attrs_list))]


def train_compact(cfg, head_json, attrs_list, truths, rows, progress=None):
    """Train a compact network for the paper's question (``cfg.architecture``, see
    ``nets.compact.COMPACT_LAYERS``) and save it as a paper head (``model.CompactClassifier``).

    The network reads the central ``stamp.size_pix`` square. Training stamps are noise-free,
    with ``n_augment`` sheared and zoomed copies (``augment_stamps``); every epoch draws new
    noise of ``noise_sigma_adu`` and one of the 8 flips and quarter turns
    (``train_tile.fit_tile_head``). With ``teacher``, the target mixes the labels with the
    teacher's probabilities on the training stamps (noise realisation ``realisations[0]``).
    Early stopping on the validation split's ROC AUC (``realisations[0]``); the thresholds
    are calibrated there as for the VGG16 heads (``calibrate_thresholds``). ``backbone``,
    ``preprocess``, ``cache_dir`` and further ``realisations`` do not apply.
    """
    from .train_tile import fit_tile_head
    from ..io import read_dataset

    t0 = time.perf_counter()
    sigma, r0, side = cfg.noise_sigma_adu, cfg.realisations[0], cfg.stamp.size_pix

    def stamps(split, noisy):
        parts = [noisy_stamps(path, attrs, r, sigma, r0) if noisy
                 else read_dataset(path, r).stamps
                 for path, attrs, r in zip(cfg.datasets, attrs_list, rows[split])]
        return np.concatenate(parts).astype(np.float32)

    free = stamps(SPLIT_TRAIN, False)
    y_train = _split_labels(truths, rows[SPLIT_TRAIN]).astype(np.int8)
    teacher, teacher_prob = None, None
    if cfg.teacher is not None:
        teacher = bh_model.load_classifier(cfg.teacher)
        if heads.is_compact(teacher.metadata):
            raise ConfigError(f"teacher: {teacher.head_path} is a compact head; distil from a "
                              f"VGG16 head")
        teacher_prob = teacher.predict_proba(stamps(SPLIT_TRAIN, True))
    rng = np.random.default_rng([cfg.seed, 15])
    copies = [free] + [augment_stamps(free, rng) for _ in range(cfg.n_augment)]
    x_train = compact.centre_stamps(np.concatenate(copies), side)[..., None]
    n_copies = cfg.n_augment + 1
    y_all = np.tile(y_train, n_copies)
    soft = None if teacher_prob is None else np.tile(teacher_prob, n_copies)
    noisy_valid = stamps(SPLIT_VALID, True)
    y_valid = _split_labels(truths, rows[SPLIT_VALID]).astype(np.int8)
    x_valid = compact.scale_stamps(compact.centre_stamps(noisy_valid, side), sigma)
    net, history = fit_tile_head(
        (x_train, np.zeros((len(y_all), 0), np.float32), y_all),
        (x_valid, np.zeros((len(y_valid), 0), np.float32), y_valid), seed=cfg.seed,
        batch_size=cfg.batch_size, max_epochs=cfg.max_epochs,
        patience_epochs=cfg.patience_epochs, learning_rate=cfg.learning_rate,
        lr_drop_epochs=cfg.lr_patience_epochs, progress=progress, noise_sigma_adu=sigma,
        teacher_prob=soft, distill_weight=cfg.distill_weight, architecture=cfg.architecture)
    del x_train
    metadata = {
        "target": heads.PAPER_TARGET, "architecture": cfg.architecture,
        "backbone": "none", "backbone_sha256": "none", "preprocess": "asinh_rms",
        "input_shape": [side + 2 * cfg.stamp.pad_pix] * 2 + [1], "stamp_side_pix": side,
        "n_orientations": cfg.n_orientations, "size_pix": side, "pad_pix": cfg.stamp.pad_pix,
        "noise_sigma_adu": sigma, "realisations": list(cfg.realisations),
        "recipe": cfg.recipe, "n_augment": cfg.n_augment, "seed": cfg.seed,
        "datasets": _datasets_metadata(cfg, attrs_list, rows),
        "teacher": None if teacher is None else {
            "head": teacher.head_path.name, "weights_sha256": teacher.metadata["weights_sha256"],
            "distill_weight": cfg.distill_weight},
        "history": history, "best_epoch": history["best_epoch"], "epochs": history["epochs"],
        "train_config": config_to_dict(cfg),
    }
    head = heads.Head(net.get_weights(), dict(metadata, blend_threshold=0.5,
                                                 hybrid_threshold=0.5), head_json)
    p_valid = bh_model.CompactClassifier(net, head).predict_proba(noisy_valid, sigma)
    sep_valid = _sep_verdict(cfg.datasets, rows[SPLIT_VALID], attrs_list, sigma, r0, cfg.sep)
    calib = calibrate_thresholds(p_valid, y_valid, sep_valid)
    metadata.update(calib, train_seconds=round(time.perf_counter() - t0, 2))
    heads.save_head(head_json, net.get_weights(), metadata, overwrite=cfg.overwrite)
    history.update(calibration=calib, test={}, feature_seconds=0.0)
    return head_json, history


def run_train(cfg, progress=None):
    """Run ``bh-stage train`` and return its one-line summary."""
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"run_train expects a TrainConfig, got {type(cfg).__name__}")
    head_json, history = train(cfg, progress)
    c, t = history["calibration"], history["test"]
    text = (f"head {head_json}: val accuracy {c['val_accuracy']:.3f} at "
            f"t={c['blend_threshold']:.3f}, hybrid {c['val_accuracy_hybrid']:.3f} at "
            f"t={c['hybrid_threshold']:.3f} (SEP {c['val_accuracy_sep']:.3f})")
    if t:
        text += f"; test accuracy {t['test_accuracy']:.3f}, hybrid {t['test_accuracy_hybrid']:.3f}"
    return text
