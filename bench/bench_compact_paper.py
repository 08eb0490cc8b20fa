"""Compact paper heads against the VGG16 head on the paper's question (issue 15).

Scores realistic stamps (``--stamps``, a set of `bh-stage simulate`, noise ``--sigma``) and,
with ``--tiles-dir``, every detection of the tile set's ``--tile-role`` tiles (cut as the
stage cuts them, ``tileset.detection_stamps``) with the VGG16 head ``--vgg16`` and each
``--head NAME=JSON`` (heads made by ``bh-stage train --set architecture=...``). Reports the
ROC AUC of each truth class, the paired difference from the VGG16 head with a 95 % interval
from a bootstrap over galaxies, and the network-only stamps/s of every head (``predict_proba``
on 65x65 stamps, f32, batches of 256, after a warm-up). Stamp classes: all, close (< 10 px)
and far blends, each against isolated stamps. Tile classes: those of ``bh-stage
evaluate-tile`` (``evaluate_tile.COMPARISONS``), where the stage's free catalogue cues of
recognised neighbours are scored beside the heads. Choose on validation (training-half stamps,
``valid`` tiles); read the test half (``test`` tiles) once, for what ships.

    python bench/bench_compact_paper.py --vgg16 cfis_sigma15_clip_80k \
        --head labels=WORKDIR/heads/compact_labels.json \
        --stamps WORKDIR/real_train4k.h5 --tiles-dir WORKDIR/tiles --tile-role valid \
        --output bench/results/compact_paper_valid.json
"""

import copy
import time
from pathlib import Path

import numpy as np

from bh_stage import model
from bh_stage.io import read_dataset
from bh_stage.study import metrics
from bh_stage.study.evaluate_tile import COMPARISONS, comparison_labels, galaxy_groups
from bh_stage.study.train import noisy_stamps

import benchlib

STAMP_CLASSES = ("all", "close", "far")
CLOSE_MAX_PIX = 10.0


def stamp_comparisons(label, sep_pix):
    """``{class: (rows, labels)}`` of each blend class against the isolated stamps."""
    iso = ~label
    out = {}
    for name, pos in (("all", label), ("close", label & (sep_pix < CLOSE_MAX_PIX)),
                      ("far", label & (sep_pix >= CLOSE_MAX_PIX))):
        rows = np.flatnonzero(pos | iso)
        out[name] = (rows, pos[rows].astype(np.int8))
    return out


def paired_aucs(scores, comparisons, groups, n_bootstrap, seed=0):
    """AUC of each score in each comparison and its difference from ``scores['vgg16']``,
    95 % intervals from one bootstrap over ``groups`` (resampled rows, every comparison and
    score on the same resample)."""
    names, classes = list(scores), list(comparisons)
    member = {c: np.zeros(len(groups), bool) for c in classes}
    for c, (rows, _) in comparisons.items():
        member[c][rows] = True
    truth = {c: np.zeros(len(groups), np.int8) for c in classes}
    for c, (rows, lab) in comparisons.items():
        truth[c][rows] = lab

    def vector(idx):
        return [metrics.roc_auc(scores[n][idx][member[c][idx]], truth[c][idx][member[c][idx]])
                for n in names for c in classes]

    point = vector(np.arange(len(groups)))
    boot = metrics.group_bootstrap(groups, vector, n_bootstrap, seed)
    out = {}
    for i, n in enumerate(names):
        out[n] = {}
        for j, c in enumerate(classes):
            k, ref = i * len(classes) + j, names.index("vgg16") * len(classes) + j
            out[n][c] = {"auc": point[k], "ci95": metrics.interval(boot[:, k], 0.95),
                         "minus_vgg16": point[k] - point[ref],
                         "minus_vgg16_ci95": metrics.interval(boot[:, k] - boot[:, ref], 0.95),
                         "n_positive": int(comparisons[c][1].sum()),
                         "n": int(len(comparisons[c][0]))}
    return out


def network_rate(clf, stamps, rms_adu):
    """Stamps/s of ``clf.predict_proba`` on ``stamps`` (best of two, after a warm-up)."""
    clf.predict_proba(stamps[:256], rms_adu)
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        clf.predict_proba(stamps, rms_adu)
        best = min(best, time.perf_counter() - t0)
    return len(stamps) / best


def stamp_set(path, sigma_adu):
    """Noisy stamps of a whole data set (realisation 0), its comparisons and galaxy groups."""
    ds = read_dataset(path, stamps=False)
    label = ds.truth["label"] == 1
    sep_pix = np.asarray(ds.truth["separation_pix"], np.float64)
    stamps = noisy_stamps(path, ds.attrs, np.arange(len(label)), sigma_adu)
    return stamps, stamp_comparisons(label, sep_pix), np.asarray(ds.truth["gal_id0"])


