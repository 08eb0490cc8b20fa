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
stamps/s of both. Writes a JSON. The test galaxies are read only with ``--test``, once the
variant is fixed from a validation run (``--variants``): the same comparison on them.

    python bench/bench_compact_paper.py --dataset WORKDIR/foldA_mixed24k.h5 \
        --validation WORKDIR/real_train4k.h5 --teacher WORKDIR/heads/foldA_caffe_clip.json
    python bench/bench_compact_paper.py ... --variants compact_distilled \
        --test WORKDIR/real_test4k.h5 --output bench/results/compact_paper_test.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bh_stage import metrics, model, tilehead
from bh_stage.io import read_dataset
from bh_stage.simulate import SPLIT_TRAIN, SPLIT_VALID
from bh_stage.train import noisy_stamps


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


def compare(path, teacher, nets, args):
    """ROC AUC by truth class of the VGG16 head and each compact network on one stamp set,
    with paired differences (95 %, galaxy bootstrap), and the networks' stamps/s."""
    ds = read_dataset(path, stamps=False)
    label = ds.truth["label"] == 1
    sep_pix = np.asarray(ds.truth["separation_pix"], np.float64)
    gal = np.asarray(ds.truth["gal_id0"])
    stamps_adu = noisy_stamps(path, ds.attrs, np.arange(len(label)), args.valid_sigma)
    scores = {"vgg16": np.asarray(teacher.predict_proba(stamps_adu), np.float64)}
    x = tilehead.scale_stamps(stamps_adu, args.valid_sigma)
    none = np.zeros((len(label), 0), np.float32)
    out = {"path": str(path), "n_stamps": int(len(label)),
           "galaxies": int(len(set(gal.tolist()))), "stamps_per_s": {}, "auc": {}}
    for name, net in nets.items():
        def predict(img, f, net=net):
            return net.predict_on_batch([img, f])

        scores[name] = tilehead.orientation_logits(predict, x, none, args.n_orientations)
        out["stamps_per_s"][name] = rate(lambda img: tilehead.orientation_logits(
            predict, img, none[:len(img)], args.n_orientations), x[:2048])

    def vector(rows):
        values = []
        for name in scores:
            a = class_aucs(scores[name][rows], label[rows], sep_pix[rows])
            values += [a["all"], a["close"], a["far"]]
        return values

    point = vector(np.arange(len(label)))
    boot = metrics.group_bootstrap(gal, vector, args.n_bootstrap, 0)
    for i, name in enumerate(scores):
        out["auc"][name] = {}
        for j, cls in enumerate(("all", "close", "far")):
            k = 3 * i + j
            d = boot[:, k] - boot[:, j]
            out["auc"][name][cls] = {
                "value": point[k], "ci95": metrics.interval(boot[:, k], 0.95),
                "minus_vgg16": point[k] - point[j],
                "minus_vgg16_ci95": metrics.interval(d, 0.95)}
            print(f"{path.name} {name:18s} {cls:5s} AUC {point[k]:.4f} "
                  f"- VGG16 {point[k] - point[j]:+.4f} {metrics.interval(d, 0.95)}")
    return out


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
    ap.add_argument("--variants", default="compact_labels,compact_distilled",
                    help="comma-separated: compact_labels (labels only), compact_distilled")
    ap.add_argument("--test", type=Path, help="realistic stamps of test galaxies, read last")
    ap.add_argument("--save-dir", type=Path, help="write each network's <name>.weights.h5")
    ap.add_argument("--output", type=Path, default=Path("bench/results/compact_paper.json"))
    args = ap.parse_args()

    meta = read_dataset(args.dataset, stamps=False)
    truth, attrs = meta.truth, meta.attrs
    rows = {s: np.flatnonzero(truth["split"] == s) for s in (SPLIT_TRAIN, SPLIT_VALID)}
    train = read_dataset(args.dataset, rows[SPLIT_TRAIN])
    y = (train.truth["label"] == 1).astype(np.int8)
    v_y = (truth["label"][rows[SPLIT_VALID]] == 1).astype(np.int8)
    v_img = tilehead.scale_stamps(
        noisy_stamps(args.dataset, attrs, rows[SPLIT_VALID], args.sigma), args.sigma)
    teacher = model.load_classifier(args.teacher)
    train_noisy = noisy_stamps(args.dataset, attrs, rows[SPLIT_TRAIN], args.sigma)
    t0 = time.perf_counter()
    teacher_p = np.asarray(teacher.predict_proba(train_noisy))
    teacher_s = time.perf_counter() - t0
    del train_noisy
    x_free = train.stamps.astype(np.float32)[..., None]
    cat, v_cat = np.zeros((len(y), 0), np.float32), np.zeros((len(v_y), 0), np.float32)

    res = {"dataset": str(args.dataset), "validation": str(args.validation),
           "teacher": str(args.teacher), "sigma_train_adu": args.sigma,
           "sigma_valid_adu": args.valid_sigma, "n_train": int(len(y)),
           "n_valid_split": int(len(v_y)), "vgg16_stamps_per_s": len(y) / teacher_s,
           "variants": {}}
    nets = {}
    soft_of = {"compact_labels": None, "compact_distilled": teacher_p}
    for name in args.variants.split(","):
        soft = soft_of[name]
        t0 = time.perf_counter()
        net, hist = tilehead.fit_tile_head((x_free, cat, y), (v_img, v_cat, v_y),
                                           max_epochs=args.max_epochs,
                                           patience_epochs=args.patience,
                                           lr_drop_epochs=3, noise_sigma_adu=args.sigma,
                                           teacher_prob=soft)
        fit_s = time.perf_counter() - t0
        nets[name] = net
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            net.save_weights(args.save_dir / f"{name}.weights.h5")
        res["variants"][name] = {
            "epochs": hist["epochs"], "best_epoch": hist["best_epoch"], "fit_s": fit_s,
            "valid_split_auc": hist["valid_roc_auc"][hist["best_epoch"] - 1],
            "params": int(net.count_params())}
        print(name, res["variants"][name])

    sets = [("validation", args.validation)] + ([("test", args.test)] if args.test else [])
    for role, path in sets:
        res[role] = compare(path, teacher, nets, args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
