"""Real galaxies whose HST cut-out holds a second source, and the tile study with them apart.

    python bench/bench_cutout_multiples.py --work-dir WORKDIR/tiles --role valid
    python bench/bench_cutout_multiples.py --role test --work-dir WORKDIR/tiles \
        --work-dir WORKDIR/tiles_p05 --tiles-set 1:close_pair_fraction=0.05 \
        --work-dir WORKDIR/tiles_p30 --tiles-set 2:close_pair_fraction=0.3 \
        [--tiles-dir WORKDIR/tiles] [--head default]

Finds the real galaxies whose HST cut-out holds another source with at least 10 % of the
main one's flux (``study.cutouts``, on the HST images alone: the truth's rule for a merged
object). Each tile detection of such a galaxy is two light sources that the truth calls one
galaxy, often "isolated". Runs ``bh-stage run`` (the tile head) on the tiles of one role and
reports, with 95 % intervals over galaxy units: ROC AUC and TPR at 5 % FPR of unrecognised
blends against all other detections, for ``BLEND_PROB`` and the tuned catalogue baseline
(model and settings from ``--baseline-from``, fitted on the training tiles of
``--tiles-dir``) with their paired difference, the fraction ``BLEND_FLAG`` flags and the
share of unrecognised blends it holds, and mean ``BLEND_PROB`` against the true fraction:
once over all detections (issue 21's definition) and once with the detections whose main
object is such a galaxy reported apart. Also, per real galaxy, how often it is the main
object and how many of its isolated detections are flagged. Role test is read to report
only. Also the field's unrecognised fraction estimated from BLEND_PROB alone by prior-shift
EM (``prior_shift_prevalence``; tried as a remedy for the calibration's drift with the field,
not in the stage). Writes bench/results/cutout_multiples_<role>.json.
"""

import json
from pathlib import Path

import fitsio
import numpy as np

import benchlib

REPO = Path(__file__).resolve().parents[1]


def stage_columns(folder, run_cfg, head_name):
    """BLEND_PROB and BLEND_FLAG of ``bh-stage run`` on a tile folder."""
    from bh_stage.study import tileset

    out = tileset.run_stage_on_tile(folder, run_cfg, f"tile_bh_{head_name}.cat")
    return fitsio.read(str(out), ext="LDAC_OBJECTS", columns=["BLEND_PROB", "BLEND_FLAG"])


def summary(prob, flag, baseline, labels, groups, n_boot):
    """Point values and 95 % galaxy-unit intervals of the reported numbers."""
    from bh_stage.study import metrics

    keys = ["roc_auc", "tpr_at_fpr_0.05", "baseline_roc_auc", "baseline_tpr_at_fpr_0.05",
            "roc_auc_minus_baseline", "flagged_fraction", "positives_flagged", "mean_prob",
            "positive_fraction", "relative_difference"]

    def stat(idx):
        p, b, y, f = prob[idx], baseline[idx], labels[idx], flag[idx]
        if y.all() or not y.any():
            return np.full(len(keys), np.nan)
        auc, auc_b = metrics.roc_auc(p, y), metrics.roc_auc(b, y)
        return np.array([auc, metrics.tpr_at_fpr(p, y, 0.05), auc_b,
                         metrics.tpr_at_fpr(b, y, 0.05), auc - auc_b, f.mean(), f[y].mean(),
                         p.mean(), y.mean(), p.mean() / y.mean() - 1.0])

    point = stat(np.arange(len(prob)))
    boot = metrics.group_bootstrap(groups, stat, n_boot)
    out = {"n_detections": int(len(prob)), "n_positives": int(labels.sum())}
    for k, key in enumerate(keys):
        out[key] = float(point[k])
        out[key + "_95"] = metrics.interval(boot[:, k], 0.95)
    return out


def prior_shift_prevalence(prob, prevalence_fit, n_iter=500):
    """The field's fraction of unrecognised blends estimated from BLEND_PROB alone, assuming
    only the prior changed since calibration (EM of Saerens, Latinne & Decaestecker 2002):
    rescale every probability to a trial prevalence until the rescaled mean equals it."""
    p = np.clip(prob[np.isfinite(prob)], 1e-12, 1 - 1e-12)
    pi = prevalence_fit
    for _ in range(n_iter):
        r, s = pi / prevalence_fit, (1 - pi) / (1 - prevalence_fit)
        pi = float(np.mean(r * p / (r * p + s * (1 - p))))
    return pi


def options_of(tiles_set, k, n_work_dirs):
    """The ``--tiles-set`` options of the k-th ``--work-dir``: unprefixed ones and ``k:``."""
    out = []
    for option in tiles_set:
        prefix, colon, rest = option.partition(":")
        if colon and prefix.isdigit():
            if int(prefix) >= n_work_dirs:
                raise SystemExit(f"--tiles-set {option}: there are {n_work_dirs} --work-dir")
            if int(prefix) == k:
                out.append(rest)
        else:
            out.append(option)
    return out