def tile_set(tiles_dir, role):
    """Stage stamps (65x65) of every detection of a tile role, the tile rms of each, the
    free catalogue cues of the stage (``BH_NEAREST_PIX`` negated, ``BH_NDET_STAMP``), the
    ``COMPARISONS`` and the galaxy groups (as ``bh-stage evaluate-tile``: a galaxy drawn on
    both tiles is one group)."""
    from bh_stage import cues
    from bh_stage.config import EvaluateTileConfig, config_from_dict
    from bh_stage.study import tileset

    cfg = config_from_dict(EvaluateTileConfig, {"tiles": {"work_dir": str(tiles_dir)}})
    stamps, rms, classes, free = [], [], [], []
    for folder in tileset.prepare_role(cfg.tiles, role):
        (x_pix, y_pix), cls, _ = tileset.detection_table(folder)
        st, rms_adu = tileset.detection_stamps(folder, side_pix=65)
        stamps.append(st)
        rms.append(np.full(len(st), rms_adu))
        classes.append(cls)
        free.append(np.c_[-cues.nearest_detection_pix(x_pix, y_pix),
                          cues.detections_in_stamp(x_pix, y_pix)])
    classes, free = np.concatenate(classes), np.concatenate(free).astype(np.float64)
    comparisons = {c: comparison_labels(classes, c) for c in COMPARISONS}
    cue_scores = {"-BH_NEAREST_PIX": free[:, 0], "BH_NDET_STAMP": free[:, 1]}
    return (np.concatenate(stamps), np.concatenate(rms), cue_scores, comparisons,
            galaxy_groups(classes))


def score_all(heads, stamps, rms_adu):
    """``{name: P(blend)}`` of every head; ``rms_adu`` one value or one per stamp."""
    rms = np.broadcast_to(np.asarray(rms_adu, np.float64), (len(stamps),))
    out = {}
    for name, clf in heads.items():
        out[name] = np.empty(len(stamps), np.float64)
        for value in np.unique(rms):
            rows = np.flatnonzero(rms == value)
            out[name][rows] = clf.predict_proba(stamps[rows], float(value))
    return out


def report(title, table):
    for name, classes in table.items():
        for c, v in classes.items():
            lo, hi = v["minus_vgg16_ci95"]
            print(f"{title:10s} {name:12s} {c:30s} AUC {v['auc']:.4f}  - VGG16 "
                  f"{v['minus_vgg16']:+.4f} [{lo:+.4f}, {hi:+.4f}]")


def main():
    ap = benchlib.parser(__doc__, required=True)
    ap.add_argument("--vgg16", default="cfis_sigma15_clip_80k", help="VGG16 paper head")
    ap.add_argument("--head", action="append", default=[], metavar="NAME=JSON",
                    help="a compact head (repeat)")
    ap.add_argument("--stamps", type=Path, help="realistic stamp set (.h5)")
    ap.add_argument("--sigma", type=float, default=14.5, help="noise of the stamps, ADU")
    ap.add_argument("--tiles-dir", type=Path, help="tile set folder (bh-stage evaluate-tile)")
    ap.add_argument("--tile-role", default="valid", choices=("valid", "test"))
    ap.add_argument("--orientations", default="",
                    help="comma-separated orientation counts to score each compact head in "
                         "as well (NAME@k), beside its own")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    args = ap.parse_args()

    heads = {"vgg16": model.load_classifier(args.vgg16)}
    for item in args.head:
        name, _, path = item.partition("=")
        heads[name] = model.load_classifier(path)
        for k in filter(None, args.orientations.split(",")):
            heads[f"{name}@{k}"] = copy.copy(heads[name])
            heads[f"{name}@{k}"].n_orientations = int(k)
    res = {"heads": {n: str(Path(c.head_path).name) for n, c in heads.items()},
           "sigma_adu": args.sigma, "n_bootstrap": args.n_bootstrap}
    if args.stamps:
        stamps, comparisons, groups = stamp_set(args.stamps, args.sigma)
        res["stamps"] = {"path": args.stamps.name, "n": int(len(stamps)),
                         "galaxies": int(len(np.unique(groups))),
                         "auc": paired_aucs(score_all(heads, stamps, args.sigma), comparisons,
                                            groups, args.n_bootstrap)}
        report("stamps", res["stamps"]["auc"])
        sample = stamps[:2048]
        res["stamps_per_s"] = {n: network_rate(c, sample, args.sigma) for n, c in heads.items()}
        print("network-only stamps/s:", {n: round(v) for n, v in res["stamps_per_s"].items()})
    if args.tiles_dir:
        stamps, rms, cue_scores, comparisons, groups = tile_set(args.tiles_dir, args.tile_role)
        scores = {**score_all(heads, stamps, rms), **cue_scores}
        res["tiles"] = {"role": args.tile_role, "n_detections": int(len(stamps)),
                        "galaxies": int(len(np.unique(groups))),
                        "auc": paired_aucs(scores, comparisons, groups, args.n_bootstrap)}
        report("tiles", res["tiles"]["auc"])
    benchlib.write_result(args.output, res)


if __name__ == "__main__":
    main()
