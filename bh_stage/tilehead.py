"""The tile head: P(unrecognised blend) of a detection, from its stamp and its catalogue row.

Input: the central ``STAMP_SIDE_PIX`` square of the stage's own stamps (``cut_stamps`` at
SExtractor detections, noise-filled off the tile), scaled by the tile rms, and the detection's
catalogue features (``cues.catalogue_features``). Output: a logit per detection and the
calibrated probability ``sigmoid(a * logit + b)``, computed from the logit so that it does
not saturate.

Network (``build_compact``): a compact CNN at the stamp's native resolution (3x3
convolutions 32-32, pool, 64-64, pool, 64; 27 million multiply-adds, 55 MFLOP, per stamp and
orientation) whose flattened map meets the catalogue features in a dense layer. The same
builder, with ``COMPACT_LAYERS["compact_cnn_paper_v1"]`` and no catalogue features, is the
compact network for the paper's question (``model.CompactClassifier``). Why not the
VGG16 base: on the validation tiles its frozen ``block5_pool`` / ``block4_pool`` features,
with or without a 3x magnified centre, ranked unrecognised blends at ROC AUC 0.55-0.62,
below the catalogue features alone (0.69); the 51x51 stamp squeezed into 2x2 or 4x4 cells
loses the 2-6 px structure that tells two galaxies from one (``bench/bench_tile_heads.py``).

Training (``train_tile``): detections of training tiles (training galaxies only), every
epoch in a random one of the 8 flips and 90 degree rotations (exact symmetries of the sky),
positives weighted to balance the classes, early stopping (and, with ``lr_drop_epochs``, a
lower learning rate from the best epoch) on the validation tiles, whose
natural prevalence also fixes the calibration (``calibrate_logits``) and the ``BLEND_FLAG``
threshold. The head scores each stamp in ``n_orientations`` of those orientations (rotations
by 0, 90, 180, 270 degrees first) and averages the logits (``orientation_logits``); the
calibration and threshold are fitted on the same average, and old heads without the key
score one orientation. ``weights_from`` refits only the calibration and threshold of a
trained network, e.g. in fewer orientations (the shipped ``tile_unrecognised_o2``).
"""

import json
import logging

import numpy as np

from . import cues

__all__ = ["TARGET", "STAMP_SIDE_PIX", "ARCHITECTURE", "COMPACT_LAYERS", "centre_stamps",
           "asinh_scale", "scale_stamps",
           "dihedral", "orientation_logits", "build_compact", "fit_tile_head",
           "calibrate_logits", "sigmoid", "reliability", "TileHead", "DEFAULT_TILE_HEAD",
           "tile_head_path", "load_tile_head", "train_tile", "run_train_tile"]

log = logging.getLogger(__name__)

TARGET = "unrecognised_blend"
"""``target`` of a tile head: P(the detection holds two or more objects SExtractor merged)."""

STAMP_SIDE_PIX = 33
"""Side of the central square of the stage stamp the tile head reads, pixels."""

ASINH_SOFTENING_RMS = 3.0
"""Stamps enter as ``asinh(x / (this * rms))``: linear up to a few sigma, compressed above."""

ARCHITECTURE = "compact_cnn_catalogue_v1"
"""Name of the tile head's network, recorded in a head's ``architecture``."""

COMPACT_LAYERS = {
    ARCHITECTURE: ((32, False), (32, True), (64, False), (64, True), (64, False)),
    # the paper's question on the 51x51 stamp: 19 million multiply-adds an orientation
    "compact_cnn_paper_v1": ((16, False), (16, True), (32, False), (32, True), (64, True),
                             (64, False)),
}
"""``build_compact``'s architectures: (filters, 2x2 max-pool after) of each 3x3 convolution."""


def centre_stamps(stamps, side_pix=STAMP_SIDE_PIX):
    """Return the central ``side_pix`` square of odd-sided stamps (the object pixel stays at
    the centre)."""
    stamps = np.asarray(stamps)
    c, h = stamps.shape[-1] // 2, side_pix // 2
    return stamps[..., c - h:c + h + 1, c - h:c + h + 1]


def asinh_scale(x, rms_adu, asinh=np.arcsinh):
    """``asinh(x / (3 rms))``: the tile head's input scaling, for numpy (default) or, with
    ``asinh=tf.math.asinh``, inside TensorFlow (noise drawn on the fly in training)."""
    return asinh(x / (ASINH_SOFTENING_RMS * rms_adu))


