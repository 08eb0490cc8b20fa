"""Evaluation step: BlendHunter, SEP and the hybrid flag side by side on a simulated test set.

Inputs: a simulated data set (``bh-stage simulate``; noise-free padded stamps and their
truth), one or more trained heads, and an ``EvaluateConfig``. For every noise level and
realisation the stamps get reproducible Gaussian noise (``stamps.dataset_noise_seeds``); each
head scores them (``BLEND_PROB``), SEP labels them with the paper's rules using the true
positions (section 4.1 of Farrens et al. 2021; "SEP failed" stamps are excluded from SEP's
metrics and counted), and the hybrid flag is computed as the stage does:
``BLEND_FLAG = SEP_BLEND_FLAG (stage rule, no truth) or BLEND_PROB >= hybrid_threshold``.

Outputs (in ``output_dir``): ``metrics.csv`` (one row per head, noise, realisation, stamp
subset, method and metric), ``results.md`` (headline table, targets with PASS/MISS,
provenance) and PNGs that read like the paper's Figures 3-6 plus a ROC figure.

SEP's AUC. SEP gives no score, so its ROC is traced by re-running it with every
``sep_scan_deblend_cont`` value (the contrast that decides whether a source is split; a low
contrast splits more, so both the true- and false-positive rates grow). Each value gives one
(FPR, TPR) point with the paper's rules; these points, the configured SEP's own point, and
(0, 0) and (1, 1) are sorted by FPR and integrated with the trapezoid rule. Stamps SEP fails on at the configured parameters are
left out of SEP's metrics; at a scan value a failed stamp counts as "blended" (SEP saw more
than one source). The 2-point AUC of SEP's binary verdict, (TPR + TNR) / 2, is reported too.

Paired comparisons (BH - SEP, hybrid - SEP, McNemar) use the stamps where SEP did not fail,
so both methods are judged on the same stamps; BH's and the hybrid's own metrics use every
stamp of the subset.
"""

import csv
import dataclasses
import io as _stringio
import logging
import time
from pathlib import Path

import numpy as np

from . import stamps as bh_stamps
from .errors import ConfigError
from .metrics import roc_auc, roc_curve

log = logging.getLogger(__name__)

__all__ = [
    "accuracy", "confusion_rates", "roc_auc", "roc_curve", "auc_from_points", "binary_auc",
    "accuracy_vs_separation", "mcnemar", "snr_mask", "true_positions", "evaluate",
    "run_evaluate", "TARGETS",
]

SUBSETS = ("all", "snr")
"""Stamp subsets: every stamp, and stamps whose galaxies all reach ``snr_min``."""

TARGETS = (
    # (key, description, method:metric, comparison, threshold as a fraction or p)
    ("close", "BH - SEP accuracy on close blends", "BH-SEP:accuracy_close", ">=", 0.15),
    ("hybrid", "hybrid BLEND_FLAG - SEP overall accuracy", "hybrid-SEP:accuracy", ">=", 0.01),
    ("hybrid_p", "hybrid vs SEP paired McNemar p", "hybrid_vs_SEP:mcnemar_p", "<", 0.05),
    ("auc", "BLEND_PROB ROC AUC - SEP's AUC (deblend_cont scan)", "BH-SEP:auc", ">=", 0.01),
    ("bh", "BH alone - SEP overall accuracy", "BH-SEP:accuracy", ">=", -0.01),
    ("fpr", "hybrid - SEP false-positive rate on isolated stamps", "hybrid-SEP:fpr_isolated",
     "<=", 0.015),
)
"""The targets of issue 5, checked on the first head at the first noise level."""


# --- pure metrics -----------------------------------------------------------------------


def _as_bool(pred):
    return np.asarray(pred).astype(bool)


def accuracy(pred, label):
    """Return the fraction of correct predictions.

    Parameters
    ----------
    pred, label : array_like of {0, 1} or bool, shape (n,)
        Prediction (1 blended) and truth.

    Returns
    -------
    float
        Accuracy in [0, 1]; NaN when ``n`` is 0.

    Examples
    --------
    >>> accuracy([1, 0, 1, 1], [1, 0, 0, 1])
    0.75
    """
    pred, label = _as_bool(pred), _as_bool(label)
    if pred.shape != label.shape:
        raise ValueError(f"pred {pred.shape} and label {label.shape} must have equal shapes")
    return float(np.mean(pred == label)) if pred.size else float("nan")


def confusion_rates(pred, label):
    """Return the true-positive and true-negative rates.

    Returns
    -------
    tpr : float
        Fraction of blends (label 1) predicted blended; NaN without blends.
    tnr : float
        Fraction of isolated stamps (label 0) predicted isolated; NaN without any.
        The false-positive rate is ``1 - tnr``.

    Examples
    --------
    >>> confusion_rates([1, 0, 1, 0], [1, 1, 0, 0])
    (0.5, 0.5)
    """
    pred, label = _as_bool(pred), _as_bool(label)
    pos, neg = label, ~label
    tpr = float(np.mean(pred[pos])) if pos.any() else float("nan")
    tnr = float(np.mean(~pred[neg])) if neg.any() else float("nan")
    return tpr, tnr


