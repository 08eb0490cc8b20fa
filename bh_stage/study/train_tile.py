"""Training of the tile head (``bh-stage train-tile``): network, calibration, threshold.

Detections of training tiles (training galaxies only) train ``nets.compact.build_compact``
(``compact_cnn_catalogue_v1``), every epoch in a random one of the 8 flips and 90 degree
rotations (exact symmetries of the sky), positives weighted to balance the classes, early
stopping (and, with ``lr_drop_epochs``, a lower learning rate from the best epoch) on the
validation tiles, whose natural prevalence also fixes the calibration (``calibrate_logits``,
Platt scaling of the mean logit over the head's ``n_orientations``) and the ``BLEND_FLAG``
threshold. ``weights_from`` refits only the calibration and threshold of a trained network,
e.g. in fewer orientations (the shipped ``tile_unrecognised_o2``). A trained head gets its
8-bit network too (``study.quantize``, ranges from the training tiles); a recalibrated one
has none (``tile_head_precision: auto`` runs it in f32; ``bench/quantize_tile_head.py``
makes one).

Why not the VGG16 base: on the validation tiles its frozen ``block5_pool`` / ``block4_pool``
features, with or without a 3x magnified centre, ranked unrecognised blends at ROC AUC
0.55-0.62, below the catalogue features alone (0.69); the 51x51 stamp squeezed into 2x2 or
4x4 cells loses the 2-6 px structure that tells two galaxies from one
(``bench/bench_tile_heads.py``).
"""

import logging

import numpy as np

from .. import cues
from .. import features as bh_features
from ..nets.compact import (ARCHITECTURE, STAMP_ARCHITECTURE, STAMP_CATALOGUE_ARCHITECTURE,
                            STAMP_SIDE_PIX, asinh_scale, build_compact,
                            centre_stamps, dihedral_tf, orientation_logits, scale_stamps,
                            sigmoid)
from ..tilehead import HEAD_FEATURES, INT8_KEY, TARGET, load_tile_head, tile_head_path

__all__ = ["fit_tile_head", "tile_logits", "calibrate_logits", "reliability", "role_arrays",
           "stamp_feature_table", "FEATURE_KINDS", "source_features", "train_tile",
           "run_train_tile", "ISOLATED_FPR", "isolated_threshold"]

log = logging.getLogger(__name__)


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
        return (dihedral_tf(img, k), x[1]), yy, ww

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

            auc = roc_auc(tile_logits(self.model, v_img, v_cat), v_y)
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


def tile_logits(model, x_img, x_cat, n_orientations=1):
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


def role_arrays(folders, seed, features="catalogue"):
    """Stack the detections of tile folders: scaled stamps, the head's features, classes.

    ``features``: one of ``FEATURE_KINDS``: 'catalogue' (``cues.catalogue_features``),
    'stamp' (``features`` measured on the stage's 65x65 stamps beside the position cues,
    cached in each folder as ``features_<seed>.npz``) or 'stamp+catalogue' (those, then
    ``features.CATALOGUE_FEATURE_NAMES``).
    """
    from . import tileset

    imgs, feats, classes = [], [], []
    for folder in folders:
        (x, y), cls, cat = tileset.detection_table(folder)
        stamps, rms = tileset.detection_stamps(folder, seed)
        imgs.append(scale_stamps(centre_stamps(stamps), rms))
        if features == "catalogue":
            feats.append(cat)
        else:
            table = stamp_feature_table(folder, seed, x, y)
            if features == "stamp+catalogue":  # cat's columns are cues.FEATURE_NAMES
                n_cat = len(bh_features.CATALOGUE_FEATURE_NAMES)
                table = np.column_stack([table, cat[:, :n_cat]])
            feats.append(table)
        classes.append(cls)
    return np.concatenate(imgs), np.concatenate(feats), np.concatenate(classes)


