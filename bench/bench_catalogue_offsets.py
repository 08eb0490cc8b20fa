"""A stronger catalogue-only baseline: the 9 catalogue features plus the offsets between a
detection's peak pixel, isophotal barycentre and windowed centroid.

A merged pair has its peak on the brighter galaxy while the barycentre lies between the two,
so ``XPEAK_IMAGE - X_IMAGE`` is a free cue of an unrecognised blend. ``bh.param`` lacks
``XPEAK_IMAGE``: this script re-runs ``source-extractor`` on the tiles of ``evaluate-tile``
with ``XPEAK_IMAGE, YPEAK_IMAGE`` added (same detection settings, so the same rows) into its
own folder, trains gradient boosting on the training tiles with and without the offsets
(validation AUC), then reports both on the test tiles beside ``BLEND_PROB`` of
``docs/history/results_tile_0.5/detections.npz``, with galaxy-bootstrap intervals and the paired
difference. Writes bench/results/catalogue_offsets.json.

    python bench/bench_catalogue_offsets.py --work-dir WORKDIR/tiles
"""

import json
import subprocess
from pathlib import Path

import fitsio
import numpy as np

from bh_stage.config import TileSetConfig, config_from_dict
from bh_stage.study import metrics, tileset

import benchlib

REPO = benchlib.REPO
OFFSET_NAMES = ["|peak - barycentre|", "|windowed - barycentre|", "|peak - windowed|"]


def offsets(folder, out_dir):
    """Offsets (pixels) between peak, barycentre and windowed centroid of each detection."""
    cat = out_dir / f"{folder.name}.cat"
    if not cat.is_file():
        param = out_dir / "offsets.param"
        param.write_text("NUMBER\nX_IMAGE\nY_IMAGE\nXWIN_IMAGE\nYWIN_IMAGE\nXPEAK_IMAGE\n"
                         "YPEAK_IMAGE\n")
        sex = REPO / "example_config" / "sextractor" / "bh.sex"
        files = {k: folder / v for k, v in tileset.TILE_FILES.items()}
        subprocess.run(["source-extractor", str(files["image"]), "-c", str(sex),
                        "-PARAMETERS_NAME", str(param),
                        "-FILTER_NAME", str(sex.with_name("default.conv")),
                        "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", str(files["weight"]),
                        "-CATALOG_NAME", str(cat), "-VERBOSE_TYPE", "QUIET"], check=True)
    c = fitsio.read(str(cat), ext="LDAC_OBJECTS")
    reference = fitsio.read(str(folder / tileset.TILE_FILES["catalogue"]), ext="LDAC_OBJECTS",
                            columns=["X_IMAGE"])
    assert np.array_equal(c["X_IMAGE"], reference["X_IMAGE"]), f"{cat}: rows differ"
    f = {k: c[k].astype(np.float64) for k in c.dtype.names}
    return np.column_stack([
        np.hypot(f["XPEAK_IMAGE"] - f["X_IMAGE"], f["YPEAK_IMAGE"] - f["Y_IMAGE"]),
        np.hypot(f["XWIN_IMAGE"] - f["X_IMAGE"], f["YWIN_IMAGE"] - f["Y_IMAGE"]),
        np.hypot(f["XPEAK_IMAGE"] - f["XWIN_IMAGE"], f["YPEAK_IMAGE"] - f["YWIN_IMAGE"])])


def role_data(tiles, role, out_dir):
    """Features without and with offsets, labels and galaxy groups of one role's tiles."""
    base, extra, label, group = [], [], [], []
    for folder in tileset.tile_folders(tiles, role):
        _, classes, feats = tileset.detection_table(folder)
        base.append(feats)
        extra.append(offsets(folder, out_dir))
        label.append(classes["UNRECOGNISED"].astype(int))
        group.append(classes["GROUP"].astype(np.int64))
    base = np.concatenate(base)
    return {"catalogue (9 features)": base,
            "catalogue + offsets": np.column_stack([base, np.concatenate(extra)])}, \
        np.concatenate(label), np.concatenate(group)


def summary(score, label, groups, n_boot, seed):
    def stat(idx):
        return np.array([metrics.roc_auc(score[idx], label[idx]),
                         metrics.tpr_at_fpr(score[idx], label[idx], 0.05)])
    boot = metrics.group_bootstrap(groups, stat, n_boot, seed)
    return {"roc_auc": metrics.roc_auc(score, label),
            "roc_auc_95": metrics.interval(boot[:, 0], 0.95),
            "tpr_at_fpr_0.05": metrics.tpr_at_fpr(score, label, 0.05),
            "tpr_at_fpr_0.05_95": metrics.interval(boot[:, 1], 0.95)}


def main():
    from sklearn.ensemble import HistGradientBoostingClassifier

    parser = benchlib.parser(__doc__, "catalogue_offsets.json")
    parser.add_argument("--work-dir", required=True, help="tiles.work_dir of evaluate-tile")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/bh_catalogue_offsets"))
    parser.add_argument("--results", type=Path,
                        default=REPO / "docs" / "results_tile" / "detections.npz")
    parser.add_argument("--n-bootstrap", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tiles = config_from_dict(TileSetConfig, {"work_dir": args.work_dir})
    data = {role: role_data(tiles, role, args.out_dir) for role in ("train", "valid", "test")}
    table = np.load(args.results)["table"]
    names = np.concatenate([[f.name] * len(tileset.detection_table(f)[1])
                            for f in tileset.tile_folders(tiles, "test")])
    assert np.array_equal(table["TILE"].astype(str), names), "detections.npz rows differ"
    _, label, groups = data["test"]
    scores = {"BLEND_PROB": table["BLEND_PROB"]}
    out = {"offsets": OFFSET_NAMES, "valid": {}, "test": {}}
    for name in data["train"][0]:
        model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05,
                                               random_state=args.seed)
        model.fit(data["train"][0][name], data["train"][1])
        p_valid = model.predict_proba(data["valid"][0][name])[:, 1]
        out["valid"][name] = {"roc_auc": metrics.roc_auc(p_valid, data["valid"][1]),
                              "tpr_at_fpr_0.05": metrics.tpr_at_fpr(p_valid, data["valid"][1],
                                                                    0.05)}
        scores[name] = model.predict_proba(data["test"][0][name])[:, 1]
    for name, score in scores.items():
        out["test"][name] = summary(score, label, groups, args.n_bootstrap, args.seed)
    diff = metrics.group_bootstrap(groups, lambda idx: metrics.roc_auc(
        scores["BLEND_PROB"][idx], label[idx]) - metrics.roc_auc(
        scores["catalogue + offsets"][idx], label[idx]), args.n_bootstrap, args.seed)
    out["test"]["BLEND_PROB - (catalogue + offsets), roc_auc"] = {
        "value": out["test"]["BLEND_PROB"]["roc_auc"]
        - out["test"]["catalogue + offsets"]["roc_auc"],
        "interval_95": metrics.interval(diff, 0.95)}
    print(json.dumps(out, indent=1))
    benchlib.write_result(args.output, out)


if __name__ == "__main__":
    main()
