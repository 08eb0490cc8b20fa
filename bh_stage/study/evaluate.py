"""Evaluation step: BlendHunter, both SEP rules and the hybrid flag on a simulated test set.

Inputs: a simulated data set (``bh-stage simulate``; noise-free padded stamps and their
truth), one or more trained heads, and an ``EvaluateConfig``. For every noise level and
realisation the stamps get reproducible Gaussian noise (``stamps.dataset_noise_seeds``); each
head scores them (``BLEND_PROB``, BH = ``BLEND_PROB >= blend_threshold``) and SEP labels them
twice: ``SEP_paper``, the paper's truth-aided rule (section 4.1 of Farrens et al. 2021: SEP
sources matched to the true positions), and ``SEP_stage``, the truth-free rule users get as
``SEP_BLEND_FLAG``. The hybrid is the stage's ``BH_PAPER_FLAG``
(``sep_flags.hybrid_flag`` of the stage rule and ``hybrid_threshold``).

Every metric uses the stamps where the paper rule did not fail ("SEP failed": more sources
than true ones), so all methods are paired on the same stamps; failures are counted.
Comparisons are made at matched operating points (``stamp_metrics``) and every pooled
number gets 68 % and 95 % intervals from a bootstrap over galaxies
(``metrics.group_bootstrap``): a stamp belongs to its main galaxy ``gal_id0``, and a
resample draws distinct main galaxies with replacement, each with all its stamps in every
noise realisation. Differences are computed inside each resample (paired).

Outputs (in ``output_dir``): ``metrics.csv``, ``results.md`` (``evaluate_report``), PNGs
that read like the paper's Figures 3-6 plus a ROC figure (``evaluate_plots``), and
``scores.npz``, the first head's stamp scores at the first noise (``io.write_scores``),
which ``crossval_intervals`` pools over the folds of a cross-validation.
"""

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from .. import stamps as bh_stamps
from ..errors import ConfigError
from .metrics import (accuracy, auc_from_points, confusion_rates, fpr_at_tpr,
                      group_bootstrap, interval, partial_auc, roc_auc, threshold_at_fpr,
                      tpr_at_fpr)
from ..sep_flags import hybrid_flag

log = logging.getLogger(__name__)

__all__ = ["snr_mask", "true_positions", "stamp_metrics", "galaxy_intervals",
           "crossval_intervals", "evaluate",
           "run_evaluate", "TARGETS", "SEP_RULES", "MAX_FPR", "FPR_SLACK"]

SUBSETS = ("all", "snr")
"""Stamp subsets with intervals: every stamp, and stamps whose galaxies all reach
``snr_min``."""

SEP_RULES = ("SEP_paper", "SEP_stage")
"""The two SEP baselines: the paper's truth-aided rule, the stage's truth-free rule."""

MAX_FPR = 0.05
"""Partial AUC: area under BH's ROC curve over FPR <= 0.05, divided by 0.05."""

FPR_SLACK = 0.01
"""Close blends: BH's TPR at the threshold whose FPR is <= SEP's FPR + 1 point."""

TARGETS = (
    # (description, method:metric, comparison, threshold, 95 % interval must exclude 0)
    ("hybrid - stage-rule SEP, accuracy", "hybrid-SEP_stage:accuracy", ">=", 0.01, True),
    ("BH close-blend TPR at FPR <= paper-rule SEP's + 1 pt, minus SEP's",
     "BH-SEP_paper:tpr_close_at_fpr", ">=", 0.15, False),
    ("BH close-blend TPR at FPR <= stage-rule SEP's + 1 pt, minus SEP's",
     "BH-SEP_stage:tpr_close_at_fpr", ">=", 0.15, False),
    ("BH alone - paper-rule SEP, accuracy", "BH-SEP_paper:accuracy", ">=", -0.01, False),
)
"""The targets of issue 12, checked on the first head at the first noise level."""

OUTPUT_NAMES = ("metrics.csv", "results.md", "fig3_accuracy_vs_separation.png",
                "fig4_accuracy_vs_sigma.png", "fig5_relative_accuracy_vs_training_sigma.png",
                "fig6_confusion_vs_training_sigma.png", "roc.png", "scores.npz")


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


# --- metrics of one set of stamps -------------------------------------------------------


