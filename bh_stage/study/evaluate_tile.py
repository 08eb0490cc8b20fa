"""Tile-level evaluation (``bh-stage evaluate-tile``): what each column is worth on a tile.

Inputs: the tile set of ``EvaluateTileConfig.tiles`` (simulated and SExtracted when missing)
and the stage's config. Steps: ``bh-stage run`` on each test tile; the truth classes of each
detection (``tiletruth``); the free catalogue cues and a catalogue-only classifier, trained on
the training tiles and chosen on the validation tiles; then, for every score and truth
comparison, ROC AUC, TPR at fixed FPRs and the fraction flagged, each with 68 % and 95 %
intervals from a bootstrap over galaxies (``metrics.group_bootstrap``). Outputs in
``output_dir``: ``results.md``, ``metrics.csv``, ``detections.npz`` and figures (ROC
curves, TPR vs separation and flux ratio, a gallery of caught, missed and false unrecognised
blends).
"""

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from .. import cues
from ..extras import require
from . import metrics, tileset

__all__ = ["COMPARISONS", "SCORES", "comparison_labels", "galaxy_groups", "unit_counts",
           "score_table",
           "catalogue_classifiers",
           "evaluate_tile", "run_evaluate_tile"]

log = logging.getLogger(__name__)

COMPARISONS = {
    "unrecognised vs all others": ("UNRECOGNISED", None),
    "unrecognised vs isolated": ("UNRECOGNISED", "ISOLATED"),
    "close companion vs isolated": ("CLOSE_COMPANION", "ISOLATED"),
    "paper blend vs not": ("PAPER_BLEND", None),
}
"""Comparison -> (positive class, negative class); None: every other detection."""

SCORES = {
    "BLEND_PROB": "stage: P(unrecognised blend), tile head",
    "BLEND_FLAG": "stage: recommended cut (binary)",
    "BH_PAPER_PROB": "stage: P(paper blend), paper head",
    "BH_PAPER_FLAG": "stage: paper hybrid, SEP or paper head (binary)",
    "SEP_NSRC": "stage: SEP sources in the stamp",
    "catalogue classifier": "catalogue-only classifier (training tiles)",
    "FLAGS&2": "SExtractor: deblended (binary)",
    "FLAGS&1": "SExtractor: bright neighbours (binary)",
    "-nearest detection": "minus the distance to the nearest other detection",
    "detections in stamp": "other detections inside the 51x51 stamp",
    "ELONGATION": "SExtractor A_IMAGE / B_IMAGE",
    "FLUX_RADIUS": "SExtractor half-light radius",
}
"""Scores compared, higher meaning more likely blended."""

BINARY = ("BLEND_FLAG", "BH_PAPER_FLAG", "FLAGS&2", "FLAGS&1")


def comparison_labels(classes, comparison):
    """Return (rows, labels) of one comparison: the detections it uses and 1 for positives."""
    pos_name, neg_name = COMPARISONS[comparison]
    pos = classes[pos_name] == 1
    neg = ~pos if neg_name is None else (classes[neg_name] == 1) & ~pos
    rows = np.flatnonzero(pos | neg)
    return rows, pos[rows].astype(np.int8)


def galaxy_groups(classes):
    """Bootstrap unit per detection: its main object's global unit (``GROUP``: one per true
    galaxy across all tiles, one per star); each spurious detection alone."""
    from .tiletruth import SPURIOUS_UNIT

    groups = classes["GROUP"].astype(np.int64).copy()
    spurious = groups == SPURIOUS_UNIT
    groups[spurious] = groups.max(initial=0) + 1 + np.arange(spurious.sum())
    return groups


def unit_counts(classes):
    """Distinct units of a detection table, reported apart: ``galaxies`` (true galaxies, each
    counted once whatever the tiles and detections it appears in), ``stars``, and
    ``spurious`` detections (no true object)."""
    from .tiletruth import SPURIOUS_UNIT

    groups = np.asarray(classes["GROUP"], dtype=np.int64)
    return {"galaxies": int(np.unique(groups[groups > 0]).size),
            "stars": int(np.unique(groups[groups < 0]).size),
            "spurious": int((groups == SPURIOUS_UNIT).sum())}


