"""Calibrate a paper head's probability on the validation tiles: ``BH_PAPER_PROB`` at tile
prevalence, without ties at 1.

Fits P(paper blend) = sigmoid(a z + b) (``train_tile.calibrate_logits``, the tile head's
maximum-likelihood fit) to the head's raw logit z (``predict_logits``) of the
stage's stamp of every detection of the validation tiles (training galaxies; labels
``PAPER_BLEND`` of the tile truth: another object inside the 51x51 stamp). Test tiles are
never fitted on; ``--report-work-dir`` only reports, with the fitted a and b, on the test
tiles of another work dir. Prints, before and after, the share of detections at the largest
probability (a logit above ~37 is exactly 1 in float64), the mean probability against the
true fraction, and the ROC AUC (unchanged but for ties: the map is increasing).

``--write`` puts ``calibration`` {a, b, fitted_on} into the head's JSON (its weights, and so
``BH_HSHA``, unchanged) and maps its ``blend_threshold`` and ``hybrid_threshold`` through the
same increasing map (the previous ones kept as ``uncalibrated_*``), so that ``BH_PAPER_FLAG``
flags the same detections.

    python bench/calibrate_paper_head.py --work-dir WORKDIR/tiles --head default [--write]

Writes bench/results/paper_head_calibration.json.
"""

import json

import numpy as np

from bh_stage import heads, io, model
from bh_stage.config import TileSetConfig, config_from_dict
from bh_stage.nets.compact import sigmoid
from bh_stage.study import tileset
from bh_stage.study.train_tile import calibrate_logits
from bh_stage.study.metrics import roc_auc

import benchlib


def role_logits(clf, work_dir, role):
    """Raw logits of the head, PAPER_BLEND labels of every detection of a role's tiles, and
    the tiles' folder names."""
    folders = tileset.tile_folders(config_from_dict(TileSetConfig, {"work_dir": str(work_dir)}),
                                   role)
    z, y = [], []
    for folder in folders:
        _, cls, _ = tileset.detection_table(folder)
        stamps, rms = tileset.detection_stamps(folder, 0, side_pix=clf.input_shape[0])
        z.append(clf.predict_logits(stamps, rms))
        y.append(cls["PAPER_BLEND"].astype(int))
    return np.concatenate(z), np.concatenate(y), [f.name for f in folders]


def summary(p, y):
    """Ties at the largest value, mean against the true fraction, ROC AUC."""
    return {"share_at_max": float(np.mean(p == p.max())), "max": float(p.max()),
            "mean_prob": float(p.mean()), "true_fraction": float(y.mean()),
            "roc_auc": roc_auc(p, y), "n": int(len(p))}


def main():
    parser = benchlib.parser(__doc__, "paper_head_calibration.json")
    parser.add_argument("--work-dir", required=True, help="tiles.work_dir of the validation tiles")
    parser.add_argument("--head", default="default", help="paper head: name or .json")
    parser.add_argument("--report-work-dir", default=None,
                        help="also report (never fit) on the test tiles of this work dir")
    parser.add_argument("--write", action="store_true", help="update the head's JSON")
    args = parser.parse_args()

    path = heads.head_path(args.head, noise_sigma_adu=14.5)
    clf = model.load_classifier(path)
    z, y, names = role_logits(clf, args.work_dir, "valid")
    a, b = calibrate_logits(z, y)  # the tile head's Platt fit
    before, after = summary(sigmoid(z), y), summary(sigmoid(a * z + b), y)
    out = {"head": path.name, "fitted_on": names, "a": a, "b": b,
           "valid_before": before, "valid_after": after}
    print(f"{path.name}: a {a:.4f}, b {b:+.4f} on {before['n']} validation detections; at the "
          f"largest probability {before['share_at_max']:.4f} -> {after['share_at_max']:.4f}; "
          f"mean {before['mean_prob']:.3f} -> {after['mean_prob']:.3f} (true "
          f"{before['true_fraction']:.3f}); AUC {before['roc_auc']:.4f} -> "
          f"{after['roc_auc']:.4f}", flush=True)
    if args.report_work_dir:
        zt, yt, out["reported_on"] = role_logits(clf, args.report_work_dir, "test")
        out["test_before"], out["test_after"] = (summary(sigmoid(zt), yt),
                                                 summary(sigmoid(a * zt + b), yt))
        print(f"test tiles ({len(zt)}): at the largest probability "
              f"{out['test_before']['share_at_max']:.4f} -> "
              f"{out['test_after']['share_at_max']:.4f}; mean "
              f"{out['test_before']['mean_prob']:.3f} -> {out['test_after']['mean_prob']:.3f} "
              f"(true {out['test_before']['true_fraction']:.3f})", flush=True)
    if args.write:
        meta = json.loads(path.read_text())
        for key in ("blend_threshold", "hybrid_threshold"):
            raw = meta.setdefault(f"uncalibrated_{key}", meta[key])
            meta[key] = float(sigmoid(a * np.log(raw / (1 - raw)) + b))
        meta["calibration"] = {"a": a, "b": b, "fitted_on": f"PAPER_BLEND of the {len(z)} "
                               f"detections of validation tiles {', '.join(names)} "
                               "(bench/calibrate_paper_head.py)"}
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        io.atomic_write_bytes(path, lambda f: f.write(text.encode()))
        out["written"] = {k: meta[k] for k in ("blend_threshold", "hybrid_threshold")}
        print(f"wrote {path}: hybrid_threshold {meta['uncalibrated_hybrid_threshold']:.4f} -> "
              f"{meta['hybrid_threshold']:.4f}")
    benchlib.write_result(args.output, out)


if __name__ == "__main__":
    main()