def auc_from_points(fpr, tpr):
    """Return the trapezoid area under ROC points, closed with (0, 0) and (1, 1).

    Points are sorted by FPR (then TPR); NaN points are dropped. A single point gives
    ``(TPR + TNR) / 2``, the 2-point AUC of a binary classifier.

    Examples
    --------
    >>> auc_from_points([0.2], [0.8])
    0.8
    """
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    ok = np.isfinite(fpr) & np.isfinite(tpr)
    x = np.r_[0.0, fpr[ok], 1.0]
    y = np.r_[0.0, tpr[ok], 1.0]
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def binary_auc(pred, label):
    """Return the 2-point AUC of a binary verdict, ``(TPR + TNR) / 2``."""
    tpr, tnr = confusion_rates(pred, label)
    return (tpr + tnr) / 2.0


def accuracy_vs_separation(pred, label, separation_pix, bins):
    """Return the accuracy on blends in bins of separation (the paper's Figure 3).

    Parameters
    ----------
    pred, label : array_like, shape (n,)
        Prediction and truth; only blends (label 1 with a finite separation) are binned.
    separation_pix : array_like of float, shape (n,)
        Separation of the two galaxies, pixels (NaN for isolated stamps).
    bins : array_like of float
        Increasing bin edges, pixels; a bin holds ``edge[i] <= s < edge[i + 1]``.

    Returns
    -------
    dict
        ``edges_pix``, ``centres_pix`` (ndarray), ``accuracy`` (ndarray, NaN in empty bins;
        on blends this is the true-positive rate), ``n`` (ndarray of int).
    """
    pred, label = _as_bool(pred), _as_bool(label)
    sep = np.asarray(separation_pix, dtype=np.float64)
    edges = np.asarray(bins, dtype=np.float64)
    blend = label & np.isfinite(sep)
    which = np.digitize(sep[blend], edges) - 1
    nbin = len(edges) - 1
    n = np.bincount(which[(which >= 0) & (which < nbin)], minlength=nbin)
    good = np.bincount(which[(which >= 0) & (which < nbin)],
                       weights=(pred[blend] == 1)[(which >= 0) & (which < nbin)],
                       minlength=nbin)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, good / np.maximum(n, 1), np.nan)
    return {"edges_pix": edges, "centres_pix": (edges[1:] + edges[:-1]) / 2,
            "accuracy": acc, "n": n}


def mcnemar(pred_a, pred_b, labels):
    """Paired exact McNemar test of two classifiers on the same stamps.

    Parameters
    ----------
    pred_a, pred_b, labels : array_like, shape (n,)

    Returns
    -------
    b : int
        Stamps ``a`` gets right and ``b`` gets wrong.
    c : int
        Stamps ``a`` gets wrong and ``b`` gets right.
    p_value : float
        Two-sided exact binomial p-value of ``b`` out of ``b + c`` at 1/2
        (``scipy.stats.binomtest``); 1 when ``b + c`` is 0.

    Examples
    --------
    >>> mcnemar([1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1])[:2]
    (6, 0)
    """
    from scipy.stats import binomtest

    a_ok = _as_bool(pred_a) == _as_bool(labels)
    b_ok = _as_bool(pred_b) == _as_bool(labels)
    b = int(np.sum(a_ok & ~b_ok))
    c = int(np.sum(~a_ok & b_ok))
    p = float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0
    return b, c, p


def snr_mask(truth, sigma_adu, snr_min):
    """Return stamps whose galaxies all have matched-filter SNR >= ``snr_min`` at noise
    ``sigma_adu`` (``snr_unit / sigma``; the companion of an isolated stamp is ignored)."""
    snr0 = truth["snr_unit0"] / sigma_adu
    snr1 = truth["snr_unit1"] / sigma_adu
    isolated = truth["label"] == 0
    return (snr0 >= snr_min) & (isolated | (snr1 >= snr_min))


def true_positions(truth, pad_pix):
    """Return the true (x, y) of each stamp's galaxies in the padded stamp, shape (n, 2, 2);
    the companion row of an isolated stamp is NaN."""
    xy = np.full((len(truth), 2, 2), np.nan)
    xy[:, 0, 0], xy[:, 0, 1] = truth["x0_pix"] + pad_pix, truth["y0_pix"] + pad_pix
    xy[:, 1, 0], xy[:, 1, 1] = truth["x1_pix"] + pad_pix, truth["y1_pix"] + pad_pix
    return xy


# --- per noise set: SEP once, every head ------------------------------------------------


