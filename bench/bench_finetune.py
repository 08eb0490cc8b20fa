"""Does fine-tuning VGG16's last conv block help? Before/after on the realistic set.

Two schemes, each from a trained head, in two stages that keep the weights of the best
validation loss and stop after ``--patience`` epochs without improvement:

- ``reference``: what BlendHunter's network.py ``_fine_tune`` does. Its ``_freeze_layers(model,
  18)`` freezes the 18 VGG16 layers up to block5_conv3 included, so its Adam (1e-4) stage
  trains the head only; then block5_conv3 is unfrozen with the head for SGD (1e-4).
- ``block5``: the three convs of block 5 and the head train in both stages (Adam 1e-4, then
  SGD 1e-4), as the issue describes the reference.

Blocks 1-4 stay frozen, so their outputs (4x4x512 per 65x65 stamp) are computed once and
cached like the bottleneck features. Augmented copies are not used.

Before: the head as trained (frozen block 5). After: the fine-tuned block 5 + head, thresholds
re-chosen on the validation stamps. Both scored on the realistic set; prints BlendHunter's
and the hybrid's accuracy against SEP's (paper rules) and writes bench/results/finetune_<scheme>.json.

    python bench/bench_finetune.py --dataset simulated/mixed24k.h5 \
        --realistic simulated/realistic4k.h5 --cache-dir simulated/cache
"""

import time

import numpy as np

from bh_stage import heads, io
from bh_stage.config import SepConfig
from bh_stage.nets import vgg
from bh_stage.sep_flags import classify_stamps
from bh_stage.study import train
from bh_stage.study.evaluate import true_positions
from bh_stage.study.metrics import accuracy, binary_auc, roc_auc

import benchlib
BLOCK5 = ("block5_conv1", "block5_conv2", "block5_conv3")
CLOSE_MAX_PIX = 10.0


def trunk_and_block5(head):
    """Blocks 1-4 (frozen, for cached features) and block 5 + head (trainable) of a head's
    backbone."""
    import keras

    backbone = vgg.build_backbone(head.metadata["backbone"])
    trunk = keras.Model(backbone.input, backbone.get_layer("block4_pool").output)
    inp = keras.Input(trunk.output_shape[1:])
    x = inp
    for name in BLOCK5:
        layer = keras.layers.Conv2D(512, 3, padding="same", activation="relu", name=name)
        x = layer(x)
        layer.set_weights(backbone.get_layer(name).get_weights())
    x = keras.layers.MaxPooling2D(2, name="block5_pool")(x)
    top = vgg.build_head(vgg.FEATURE_SHAPE)
    top.set_weights(head.weights)
    return trunk, keras.Model(inp, top(x))


def fit(net, optimizer, x, y, xv, yv, args):
    import keras

    net.compile(optimizer=optimizer, loss="binary_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    hist = net.fit(x, y, batch_size=args.batch_size, epochs=args.max_epochs,
                   validation_data=(xv, yv), shuffle=True, verbose=2,
                   callbacks=[keras.callbacks.EarlyStopping(
                       monitor="val_loss", patience=args.patience,
                       restore_best_weights=True)])
    return {"epochs": len(hist.history["loss"]),
            "best_val_loss": float(min(hist.history["val_loss"])),
            "seconds": round(time.perf_counter() - t0, 1)}


def scores(net, x):
    return net.predict(x, batch_size=512, verbose=0).reshape(-1)


