"""A compact CNN for the paper's question (issue 15): is a second galaxy anywhere in the
stamp? Trained like the VGG16 model, compared with it on validation stamps.

Trains ``tilehead.build_compact`` (no catalogue features) on the whole 65x65 stamp of a
training set's training split (noise-free stamps, Gaussian noise of ``--sigma`` drawn anew
every epoch, the 8 flips and quarter turns), early stopping on the set's validation split at
one fixed noise, once from the labels and once distilled from the VGG16 head's probabilities
on the training stamps (noise realisation 0). Then scores, beside that VGG16 head, the
validation stamps ``--validation`` (realistic stamps of training galaxies) at sigma 14.5:
ROC AUC of all blends, close blends (< 10 px) and far blends against isolated stamps, with
paired differences and 95 % intervals from a bootstrap over galaxies; and the network-only
stamps/s of both. Writes a JSON. The test galaxies are not read.

    python bench/bench_compact_paper.py --dataset WORKDIR/foldA_mixed24k.h5 \
        --validation WORKDIR/real_train4k.h5 --teacher WORKDIR/heads/foldA_caffe_clip.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bh_stage import metrics, model, stamps, tilehead
from bh_stage.io import read_dataset
from bh_stage.simulate import SPLIT_TRAIN, SPLIT_VALID


def noisy(ds, rows, sigma, realisation=0):
    seeds = stamps.dataset_noise_seeds(ds.attrs["seed"], sigma, realisation, rows)
    return stamps.add_noise(ds.stamps, sigma, seeds)


def class_aucs(score, label, sep_pix, close_max_pix=10.0):
    iso = ~label
    out = {}
    for name, pos in (("all", label), ("close", label & (sep_pix < close_max_pix)),
                      ("far", label & (sep_pix >= close_max_pix))):
        keep = pos | iso
        out[name] = metrics.roc_auc(score[keep], pos[keep])
    return out


def rate(fn, x, repeat=2):
    fn(x[:64])
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--validation", type=Path, required=True)
    ap.add_argument("--teacher", type=Path, required=True, help="VGG16 head JSON")
    ap.add_argument("--sigma", type=float, default=15.0, help="training noise, ADU")
    ap.add_argument("--valid-sigma", type=float, default=14.5)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--n-orientations", type=int, default=4)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--output", type=Path, default=Path("bench/results/compact_paper.json"))
    args = ap.parse_args()

    truth = read_dataset(args.dataset, stamps=False).truth
    rows = {s: np.flatnonzero(truth["split"] == s) for s in (SPLIT_TRAIN, SPLIT_VALID)}
    train = read_dataset(args.dataset, rows[SPLIT_TRAIN])
    valid = read_dataset(args.dataset, rows[SPLIT_VALID])
    y = (train.truth["label"] == 1).astype(np.int8)
    v_y = (valid.truth["label"] == 1).astype(np.int8)
    v_img = tilehead.scale_stamps(noisy(valid, rows[SPLIT_VALID], args.sigma), args.sigma)
    teacher = model.load_classifier(args.teacher)
    t0 = time.perf_counter()
    teacher_p = np.asarray(teacher.predict_proba(noisy(train, rows[SPLIT_TRAIN], args.sigma)))
    teacher_s = time.perf_counter() - t0
    x_free = train.stamps.astype(np.float32)[..., None]
    cat, v_cat = np.zeros((len(y), 0), np.float32), np.zeros((len(v_y), 0), np.float32)

    val = read_dataset(args.validation)
    label = val.truth["label"] == 1
    sep_pix = np.asarray(val.truth["separation_pix"], np.float64)
    gal = np.asarray(val.truth["gal_id0"])
    val_noisy = noisy(val, np.asarray(val.truth["index"]), args.valid_sigma)
    scores = {"vgg16": np.asarray(teacher.predict_proba(val_noisy), np.float64)}
    res = {"dataset": str(args.dataset), "validation": str(args.validation),
           "teacher": str(args.teacher), "sigma_train_adu": args.sigma,
           "sigma_valid_adu": args.valid_sigma, "n_train": int(len(y)),
           "n_valid_split": int(len(v_y)), "n_validation": int(len(label)),
           "validation_galaxies": int(len(set(gal.tolist()))),
           "vgg16_stamps_per_s": len(y) / teacher_s, "variants": {}}
    val_img = tilehead.scale_stamps(val_noisy, args.valid_sigma)
    val_cat = np.zeros((len(label), 0), np.float32)
    for name, soft in (("compact_labels", None), ("compact_distilled", teacher_p)):
        t0 = time.perf_counter()
        net, hist = tilehead.fit_tile_head((x_free, cat, y), (v_img, v_cat, v_y),
                                           max_epochs=args.max_epochs,
                                           patience_epochs=args.patience,
                                           lr_drop_epochs=3, noise_sigma_adu=args.sigma,
                                           teacher_prob=soft)
        fit_s = time.perf_counter() - t0

        def predict(x, f, net=net):
            return net.predict_on_batch([x, f])

        scores[name] = tilehead.orientation_logits(predict, val_img, val_cat,
                                                   args.n_orientations)
        res["variants"][name] = {
            "epochs": hist["epochs"], "best_epoch": hist["best_epoch"], "fit_s": fit_s,
            "valid_split_auc": hist["valid_roc_auc"][hist["best_epoch"] - 1],
            "stamps_per_s": rate(lambda x: tilehead.orientation_logits(
                predict, x, val_cat[:len(x)], args.n_orientations), val_img[:2048]),
            "params": int(net.count_params())}
        print(name, res["variants"][name])

    def vector(rows_):
        out = []
        for name in scores:
            a = class_aucs(scores[name][rows_], label[rows_], sep_pix[rows_])
            out += [a["all"], a["close"], a["far"]]
        return out

    point = vector(np.arange(len(label)))
    boot = metrics.group_bootstrap(gal, vector, args.n_bootstrap, 0)
    names = list(scores)
    res["auc"] = {}
    for i, name in enumerate(names):
        res["auc"][name] = {}
        for j, cls in enumerate(("all", "close", "far")):
            k = 3 * i + j
            d = boot[:, k] - boot[:, j]
            res["auc"][name][cls] = {
                "value": point[k], "ci95": metrics.interval(boot[:, k], 0.95),
                "minus_vgg16": point[k] - point[j], "minus_vgg16_ci95":
                    metrics.interval(d, 0.95)}
            print(f"{name:18s} {cls:5s} AUC {point[k]:.4f} {res['auc'][name][cls]['ci95']}"
                  f"  - VGG16 {point[k] - point[j]:+.4f} {metrics.interval(d, 0.95)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
