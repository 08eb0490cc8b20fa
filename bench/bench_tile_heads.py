"""Which network sees unrecognised blends? Heads on frozen VGG16 features vs the catalogue.

Measured on validation tiles only (training galaxies), after training on training tiles:
dense heads (the paper's Dense 256 / Dropout / Dense 1024 / Dense 1, ending in a logit) on the
frozen VGG16 (hed weights, caffe_clip) taps ``block5_pool`` and ``block4_pool`` of the stage's
65x65 stamps, optionally with the 3x magnified centre (``--zoom 3``), with and without the
catalogue features, against catalogue-only logistic regression and gradient boosting. The
shipped tile head (``bh-stage train-tile``, a compact CNN) is measured by its own command.

    python bench/bench_tile_heads.py --work-dir WORKDIR/tiles --train 101,102,103 --valid 201,202

Prints ROC AUC and TPR at 5 % FPR (unrecognised blends vs all other detections) and writes
bench/results/tile_heads_zoom<z>.json. Features are cached in each tile folder.
"""

import time

import numpy as np

from bh_stage.config import TileSetConfig
from bh_stage.pixels import tile_pixels
from bh_stage.study import tileset
from bh_stage.study.metrics import roc_auc, tpr_at_fpr

import benchlib

TAPS = ("block4_pool", "block5_pool")


def tapped_backbone():
    import keras

    from bh_stage.nets.vgg import build_backbone

    base = build_backbone("hed")
    return keras.Model(base.input, [base.get_layer(t).output for t in TAPS])


def zoom_centre(stamps, zoom):
    """Magnify the centre of square stamps by pixel replication, keeping their shape."""
    side = stamps.shape[-1]
    m = -(-side // zoom) | 1
    c = side // 2
    crop = stamps[..., c - m // 2:c + m // 2 + 1, c - m // 2:c + m // 2 + 1]
    up = np.repeat(np.repeat(crop, zoom, axis=-2), zoom, axis=-1)
    start = (up.shape[-1] - side) // 2
    return up[..., start:start + side, start:start + side]


def taps_of_tile(folder, backbone, zoom):
    """VGG taps of every detection's stage stamp (cached as vgg_taps_z<zoom>.npz)."""
    import tensorflow as tf

    from bh_stage import io
    from bh_stage.nets.vgg import preprocess
    from bh_stage.stamps import cut_stamps

    cache = folder / f"vgg_taps_z{zoom}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return {t: z[t].astype(np.float32) for t in TAPS}
    f = {k: folder / v for k, v in tileset.TILE_FILES.items()}
    cat = io.read_catalogue(f["catalogue"], "XWIN_IMAGE", "YWIN_IMAGE")
    image, bad, rms = tile_pixels(f["image"], f["weight"])
    x, y = np.nan_to_num(cat.x_pix), np.nan_to_num(cat.y_pix)
    fn = tf.function(lambda v: backbone(v, training=False), autograph=False)
    out = {t: [] for t in TAPS}
    for start in range(0, cat.nrows, 256):
        rows = slice(start, min(start + 256, cat.nrows))
        stamps, _, _ = cut_stamps(image, x[rows], y[rows], 51, 7, bad=bad, fill_sigma=rms,
                                  first_index=start)
        if zoom > 1:
            stamps = zoom_centre(stamps, zoom)
        for t, v in zip(TAPS, fn(preprocess(stamps, "caffe_clip"))):
            out[t].append(v.numpy().reshape(len(stamps), -1))
    out = {t: np.concatenate(v) for t, v in out.items()}
    np.savez(cache, **{t: v.astype(np.float16) for t, v in out.items()})
    return out


def dense_head(n_in):
    import keras

    return keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(256),
                             keras.layers.Dropout(0.1),
                             keras.layers.Dense(1024, activation="relu"),
                             keras.layers.Dense(1)])


def fit_predict(x_tr, y_tr, x_va, y_va, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    head = dense_head(x_tr.shape[1])
    head.compile(keras.optimizers.Adam(1e-3),
                 keras.losses.BinaryCrossentropy(from_logits=True))
    pos = y_tr.mean()
    w = np.where(y_tr == 1, 0.5 / pos, 0.5 / (1 - pos)).astype(np.float32)
    head.fit(x_tr, y_tr.astype(np.float32), sample_weight=w, batch_size=250, epochs=100,
             validation_data=(x_va, y_va.astype(np.float32)), verbose=0,
             callbacks=[keras.callbacks.EarlyStopping(patience=8, restore_best_weights=True)])
    return head.predict(x_va, batch_size=4096, verbose=0).ravel()


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--train", default="101,102,103")
    parser.add_argument("--valid", default="201,202")
    parser.add_argument("--zoom", type=int, default=1)
    args = parser.parse_args()
    tiles = TileSetConfig(work_dir=args.work_dir,
                          train_seeds=[int(s) for s in args.train.split(",")],
                          valid_seeds=[int(s) for s in args.valid.split(",")])
    backbone = tapped_backbone()
    data = {}
    t0 = time.perf_counter()
    for role in ("train", "valid"):
        taps, cats, ys = {t: [] for t in TAPS}, [], []
        for folder in tileset.tile_folders(tiles, role):
            _, classes, cat = tileset.detection_table(folder)
            for t, v in taps_of_tile(folder, backbone, args.zoom).items():
                taps[t].append(v)
            cats.append(cat)
            ys.append(classes["UNRECOGNISED"])
        data[role] = ({t: np.concatenate(v) for t, v in taps.items()}, np.concatenate(cats),
                      np.concatenate(ys))
    (tr_taps, tr_cat, y_tr), (va_taps, va_cat, y_va) = data["train"], data["valid"]
    mean, scale = tr_cat.mean(0), tr_cat.std(0) + 1e-6
    results = {"train_detections": int(len(y_tr)), "valid_detections": int(len(y_va)),
               "valid_prevalence": float(y_va.mean()), "zoom": args.zoom,
               "feature_seconds": time.perf_counter() - t0}
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    baselines = {"catalogue logistic regression": LogisticRegression(max_iter=2000),
                 "catalogue gradient boosting": HistGradientBoostingClassifier(
                     max_iter=300, learning_rate=0.05, random_state=0)}
    for name, clf in baselines.items():
        s = clf.fit((tr_cat - mean) / scale, y_tr).predict_proba((va_cat - mean) / scale)[:, 1]
        results[name] = {"roc_auc": roc_auc(s, y_va), "tpr_at_fpr_0.05": tpr_at_fpr(s, y_va, .05)}
        print(name, results[name], flush=True)
    for taps_used in (["block5_pool"], ["block4_pool", "block5_pool"]):
        for with_cat in (False, True):
            def inputs(taps, cat):
                parts = [taps[t] for t in taps_used]
                return np.concatenate(parts + ([(cat - mean) / scale] if with_cat else []), 1)
            s = fit_predict(inputs(tr_taps, tr_cat), y_tr, inputs(va_taps, va_cat), y_va)
            name = " + ".join(taps_used) + (" + catalogue" if with_cat else "")
            results[name] = {"roc_auc": roc_auc(s, y_va),
                             "tpr_at_fpr_0.05": tpr_at_fpr(s, y_va, .05)}
            print(name, results[name], flush=True)
    benchlib.write_result(args.output or f"tile_heads_zoom{args.zoom}.json", results)


if __name__ == "__main__":
    main()