def stamp_feature_table(folder, seed, x_pix, y_pix):
    """``features.FEATURE_NAMES`` of every detection of a prepared tile folder, measured as
    the stage measures them (on its 65x65 stamps, with the tile rms); the pixel part cached
    as ``features_<seed>.npz``."""
    from pathlib import Path

    from .. import io
    from . import tileset

    cache = Path(folder) / f"features_{seed}.npz"
    names = np.array(bh_features.FEATURE_NAMES[:-2])
    pixel = None
    if cache.is_file():
        with np.load(cache) as z:
            if "names" in z.files and np.array_equal(z["names"], names):
                pixel = z["pixel_features"]
    if pixel is None:  # none cached, or cached by a version measuring other features
        stamps, rms = tileset.detection_stamps(folder, seed, side_pix=65)
        pixel = bh_features.measure_stamps(stamps, rms)
        io.atomic_write_bytes(cache, lambda fh: np.savez(fh, pixel_features=pixel, names=names))
    return bh_features.stamp_features(pixel, bh_features.position_cues(x_pix, y_pix))


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
    from ..heads import save_head
    from ..io import check_output

    # a bad weights_from is refused before the output folder is made or a tile is read
    source = load_tile_head(tile_head_path(cfg.weights_from)) if cfg.weights_from else None
    out = Path(cfg.output_dir) / f"{cfg.head_name}.json"
    check_output(out, cfg.overwrite, make_parents=True)
    t0 = time.perf_counter()
    roles = ("valid",) if source else ("train", "valid")
    folders = {role: tileset.prepare_role(cfg.tiles, role, progress) for role in roles}
    kind = source_features(source.metadata) if source else cfg.features
    architecture = FEATURE_KINDS[kind]
    va_img, va_cat, va_cls = role_arrays(folders["valid"], cfg.seed, kind)
    y_va = va_cls["UNRECOGNISED"]
    if source:
        meta, model = dict(source.metadata), source.model
        meta.pop(INT8_KEY, None)  # the source's 8-bit network stays with the source's files
        mean, scale = (np.asarray(meta[k], np.float32) for k in ("feature_mean", "feature_scale"))
        meta["calibrated_from"] = {"head": Path(source.path).name,
                                   "n_orientations": meta.get("n_orientations", 1),
                                   "weights_sha256": meta["weights_sha256"]}
        log.info("tile head: the network of %s, calibrated on %d validation detections",
                 source.path, len(y_va))
    else:
        tr_img, tr_cat, tr_cls = role_arrays(folders["train"], cfg.seed, kind)
        t_data = time.perf_counter() - t0
        mean, scale = tr_cat.mean(axis=0), tr_cat.std(axis=0) + 1e-6
        y_tr = tr_cls["UNRECOGNISED"]
        log.info("tile head: %d training detections (%.1f %% unrecognised blends), %d "
                 "validation (%.1f %%)", len(y_tr), 100 * y_tr.mean(), len(y_va),
                 100 * y_va.mean())
        model, history = fit_tile_head(
            (tr_img, (tr_cat - mean) / scale, y_tr), (va_img, (va_cat - mean) / scale, y_va),
            seed=cfg.seed, max_epochs=cfg.max_epochs, patience_epochs=cfg.patience_epochs,
            lr_drop_epochs=cfg.lr_drop_epochs, progress=progress,
            architecture=architecture)
        names = ({"catalogue_features": list(cues.FEATURE_NAMES)} if kind == "catalogue"
                 else {"stamp_features": list(HEAD_FEATURES[architecture])})
        names["catalogue_columns"] = [] if kind == "stamp" else list(cues.CATALOGUE_COLUMNS)
        meta = {
            "target": TARGET, "stamp_side_pix": STAMP_SIDE_PIX,
            "architecture": architecture,
            "backbone": "none", "backbone_sha256": "none", "preprocess": "asinh_rms",
            "input_shape": [STAMP_SIDE_PIX, STAMP_SIDE_PIX, 1], "size_pix": 51, "pad_pix": 7,
            "noise_sigma_adu": cfg.tiles.noise_sigma_adu, **names,
            "feature_mean": mean, "feature_scale": scale, "history": history,
            "tiles": {"train_seeds": cfg.tiles.train_seeds,
                      "valid_seeds": cfg.tiles.valid_seeds,
                      "max_brightening_mag": cfg.tiles.max_brightening_mag,
                      "size_slope_dex_per_mag": cfg.tiles.size_slope_dex_per_mag,
                      "size_pix": cfg.tiles.size_pix, "mag_max": cfg.tiles.mag_max,
                      "density_per_arcmin2": cfg.tiles.density_per_arcmin2,
                      "train_close_pair_fraction": cfg.tiles.train_close_pair_fraction,
                      "close_pair_fraction": cfg.tiles.close_pair_fraction,
                      "training_sample": cfg.tiles.training_sample,
                      "diverse_sersic_fraction": cfg.tiles.diverse_sersic_fraction,
                      "diverse_knots_fraction": cfg.tiles.diverse_knots_fraction,
                      "compact_knots_fraction": cfg.tiles.compact_knots_fraction},
            "data_seconds": t_data, "train_seconds": time.perf_counter() - t0 - t_data,
            "seed": cfg.seed,
        }
    logits = tile_logits(model, va_img, ((va_cat - mean) / scale).astype(np.float32),
                     cfg.n_orientations)
    calibration, threshold, iso_threshold, valid = _calibrate(logits, y_va, cfg.flag_fraction,
                                                              va_cls["ISOLATED"])
    meta.update({"n_orientations": cfg.n_orientations, "calibration": calibration,
                 "blend_threshold": threshold, "hybrid_threshold": None,
                 "flag_fraction": cfg.flag_fraction, "valid": valid,
                 "isolated_fpr": ISOLATED_FPR, "isolated_threshold": iso_threshold})
    save_head(out, model.get_weights(), meta, overwrite=cfg.overwrite)
    if not source:  # its 8-bit network (tile_head_precision auto, int8), from training tiles
        from .quantize import quantize_tile_head

        quantize_tile_head(out, tr_img, tr_cat, [f.name for f in folders["train"]])
    else:  # an 8-bit network left by an earlier head of this name no longer belongs to it
        out.with_name(f"{cfg.head_name}.int8.tflite").unlink(missing_ok=True)
    return out, valid