def scale_stamps(stamps, rms_adu):
    """Network input of stamps in ADU: ``asinh_scale``, float32, shape (n, s, s, 1)."""
    x = asinh_scale(np.asarray(stamps, dtype=np.float32), rms_adu)
    return x[..., None].astype(np.float32)


def dihedral(stamps, k):
    """The k-th (0..7) of the 8 flips and 90 degree rotations of (n, s, s[, 1]) stamps:
    a rotation by ``k % 4`` quarter turns, then, for k >= 4, a left-right flip."""
    x = np.rot90(stamps, k % 4, axes=(1, 2))
    return np.ascontiguousarray(x[:, :, ::-1] if k >= 4 else x)


def orientation_logits(predict, stamps, features, n_orientations, batch_size=4096):
    """Mean logit over the first ``n_orientations`` of the ``dihedral`` transforms.

    ``predict(stamps, features)`` returns one logit per row of a batch; ``stamps`` are the
    scaled network input (n, s, s, 1). Returns float64, shape (n,).
    """
    total = np.zeros(len(stamps), dtype=np.float64)
    for k in range(n_orientations):
        turned = dihedral(stamps, k)
        total += np.concatenate([np.asarray(predict(turned[i:i + batch_size],
                                                    features[i:i + batch_size])).reshape(-1)
                                 for i in range(0, len(stamps), batch_size)] or [np.zeros(0)])
    return total / n_orientations


def build_compact(side_pix=STAMP_SIDE_PIX, n_features=len(cues.FEATURE_NAMES),
                  architecture=ARCHITECTURE):
    """A compact network of ``COMPACT_LAYERS``: ``[stamp (s, s, 1), features (k,)] -> logit``
    (k = 0: the stamp alone)."""
    import keras

    img = keras.Input((side_pix, side_pix, 1), name="stamp")
    feats = keras.Input((n_features,), name="catalogue")
    x = img
    for filters, pool in COMPACT_LAYERS[architecture]:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if pool:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Concatenate()([keras.layers.Flatten()(x), feats])
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model([img, feats], keras.layers.Dense(1)(x), name="bh_tile_head")


def _dihedral(x, k):
    """``dihedral`` in TensorFlow, for augmentation inside ``tf.data`` (same k order)."""
    import tensorflow as tf

    x = tf.image.rot90(x, k % 4)
    return tf.cond(k >= 4, lambda: tf.image.flip_left_right(x), lambda: x)


