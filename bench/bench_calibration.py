"""Is BLEND_PROB calibrated where it was not fitted? Test tiles of other pair fractions.

    python bench/bench_calibration.py --work-dir WORKDIR/tiles_p05 --head HEAD.json \
        [--tiles-set key=value ...]

Runs `bh-stage run` (the given tile head) on the test tiles of a tile set, gives each
detection its truth, and reports the mean BLEND_PROB against the true fraction of
unrecognised blends, the fraction BLEND_FLAG flags and the share of unrecognised blends it
holds, and the reliability curve, with 95 % intervals over galaxy units
(``evaluate_tile.calibration_summary``). The head's calibration was fitted on validation
tiles of training galaxies with 15 % of galaxies in injected pairs; test tiles with 5 % and
30 % (``tiles.close_pair_fraction``) ask whether its meaning drifts with the field. For each
of the head's thresholds (``BH_THR``: a fraction of all validation detections flagged;
``BH_THRI``: 5 % of the isolated validation galaxies flagged) it also reports what is flagged
here: all detections, isolated galaxies, unrecognised blends. Only the test tiles are read
(reporting, not choosing). Writes bench/results/calibration_<set>.json.
"""

from pathlib import Path

import fitsio
import numpy as np

import benchlib


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--head", required=True, help="tile head (.json or shipped name)")
    parser.add_argument("--tiles-set", action="append", default=[], metavar="KEY=VALUE",
                        help="TileSetConfig keys of the tile set (e.g. close_pair_fraction=0.05)")
    parser.add_argument("--n-bootstrap", type=int, default=500)
    args = parser.parse_args()

    from bh_stage.config import RunConfig, TileSetConfig, config_from_dict, load_config
    from bh_stage.study import tileset
    from bh_stage.study.evaluate_tile import calibration_summary, galaxy_groups, unit_counts
    from bh_stage.tilehead import load_tile_head, tile_head_path

    tiles = load_config(None, TileSetConfig, [f"work_dir={args.work_dir}", *args.tiles_set])
    run_cfg = config_from_dict(RunConfig, {"tile_head": args.head, "overwrite": True})
    prob, flag, classes = [], [], []
    for folder in tileset.tile_folders(tiles, "test"):
        out = tileset.run_stage_on_tile(folder, run_cfg, "tile_bh_calibration.cat")
        columns = fitsio.read(str(out), ext="LDAC_OBJECTS")
        prob.append(columns["BLEND_PROB"])
        flag.append(columns["BLEND_FLAG"])
        classes.append(tileset.detection_table(folder)[1])
    classes = np.concatenate(classes)
    prob, flag = np.concatenate(prob), np.concatenate(flag)
    groups, iso = galaxy_groups(classes), classes["ISOLATED"] == 1
    summary = calibration_summary(prob, classes["UNRECOGNISED"], flag, groups,
                                  n_boot=args.n_bootstrap)
    meta = load_tile_head(tile_head_path(args.head)).metadata  # the head run_stage loaded
    rules = {"BH_THR": {"threshold": float(meta["blend_threshold"]),
                        "chosen_as": f"flags {meta['flag_fraction']} of all validation "
                                     "detections"}}
    if "isolated_threshold" in meta:
        rules["BH_THRI"] = {"threshold": float(meta["isolated_threshold"]),
                            "chosen_as": f"flags {meta['isolated_fpr']} of the isolated "
                                         "validation galaxies"}
    for name, rule in rules.items():  # what each threshold flags here, and on isolated ones
        cut = prob >= rule["threshold"]
        everything = calibration_summary(prob, classes["UNRECOGNISED"], cut, groups,
                                         n_boot=args.n_bootstrap)
        isolated = calibration_summary(prob[iso], classes["UNRECOGNISED"][iso], cut[iso],
                                       groups[iso], n_boot=args.n_bootstrap)
        rule.update({k: everything[k] for k in everything if k.startswith(
            ("flagged_fraction", "positives_flagged"))})
        rule["isolated_flagged"] = isolated["flagged_fraction"]
        rule["isolated_flagged_95"] = isolated["flagged_fraction_95"]
        print(f"  {name} = {rule['threshold']:.4f} ({rule['chosen_as']}): flags "
              f"{rule['flagged_fraction']:.3f} of detections, {rule['isolated_flagged']:.3f} "
              f"of isolated galaxies, {rule['positives_flagged']:.3f} of unrecognised blends")
    print(f"{args.work_dir}: mean BLEND_PROB {summary['mean_prob']:.4f}, true unrecognised "
          f"fraction {summary['positive_fraction']:.4f}, relative difference "
          f"{summary['relative_difference']:+.3f} {summary['relative_difference_95']}; "
          f"flagged {summary['flagged_fraction']:.3f}, holding "
          f"{summary['positives_flagged']:.3f} of the unrecognised blends")
    benchlib.write_result(args.output or f"calibration_{args.work_dir.name}.json", {
        "work_dir": str(args.work_dir), "head": args.head, "tiles_set": args.tiles_set,
        "test_seeds": tiles.test_seeds, "units": unit_counts(classes), **summary,
        "thresholds": rules})


if __name__ == "__main__":
    main()