def stamp_metrics(p_blend, thresholds, sep_paper, sep_stage, label, sep_pix, close_max_pix,
                  sep_scan=None):
    """Every metric of BH, both SEP rules and the hybrid on one set of stamps.

    Parameters
    ----------
    p_blend : ndarray of float, shape (n,)
        ``BLEND_PROB``.
    thresholds : tuple of float
        ``(blend_threshold, hybrid_threshold)`` of the head.
    sep_paper, sep_stage : ndarray of int, shape (n,)
        SEP's verdicts (1 blended) under the paper's and the stage's rule.
    label : ndarray of bool, shape (n,)
    sep_pix : ndarray of float, shape (n,)
        Separation of the pair, pixels (NaN for isolated stamps).
    close_max_pix : float
        Blends closer than this are close, the others far.
    sep_scan : ndarray of bool, shape (k, n), optional
        Paper-rule verdicts at the scanned ``deblend_cont`` values (SEP's ROC points).

    Returns
    -------
    dict
        ``'method:metric'`` -> float. Methods ``BH``, ``SEP_paper``, ``SEP_stage``,
        ``hybrid``: ``accuracy``, ``tpr``, ``fpr`` (on isolated stamps), ``tpr_close``,
        ``tpr_far`` (at the method's own threshold, so with the same ``fpr``); ``BH:auc``,
        ``BH:pauc`` (over FPR <= ``MAX_FPR``, divided by it), ``SEP_paper:pauc_scan`` (the
        same area under SEP's scan points). For each rule R, ``BH@R`` (BH at R's operating
        point): ``tpr_at_fpr`` (BH's TPR at FPR <= R's FPR), ``fpr_at_tpr`` (BH's FPR at
        TPR >= R's TPR), ``tpr_close_at_fpr`` and ``fpr_slack`` (BH's close-blend TPR and
        its FPR at FPR <= R's FPR + ``FPR_SLACK``); ``BH-R`` and ``hybrid-R``: the paired
        differences (``accuracy``, ``tpr``, ``fpr``, and for BH the matched ones).
    """
    p = np.asarray(p_blend, dtype=np.float64)
    close = label & (sep_pix < close_max_pix)
    far = label & (sep_pix >= close_max_pix)
    preds = {"BH": p >= thresholds[0], "SEP_paper": sep_paper == 1,
             "SEP_stage": sep_stage == 1, "hybrid": hybrid_flag(sep_stage, p, thresholds[1])}
    out = {}
    for method, pred in preds.items():
        tpr, tnr = confusion_rates(pred, label)
        out.update({f"{method}:accuracy": accuracy(pred, label), f"{method}:tpr": tpr,
                    f"{method}:fpr": 1.0 - tnr,
                    f"{method}:tpr_close": float(np.mean(pred[close])) if close.any() else
                    float("nan"),
                    f"{method}:tpr_far": float(np.mean(pred[far])) if far.any() else
                    float("nan")})
    out["BH:auc"] = roc_auc(p, label)
    out["BH:pauc"] = partial_auc(p, label, MAX_FPR)
    if sep_scan is not None and len(sep_scan):
        pts = [confusion_rates(s, label) for s in sep_scan]
        pts.append(confusion_rates(preds["SEP_paper"], label))
        out["SEP_paper:pauc_scan"] = auc_from_points([1 - t for _, t in pts],
                                                     [t for t, _ in pts], MAX_FPR)
    for rule in SEP_RULES:
        fpr_r, tpr_r = out[f"{rule}:fpr"], out[f"{rule}:tpr"]
        t = threshold_at_fpr(p, label, fpr_r + FPR_SLACK)
        m = {"tpr_at_fpr": tpr_at_fpr(p, label, fpr_r),
             "fpr_at_tpr": fpr_at_tpr(p, label, tpr_r),
             "tpr_close_at_fpr": float(np.mean(p[close] >= t)) if close.any() else
             float("nan"),
             "fpr_slack": float(np.mean(p[~label] >= t)) if (~label).any() else float("nan")}
        out.update({f"BH@{rule}:{k}": v for k, v in m.items()})
        for method in ("BH", "hybrid"):
            for k in ("accuracy", "tpr", "fpr", "tpr_close"):
                out[f"{method}-{rule}:{k}"] = out[f"{method}:{k}"] - out[f"{rule}:{k}"]
        out[f"BH-{rule}:tpr_at_fpr"] = m["tpr_at_fpr"] - tpr_r
        out[f"BH-{rule}:fpr_at_tpr"] = m["fpr_at_tpr"] - fpr_r
        out[f"BH-{rule}:tpr_close_at_fpr"] = m["tpr_close_at_fpr"] - out[f"{rule}:tpr_close"]
    return out