def _sep_outputs(noisy, xy, cfg):
    """SEP's paper verdict, stage verdict and deblend_cont scan on one noise set."""
    from .sep_flags import classify_stamps

    paper = classify_stamps(noisy, cfg.sep, true_xy=xy)
    stage = classify_stamps(noisy, cfg.sep)
    scan = []
    for cont in cfg.sep_scan_deblend_cont:
        scan_cfg = dataclasses.replace(cfg.sep, deblend_cont=float(cont))
        verdict = classify_stamps(noisy, scan_cfg, true_xy=xy)["blend"]
        scan.append(verdict != 0)  # failed (-1) counts as blended
    scan = np.array(scan, dtype=bool).reshape(len(cfg.sep_scan_deblend_cont), len(noisy))
    return {"sep_paper": paper["blend"].astype(np.int8), "sep_error": paper["error"],
            "sep_stage": stage["blend"].astype(bool), "sep_scan": scan}


def _method_metrics(pred, label, sep_pix, close_max_pix):
    """accuracy, accuracy_close, accuracy_far, tpr, tnr, fpr_isolated, n."""
    close = label & (sep_pix < close_max_pix)
    far = label & (sep_pix >= close_max_pix)
    tpr, tnr = confusion_rates(pred, label)
    return {
        "accuracy": accuracy(pred, label),
        "accuracy_close": accuracy(pred[close], label[close]),
        "accuracy_far": accuracy(pred[far], label[far]),
        "tpr": tpr, "tnr": tnr, "fpr_isolated": 1.0 - tnr,
        "n": int(len(label)), "n_close": int(close.sum()), "n_far": int(far.sum()),
        "n_isolated": int((~label).sum()),
    }


def _subset_metrics(p_blend, clf, sep, label, sep_pix, cfg):
    """All metrics of one head on one subset of one noise set; returns {method: {metric}}."""
    bh = p_blend >= clf.blend_threshold
    hybrid = sep["sep_stage"] | (p_blend >= clf.hybrid_threshold)
    valid = sep["sep_paper"] != -1
    sep_pred = sep["sep_paper"] == 1
    cm = cfg.close_max_pix
    out = {"BH": _method_metrics(bh, label, sep_pix, cm),
           "hybrid": _method_metrics(hybrid, label, sep_pix, cm),
           "SEP": _method_metrics(sep_pred[valid], label[valid], sep_pix[valid], cm)}
    out["BH"]["auc"] = roc_auc(p_blend, label)
    out["hybrid"]["auc"] = binary_auc(hybrid, label)
    out["SEP"]["n_failed"] = int((~valid).sum())
    out["SEP"]["n_error"] = int(sep["sep_error"].sum())
    out["SEP"]["auc_2pt"] = binary_auc(sep_pred[valid], label[valid])
    lv = label[valid]
    if len(cfg.sep_scan_deblend_cont):
        # the scan's points and the configured SEP's own point
        pts = [confusion_rates(s[valid], lv) for s in sep["sep_scan"]]
        pts.append(confusion_rates(sep_pred[valid], lv))
        fpr = [1.0 - tnr for _, tnr in pts]
        tpr = [t for t, _ in pts]
        out["SEP"]["auc"] = auc_from_points(fpr, tpr)
    else:
        out["SEP"]["auc"] = out["SEP"]["auc_2pt"]
    # paired: the same stamps (SEP did not fail)
    for name, pred in (("BH", bh), ("hybrid", hybrid)):
        paired = _method_metrics(pred[valid], lv, sep_pix[valid], cm)
        diff = {k: paired[k] - out["SEP"][k] for k in
                ("accuracy", "accuracy_close", "accuracy_far", "tpr", "tnr", "fpr_isolated")}
        auc_self = roc_auc(p_blend[valid], lv) if name == "BH" else binary_auc(pred[valid], lv)
        diff["auc"] = auc_self - out["SEP"]["auc"]
        diff["n"] = int(valid.sum())
        out[f"{name}-SEP"] = diff
        b, c, p = mcnemar(pred[valid], sep_pred[valid], lv)
        out[f"{name}_vs_SEP"] = {"mcnemar_b": b, "mcnemar_c": c, "mcnemar_p": p,
                                 "n": int(valid.sum())}
    return out


# --- outputs ----------------------------------------------------------------------------


OUTPUT_NAMES = ("metrics.csv", "results.md", "fig3_accuracy_vs_separation.png",
                "fig4_accuracy_vs_sigma.png", "fig5_relative_accuracy_vs_training_sigma.png",
                "fig6_confusion_vs_training_sigma.png", "roc.png")


def _write_text(path, text, overwrite):
    from .io import atomic_output

    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text)


def _save_figure(fig, path, overwrite):
    import matplotlib.pyplot as plt

    from .io import atomic_output

    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _mean_std(values):
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _rows_to_csv(rows):
    buf = _stringio.StringIO()
    fields = ["head", "train_sigma_adu", "sigma_adu", "realisation", "stamps", "method",
              "metric", "value"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                         for k in fields})
    return buf.getvalue()


def _lookup(rows, head, sigma, subset, method, metric):
    """Values of one metric over realisations."""
    return [r["value"] for r in rows if r["head"] == head and r["sigma_adu"] == sigma and
            r["stamps"] == subset and r["method"] == method and r["metric"] == metric]