def realistic_metrics(p, thresholds, label, sep_pix, sep_paper, sep_stage):
    """BlendHunter and hybrid vs SEP (paper rules) on stamps where SEP did not fail."""
    ok = sep_paper != -1
    bh = p >= thresholds["blend_threshold"]
    hybrid = sep_stage | (p >= thresholds["hybrid_threshold"])
    close = label & (sep_pix < CLOSE_MAX_PIX)
    sep = sep_paper == 1
    out = {"auc": roc_auc(p, label), "auc_sep_2pt": binary_auc(sep[ok], label[ok])}
    for name, pred in (("BH", bh), ("hybrid", hybrid), ("SEP", sep)):
        out[name] = {"accuracy": accuracy(pred[ok], label[ok]),
                     "accuracy_close": accuracy(pred[ok & close], label[ok & close]),
                     "accuracy_isolated": accuracy(pred[ok & ~label], label[ok & ~label])}
    return out


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--dataset", required=True, help="training data set (.h5)")
    parser.add_argument("--realistic", required=True, help="realistic test set (.h5)")
    parser.add_argument("--head", default="cfis_sigma15_clip_80k")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--train-sigma-adu", type=float, default=15.0)
    parser.add_argument("--test-sigma-adu", type=float, default=14.5)
    parser.add_argument("--n-train", type=int, default=None,
                        help="training stamps used (drawn at random; default all)")
    parser.add_argument("--n-valid", type=int, default=4000,
                        help="validation stamps used (drawn at random)")
    parser.add_argument("--n-realistic", type=int, default=None,
                        help="realistic stamps scored (drawn at random; default all)")
    parser.add_argument("--scheme", choices=("reference", "block5"), default="reference")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-epochs", type=int, default=10, help="per stage")
    parser.add_argument("--patience", type=int, default=3)
    args = parser.parse_args()

    import keras

    head = heads.load_head(heads.head_path(args.head))
    mode = head.metadata["preprocess"]
    trunk, net = trunk_and_block5(head)
    trunk_sha = head.metadata["backbone_sha256"] + ":block4_pool"
    sep_cfg = SepConfig()

    meta = io.read_dataset(args.dataset, stamps=False)
    truth, attrs = meta.truth, meta.attrs
    rng = np.random.default_rng(0)
    rows_train = np.sort(rng.permutation(train.split_indices(truth, train.SPLIT_TRAIN))
                         [:args.n_train])
    rows_valid = np.sort(rng.permutation(train.split_indices(truth, train.SPLIT_VALID))
                         [:args.n_valid])

    def trunk_features(path, a, rows, sigma):
        f = train.dataset_features(path, a, rows, sigma, 0, 0, mode, trunk, trunk_sha,
                                   args.cache_dir)
        return f.reshape(-1, *trunk.output_shape[1:])

    x = trunk_features(args.dataset, attrs, rows_train, args.train_sigma_adu)
    y = truth["label"][rows_train].astype(np.float32)
    xv = trunk_features(args.dataset, attrs, rows_valid, args.train_sigma_adu)
    yv = truth["label"][rows_valid].astype(np.float32)
    noisy_valid = train.noisy_stamps(args.dataset, attrs, rows_valid, args.train_sigma_adu)
    sep_valid = classify_stamps(noisy_valid, sep_cfg)["blend"]

    rmeta = io.read_dataset(args.realistic, stamps=False)
    rattrs = rmeta.attrs
    rrows = np.sort(rng.permutation(len(rmeta.truth))[:args.n_realistic])
    rtruth = rmeta.truth[rrows]
    xr = trunk_features(args.realistic, rattrs, rrows, args.test_sigma_adu)
    noisy_r = train.noisy_stamps(args.realistic, rattrs, rrows, args.test_sigma_adu)
    label = rtruth["label"] == 1
    sep_pix = np.hypot(rtruth["x1_pix"] - rtruth["x0_pix"], rtruth["y1_pix"] - rtruth["y0_pix"])
    sep_paper = classify_stamps(noisy_r, sep_cfg,
                                true_xy=true_positions(rtruth, int(rattrs["pad_pix"])))["blend"]
    sep_stage = classify_stamps(noisy_r, sep_cfg)["blend"] == 1

    out = {"dataset": str(args.dataset), "realistic": str(args.realistic),
           "head": str(head.path), "scheme": args.scheme, "n_train": len(rows_train), "n_valid": len(rows_valid),
           "n_realistic": len(rrows), "batch_size": args.batch_size,
           "max_epochs": args.max_epochs, "patience": args.patience}
    shipped = {k: head.metadata[k] for k in ("blend_threshold", "hybrid_threshold")}
    out["before"] = realistic_metrics(scores(net, xr), shipped, label, sep_pix, sep_paper,
                                      sep_stage)
    keras.utils.set_random_seed(0)
    trainable = {"reference": (("bh_head",), ("block5_conv3", "bh_head")),
                 "block5": (BLOCK5 + ("bh_head",),) * 2}[args.scheme]
    for stage, optimizer, names in zip(("adam", "sgd"), (keras.optimizers.Adam(1e-4),
                                                         keras.optimizers.SGD(1e-4)), trainable):
        for layer in net.layers:
            layer.trainable = layer.name in names
        out[stage] = fit(net, optimizer, x, y, xv, yv, args)
        out[stage]["trainable"] = list(names)
    calib = train.calibrate_thresholds(scores(net, xv), yv, sep_valid)
    out["after_calibration"] = calib
    out["after"] = realistic_metrics(scores(net, xr), calib, label, sep_pix, sep_paper,
                                     sep_stage)
    for when in ("before", "after"):
        m = out[when]
        print(f"{when}: BH {m['BH']['accuracy']:.4f} (close {m['BH']['accuracy_close']:.3f}, "
              f"isolated {m['BH']['accuracy_isolated']:.3f}), hybrid "
              f"{m['hybrid']['accuracy']:.4f}, SEP {m['SEP']['accuracy']:.4f}, "
              f"AUC {m['auc']:.4f}")
    print(f"after - before: BH {out['after']['BH']['accuracy'] - out['before']['BH']['accuracy']:+.4f}, "
          f"hybrid {out['after']['hybrid']['accuracy'] - out['before']['hybrid']['accuracy']:+.4f}, "
          f"AUC {out['after']['auc'] - out['before']['auc']:+.4f}")
    benchlib.write_result(args.output or f"finetune_{args.scheme}.json", out)


if __name__ == "__main__":
    main()