def fit_tile_head(train, valid, seed=0, batch_size=256, max_epochs=40, patience_epochs=5,
                  learning_rate=1e-3, lr_drop_epochs=None, lr_drop_factor=0.3, progress=None,
                  noise_sigma_adu=None, teacher_prob=None, distill_weight=0.5,
                  architecture=ARCHITECTURE):
    """Train ``build_compact(..., architecture)`` on (stamps, features, labels) tuples; keep
    the epoch with the best validation ROC AUC.

    With ``noise_sigma_adu``, the training stamps are noise-free, in ADU, and every epoch
    draws new Gaussian noise of that sigma before ``scale_stamps`` (noise on the fly); the
    validation stamps are always given scaled. With ``teacher_prob`` (one probability per
    training row, e.g. the VGG16 model's), the target is ``(1 - distill_weight) * label +
    distill_weight * teacher_prob`` (distillation).

    With ``lr_drop_epochs``, every that many epochs without a better validation ROC AUC the
    training goes back to the best weights and multiplies the learning rate by
    ``lr_drop_factor``.

    Training positives are weighted so both classes weigh the same (training tiles hold more
    pairs than the sky).

    Returns
    -------
    model : keras.Model
    history : dict
        ``loss``, ``valid_roc_auc`` and ``learning_rate_after`` (the rate the next epoch
        uses) per epoch, ``epochs``, ``best_epoch``.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    (x_img, x_cat, y), (v_img, v_cat, v_y) = train, valid
    pos = max(float(np.mean(y)), 1e-6)
    w = np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos)).astype(np.float32)
    target = y.astype(np.float32)
    if teacher_prob is not None:
        target = ((1 - distill_weight) * target +
                  distill_weight * np.asarray(teacher_prob, np.float32)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices(((x_img, x_cat), target, w))
    data = data.shuffle(len(y), seed=seed, reshuffle_each_iteration=True).batch(batch_size)

    def augment(x, yy, ww):
        img = x[0]
        if noise_sigma_adu is not None:
            noisy = img + tf.random.normal(tf.shape(img), stddev=noise_sigma_adu, seed=seed)
            img = asinh_scale(noisy, noise_sigma_adu, tf.math.asinh)
        k = tf.random.uniform([], 0, 8, dtype=tf.int32, seed=seed)
        return (_dihedral(img, k), x[1]), yy, ww

    data = data.map(augment).prefetch(2)
    model = build_compact(x_img.shape[1], x_cat.shape[1], architecture)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    class _BestAuc(keras.callbacks.Callback):
        """Keep the weights of the epoch with the highest validation ROC AUC (the ranking
        is what calibration cannot fix; the validation loss of a class-balanced network
        mostly measures its offset), lower the learning rate after ``lr_drop_epochs`` and
        stop after ``patience_epochs`` without a better one."""

        def __init__(self):
            super().__init__()
            self.best, self.weights, self.wait, self.aucs, self.rates = -np.inf, None, 0, [], []

        def on_epoch_end(self, epoch, logs=None):
            from .metrics import roc_auc

            auc = roc_auc(_logits(self.model, v_img, v_cat), v_y)
            self.aucs.append(auc)
            log.info("tile head epoch %d: loss %.4f, validation ROC AUC %.4f", epoch + 1,
                     logs["loss"], auc)
            if progress is not None:
                progress(epoch + 1, max_epochs, "epochs")
            if auc > self.best:
                self.best, self.weights, self.wait = auc, self.model.get_weights(), 0
            else:
                self.wait += 1
                self.model.stop_training = self.wait >= patience_epochs
                if lr_drop_epochs and self.wait % lr_drop_epochs == 0:
                    self.model.set_weights(self.weights)
                    rate = self.model.optimizer.learning_rate
                    rate.assign(rate * lr_drop_factor)
                    log.info("tile head: back to epoch %d, learning rate %.2g",
                             int(np.argmax(self.aucs)) + 1, float(rate.numpy()))
            self.rates.append(float(self.model.optimizer.learning_rate.numpy()))

    best = _BestAuc()
    hist = model.fit(data, epochs=max_epochs, callbacks=[best], shuffle=False, verbose=0)
    model.set_weights(best.weights)
    history = {"loss": [float(v) for v in hist.history["loss"]], "valid_roc_auc": best.aucs,
               "learning_rate_after": best.rates, "epochs": len(best.aucs),
               "best_epoch": int(np.argmax(best.aucs)) + 1}
    return model, history


def _logits(model, x_img, x_cat, n_orientations=1):
    """Mean logit of a training-time model over its first ``n_orientations``."""
    return orientation_logits(lambda x, f: model.predict_on_batch([x, f]), x_img, x_cat,
                              n_orientations)


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


def reliability(prob, labels, n_bins=10):
    """Reliability curve: per bin of predicted probability (equal counts), the mean
    prediction, the observed frequency and the count."""
    prob, labels = np.asarray(prob, float), np.asarray(labels, float)
    edges = np.unique(np.quantile(prob, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, len(edges) - 2)
    return [{"p_mean": float(prob[which == b].mean()), "freq": float(labels[which == b].mean()),
             "n": int((which == b).sum())} for b in range(len(edges) - 1) if (which == b).any()]


def sigmoid(z):
    """Logistic function, float64, without overflow."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


class TileHead:
    """A trained tile head, ready to score: ``predict_proba(stamps, rms_adu, features)``.

    Attributes
    ----------
    metadata : dict
        The head's JSON (architecture, calibration, thresholds, training provenance).
    model : keras.Model
        Its network (``build_compact``), for ``train-tile --set weights_from=...``.
    path : pathlib.Path
    blend_threshold : float
        ``BLEND_FLAG`` is ``BLEND_PROB >= blend_threshold``.
    catalogue_columns : tuple of str
        SExtractor columns the head needs.
    """

    def __init__(self, model, head):
        import tensorflow as tf

        meta = head.metadata
        self.metadata, self.path, self.model = meta, head.path, model
        self.blend_threshold = float(meta["blend_threshold"])
        self.catalogue_columns = tuple(meta["catalogue_columns"])
        self._mean = np.asarray(meta["feature_mean"], dtype=np.float32)
        self._scale = np.asarray(meta["feature_scale"], dtype=np.float32)
        self._a, self._b = meta["calibration"]["a"], meta["calibration"]["b"]
        self.n_orientations = int(meta.get("n_orientations", 1))
        self._fn = tf.function(lambda x, f: model([x, f], training=False), autograph=False,
                               reduce_retracing=True)

    def logits(self, stamps, rms_adu, features):
        """Uncalibrated logits (mean over the head's orientations) of padded stage stamps
        (ADU) and raw catalogue features."""
        x = scale_stamps(centre_stamps(stamps, self.metadata["stamp_side_pix"]), rms_adu)
        return self.input_logits(x, features)

    def input_logits(self, x, features, n_orientations=None):
        """Logits of network input ``x`` (``scale_stamps`` of the central square) and raw
        catalogue features, averaged over ``n_orientations`` (default: the head's)."""
        f = ((np.asarray(features, np.float32) - self._mean) / self._scale).astype(np.float32)
        return orientation_logits(self._fn, x, f, n_orientations or self.n_orientations)

    def predict_proba(self, stamps, rms_adu, features):
        """Calibrated P(unrecognised blend), float64 (no saturation below 1 - 1e-16)."""
        return sigmoid(self._a * self.logits(stamps, rms_adu, features) + self._b)