def _check_targets(rows, head, sigma, subset):
    """Return [(description, target text, measured, PASS/MISS)] for one subset."""
    out = []
    for _key, desc, source, op, thr in TARGETS:
        method, metric = source.split(":")
        if metric == "mcnemar_p":
            b = sum(_lookup(rows, head, sigma, subset, method, "mcnemar_b"))
            c = sum(_lookup(rows, head, sigma, subset, method, "mcnemar_c"))
            from scipy.stats import binomtest

            value = float(binomtest(int(b), int(b + c), 0.5).pvalue) if b + c else 1.0
            shown = f"{value:.3g} (b={int(b)}, c={int(c)})"
            target = f"{op} {thr}"
        else:
            value, std = _mean_std(_lookup(rows, head, sigma, subset, method, metric))
            scale, unit = (1.0, "") if metric == "auc" else (100.0, " pts")
            digits = 4 if metric == "auc" else 2
            shown = f"{value * scale:+.{digits}f}{unit}" + (
                f" ± {std * scale:.{digits}f}" if std else "")
            target = f"{op} {thr * scale:+g}{unit}"
        ok = {">=": value >= thr, "<": value < thr, "<=": value <= thr}[op]
        out.append((desc, target, shown, "PASS" if ok else "MISS"))
    return out


