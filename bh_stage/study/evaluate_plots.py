"""Figures of ``bh-stage evaluate``: the paper's Figures 3-6 and a ROC figure.

Input: the per-realisation rows of ``evaluate.evaluate`` (``evaluate_report.lookup``) and
the per-stamp curves it collects (``separation_curves``, ``roc_points``). Output: PNG files
in the output folder (written with ``io.atomic_output``). Spreads are over noise
realisations; a single realisation shows none.
"""

import numpy as np

from .evaluate_report import lookup, mean_std
from .metrics import accuracy_vs_separation, auc_from_points, confusion_rates, roc_curve
from ..sep_flags import hybrid_flag

__all__ = ["separation_curves", "roc_points", "figures"]

METHODS = ("BH", "SEP_paper", "SEP_stage", "hybrid")
COLORS = {"BH": "black", "SEP_paper": "tab:blue", "SEP_stage": "tab:green",
          "hybrid": "tab:orange"}
STYLES = {"BH": "-", "SEP_paper": "--", "SEP_stage": "-.", "hybrid": ":"}


def _predictions(data, thresholds):
    p = data["p_blend"]
    return {"BH": p >= thresholds[0], "SEP_paper": data["sep_paper"] == 1,
            "SEP_stage": data["sep_stage"] == 1,
            "hybrid": hybrid_flag(data["sep_stage"], p, thresholds[1])}


def separation_curves(data, valid, thresholds, bins):
    """TPR of each method in bins of separation (Figure 3) on the ``valid`` stamps;
    returns {'centres_pix': ndarray, method: ndarray}."""
    out = {}
    for method, pred in _predictions(data, thresholds).items():
        res = accuracy_vs_separation(pred[valid], data["label"][valid],
                                     data["sep_pix"][valid], bins)
        out[method], out["centres_pix"] = res["accuracy"], res["centres_pix"]
    return out


def roc_points(data, valid, thresholds):
    """BH's ROC curve, SEP's scan points and each method's operating point."""
    label = data["label"][valid]
    fpr, tpr = roc_curve(data["p_blend"][valid], label)
    out = {"bh_fpr": fpr, "bh_tpr": tpr, "points": {}}
    for method, pred in _predictions(data, thresholds).items():
        t, tn = confusion_rates(pred[valid], label)
        out["points"][method] = (1 - tn, t)
    pts = [confusion_rates(s[valid], label) for s in data["sep_scan"]]
    out["scan_fpr"], out["scan_tpr"] = [1 - t for _, t in pts], [t for t, _ in pts]
    return out