def galaxy_intervals(data, thresholds, close_max_pix, n_boot, seed):
    """Pooled metrics with 68 % and 95 % intervals from the galaxy bootstrap.

    Parameters
    ----------
    data : dict of ndarray
        ``p_blend``, ``sep_paper``, ``sep_stage``, ``label``, ``sep_pix``, ``gal_id0``
        (shape (n,)) and ``sep_scan`` (shape (k, n)) of the stamps, pooled over realisations;
        other keys (``snr_ok``: the stamp is in the SNR >= snr_min subset) are ignored.
    thresholds, close_max_pix :
        As ``stamp_metrics``.
    n_boot, seed : int
        Resamples and seed of ``metrics.group_bootstrap``.

    Returns
    -------
    dict
        ``'method:metric'`` -> (value, lo68, hi68, lo95, hi95); ``value`` on all stamps,
        the intervals central percentiles of the resamples (NaN where undefined).
    """
    keys, point, samples = _bootstrap_metrics(data, thresholds, close_max_pix, n_boot, seed)
    return _summary(keys, point, samples)


def crossval_intervals(folds, close_max_pix, n_boot, seed):
    """Cross-validation: every metric averaged over folds, with galaxy-bootstrap intervals.

    Parameters
    ----------
    folds : list of (dict, tuple)
        Per fold, the stamp arrays of ``galaxy_intervals`` (its test stamps) and the
        thresholds of the head trained on that fold. The folds' test galaxies are disjoint.
    close_max_pix, n_boot, seed :
        As ``galaxy_intervals``; fold ``f`` resamples with ``seed + f``.

    Returns
    -------
    dict
        ``'pooled'``: ``'method:metric'`` -> (value, lo68, hi68, lo95, hi95), the mean over
        folds, each resample drawing galaxies within every fold (a stratified bootstrap);
        ``'folds'``: the same per fold.
    """
    runs = [_bootstrap_metrics(data, thr, close_max_pix, n_boot, seed + f)
            for f, (data, thr) in enumerate(folds)]
    keys = runs[0][0]
    point = {k: float(np.mean([r[1][k] for r in runs])) for k in keys}
    samples = np.mean([r[2] for r in runs], axis=0)
    return {"pooled": _summary(keys, point, samples),
            "folds": [_summary(*r) for r in runs]}


def _bootstrap_metrics(data, thresholds, close_max_pix, n_boot, seed):
    """``stamp_metrics`` on all stamps and on each galaxy resample: (keys, point, samples)."""
    def stat(rows=slice(None)):
        return stamp_metrics(data["p_blend"][rows], thresholds, data["sep_paper"][rows],
                             data["sep_stage"][rows], data["label"][rows],
                             data["sep_pix"][rows], close_max_pix,
                             data["sep_scan"][:, rows])

    point = stat()
    keys = list(point)

    def vector(rows):
        values = stat(rows)
        return [values[k] for k in keys]

    return keys, point, group_bootstrap(data["gal_id0"], vector, n_boot, seed)


def _summary(keys, point, samples):
    return {k: (point[k], *interval(samples[:, i], 0.68), *interval(samples[:, i], 0.95))
            for i, k in enumerate(keys)}


# --- SEP on one noise set ---------------------------------------------------------------