def _shown_path(path):
    """A path as results.md shows it: as given if relative, relative to the working
    directory if under it, else the file name alone (never the machine's absolute path)."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def _markdown(cfg, rows, heads, sigmas, n_eval, ds_attrs, elapsed_s, sep_curves):
    from . import __version__
    from .config import config_to_dict

    import yaml

    head0, sigma0 = heads[0]["name"], sigmas[0]
    lines = [f"# bh-stage evaluate: BlendHunter vs SEP on `{_shown_path(cfg.dataset)}`", "",
             f"{n_eval} stamps (split '{cfg.split}', max_stamps {cfg.max_stamps}), noise "
             f"sigma {', '.join(f'{s:g}' for s in sigmas)} ADU, realisations "
             f"{cfg.realisations}; heads: "
             + ", ".join(f"`{h['name']}` (trained at sigma {h['train_sigma']:g} ADU, "
                         f"blend_threshold {h['blend_threshold']:.3f}, hybrid_threshold "
                         f"{h['hybrid_threshold']:.3f})" for h in heads) + ".", "",
             "BH: `BLEND_PROB >= blend_threshold`. SEP: the paper's rules with the true "
             "positions (section 4.1); 'SEP failed' stamps are excluded from SEP's metrics "
             "and from the paired differences, and counted. hybrid: the stage's `BLEND_FLAG "
             "= SEP_BLEND_FLAG (no truth) or BLEND_PROB >= hybrid_threshold`. SEP's AUC: "
             "trapezoid area of the ROC points of a deblend_cont scan "
             f"({', '.join(f'{c:g}' for c in cfg.sep_scan_deblend_cont) or 'none: 2-point'})"
             "; hybrid AUC is its 2-point (TPR + TNR) / 2. Differences (X - SEP) and McNemar "
             "are paired on the stamps SEP did not fail. Values are mean ± std over "
             "realisations.", ""]
    for subset, title in (("all", "all stamps"),
                          ("snr", f"stamps whose galaxies all have SNR >= {cfg.snr_min:g}")):
        lines += [f"## Accuracy vs noise ({title}; head `{head0}`; Figure 4)", "",
                  "| sigma [ADU] | BH | SEP | hybrid | SEP failed |", "|---|---|---|---|---|"]
        for sigma in sigmas:
            cells = []
            for method in ("BH", "SEP", "hybrid"):
                m, s = _mean_std(_lookup(rows, head0, sigma, subset, method, "accuracy"))
                cells.append(f"{m:.4f} ± {s:.4f}")
            nf, _ = _mean_std(_lookup(rows, head0, sigma, subset, "SEP", "n_failed"))
            lines.append(f"| {sigma:g} | " + " | ".join(cells) + f" | {nf:.1f} |")
        lines += ["", f"## BH - SEP accuracy vs training noise ({title}; test sigma "
                  f"{sigma0:g} ADU; Figure 5)", "",
                  "| head | training sigma [ADU] | all | close | far | TPR | TNR |",
                  "|---|---|---|---|---|---|---|"]
        for h in sorted(heads, key=lambda h: h["train_sigma"]):
            cells = []
            for metric in ("accuracy", "accuracy_close", "accuracy_far", "tpr", "tnr"):
                m, s = _mean_std(_lookup(rows, h["name"], sigma0, subset, "BH-SEP", metric))
                cells.append(f"{100 * m:+.2f} ± {100 * s:.2f}")
            lines.append(f"| `{h['name']}` | {h['train_sigma']:g} | " + " | ".join(cells)
                         + " |")
        lines += ["", "(points, paired on the stamps SEP did not fail)", ""]
        lines += [f"## Targets ({title}; head `{head0}`, sigma {sigma0:g} ADU)", "",
                  "| metric | target | measured | result |", "|---|---|---|---|"]
        for desc, target, shown, verdict in _check_targets(rows, head0, sigma0, subset):
            lines.append(f"| {desc} | {target} | {shown} | {verdict} |")
        lines.append("")
        for h in heads:
            for sigma in sigmas:
                lines += [f"### {title}: head `{h['name']}`, sigma {sigma:g} ADU", "",
                          "| method | accuracy | close (< "
                          f"{cfg.close_max_pix:g} px) | far | TPR | TNR | FPR isolated | AUC "
                          "| n |", "|---|---|---|---|---|---|---|---|---|"]
                for method in ("BH", "SEP", "hybrid", "BH-SEP", "hybrid-SEP"):
                    cells = []
                    for metric in ("accuracy", "accuracy_close", "accuracy_far", "tpr",
                                   "tnr", "fpr_isolated", "auc"):
                        m, s = _mean_std(_lookup(rows, h["name"], sigma, subset, method,
                                                 metric))
                        cells.append(f"{m:.4f}" + (f" ± {s:.4f}" if s else ""))
                    n, _ = _mean_std(_lookup(rows, h["name"], sigma, subset, method, "n"))
                    lines.append(f"| {method} | " + " | ".join(cells) + f" | {n:.0f} |")
                nf, _ = _mean_std(_lookup(rows, h["name"], sigma, subset, "SEP", "n_failed"))
                a2, _ = _mean_std(_lookup(rows, h["name"], sigma, subset, "SEP", "auc_2pt"))
                lines += ["", f"SEP failed on {nf:.1f} stamps (mean over realisations, "
                          f"excluded from SEP); SEP's 2-point AUC {a2:.4f}.", ""]
                for comp in ("hybrid_vs_SEP", "BH_vs_SEP"):
                    b = _lookup(rows, h["name"], sigma, subset, comp, "mcnemar_b")
                    c = _lookup(rows, h["name"], sigma, subset, comp, "mcnemar_c")
                    p = _lookup(rows, h["name"], sigma, subset, comp, "mcnemar_p")
                    lines.append(f"- McNemar {comp.replace('_vs_', ' vs ')}: b (first right, "
                                 f"SEP wrong) {b}, c {c}, p {[float(f'{x:.3g}') for x in p]}")
                lines.append("")
    lines += ["## Figures", ""]
    for name in OUTPUT_NAMES[2:]:
        lines.append(f"- `{name}`")
    shown_cfg = config_to_dict(cfg)
    for key in ("dataset", "output_dir"):
        shown_cfg[key] = _shown_path(shown_cfg[key])
    shown_cfg["heads"] = [_shown_path(h) for h in shown_cfg["heads"]]
    lines += ["", "## Provenance", "",
              f"bh-stage {__version__}; data set attributes: seed {ds_attrs.get('seed')}, "
              f"set_kind {ds_attrs.get('set_kind')}, "
              f"median SNR of the central galaxy at the realistic sigma "
              f"{ds_attrs.get('median_snr_central_at_realistic_sigma')}; head weights sha256 "
              + ", ".join(f"`{h['name']}`: {h['sha256'][:12]}" for h in heads)
              + f"; run time {elapsed_s:.0f} s.", "", "Resolved config:", "", "```yaml",
              yaml.safe_dump(shown_cfg, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _figures(cfg, rows, heads, sigmas, curves, outdir):
    """Write the paper-like figures; returns the list of paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    head0 = heads[0]["name"]
    colors = {"BH": "black", "SEP": "tab:blue", "hybrid": "tab:orange"}
    styles = {"BH": "-", "SEP": "--", "hybrid": ":"}

    # Figure 3: accuracy on blends vs separation, one panel per sigma (head 0).
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 3.6), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas):
        sep_curves = curves["sep"][(head0, sigma)]
        x = sep_curves["centres_pix"]
        means = {}
        for method in ("BH", "SEP", "hybrid"):
            acc = np.array([c[method] for c in sep_curves["per_realisation"]])
            finite = np.isfinite(acc)
            count = finite.sum(axis=0)
            means[method] = np.where(count > 0, np.where(finite, acc, 0).sum(axis=0)
                                     / np.maximum(count, 1), np.nan)
            ax.plot(x, means[method], styles[method], color=colors[method], marker="o",
                    ms=3, label=method)
        better = np.isfinite(means["BH"]) & np.isfinite(means["SEP"])
        ax.fill_between(x, means["SEP"], means["BH"], where=better & (means["BH"] >
                        means["SEP"]), color="tab:blue", alpha=0.2, interpolate=True,
                        label="BH gain")
        ax.axvline(cfg.close_max_pix, color="grey", lw=0.8)
        ax.set(xlabel="separation [pix]", ylim=(0, 1.02), title=f"σ_noise = {sigma:g} ADU")
    axes[0, 0].set_ylabel("accuracy on blends")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    paths.append(outdir / OUTPUT_NAMES[2])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # Figure 4: overall accuracy vs sigma, mean +- std over realisations.
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method in ("BH", "SEP", "hybrid"):
        ms = np.array([_mean_std(_lookup(rows, head0, s, "all", method, "accuracy"))
                       for s in sigmas])
        ax.errorbar(sigmas, ms[:, 0], yerr=ms[:, 1], fmt=styles[method], color=colors[method],
                    marker="o", ms=4, capsize=3, label=method)
    ax.set(xlabel="σ_noise [ADU]", ylabel="overall accuracy",
           title=f"head {head0}, {len(cfg.realisations)} realisation(s)")
    ax.legend(fontsize=8)
    paths.append(outdir / OUTPUT_NAMES[3])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # Figure 5: BH - SEP accuracy vs training sigma of each head (at the first sigma).
    sigma0 = sigmas[0]
    order = sorted(heads, key=lambda h: h["train_sigma"])
    xt = [h["train_sigma"] for h in order]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for metric, label, style in (("accuracy", "all stamps", "k-"),
                                 ("accuracy_close", f"close (< {cfg.close_max_pix:g} px)",
                                  "r-."), ("accuracy_far", "far", "b--")):
        ms = np.array([_mean_std(_lookup(rows, h["name"], sigma0, "all", "BH-SEP", metric))
                       for h in order])
        ax.errorbar(xt, 100 * ms[:, 0], yerr=100 * ms[:, 1], fmt=style, marker="o", ms=4,
                    capsize=3, label=label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training σ_noise of the head [ADU]",
           ylabel="BH − SEP accuracy [points]", title=f"test σ_noise = {sigma0:g} ADU")
    ax.legend(fontsize=8)
    paths.append(outdir / OUTPUT_NAMES[4])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # Figure 6: TPR / TNR vs training sigma; close blends + as many isolated, far + the
    # rest of the isolated, all.
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, panel in zip(axes, ("close", "far", "all")):
        for method, style in (("BH", "-"), ("SEP", "-.")):
            for rate, color in (("tpr", "tab:green"), ("tnr", "tab:red")):
                ms = np.array([_mean_std(_lookup(rows, h["name"], sigma0, "all" if panel == "all"
                                                 else "fig6_" + panel,
                                                 method, rate)) for h in order])
                ax.errorbar(xt, ms[:, 0], yerr=ms[:, 1], fmt=style, color=color, marker="o",
                            ms=4, capsize=3, label=f"{method} {rate.upper()}")
        ax.set(xlabel="training σ_noise [ADU]", title={
            "close": f"close blends (< {cfg.close_max_pix:g} px) + as many isolated",
            "far": "far blends + remaining isolated", "all": "all stamps"}[panel])
    axes[0].set_ylabel("fraction correct")
    axes[0].legend(fontsize=7)
    paths.append(outdir / OUTPUT_NAMES[5])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # ROC: BLEND_PROB curve and SEP's deblend_cont scan (head 0, first sigma, realisation 0).
    roc = curves["roc"]
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot(roc["bh_fpr"], roc["bh_tpr"], "k-", label=f"BLEND_PROB (AUC {roc['bh_auc']:.3f})")
    if len(roc["sep_fpr"]):
        o = np.argsort(roc["sep_fpr"])
        ax.plot(np.r_[0, np.asarray(roc["sep_fpr"])[o], 1],
                np.r_[0, np.asarray(roc["sep_tpr"])[o], 1], "o--", color="tab:blue", ms=3,
                label=f"SEP deblend_cont scan (AUC {roc['sep_auc']:.3f})")
    ax.plot([roc["sep0_fpr"]], [roc["sep0_tpr"]], "s", color="tab:blue", label="SEP (config)")
    ax.plot([roc["hyb_fpr"]], [roc["hyb_tpr"]], "*", color="tab:orange", ms=10,
            label="hybrid")
    ax.plot([roc["bh0_fpr"]], [roc["bh0_tpr"]], "^", color="black", label="BH threshold")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1),
           ylim=(0, 1), title=f"head {head0}, σ {sigma0:g} ADU")
    ax.legend(fontsize=7, loc="lower right")
    paths.append(outdir / OUTPUT_NAMES[6])
    _save_figure(fig, paths[-1], cfg.overwrite)
    return paths


