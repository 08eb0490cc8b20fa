"""The tile head: P(unrecognised blend) of a detection, from its stamp and its catalogue row.

Input: stamps cut by the stage's own code at SExtractor detections (``stamps.cut_stamps``)
and the detections' catalogue features (``cues.catalogue_features``). Output: a logit per
detection. One VGG16 pass gives two taps, ``block4_pool`` (4x4x512 for a 65x65 stamp: the
finer map that still resolves a 4 px pair) and ``block5_pool`` (2x2x512: the paper head's
input), so the paper head and the tile head share the backbone pass.

The head is the paper's (Dense 256, Dropout 0.1, Dense 1024 relu, Dense 1) on the
concatenation of the chosen taps and the standardised catalogue features; it outputs a logit,
and the probability ``sigmoid(logit / temperature)`` is calibrated on validation tiles at
tile prevalence (temperature and bias fitted by maximum likelihood), so it does not saturate.
"""

import logging

import numpy as np

from . import cues

__all__ = ["TAPS", "TARGET", "build_tapped_backbone", "tapped_features", "head_inputs",
           "build_tile_head", "fit_tile_head", "predict_logits", "calibrate_logits", "sigmoid",
           "reliability", "train_tile", "run_train_tile"]

log = logging.getLogger(__name__)

TAPS = ("block4_pool", "block5_pool")
"""Backbone layers read in one pass; ``block5_pool`` is the backbone's output."""


def build_tapped_backbone(source="hed", input_shape=(65, 65, 3)):
    """Return the frozen VGG16 base with one output per ``TAPS`` layer."""
    import keras

    from .model import build_backbone

    base = build_backbone(source, input_shape)
    return keras.Model(base.input, [base.get_layer(name).output for name in TAPS],
                       name="vgg16_taps")


def tapped_features(stamps, backbone, mode, batch_size=256):
    """Return ``{tap: (n, features) float32}`` for padded stamps in ADU."""
    import tensorflow as tf

    from .model import preprocess

    spec = tf.TensorSpec([None, *backbone.input_shape[1:]], tf.float32)
    fn = tf.function(lambda x: backbone(x, training=False), input_signature=[spec],
                     autograph=False)
    n = len(stamps)
    out = {tap: np.empty((n, int(np.prod(o.shape[1:]))), np.float32)
           for tap, o in zip(TAPS, backbone.outputs)}
    for start in range(0, n, batch_size):
        x = preprocess(stamps[start:start + batch_size], mode)
        for tap, y in zip(TAPS, fn(x)):
            out[tap][start:start + len(x)] = y.numpy().reshape(len(x), -1)
    return out


def head_inputs(taps, catalogue, taps_used, mean, scale):
    """Concatenate the chosen taps and the standardised catalogue features (float32)."""
    parts = [taps[t] for t in taps_used]
    if catalogue is not None and mean is not None:
        parts.append((catalogue - mean) / scale)
    return np.concatenate(parts, axis=1).astype(np.float32)


def build_tile_head(n_inputs, dropout=0.1):
    """The paper's head on a flat input, ending in a logit (no sigmoid)."""
    import keras

    return keras.Sequential([
        keras.Input(shape=(n_inputs,)),
        keras.layers.Dense(256),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dense(1),
    ], name="bh_tile_head")


def fit_tile_head(x_train, y_train, x_valid, y_valid, seed=0, batch_size=250,
                  max_epochs=100, patience_epochs=8, learning_rate=1e-3):
    """Train the tile head with Adam on the logit loss; early stop on validation loss.

    Training positives are weighted so both classes weigh the same (training tiles hold more
    pairs than the sky); the validation loss is unweighted, at tile prevalence.

    Returns
    -------
    weights : list of ndarray
    history : dict
        ``loss``, ``val_loss`` per epoch and ``epochs``.
    """
    import keras

    keras.utils.set_random_seed(seed)
    head = build_tile_head(x_train.shape[1])
    head.compile(optimizer=keras.optimizers.Adam(learning_rate),
                 loss=keras.losses.BinaryCrossentropy(from_logits=True))
    pos = max(float(np.mean(y_train)), 1e-6)
    weights = np.where(y_train == 1, 0.5 / pos, 0.5 / (1 - pos)).astype(np.float32)
    stop = keras.callbacks.EarlyStopping(patience=patience_epochs, restore_best_weights=True)
    lr = keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=max(patience_epochs // 2, 1))
    hist = head.fit(x_train, y_train.astype(np.float32), sample_weight=weights,
                    validation_data=(x_valid, y_valid.astype(np.float32)),
                    batch_size=batch_size, epochs=max_epochs, callbacks=[stop, lr],
                    shuffle=True, verbose=0)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()
               if k in ("loss", "val_loss")}
    history["epochs"] = len(history["loss"])
    return head.get_weights(), history


def predict_logits(weights, x, batch_size=4096):
    """Logits of the tile head with ``weights`` on inputs ``x``."""
    head = build_tile_head(x.shape[1])
    head.set_weights(weights)
    return head.predict(x, batch_size=batch_size, verbose=0).reshape(-1).astype(np.float64)


def sigmoid(z):
    """Logistic function, float64, without overflow."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def calibrate_logits(logits, labels):
    """Fit ``p = sigmoid(a * logit + b)`` to labels by maximum likelihood (Platt scaling).

    Returns
    -------
    a, b : float
    """
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def nll(params):
        t = params[0] * z + params[1]
        return float(np.sum(np.logaddexp(0.0, t) - y * t))

    res = minimize(nll, x0=[1.0, 0.0], method="Nelder-Mead",
                   options={"xatol": 1e-6, "fatol": 1e-6, "maxiter": 2000})
    return float(res.x[0]), float(res.x[1])


TARGET = "unrecognised_blend"
"""``target`` of a tile head's metadata: P(two or more objects in one detection)."""