def _sep_outputs(noisy, xy, cfg):
    """SEP's paper verdict, stage verdict and deblend_cont scan on one noise set."""
    from ..sep_flags import classify_stamps

    paper = classify_stamps(noisy, cfg.sep, true_xy=xy)
    stage = classify_stamps(noisy, cfg.sep)
    scan = []
    for cont in cfg.sep_scan_deblend_cont:
        scan_cfg = dataclasses.replace(cfg.sep, deblend_cont=float(cont))
        verdict = classify_stamps(noisy, scan_cfg, true_xy=xy)["blend"]
        scan.append(verdict != 0)  # failed (-1) counts as blended
    scan = np.array(scan, dtype=bool).reshape(len(cfg.sep_scan_deblend_cont), len(noisy))
    return {"sep_paper": paper["blend"].astype(np.int8), "sep_error": paper["error"],
            "sep_stage": stage["blend"].astype(np.int8), "sep_scan": scan}


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
    """Compare BlendHunter, both SEP rules and the hybrid flag on a simulated test set; write
    figures, ``results.md`` and ``metrics.csv`` to ``cfg.output_dir``.

    Parameters
    ----------
    cfg : bh_stage.config.EvaluateConfig
        Data set, heads, noise grid, realisations, subsample, bins, SEP parameters,
        bootstrap resamples, outputs.
    progress : callable, optional
        Called as ``progress(done, total)`` after each (noise, realisation) set.

    Returns
    -------
    dict
        ``rows``: list of dicts (``head``, ``train_sigma_adu``, ``sigma_adu``,
        ``realisation`` (int, or 'pooled' for the bootstrap rows), ``stamps`` ('all', 'snr'
        = SNR >= snr_min, or the Figure 6 panels 'fig6_close', 'fig6_far'), ``method``,
        ``metric``, ``value``, and ``lo68``, ``hi68``, ``lo95``, ``hi95`` on pooled rows),
        the same as ``metrics.csv``; ``targets``: {'all': [...], 'snr': [...]}, each
        (description, target, measured, 'PASS'/'MISS') for the first head at the first
        sigma; ``headline``: {'method:metric': (value, lo68, hi68, lo95, hi95)} for that
        head, sigma and all stamps; ``n_stamps``; ``n_galaxies``: distinct ``gal_id0``;
        ``outputs``: written paths.

    Raises
    ------
    OutputExistsError
        An output exists in ``output_dir`` and ``overwrite`` is false (checked first).
    InputFileError
        Data set or head missing.
    ConfigError
        The data set's stamps do not match the head's input.
    """
    from .. import model
    from ..heads import head_path
    from . import evaluate_plots, evaluate_report
    from ..io import check_output, read_dataset, read_truth, write_scores

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
    gal_id0 = np.asarray(truth["gal_id0"], dtype=np.int64)
    xy = true_positions(truth, pad)
    log.info("evaluating %d stamps of %s (%d blends, %d close < %g px, %d main galaxies)",
             len(truth), cfg.dataset, label.sum(),
             int((label & (sep_pix < cfg.close_max_pix)).sum()), cfg.close_max_pix,
             np.unique(gal_id0).size)

    heads = []
    for name in cfg.heads:
        path = head_path(name, noise_sigma_adu=cfg.noise_sigma_adu[0])
        clf = model.load_classifier(path, precision=cfg.precision, batch_size=cfg.batch_size)
        heads.append({"name": str(name), "clf": clf,
                      "train_sigma": float(clf.metadata.get("noise_sigma_adu", np.nan)),
                      "thresholds": (float(clf.blend_threshold),
                                     float(clf.hybrid_threshold)),
                      "sha256": str(clf.metadata.get("weights_sha256", ""))})
        log.info("head %s: %s (trained at sigma %s ADU)", name, path,
                 clf.metadata.get("noise_sigma_adu"))
    if len({h["name"] for h in heads}) != len(heads):
        raise ConfigError(f"heads: {cfg.heads} has repeats")

    sigmas = [float(s) for s in cfg.noise_sigma_adu]
    fig6 = _fig6_masks(label, sep_pix, cfg.close_max_pix, cfg.seed)
    rows, pooled, curves = [], {}, {"roc": None, "sep": {}}
    n_failed = {}

    def add_rows(h, sigma, real, subset, values):
        for key, value in values.items():
            method, metric = key.split(":")
            v = value if isinstance(value, tuple) else (value,) + (float("nan"),) * 4
            rows.append({"head": h["name"], "train_sigma_adu": h["train_sigma"],
                         "sigma_adu": sigma, "realisation": real, "stamps": subset,
                         "method": method, "metric": metric, "value": float(v[0]),
                         "lo68": v[1], "hi68": v[2], "lo95": v[3], "hi95": v[4]})

    total, done = len(sigmas) * len(cfg.realisations), 0
    for sigma in sigmas:
        subsets = {"all": np.ones(len(truth), bool),
                   "snr": snr_mask(truth, sigma, cfg.snr_min),
                   "fig6_close": fig6["close"], "fig6_far": fig6["far"]}
        for real in cfg.realisations:
            t1 = time.perf_counter()
            seeds = bh_stamps.dataset_noise_seeds(ds.attrs["seed"], sigma, real, rows_idx)
            noisy = bh_stamps.add_noise(base, sigma, seeds)
            sep = _sep_outputs(noisy, xy, cfg)
            valid = sep["sep_paper"] != -1
            n_failed[(sigma, real)] = int((~valid).sum())
            log.info("sigma %g realisation %d: SEP failed on %d stamps, errors %d (%.1f s)",
                     sigma, real, n_failed[(sigma, real)], int(sep["sep_error"].sum()),
                     time.perf_counter() - t1)
            for h in heads:
                p_blend = np.asarray(h["clf"].predict_proba(noisy, sigma), dtype=np.float64)
                data = {"p_blend": p_blend, "sep_paper": sep["sep_paper"],
                        "sep_stage": sep["sep_stage"], "label": label, "sep_pix": sep_pix,
                        "gal_id0": gal_id0, "sep_scan": sep["sep_scan"],
                        "snr_ok": subsets["snr"]}
                for subset, mask in subsets.items():
                    m = mask & valid
                    add_rows(h, sigma, int(real), subset, stamp_metrics(
                        p_blend[m], h["thresholds"], sep["sep_paper"][m],
                        sep["sep_stage"][m], label[m], sep_pix[m], cfg.close_max_pix,
                        sep["sep_scan"][:, m]))
                    if subset in SUBSETS:
                        pooled.setdefault((h["name"], sigma, subset), []).append(
                            {k: (v[:, m] if k == "sep_scan" else v[m])
                             for k, v in data.items()})
                curves["sep"].setdefault((h["name"], sigma), []).append(
                    evaluate_plots.separation_curves(data, valid, h["thresholds"],
                                                     cfg.separation_bins_pix))
                if curves["roc"] is None:
                    curves["roc"] = evaluate_plots.roc_points(data, valid, h["thresholds"])
            done += 1
            if progress is not None:
                progress(done, total)

    t1 = time.perf_counter()
    for h in heads:
        for sigma in sigmas:
            for subset in SUBSETS:
                parts = pooled[(h["name"], sigma, subset)]
                data = {k: np.concatenate([p[k] for p in parts], axis=-1) for k in parts[0]}
                pooled[(h["name"], sigma, subset)] = data
                add_rows(h, sigma, "pooled", subset, galaxy_intervals(
                    data, h["thresholds"], cfg.close_max_pix, cfg.n_bootstrap, cfg.seed))
    log.info("galaxy bootstrap (%d resamples) in %.1f s", cfg.n_bootstrap,
             time.perf_counter() - t1)

    outdir.mkdir(parents=True, exist_ok=True)
    info = {"n_stamps": int(len(truth)), "n_galaxies": int(np.unique(gal_id0).size),
            "n_companions": int(np.unique(truth["gal_id1"][label]).size),
            "n_failed": n_failed, "attrs": ds.attrs, "elapsed_s": time.perf_counter() - t0}
    outputs = evaluate_plots.figures(cfg, rows, heads, sigmas, curves, outdir, OUTPUT_NAMES)
    md = evaluate_report.markdown(cfg, rows, heads, sigmas, info, OUTPUT_NAMES, TARGETS)
    evaluate_report.write_text(outdir / "results.md", md, cfg.overwrite)
    evaluate_report.write_text(outdir / "metrics.csv", evaluate_report.rows_to_csv(rows),
                               cfg.overwrite)
    head0, sigma0 = heads[0]["name"], sigmas[0]
    write_scores(outdir / "scores.npz", pooled[(head0, sigma0, "all")],
                 heads[0]["thresholds"], cfg.overwrite)
    outputs += [outdir / "results.md", outdir / "metrics.csv", outdir / "scores.npz"]
    headline = evaluate_report.pooled_values(rows, head0, sigma0, "all")
    targets = {s: evaluate_report.check_targets(rows, head0, sigma0, s, TARGETS)
               for s in SUBSETS}
    log.info("evaluation done in %.1f s; outputs in %s", time.perf_counter() - t0, outdir)
    return {"rows": rows, "targets": targets, "headline": headline,
            "n_stamps": info["n_stamps"], "n_galaxies": info["n_galaxies"],
            "outputs": [str(p) for p in outputs]}


def run_evaluate(cfg, progress=None):
    """``bh-stage evaluate``: run ``evaluate`` and return a one-line summary."""
    result = evaluate(cfg, progress)
    h = result["headline"]

    def show(key):
        v, _, _, lo, hi = h[key]
        return f"{100 * v:+.2f} pts [95 %: {100 * lo:+.2f}, {100 * hi:+.2f}]"

    passed = sum(t[3] == "PASS" for t in result["targets"]["all"])
    return (f"evaluated {result['n_stamps']} stamps of {result['n_galaxies']} main galaxies: "
            f"hybrid - stage-rule SEP {show('hybrid-SEP_stage:accuracy')}; BH - paper-rule "
            f"SEP {show('BH-SEP_paper:accuracy')}; targets {passed}/{len(TARGETS)} PASS; "
            f"results in {cfg.output_dir}")