def per_galaxy(classes, flag, multiple, test_ids):
    """Per real galaxy: detections it is the main object of, isolated ones, share flagged."""
    from bh_stage.study import cutouts

    ids = cutouts.real_galaxy_indices(classes)
    rows = []
    for g in np.unique(ids[ids >= 0]):
        mine = ids == g
        iso = mine & (classes["ISOLATED"] == 1)
        rows.append({"gal_id": int(g), "half": "test" if g in test_ids else "train",
                     "multiple_cutout": bool(g in multiple), "detections": int(mine.sum()),
                     "isolated": int(iso.sum()),
                     "isolated_flagged": float(flag[iso].mean()) if iso.any() else None})
    return sorted(rows, key=lambda r: -r["detections"])


def figure(path, cosmos_dir, components, multiple, test_ids, psf_fwhm_arcsec=0.65):
    """The multiple cut-outs' HST images (arcsinh stretch) with the tiles' PSF FWHM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bh_stage.study import cutouts

    n_col = 6
    n_row = -(-len(multiple) // n_col)
    fig, axes = plt.subplots(n_row, n_col, figsize=(2.2 * n_col, 2.4 * n_row))
    for ax in np.ravel(axes):
        ax.set_axis_off()
    for ax, (i, row, image) in zip(np.ravel(axes), cutouts.cutout_images(
            cosmos_dir, indices=multiple.tolist())):
        sigma = np.sqrt(float(row["NOISE_VARIANCE"]))
        ax.imshow(np.arcsinh(image / (3 * sigma)), origin="lower", cmap="gray_r")
        scale = float(row["PIXEL_SCALE"])  # arcsec per HST pixel
        radius_pix = psf_fwhm_arcsec / 2 / scale
        ax.add_patch(plt.Circle((radius_pix + 1, radius_pix + 1), radius_pix, fill=False,
                                color="tab:red", lw=1))
        c = components[components["INDEX"] == i][0]
        ax.set_title(f"{i} ({'test' if i in test_ids else 'train'}), {c['MAG']:.1f} mag\n"
                     f"2nd: {c['SECOND_FLUX_RATIO']:.2f} at {c['SECOND_SEPARATION_ARCSEC']:.2f}\"",
                     fontsize=8)
    fig.suptitle(f"HST cut-outs holding a second source (red: the tiles' {psf_fwhm_arcsec}\" "
                 "PSF FWHM)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("--work-dir", required=True, type=Path, action="append",
                        help="a tile set's folder (repeat for several)")
    parser.add_argument("--role", choices=("valid", "test"), default="valid")
    parser.add_argument("--head", default="default", help="tile head (.json or shipped name)")
    parser.add_argument("--tiles-dir", type=Path, default=None,
                        help="tile set whose training tiles fit the baseline (default: "
                             "--work-dir)")
    parser.add_argument("--baseline-from", type=Path,
                        default=REPO / "docs/results_tile_v2/info.json")
    parser.add_argument("--tiles-set", action="append", default=[], metavar="[N:]KEY=VALUE",
                        help="TileSetConfig key of the tile sets (e.g. close_pair_fraction=0.05);"
                             " N: prefix: of the N-th --work-dir only (0-based)")
    parser.add_argument("--min-flux-ratio", type=float, default=0.1)
    parser.add_argument("--n-bootstrap", type=int, default=500)
    parser.add_argument("--figure", type=Path, default=None,
                        help="PNG of the multiple cut-outs' HST images")
    args = parser.parse_args()

    from bh_stage.config import RunConfig, TileSetConfig, config_from_dict, load_config
    from bh_stage.study import cutouts, tileset
    from bh_stage.study.evaluate_tile import (baseline_columns, baseline_matrix, fit_baseline,
                                              galaxy_groups, unit_counts)
    from bh_stage.study.simulate import real_galaxy_split
    from bh_stage.tilehead import load_tile_head, tile_head_path

    n_dirs = len(args.work_dir)
    tile_set_options = [options_of(args.tiles_set, k, n_dirs) for k in range(n_dirs)]
    tiles = load_config(None, TileSetConfig, [f"work_dir={args.work_dir[0]}",
                                              *tile_set_options[0]])
    components = cutouts.cutout_components(tiles.cosmos_dir)
    multiple = cutouts.multiple_cutouts(components, args.min_flux_ratio)
    test_ids = set(real_galaxy_split(components["MAG"])[1].tolist())
    print(f"cut-outs with a second source >= {args.min_flux_ratio:g} of the main flux: "
          f"{multiple.tolist()} ({sum(g in test_ids for g in multiple)} in the test half)")

    if args.figure is not None:
        figure(args.figure, tiles.cosmos_dir, components, multiple, test_ids)

    info = json.loads(args.baseline_from.read_text())["baseline"]
    train = load_config(None, TileSetConfig, [f"work_dir={args.tiles_dir or args.work_dir[0]}"])
    train_folders = tileset.prepare_role(train, "train")
    columns = baseline_columns(train_folders)
    model = fit_baseline(train_folders, columns, info["model"], info["params"], 0)

    head_path = tile_head_path(args.head)
    prevalence_fit = float(load_tile_head(head_path).metadata["valid"]["prevalence"])
    run_cfg = config_from_dict(RunConfig, {"tile_head": args.head, "overwrite": True})
    result = {"role": args.role, "head": str(head_path), "tiles_set": args.tiles_set,
              "min_flux_ratio": args.min_flux_ratio, "multiple_cutouts": multiple.tolist(),
              "cutouts": [{k: (v.item() if hasattr(v, "item") else v)
                           for k, v in zip(components.dtype.names, row)}
                          for row in components[np.isin(components["INDEX"], multiple)]],
              "baseline": {"model": info["model"], "params": info["params"],
                           "columns": columns},
              "tile_sets": []}
    for work_dir, options in zip(args.work_dir, tile_set_options):
        tiles = load_config(None, TileSetConfig, [f"work_dir={work_dir}", *options])
        prob, flag, base, classes = [], [], [], []
        for folder in tileset.tile_folders(tiles, args.role):
            stage = stage_columns(folder, run_cfg, Path(head_path).stem)
            (x_pix, y_pix), cls, _ = tileset.detection_table(folder)
            prob.append(stage["BLEND_PROB"])
            flag.append(stage["BLEND_FLAG"].astype(bool))
            base.append(model.predict(baseline_matrix(folder, columns, x_pix, y_pix)[0]))
            classes.append(cls)
        prob, flag, base = np.concatenate(prob), np.concatenate(flag), np.concatenate(base)
        classes = np.concatenate(classes)
        scored = np.isfinite(prob)  # BLEND_PROB is NaN where a stamp could not be scored
        prob, flag, base, classes = prob[scored], flag[scored], base[scored], classes[scored]
        labels = classes["UNRECOGNISED"] == 1
        groups = galaxy_groups(classes)
        apart = cutouts.main_is_multiple(classes, multiple)
        rest, iso = ~apart, classes["ISOLATED"] == 1
        real = cutouts.real_galaxy_indices(classes) >= 0
        one = {"work_dir": str(work_dir), "tiles_set": options,
               "units_all": unit_counts(classes), "units_rest": unit_counts(classes[rest]),
               "detections_apart": int(apart.sum()),
               "all": summary(prob, flag, base, labels, groups, args.n_bootstrap),
               "multiples_apart": summary(prob[rest], flag[rest], base[rest], labels[rest],
                                          groups[rest], args.n_bootstrap),
               # every detection of them called an unrecognised blend instead
               "multiples_as_positives": summary(prob, flag, base, labels | apart, groups,
                                                 args.n_bootstrap),
               "n_unscored": int((~scored).sum()),
               "isolated_flagged": {  # isolated detections of real galaxies (no stars)
                   "real_galaxies": float(flag[iso & real].mean()),
                   "multiples": float(flag[iso & apart].mean()) if (iso & apart).any() else None,
                   "other_real_galaxies": float(flag[iso & real & rest].mean())},
               "per_galaxy": per_galaxy(classes, flag, set(multiple.tolist()), test_ids)}
        for name, sel in (("all", np.ones(len(prob), bool)), ("multiples_apart", rest)):
            pi = prior_shift_prevalence(prob[sel], prevalence_fit)
            one[name]["prior_shift_prevalence"] = pi
            one[name]["prior_shift_relative_difference"] = pi / labels[sel].mean() - 1.0
        result["tile_sets"].append(one)
        print(f"{work_dir} {args.role}: {apart.sum()} of {len(prob)} detections have a "
              f"multiple cut-out as main object")
        for name in ("all", "multiples_apart", "multiples_as_positives"):
            s = one[name]
            print(f"  {name:16s} AUC {s['roc_auc']:.3f} {s['roc_auc_95']}, TPR@5% "
                  f"{s['tpr_at_fpr_0.05']:.3f}, - baseline {s['roc_auc_minus_baseline']:+.3f} "
                  f"{s['roc_auc_minus_baseline_95']}, flags {s['flagged_fraction']:.3f} "
                  f"holding {s['positives_flagged']:.3f}, mean P / true - 1 "
                  f"{s['relative_difference']:+.3f} {s['relative_difference_95']}; prior-shift "
                  f"estimate / true - 1 {s.get('prior_shift_relative_difference', np.nan):+.3f}")
        print(f"  isolated real-galaxy detections flagged: {one['isolated_flagged']}")
    benchlib.write_result(args.output or f"cutout_multiples_{args.role}.json", result)


if __name__ == "__main__":
    main()