DEFAULT_TILE_HEAD = "tile_unrecognised"
"""Shipped tile head used by ``tile_head: default`` (4 orientations). ``tile_unrecognised_o2``
is its network in 2 orientations, calibrated again on the validation tiles
(``train-tile --set weights_from=tile_unrecognised``): a faster stage for 0.002 of validation
AUC (README, "Speed and memory")."""


_LOADED = {}
"""Per-process cache of loaded tile heads, by (path, modification time)."""


def tile_head_path(name_or_path="default"):
    """Resolve ``tile_head`` to a ``.json``: 'default', a shipped name or a path."""
    from .model import head_path

    return head_path(DEFAULT_TILE_HEAD if name_or_path == "default" else name_or_path)


def load_tile_head(path_json):
    """Load a tile head written by ``train_tile`` (once per process).

    Raises
    ------
    ModelShapeError
        The JSON is not a tile head or names an unknown architecture.
    """
    from pathlib import Path

    from .errors import ModelShapeError
    from .model import load_head

    key = (str(Path(path_json).resolve()), Path(path_json).stat().st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    head = load_head(path_json)
    meta = head.metadata
    if meta.get("target") != TARGET or meta.get("architecture") != ARCHITECTURE:
        raise ModelShapeError(f"{path_json}: not a tile head (target {meta.get('target')!r}, "
                              f"architecture {meta.get('architecture')!r}); tile_head and "
                              f"weights_from take a head made by `bh-stage train-tile`")
    model = build_compact(meta["stamp_side_pix"], len(meta["catalogue_features"]))
    model.set_weights(head.weights)
    _LOADED[key] = TileHead(model, head)
    return _LOADED[key]


def _role_arrays(folders, seed):
    """Stack the detections of tile folders: scaled stamps, catalogue features, classes."""
    from . import tileset

    imgs, cats, classes = [], [], []
    for folder in folders:
        _, cls, cat = tileset.detection_table(folder)
        stamps, rms = tileset.detection_stamps(folder, seed)
        imgs.append(scale_stamps(centre_stamps(stamps), rms))
        cats.append(cat)
        classes.append(cls)
    return np.concatenate(imgs), np.concatenate(cats), np.concatenate(classes)


def train_tile(cfg, progress=None):
    """Train, calibrate and save a tile head (``bh-stage train-tile``); with
    ``cfg.weights_from``, calibrate an existing head's network without training it.

    Returns
    -------
    pathlib.Path, dict
        The head's ``.json`` and its validation metrics.
    """
    import time
    from pathlib import Path

    from . import tileset
    from .io import check_output
    from .model import save_head

    # a bad weights_from is refused before the output folder is made or a tile is read
    source = load_tile_head(tile_head_path(cfg.weights_from)) if cfg.weights_from else None
    out = Path(cfg.output_dir) / f"{cfg.head_name}.json"
    check_output(out, cfg.overwrite, make_parents=True)
    t0 = time.perf_counter()
    roles = ("valid",) if source else ("train", "valid")
    folders = {role: tileset.prepare_role(cfg.tiles, role, progress) for role in roles}
    va_img, va_cat, va_cls = _role_arrays(folders["valid"], cfg.seed)
    y_va = va_cls["UNRECOGNISED"]
    if source:
        meta, model = dict(source.metadata), source.model
        mean, scale = (np.asarray(meta[k], np.float32) for k in ("feature_mean", "feature_scale"))
        meta["calibrated_from"] = {"head": Path(source.path).name,
                                   "n_orientations": meta.get("n_orientations", 1),
                                   "weights_sha256": meta["weights_sha256"]}
        log.info("tile head: the network of %s, calibrated on %d validation detections",
                 source.path, len(y_va))
    else:
        tr_img, tr_cat, tr_cls = _role_arrays(folders["train"], cfg.seed)
        t_data = time.perf_counter() - t0
        mean, scale = tr_cat.mean(axis=0), tr_cat.std(axis=0) + 1e-6
        y_tr = tr_cls["UNRECOGNISED"]
        log.info("tile head: %d training detections (%.1f %% unrecognised blends), %d "
                 "validation (%.1f %%)", len(y_tr), 100 * y_tr.mean(), len(y_va),
                 100 * y_va.mean())
        model, history = fit_tile_head(
            (tr_img, (tr_cat - mean) / scale, y_tr), (va_img, (va_cat - mean) / scale, y_va),
            seed=cfg.seed, max_epochs=cfg.max_epochs, patience_epochs=cfg.patience_epochs,
            lr_drop_epochs=cfg.lr_drop_epochs, progress=progress)
        meta = {
            "target": TARGET, "architecture": ARCHITECTURE, "stamp_side_pix": STAMP_SIDE_PIX,
            "backbone": "none", "backbone_sha256": "none", "preprocess": "asinh_rms",
            "input_shape": [STAMP_SIDE_PIX, STAMP_SIDE_PIX, 1], "size_pix": 51, "pad_pix": 7,
            "noise_sigma_adu": cfg.tiles.noise_sigma_adu,
            "catalogue_features": list(cues.FEATURE_NAMES),
            "catalogue_columns": list(cues.CATALOGUE_COLUMNS),
            "feature_mean": mean, "feature_scale": scale, "history": history,
            "tiles": {"train_seeds": cfg.tiles.train_seeds,
                      "valid_seeds": cfg.tiles.valid_seeds,
                      "size_pix": cfg.tiles.size_pix, "mag_max": cfg.tiles.mag_max,
                      "density_per_arcmin2": cfg.tiles.density_per_arcmin2,
                      "train_close_pair_fraction": cfg.tiles.train_close_pair_fraction,
                      "close_pair_fraction": cfg.tiles.close_pair_fraction},
            "data_seconds": t_data, "train_seconds": time.perf_counter() - t0 - t_data,
            "seed": cfg.seed,
        }
    logits = _logits(model, va_img, ((va_cat - mean) / scale).astype(np.float32),
                     cfg.n_orientations)
    calibration, threshold, valid = _calibrate(logits, y_va, cfg.flag_fraction)
    meta.update({"n_orientations": cfg.n_orientations, "calibration": calibration,
                 "blend_threshold": threshold, "hybrid_threshold": None,
                 "flag_fraction": cfg.flag_fraction, "valid": valid})
    return save_head(out, model.get_weights(), meta, overwrite=cfg.overwrite), valid


def _calibrate(logits, labels, flag_fraction):
    """Calibration, ``BLEND_FLAG`` threshold (flagging ``flag_fraction`` of the detections)
    and metrics of a tile head's validation logits against its 0/1 labels."""
    from .metrics import roc_auc, tpr_at_fpr

    a, b = calibrate_logits(logits, labels)
    prob = sigmoid(a * logits + b)
    threshold = float(np.quantile(prob, 1 - flag_fraction))
    valid = {"n_detections": int(len(labels)), "prevalence": float(labels.mean()),
             "roc_auc": roc_auc(logits, labels),
             "tpr_at_fpr_0.05": tpr_at_fpr(logits, labels, 0.05),
             "brier": float(np.mean((prob - labels) ** 2)),
             "brier_prevalence_only": float(np.mean((labels.mean() - labels) ** 2)),
             "flagged_fraction": float(np.mean(prob >= threshold)),
             "tpr_at_flag": float(np.mean(prob[labels == 1] >= threshold)),
             "reliability": reliability(prob, labels)}
    calibration = {"a": a, "b": b,
                   "rule": "p = sigmoid(a * logit + b), fitted on the validation tiles"}
    return calibration, threshold, valid


def run_train_tile(cfg, progress=None):
    """``bh-stage train-tile CONFIG``: one summary line."""
    path, valid = train_tile(cfg, progress)
    return (f"train-tile: wrote {path}; validation tiles: ROC AUC {valid['roc_auc']:.3f}, "
            f"TPR at 5 % FPR {valid['tpr_at_fpr_0.05']:.3f}, BLEND_FLAG flags "
            f"{valid['flagged_fraction']:.1%} and holds {valid['tpr_at_flag']:.1%} of the "
            f"unrecognised blends")