def _save_figure(fig, path, overwrite):
    import matplotlib.pyplot as plt

    from ..io import atomic_output

    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def figures(cfg, rows, heads, sigmas, curves, outdir, names):
    """Write the paper-like figures to ``outdir`` under ``names[2:]``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    head0, sigma0 = heads[0]["name"], sigmas[0]

    # Figure 3: TPR on blends vs separation, one panel per sigma (head 0).
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 3.6), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas):
        per = curves["sep"][(head0, sigma)]
        x = per[0]["centres_pix"]
        for method in METHODS:
            acc = np.array([c[method] for c in per])
            finite = np.isfinite(acc)
            count = finite.sum(axis=0)
            mean = np.where(count > 0, np.where(finite, acc, 0).sum(axis=0)
                            / np.maximum(count, 1), np.nan)
            ax.plot(x, mean, STYLES[method], color=COLORS[method], marker="o", ms=3,
                    label=method)
        ax.axvline(cfg.close_max_pix, color="grey", lw=0.8)
        ax.set(xlabel="separation [pix]", ylim=(0, 1.02), title=f"σ_noise = {sigma:g} ADU")
    axes[0, 0].set_ylabel("TPR on blends")
    axes[0, 0].legend(loc="lower right", fontsize=8)
    paths.append(outdir / names[2])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # Figure 4: overall accuracy vs sigma, mean and spread over realisations.
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method in METHODS:
        ms = np.array([mean_std(lookup(rows, head0, s, "all", method, "accuracy"))
                       for s in sigmas])
        ax.errorbar(sigmas, ms[:, 0], yerr=ms[:, 1], fmt=STYLES[method],
                    color=COLORS[method], marker="o", ms=4, capsize=3, label=method)
    ax.set(xlabel="σ_noise [ADU]", ylabel="overall accuracy",
           title=f"head {head0}, {len(cfg.realisations)} realisation(s)")
    ax.legend(fontsize=8)
    paths.append(outdir / names[3])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # Figure 5: BH - paper-rule SEP vs training sigma of each head (at the first sigma).
    order = sorted(heads, key=lambda h: h["train_sigma"])
    xt = [h["train_sigma"] for h in order]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for metric, text, style in (("accuracy", "accuracy, all stamps", "k-"),
                                ("tpr_close", f"TPR close (< {cfg.close_max_pix:g} px)",
                                 "r-."), ("fpr", "FPR isolated", "b--")):
        ms = np.array([mean_std(lookup(rows, h["name"], sigma0, "all", "BH-SEP_paper",
                                       metric)) for h in order])
        ax.errorbar(xt, 100 * ms[:, 0], yerr=100 * ms[:, 1], fmt=style, marker="o", ms=4,
                    capsize=3, label=text)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training σ_noise of the head [ADU]",
           ylabel="BH − paper-rule SEP [points]", title=f"test σ_noise = {sigma0:g} ADU")
    ax.legend(fontsize=8)
    paths.append(outdir / names[4])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # Figure 6: TPR / FPR vs training sigma; close blends + as many isolated, far + the
    # rest of the isolated, all.
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, panel in zip(axes, ("close", "far", "all")):
        for method in ("BH", "SEP_paper"):
            for rate, color in (("tpr", "tab:green"), ("fpr", "tab:red")):
                ms = np.array([mean_std(lookup(rows, h["name"], sigma0, "all" if panel ==
                                               "all" else "fig6_" + panel, method, rate))
                               for h in order])
                ax.errorbar(xt, ms[:, 0], yerr=ms[:, 1], fmt=STYLES[method], color=color,
                            marker="o", ms=4, capsize=3, label=f"{method} {rate.upper()}")
        ax.set(xlabel="training σ_noise [ADU]", title={
            "close": f"close blends (< {cfg.close_max_pix:g} px) + as many isolated",
            "far": "far blends + remaining isolated", "all": "all stamps"}[panel])
    axes[0].set_ylabel("rate")
    axes[0].legend(fontsize=7)
    paths.append(outdir / names[5])
    _save_figure(fig, paths[-1], cfg.overwrite)

    # ROC: BLEND_PROB and the operating points, whole range and FPR <= 0.05.
    roc = curves["roc"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, xmax in zip(axes, (1.0, 0.05)):
        ax.plot(roc["bh_fpr"], roc["bh_tpr"], "k-", label="BLEND_PROB")
        if len(roc["scan_fpr"]):
            o = np.argsort(roc["scan_fpr"])
            ax.plot(np.asarray(roc["scan_fpr"])[o], np.asarray(roc["scan_tpr"])[o], "o--",
                    color=COLORS["SEP_paper"], ms=3, label="SEP paper rule, deblend_cont scan")
        for method, marker in (("SEP_paper", "s"), ("SEP_stage", "D"), ("hybrid", "*"),
                               ("BH", "^")):
            f, t = roc["points"][method]
            ax.plot([f], [t], marker, color=COLORS[method], ms=8, label=method)
        ax.set(xlabel="false-positive rate", xlim=(0, xmax),
               ylim=(0, 1) if xmax == 1 else (0.5, 1))
    auc_note = auc_from_points(roc["bh_fpr"], roc["bh_tpr"], 0.05)
    axes[0].set(ylabel="true-positive rate", title=f"head {head0}, σ {sigma0:g} ADU")
    axes[1].set(title=f"FPR ≤ 0.05 (BH partial AUC {auc_note:.3f})")
    axes[1].legend(fontsize=7, loc="lower right")
    paths.append(outdir / names[6])
    _save_figure(fig, paths[-1], cfg.overwrite)
    return paths