def reliability(prob, labels, n_bins=10):
    """Reliability curve: per bin of predicted probability (equal counts), the mean
    prediction, the observed frequency and the count."""
    prob, labels = np.asarray(prob, float), np.asarray(labels, float)
    edges = np.unique(np.quantile(prob, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, len(edges) - 2)
    return [{"p_mean": float(prob[which == b].mean()), "freq": float(labels[which == b].mean()),
             "n": int((which == b).sum())} for b in range(len(edges) - 1) if (which == b).any()]


def _role_arrays(folders, backbone, cfg):
    """Stack the detections of tile folders: taps, catalogue features, truth classes."""
    from . import tileset

    taps, cats, classes = [], [], []
    for folder in folders:
        _, cls, cat = tileset.detection_table(folder)
        taps.append(tileset.detection_features(folder, backbone, cfg.backbone, cfg.preprocess))
        cats.append(cat)
        classes.append(cls)
    return ({t: np.concatenate([f[t] for f in taps]) for t in TAPS}, np.concatenate(cats),
            np.concatenate(classes))


def train_tile(cfg, progress=None):
    """Train, calibrate and save a tile head (``bh-stage train-tile``).

    Returns
    -------
    pathlib.Path, dict
        The head's ``.json`` and its validation metrics.
    """
    import time
    from pathlib import Path

    from . import tileset
    from .metrics import roc_auc, tpr_at_fpr
    from .io import check_output
    from .model import backbone_sha256, save_head

    out = Path(cfg.output_dir) / f"{cfg.head_name}.json"
    check_output(out, cfg.overwrite, make_parents=True)
    t0 = time.perf_counter()
    folders = {role: tileset.prepare_role(cfg.tiles, role, progress)
               for role in ("train", "valid")}
    backbone = build_tapped_backbone(cfg.backbone)
    tr_taps, tr_cat, tr_cls = _role_arrays(folders["train"], backbone, cfg)
    va_taps, va_cat, va_cls = _role_arrays(folders["valid"], backbone, cfg)
    t_feat = time.perf_counter() - t0
    mean = tr_cat.mean(axis=0) if cfg.catalogue_features else None
    scale = tr_cat.std(axis=0) + 1e-6 if cfg.catalogue_features else None
    x_tr = head_inputs(tr_taps, tr_cat, cfg.taps, mean, scale)
    x_va = head_inputs(va_taps, va_cat, cfg.taps, mean, scale)
    y_tr, y_va = tr_cls["UNRECOGNISED"], va_cls["UNRECOGNISED"]
    log.info("tile head: %d training detections (%.1f %% unrecognised blends), %d validation "
             "(%.1f %%)", len(y_tr), 100 * y_tr.mean(), len(y_va), 100 * y_va.mean())
    weights, history = fit_tile_head(x_tr, y_tr, x_va, y_va, seed=cfg.seed,
                                     max_epochs=cfg.max_epochs,
                                     patience_epochs=cfg.patience_epochs)
    logits = predict_logits(weights, x_va)
    a, b = calibrate_logits(logits, y_va)
    prob = sigmoid(a * logits + b)
    threshold = float(np.quantile(prob, 1 - cfg.flag_fraction))
    valid = {"n_detections": int(len(y_va)), "prevalence": float(y_va.mean()),
             "roc_auc": roc_auc(logits, y_va), "tpr_at_fpr_0.05": tpr_at_fpr(logits, y_va, 0.05),
             "brier": float(np.mean((prob - y_va) ** 2)),
             "flagged_fraction": float(np.mean(prob >= threshold)),
             "tpr_at_flag": float(np.mean(prob[y_va == 1] >= threshold)),
             "reliability": reliability(prob, y_va)}
    meta = {
        "target": TARGET, "backbone": cfg.backbone,
        "backbone_sha256": backbone_sha256(cfg.backbone), "preprocess": cfg.preprocess,
        "input_shape": [65, 65, 3], "size_pix": 51, "pad_pix": 7,
        "noise_sigma_adu": cfg.tiles.noise_sigma_adu, "taps": list(cfg.taps),
        "catalogue_features": list(cues.FEATURE_NAMES) if cfg.catalogue_features else [],
        "catalogue_columns": list(cues.CATALOGUE_COLUMNS) if cfg.catalogue_features else [],
        "feature_mean": mean, "feature_scale": scale,
        "calibration": {"a": a, "b": b, "rule": "p = sigmoid(a * logit + b), fitted on "
                        "the validation tiles"},
        "blend_threshold": threshold, "hybrid_threshold": None,
        "flag_fraction": cfg.flag_fraction, "valid": valid, "history": history,
        "tiles": {"work_dir": cfg.tiles.work_dir, "train_seeds": cfg.tiles.train_seeds,
                  "valid_seeds": cfg.tiles.valid_seeds},
        "feature_seconds": t_feat, "train_seconds": time.perf_counter() - t0 - t_feat,
        "seed": cfg.seed,
    }
    return save_head(out, weights, meta, overwrite=cfg.overwrite), valid


def run_train_tile(cfg, progress=None):
    """``bh-stage train-tile CONFIG``: one summary line."""
    path, valid = train_tile(cfg, progress)
    return (f"train-tile: wrote {path}; validation tiles: ROC AUC {valid['roc_auc']:.3f}, "
            f"TPR at 5 % FPR {valid['tpr_at_fpr_0.05']:.3f}, BLEND_FLAG flags "
            f"{valid['flagged_fraction']:.1%} and holds {valid['tpr_at_flag']:.1%} of the "
            f"unrecognised blends")
