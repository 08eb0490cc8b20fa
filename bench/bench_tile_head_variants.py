"""Tile heads compared on the validation tiles: how the shipped head was chosen.

For each head (a tile head's ``.json``) and each number of orientations (default: the head's
own ``n_orientations``), ROC AUC and TPR at 5 % FPR of unrecognised blends against all
other detections of the validation tiles (training galaxies), the paired AUC difference to
the first head with a 95 % interval from resampling galaxy units (one per true galaxy
across the tiles), and the same for the mean logit of all heads. Catalogue heads,
position-only heads (their features measured on the stamps) and heads reading both can be
compared. Test tiles are read only with ``--role test``, to report on heads already chosen
on validation.

    python bench/bench_tile_head_variants.py --work-dir WORKDIR/tiles HEAD.json [HEAD.json ...] \
        [--orientations 1,2,4,8] [--precisions f32,bf16] [--role test]

``--precisions``: each head also in these arithmetics (``tilehead.PRECISIONS``).

Writes bench/results/tile_head_variants.json.
"""

from pathlib import Path

import numpy as np

from bh_stage import tilehead
from bh_stage.config import TileSetConfig, config_from_dict
from bh_stage.study import tileset, train_tile
from bh_stage.study.evaluate_tile import galaxy_groups, unit_counts
from bh_stage.study.metrics import group_bootstrap, interval, roc_auc, tpr_at_fpr

import benchlib


def main():
    parser = benchlib.parser(__doc__, "tile_head_variants.json")
    parser.add_argument("heads", nargs="+", type=Path)
    parser.add_argument("--work-dir", required=True, help="tiles.work_dir of train-tile")
    parser.add_argument("--orientations", default=None,
                        help="comma-separated orientation counts; default: each head's own")
    parser.add_argument("--precisions", default="f32",
                        help="comma-separated tile_head_precision values (default f32)")
    parser.add_argument("--n-bootstrap", type=int, default=300)
    parser.add_argument("--role", default="valid", choices=("valid", "test"),
                        help="tiles to read (test: reporting only, after the choice)")
    args = parser.parse_args()

    tiles = config_from_dict(TileSetConfig, {"work_dir": args.work_dir})
    folders = tileset.tile_folders(tiles, args.role)
    arrays = {}  # the heads' inputs by kind of features (train_tile.FEATURE_KINDS)
    names, logits = [], []
    for path in args.heads:
        for precision in args.precisions.split(","):
            head = tilehead.load_tile_head(path, precision)
            kind = train_tile.source_features(head.metadata)
            if kind not in arrays:
                arrays[kind] = train_tile.role_arrays(folders, 0, kind)
            img, feats, cls = arrays[kind]
            counts = ([int(n) for n in args.orientations.split(",")] if args.orientations
                      else [head.n_orientations])
            for n in counts:
                names.append(f"{path} ({n} orientations, {precision})")
                logits.append(head.input_logits(img, feats, n))
    labels = cls["UNRECOGNISED"]
    groups = galaxy_groups(cls)
    if len(logits) > 1:
        names.append("mean logit of the above")
        logits.append(np.mean(logits, axis=0))
    rows = []
    for name, z in zip(names, logits):
        diff = group_bootstrap(groups, lambda r, z=z: roc_auc(z[r], labels[r])
                               - roc_auc(logits[0][r], labels[r]), args.n_bootstrap)
        rows.append({"head": name, "roc_auc": roc_auc(z, labels),
                     "tpr_at_fpr_0.05": tpr_at_fpr(z, labels, 0.05),
                     "roc_auc_minus_first": roc_auc(z, labels) - roc_auc(logits[0], labels),
                     "roc_auc_minus_first_95": interval(diff)})
        print(f"{name}: ROC AUC {rows[-1]['roc_auc']:.4f}, TPR at 5 % FPR "
              f"{rows[-1]['tpr_at_fpr_0.05']:.3f}, minus the first "
              f"{rows[-1]['roc_auc_minus_first']:+.4f} "
              f"[{rows[-1]['roc_auc_minus_first_95'][0]:+.4f}, "
              f"{rows[-1]['roc_auc_minus_first_95'][1]:+.4f}]", flush=True)
    out = {"role": args.role, "seeds": getattr(tiles, f"{args.role}_seeds"),
           "n_detections": int(len(labels)),
           "units": unit_counts(cls),
           "prevalence": float(labels.mean()), "n_bootstrap": args.n_bootstrap, "rows": rows}
    benchlib.write_result(args.output, out)


if __name__ == "__main__":
    main()