# --- the subcommand ---------------------------------------------------------------------


def _select_rows(truth, cfg):
    from .simulate import SPLIT_TEST

    rows = np.arange(len(truth))
    if cfg.split == "test":
        rows = rows[truth["split"] == SPLIT_TEST]
    if cfg.max_stamps is not None and len(rows) > cfg.max_stamps:
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(rows, cfg.max_stamps, replace=False))
    return rows


def _fig6_masks(label, sep_pix, close_max_pix, seed):
    """Panels of Figure 6: close blends + as many isolated stamps (drawn with ``seed``),
    far blends + the remaining isolated stamps."""
    iso = np.flatnonzero(~label)
    close = label & (sep_pix < close_max_pix)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(iso)[:int(close.sum())]
    iso_close = np.zeros(len(label), bool)
    iso_close[pick] = True
    return {"close": close | iso_close,
            "far": (label & (sep_pix >= close_max_pix)) | (~label & ~iso_close)}


def evaluate(cfg, progress=None):
    """Compare BlendHunter, SEP and the hybrid flag on a simulated test set; write figures,
    ``results.md`` and ``metrics.csv`` to ``cfg.output_dir``.

    Parameters
    ----------
    cfg : bh_stage.config.EvaluateConfig
        Data set, heads, noise grid, realisations, subsample, bins, SEP parameters, outputs.
    progress : callable, optional
        Called as ``progress(done, total)`` after each (noise, realisation) set.

    Returns
    -------
    dict
        ``rows``: list of dicts (``head``, ``train_sigma_adu``, ``sigma_adu``,
        ``realisation``, ``stamps`` ('all', 'snr' = SNR >= snr_min, or the Figure 6 panels
        'fig6_close', 'fig6_far'), ``method`` ('BH', 'SEP', 'hybrid', 'BH-SEP',
        'hybrid-SEP', 'BH_vs_SEP', 'hybrid_vs_SEP'), ``metric``, ``value``), the same as
        ``metrics.csv``; ``targets``: {'all': [...], 'snr': [...]}, each (description,
        target, measured, 'PASS'/'MISS') for the first head at the first sigma;
        ``headline``: {metric: mean over realisations} for that head, sigma and all stamps;
        ``n_stamps``: stamps evaluated; ``outputs``: written paths.

    Raises
    ------
    OutputExistsError
        An output exists in ``output_dir`` and ``overwrite`` is false (checked first).
    InputFileError
        Data set or head missing.
    ConfigError
        The data set's stamps do not match the head's input.
    """
    from . import model
    from .io import check_output, read_dataset, read_truth

    t0 = time.perf_counter()
    outdir = Path(cfg.output_dir)
    for name in OUTPUT_NAMES:
        check_output(outdir / name, cfg.overwrite, make_parents=True)

    rows_idx = _select_rows(read_truth(cfg.dataset), cfg)
    if len(rows_idx) < 2:
        raise ConfigError(f"{cfg.dataset}: split '{cfg.split}' holds {len(rows_idx)} stamps; "
                          f"use split: all or a larger data set")
    ds = read_dataset(cfg.dataset, rows_idx)
    truth, base = ds.truth, ds.stamps
    pad = int(ds.attrs.get("pad_pix", 7))
    label = truth["label"] == 1
    sep_pix = np.asarray(truth["separation_pix"], dtype=np.float64)
    xy = true_positions(truth, pad)
    log.info("evaluating %d stamps of %s (%d blends, %d close < %g px)", len(truth),
             cfg.dataset, label.sum(), int((label & (sep_pix < cfg.close_max_pix)).sum()),
             cfg.close_max_pix)

    heads = []
    for name in cfg.heads:
        path = model.head_path(name, noise_sigma_adu=cfg.noise_sigma_adu[0])
        clf = model.load_classifier(path, precision=cfg.precision, batch_size=cfg.batch_size)
        heads.append({"name": str(name), "clf": clf,
                      "train_sigma": float(clf.metadata.get("noise_sigma_adu", np.nan)),
                      "blend_threshold": float(clf.blend_threshold),
                      "hybrid_threshold": float(clf.hybrid_threshold),
                      "sha256": str(clf.metadata.get("weights_sha256", ""))})
        log.info("head %s: %s (trained at sigma %s ADU)", name, path,
                 clf.metadata.get("noise_sigma_adu"))
    if len({h["name"] for h in heads}) != len(heads):
        raise ConfigError(f"heads: {cfg.heads} has repeats")

    sigmas = [float(s) for s in cfg.noise_sigma_adu]
    fig6 = _fig6_masks(label, sep_pix, cfg.close_max_pix, cfg.seed)
    rows = []
    curves = {"sep": {}, "roc": None}
    total, done = len(sigmas) * len(cfg.realisations), 0
    for sigma in sigmas:
        snr = snr_mask(truth, sigma, cfg.snr_min)
        subsets = {"all": np.ones(len(truth), bool), "snr": snr, "fig6_close": fig6["close"],
                   "fig6_far": fig6["far"]}
        for h in heads:
            curves["sep"][(h["name"], sigma)] = {
                "centres_pix": accuracy_vs_separation(label, label, sep_pix,
                                                      cfg.separation_bins_pix)["centres_pix"],
                "per_realisation": []}
        for real in cfg.realisations:
            t1 = time.perf_counter()
            seeds = bh_stamps.dataset_noise_seeds(ds.attrs["seed"], sigma, real, rows_idx)
            noisy = bh_stamps.add_noise(base, sigma, seeds)
            sep = _sep_outputs(noisy, xy, cfg)
            log.info("sigma %g realisation %d: SEP failed on %d stamps, errors %d (%.1f s)",
                     sigma, real, int((sep["sep_paper"] == -1).sum()),
                     int(sep["sep_error"].sum()), time.perf_counter() - t1)
            for h in heads:
                p_blend = np.asarray(h["clf"].predict_proba(noisy), dtype=np.float64)
                for subset, mask in subsets.items():
                    sub_sep = {k: (v[:, mask] if k == "sep_scan" else v[mask])
                               for k, v in sep.items()}
                    metrics = _subset_metrics(p_blend[mask], h["clf"], sub_sep, label[mask],
                                              sep_pix[mask], cfg)
                    for method, values in metrics.items():
                        for metric, value in values.items():
                            rows.append({"head": h["name"], "train_sigma_adu": h["train_sigma"],
                                         "sigma_adu": sigma, "realisation": int(real),
                                         "stamps": subset, "method": method,
                                         "metric": metric, "value": float(value)})
                valid = sep["sep_paper"] != -1
                bh = p_blend >= h["blend_threshold"]
                hyb = sep["sep_stage"] | (p_blend >= h["hybrid_threshold"])
                per = {}
                for method, pred, m in (("BH", bh, slice(None)), ("hybrid", hyb, slice(None)),
                                        ("SEP", sep["sep_paper"] == 1, valid)):
                    per[method] = accuracy_vs_separation(
                        pred[m], label[m], sep_pix[m], cfg.separation_bins_pix)["accuracy"]
                curves["sep"][(h["name"], sigma)]["per_realisation"].append(per)
                if curves["roc"] is None:
                    fpr, tpr = roc_curve(p_blend[valid], label[valid])
                    tpr0, tnr0 = confusion_rates(sep["sep_paper"][valid] == 1, label[valid])
                    pts = [confusion_rates(s[valid], label[valid]) for s in sep["sep_scan"]]
                    pts += [(tpr0, tnr0)] if pts else []
                    htpr, htnr = confusion_rates(hyb[valid], label[valid])
                    btpr, btnr = confusion_rates(bh[valid], label[valid])
                    curves["roc"] = {
                        "bh_fpr": fpr, "bh_tpr": tpr,
                        "bh_auc": roc_auc(p_blend[valid], label[valid]),
                        "sep_fpr": [1 - t for _, t in pts], "sep_tpr": [t for t, _ in pts],
                        "sep_auc": auc_from_points([1 - t for _, t in pts],
                                                   [t for t, _ in pts]) if pts else
                        (tpr0 + tnr0) / 2,
                        "sep0_fpr": 1 - tnr0, "sep0_tpr": tpr0, "hyb_fpr": 1 - htnr,
                        "hyb_tpr": htpr, "bh0_fpr": 1 - btnr, "bh0_tpr": btpr}
            done += 1
            if progress is not None:
                progress(done, total)

    elapsed = time.perf_counter() - t0
    outdir.mkdir(parents=True, exist_ok=True)
    outputs = _figures(cfg, rows, heads, sigmas, curves, outdir)
    md = _markdown(cfg, rows, heads, sigmas, len(truth), ds.attrs, elapsed, curves)
    _write_text(outdir / "results.md", md, cfg.overwrite)
    _write_text(outdir / "metrics.csv", _rows_to_csv(rows), cfg.overwrite)
    outputs += [outdir / "results.md", outdir / "metrics.csv"]
    head0, sigma0 = heads[0]["name"], sigmas[0]
    headline = {}
    for method in ("BH", "SEP", "hybrid", "BH-SEP", "hybrid-SEP"):
        for metric in ("accuracy", "accuracy_close", "accuracy_far", "tpr", "tnr",
                       "fpr_isolated", "auc"):
            headline[f"{method}:{metric}"] = _mean_std(
                _lookup(rows, head0, sigma0, "all", method, metric))[0]
    headline["SEP:n_failed"] = _mean_std(_lookup(rows, head0, sigma0, "all", "SEP",
                                                 "n_failed"))[0]
    targets = {s: _check_targets(rows, head0, sigma0, s) for s in SUBSETS}
    log.info("evaluation done in %.1f s; outputs in %s", time.perf_counter() - t0, outdir)
    return {"rows": rows, "targets": targets, "headline": headline,
            "n_stamps": int(len(truth)), "outputs": [str(p) for p in outputs]}


def run_evaluate(cfg, progress=None):
    """``bh-stage evaluate``: run ``evaluate`` and return a one-line summary."""
    result = evaluate(cfg, progress)
    h = result["headline"]
    passed = sum(t[3] == "PASS" for t in result["targets"]["all"])
    return (f"evaluated {result['n_stamps']} stamps: accuracy BH {h['BH:accuracy']:.3f}, SEP "
            f"{h['SEP:accuracy']:.3f}, hybrid {h['hybrid:accuracy']:.3f}; close blends BH "
            f"{h['BH:accuracy_close']:.3f} vs SEP {h['SEP:accuracy_close']:.3f}; AUC BH "
            f"{h['BH:auc']:.3f} vs SEP {h['SEP:auc']:.3f}; targets {passed}/"
            f"{len(TARGETS)} PASS; results in {cfg.output_dir}")