def score_table(stage_columns, catalogue_features, catalogue_score):
    """Return ``{score name: values}`` of every score in ``SCORES`` for one tile."""
    f = dict(zip(cues.FEATURE_NAMES, catalogue_features.T))
    return {
        "BLEND_PROB": stage_columns["BLEND_PROB"],
        "BLEND_FLAG": stage_columns["BLEND_FLAG"],
        "BH_PAPER_PROB": stage_columns["BH_PAPER_PROB"],
        "BH_PAPER_FLAG": stage_columns["BH_PAPER_FLAG"],
        "SEP_NSRC": stage_columns["SEP_NSRC"],
        "catalogue classifier": catalogue_score,
        "FLAGS&2": f["FLAGS_BLENDED"],
        "FLAGS&1": f["FLAGS_NEIGHBOURS"],
        "-nearest detection": -stage_columns["BH_NEAREST_PIX"],
        "detections in stamp": stage_columns["BH_NDET_STAMP"],
        "ELONGATION": f["ELONGATION"],
        "FLUX_RADIUS": f["FLUX_RADIUS"],
    }


def _score_metrics(score, labels, fprs, binary):
    """AUC, TPR at each FPR, and for binary scores the TPR, FPR and fraction flagged."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    out = [metrics.roc_auc(s, labels)]
    out += [metrics.tpr_at_fpr(s, labels, f) for f in fprs]
    if binary:
        flag = s > 0
        pos = labels == 1
        out += [float(flag[pos].mean()) if pos.any() else np.nan,
                float(flag[~pos].mean()) if (~pos).any() else np.nan, float(flag.mean())]
    else:
        out += [np.nan, np.nan, np.nan]
    return np.array(out)


METRIC_NAMES = ("roc_auc", "tpr_at_fpr", "flag_tpr", "flag_fpr", "flag_fraction")


def catalogue_classifiers(train, valid, seed):
    """Fit logistic regression and gradient boosting on training tiles; keep the one with the
    higher validation AUC for unrecognised blends. Returns (name, predict, valid AUCs)."""
    HistGradientBoostingClassifier = require(
        "sklearn.ensemble", "study").HistGradientBoostingClassifier
    LogisticRegression = require("sklearn.linear_model", "study").LogisticRegression
    make_pipeline = require("sklearn.pipeline", "study").make_pipeline
    StandardScaler = require("sklearn.preprocessing", "study").StandardScaler

    (x_tr, y_tr), (x_va, y_va) = train, valid
    models = {
        "logistic regression": make_pipeline(StandardScaler(),
                                             LogisticRegression(max_iter=2000)),
        "gradient boosting": HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05,
                                                            random_state=seed),
    }
    aucs = {}
    for name, model in models.items():
        model.fit(x_tr, y_tr)
        aucs[name] = metrics.roc_auc(model.predict_proba(x_va)[:, 1], y_va)
    best = max(aucs, key=aucs.get)
    return best, (lambda x: models[best].predict_proba(x)[:, 1]), aucs


def evaluate_tile(cfg, progress=None):
    """Run the tile-level evaluation; return the metric rows and the per-detection table."""
    import fitsio

    from ..config import RunConfig, load_config
    from ..stage import run_stage

    t0 = time.perf_counter()
    folders = {role: tileset.prepare_role(cfg.tiles, role, progress)
               for role in tileset.ROLES}
    role_data = {}
    for role in ("train", "valid"):
        tables = [tileset.detection_table(f) for f in folders[role]]
        role_data[role] = (np.concatenate([t[2] for t in tables]),
                           np.concatenate([t[1]["UNRECOGNISED"] for t in tables]))
    cat_name, cat_predict, cat_valid_auc = catalogue_classifiers(
        role_data["train"], role_data["valid"], cfg.seed)
    run_cfg = load_config(cfg.run_config, RunConfig)
    tables = []
    for folder in folders["test"]:
        files = {k: folder / v for k, v in tileset.TILE_FILES.items()}
        out = folder / "tile_bh.cat"
        # the report compares BH_PAPER_PROB too: the paper head runs even if run_config
        # leaves it out
        rc = dataclasses.replace(run_cfg, catalogue=str(files["catalogue"]),
                                 weight=str(files["weight"]), output=str(out),
                                 head="default" if run_cfg.head == "none" else run_cfg.head,
                                 overwrite=True)
        run_stage(rc, files["image"], progress=progress)
        (x, y), classes, feats = tileset.detection_table(folder)
        stage_columns = fitsio.read(str(out), ext="LDAC_OBJECTS")
        scores = score_table(stage_columns, feats, cat_predict(feats))
        table = np.zeros(len(classes), dtype=[("TILE", "S16")] + classes.dtype.descr
                         + [(k, "f8") for k in SCORES])
        table["TILE"] = folder.name
        for name in classes.dtype.names:
            table[name] = classes[name]
        for name, values in scores.items():
            table[name] = values
        tables.append(table)
    table = np.concatenate(tables)
    rows = _metric_rows(table, cfg)
    info = {"catalogue_classifier": cat_name, "catalogue_valid_auc": cat_valid_auc,
            "n_test_detections": len(table), "seconds": time.perf_counter() - t0,
            "ties_at_max": _ties_at_max(table["BLEND_PROB"]),
            "prevalence": _prevalence(table, cfg)}
    return rows, table, info


def _prevalence(table, cfg):
    """Fraction of test detections in each truth class, with its 95 % galaxy interval."""
    from .tiletruth import TRUTH_CLASSES

    groups = galaxy_groups(table)
    out = {}
    for name, column in TRUTH_CLASSES.items():
        values = table[column].astype(np.float64)
        boot = metrics.group_bootstrap(groups, lambda idx: values[idx].mean(),
                                       cfg.n_bootstrap, cfg.seed)
        out[name] = (float(values.mean()), metrics.interval(boot, 0.95))
    unrec = table["UNRECOGNISED"] == 1
    out["median companion separation, px"] = float(np.nanmedian(
        table["COMP_SEPARATION_PIX"][unrec])) if unrec.any() else float("nan")
    out["median companion flux ratio"] = float(np.nanmedian(
        table["COMP_FLUX_RATIO"][unrec])) if unrec.any() else float("nan")
    return out


def _ties_at_max(prob):
    """Fraction of scored detections sharing the maximum BLEND_PROB."""
    p = prob[np.isfinite(prob)]
    return float(np.mean(p == p.max())) if p.size else float("nan")


def _metric_rows(table, cfg):
    """One row per (subset, comparison, score) with values and galaxy-bootstrap intervals."""
    subsets = {"all": np.ones(len(table), bool),
               f"SNR >= {cfg.snr_min:g}": table["MAIN_SNR"] >= cfg.snr_min}
    out = []
    for subset, keep in subsets.items():
        sub = table[keep]
        groups = galaxy_groups(sub)
        for comparison in COMPARISONS:
            rows, labels = comparison_labels(sub, comparison)
            if labels.sum() == 0 or labels.sum() == len(labels):
                continue
            g = groups[rows]
            units = {f"n_{k}": v for k, v in unit_counts(sub[rows]).items()}
            names = list(SCORES)
            values = np.stack([sub[n][rows] for n in names])

            def stat(idx, values=values, labels=labels):
                return np.concatenate([_score_metrics(v[idx], labels[idx], cfg.fpr_points,
                                                      n in BINARY)
                                       for v, n in zip(values, names)])

            point = stat(np.arange(len(rows)))
            boot = metrics.group_bootstrap(g, stat, cfg.n_bootstrap, cfg.seed)
            width = len(point) // len(names)
            for k, name in enumerate(names):
                sl = slice(k * width, (k + 1) * width)
                row = {"subset": subset, "comparison": comparison, "score": name,
                       "n_pos": int(labels.sum()), "n_neg": int((labels == 0).sum()),
                       "n_groups": int(np.unique(g).size), **units}
                keys = (["roc_auc"] + [f"tpr_at_fpr_{f:g}" for f in cfg.fpr_points]
                        + ["flag_tpr", "flag_fpr", "flag_fraction"])
                for key, v, b in zip(keys, point[sl], boot[:, sl].T):
                    row[key] = float(v)
                    row[key + "_68"] = metrics.interval(b, 0.68)
                    row[key + "_95"] = metrics.interval(b, 0.95)
                out.append(row)
            # paired difference: BLEND_PROB minus the catalogue classifier, AUC
            a, c = names.index("BLEND_PROB") * width, names.index("catalogue classifier") * width
            diff = boot[:, a] - boot[:, c]
            out.append({"subset": subset, "comparison": comparison,
                        "score": "BLEND_PROB - catalogue classifier",
                        "n_pos": int(labels.sum()), "n_neg": int((labels == 0).sum()),
                        "n_groups": int(np.unique(g).size), **units,
                        "roc_auc": float(point[a] - point[c]),
                        "roc_auc_68": metrics.interval(diff, 0.68),
                        "roc_auc_95": metrics.interval(diff, 0.95)})
    return out


def _fmt(row, key, digits=3):
    """``value [lo, hi]`` with the 95 % interval."""
    if key not in row or not np.isfinite(row[key]):
        return "–"
    lo, hi = row[key + "_95"]
    return f"{row[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _markdown(cfg, rows, info, command):
    lines = ["# Tile-level evaluation", "",
             f"Made by `{command}` in {info['seconds']:.0f} s: {info['n_test_detections']} "
             f"detections of the test tiles (seeds {cfg.tiles.test_seeds}, test-half real "
             f"galaxies only, {cfg.tiles.size_pix}x{cfg.tiles.size_pix} px, σ = "
             f"{cfg.tiles.noise_sigma_adu} ADU). Intervals: 95 % from {cfg.n_bootstrap} "
             "bootstrap resamples of units: a true galaxy is one unit across all tiles and "
             "detections, each star and each spurious detection its own (counted apart "
             "below). One simulation seed per "
             "tile and one training seed of the heads: the intervals hold galaxy sampling "
             "only.", "",
             f"Catalogue-only classifier: {info['catalogue_classifier']} on "
             f"{', '.join(cues.FEATURE_NAMES)}, trained on the training tiles, chosen on the "
             "validation tiles (validation AUC, unrecognised vs all others: "
             + ", ".join(f"{k} {v:.3f}" for k, v in info["catalogue_valid_auc"].items())
             + ").", "",
             f"Scored detections tied at the maximum BLEND_PROB: {info['ties_at_max']:.2%}.",
             "", "| truth class | fraction of test detections [95 %] |", "|---|---|"]
    for name, value in info["prevalence"].items():
        if isinstance(value, tuple):
            lines.append(f"| {name} | {value[0]:.3f} [{value[1][0]:.3f}, {value[1][1]:.3f}] |")
        else:
            lines.append(f"| {name} | {value:.2f} |")
    lines += ["", "Classes (`bh_stage.tiletruth`): *unrecognised*, a second object with >= 10 % "
              "of the main object's flux inside the segment and no detection of its own; "
              "*close companion*, another object with >= 10 % of the main object's flux "
              "within 10 px; *paper blend*, such an object inside the 51x51 stamp; "
              "*isolated*, none within 36 px.", ""]
    fpr_keys = [f"tpr_at_fpr_{f:g}" for f in cfg.fpr_points]
    for subset in dict.fromkeys(r["subset"] for r in rows):
        for comparison in COMPARISONS:
            sel = [r for r in rows if r["subset"] == subset and r["comparison"] == comparison]
            if not sel:
                continue
            lines += [f"## {comparison} ({subset}: {sel[0]['n_pos']} positives, "
                      f"{sel[0]['n_neg']} negatives; {sel[0]['n_galaxies']} distinct galaxies, "
                      f"{sel[0]['n_stars']} stars, {sel[0]['n_spurious']} spurious "
                      "detections)", "",
                      "| score | ROC AUC | " + " | ".join(
                          f"TPR at FPR {f:g}" for f in cfg.fpr_points)
                      + " | flagged: TPR / FPR / fraction |",
                      "|---|---|" + "---|" * len(fpr_keys) + "---|"]
            for r in sel:
                flags = ("–" if not np.isfinite(r.get("flag_tpr", np.nan)) else
                         f"{r['flag_tpr']:.3f} / {r['flag_fpr']:.3f} / "
                         f"{r['flag_fraction']:.3f}")
                rates = (["–"] * len(fpr_keys) if r["score"] in BINARY  # one operating point
                         else [_fmt(r, k) for k in fpr_keys])
                lines.append(f"| {r['score']} | {_fmt(r, 'roc_auc')} | " + " | ".join(rates)
                             + f" | {flags} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _csv(rows):
    import csv
    import io as _io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v[0]:.5g};{v[1]:.5g}" if isinstance(v, tuple) else v)
                         for k, v in r.items()})
    return buf.getvalue()


def _figures(table, cfg, outdir):
    """ROC curves per comparison, and BLEND_PROB's TPR vs separation and flux ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_output

    shown = ("BLEND_PROB", "catalogue classifier", "BH_PAPER_PROB", "SEP_NSRC",
             "FLUX_RADIUS", "-nearest detection")
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(4.2 * len(COMPARISONS), 4))
    for ax, comparison in zip(axes, COMPARISONS):
        rows, labels = comparison_labels(table, comparison)
        for name in shown:
            s = np.nan_to_num(table[name][rows], nan=-np.inf)
            fpr, tpr = metrics.roc_curve(s, labels)
            ax.plot(fpr, tpr, label=f"{name} ({metrics.roc_auc(s, labels):.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=comparison, xlabel="FPR", ylabel="TPR", xscale="log", xlim=(1e-3, 1))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_output(outdir / "roc.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    rows, labels = comparison_labels(table, "unrecognised vs all others")
    sub = table[rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for name in ("BLEND_PROB", "catalogue classifier"):
        s = np.nan_to_num(sub[name], nan=-np.inf)
        t = metrics.threshold_at_fpr(s, labels, 0.05)
        caught = s[labels == 1] >= t
        for ax, key, bins in ((axes[0], "COMP_SEPARATION_PIX", np.arange(0, 13.5, 1.5)),
                              (axes[1], "COMP_FLUX_RATIO", np.linspace(0.1, 1.0, 7))):
            v = sub[key][labels == 1]
            idx = np.digitize(v, bins) - 1
            centres = 0.5 * (bins[1:] + bins[:-1])
            frac = [caught[idx == b].mean() if (idx == b).any() else np.nan
                    for b in range(len(centres))]
            ax.plot(centres, frac, "o-", label=f"{name}, FPR 0.05")
            ax.set(xlabel=key, ylabel="TPR, unrecognised blends", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(outdir / "tpr_vs_separation.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _gallery(table, folders, outdir, n_per_row=8):
    """Stamps of caught, missed and falsely flagged unrecognised blends (``BLEND_FLAG``),
    the highest ``BLEND_PROB`` first, each titled with its tile row and truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_output

    stamps = {f.name: tileset.detection_stamps(f)[0] for f in folders}
    row_in_tile = np.concatenate([np.arange(len(stamps[f.name])) for f in folders])
    flag, unrec = table["BLEND_FLAG"] > 0, table["UNRECOGNISED"] == 1
    rows = {"caught": flag & unrec, "missed": ~flag & unrec, "false": flag & ~unrec}
    fig, axes = plt.subplots(3, n_per_row, figsize=(1.6 * n_per_row, 5.4))
    for ax_row, (name, keep) in zip(axes, rows.items()):
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-table["BLEND_PROB"][idx])][:n_per_row]
        for ax, i in zip(ax_row, list(idx) + [None] * (n_per_row - len(idx))):
            ax.set_axis_off()
            if i is None:
                continue
            stamp = stamps[table["TILE"][i].decode()][row_in_tile[i]]
            ax.imshow(np.arcsinh(stamp / 20.0), origin="lower", cmap="gray_r")
            sep = table["COMP_SEPARATION_PIX"][i]
            ax.set_title(f"{name} #{row_in_tile[i] + 1}\np={table['BLEND_PROB'][i]:.2f}"
                         + (f" d={sep:.1f}" if np.isfinite(sep) else ""), fontsize=7)
    fig.tight_layout()
    with atomic_output(outdir / "gallery.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run_evaluate_tile(cfg, progress=None):
    """``bh-stage evaluate-tile CONFIG``: write the report; return one summary line."""
    from ..io import atomic_output, check_output

    outdir = Path(cfg.output_dir)
    for name in ("results.md", "metrics.csv", "detections.npz"):
        check_output(outdir / name, cfg.overwrite, make_parents=True)
    rows, table, info = evaluate_tile(cfg, progress)
    command = "bh-stage evaluate-tile CONFIG"
    for name, text in (("results.md", _markdown(cfg, rows, info, command)),
                       ("metrics.csv", _csv(rows))):
        with atomic_output(outdir / name, overwrite=cfg.overwrite) as tmp:
            tmp.write_text(text)
    with atomic_output(outdir / "detections.npz", overwrite=cfg.overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, table=table)
    _figures(table, cfg, outdir)
    _gallery(table, tileset.tile_folders(cfg.tiles, "test"), outdir)
    head = [r for r in rows if r["subset"] == "all" and r["score"] == "BLEND_PROB"
            and r["comparison"] == "unrecognised vs all others"][0]
    return (f"evaluate-tile: {info['n_test_detections']} test detections; BLEND_PROB on "
            f"unrecognised blends: AUC {_fmt(head, 'roc_auc')}, TPR at 5 % FPR "
            f"{_fmt(head, 'tpr_at_fpr_0.05')}; report in {outdir / 'results.md'}")