ISOLATED_FPR = 0.05
"""False-positive rate on truth-isolated validation galaxies of the head's second threshold,
``isolated_threshold`` (header ``BH_THRI``): a cut whose meaning does not follow the field's
blend fraction, as ``blend_threshold`` (a fraction of all detections flagged) does."""


def isolated_threshold(prob, isolated, fpr=ISOLATED_FPR):
    """The ``BLEND_PROB`` threshold that flags ``fpr`` of the isolated galaxies
    (``prob >= threshold``; ``isolated`` the truth class, 0/1)."""
    values = np.asarray(prob, float)[np.asarray(isolated) == 1]
    if not len(values):
        raise ValueError("no isolated galaxy among the validation detections")
    return float(np.quantile(values, 1 - fpr))


FEATURE_KINDS = {"catalogue": ARCHITECTURE, "stamp": STAMP_ARCHITECTURE,
                 "stamp+catalogue": STAMP_CATALOGUE_ARCHITECTURE}
"""``train-tile``'s ``features``: the architecture of the head each trains."""


def source_features(metadata):
    """The ``FEATURE_KINDS`` key of a tile head's metadata: 'stamp' for a position-only
    head, 'stamp+catalogue', or 'catalogue'."""
    return {arch: kind for kind, arch in FEATURE_KINDS.items()}[metadata["architecture"]]


def _calibrate(logits, labels, flag_fraction, isolated):
    """Calibration, ``BLEND_FLAG`` threshold (flagging ``flag_fraction`` of the detections),
    ``isolated_threshold`` (on the detections whose truth ``isolated`` is 1) and metrics of a
    tile head's validation logits against its 0/1 labels."""
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
    return calibration, threshold, isolated_threshold(prob, isolated), valid


def run_train_tile(cfg, progress=None):
    """``bh-stage train-tile CONFIG``: one summary line."""
    path, valid = train_tile(cfg, progress)
    return (f"train-tile: wrote {path}; validation tiles: ROC AUC {valid['roc_auc']:.3f}, "
            f"TPR at 5 % FPR {valid['tpr_at_fpr_0.05']:.3f}, BLEND_FLAG flags "
            f"{valid['flagged_fraction']:.1%} and holds {valid['tpr_at_flag']:.1%} of the "
            f"unrecognised blends")
