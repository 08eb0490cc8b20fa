"""Report of ``bh-stage evaluate``: ``results.md`` and ``metrics.csv`` from its rows.

Input: the rows of ``evaluate.evaluate`` (one per head, noise, realisation or 'pooled',
stamp subset, method and metric; pooled rows carry the galaxy-bootstrap intervals ``lo68,
hi68, lo95, hi95``). Output: text written with ``io.atomic_output``. A number without an
interval is never shown with "± 0".
"""

import csv
import io as _stringio
from pathlib import Path

import numpy as np

__all__ = ["lookup", "mean_std", "pooled_values", "check_targets", "target_verdicts",
           "rows_to_csv", "markdown", "write_text"]

CSV_FIELDS = ["head", "train_sigma_adu", "sigma_adu", "realisation", "stamps", "method",
              "metric", "value", "lo68", "hi68", "lo95", "hi95"]

LABELS = {"BH": "BH alone", "SEP_paper": "SEP, paper rule (truth-aided)",
          "SEP_stage": "SEP, stage rule (`SEP_BLEND_FLAG`)", "hybrid": "hybrid `BH_PAPER_FLAG`"}


def write_text(path, text, overwrite):
    """Write ``text`` to ``path`` atomically."""
    from ..io import atomic_output

    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text)


def lookup(rows, head, sigma, subset, method, metric):
    """Values of one metric over the realisations (not the pooled row)."""
    return [r["value"] for r in rows if r["head"] == head and r["sigma_adu"] == sigma and
            r["stamps"] == subset and r["method"] == method and r["metric"] == metric and
            r["realisation"] != "pooled"]


def mean_std(values):
    """Mean and standard deviation (ddof 1) of the finite values; the std is NaN for fewer
    than two values (one realisation has no spread)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def pooled_values(rows, head, sigma, subset):
    """{'method:metric': (value, lo68, hi68, lo95, hi95)} of the pooled rows."""
    return {f"{r['method']}:{r['metric']}": (r["value"], r["lo68"], r["hi68"], r["lo95"],
                                             r["hi95"])
            for r in rows if r["head"] == head and r["sigma_adu"] == sigma and
            r["stamps"] == subset and r["realisation"] == "pooled"}


def _fmt(v, points=False, digits=None):
    """``value [lo68, hi68] [lo95, hi95]`` in points (``points``) or as a fraction."""
    scale, d = (100.0, 2 if digits is None else digits) if points else (
        1.0, 4 if digits is None else digits)
    sign = "+" if points else ""
    value, lo68, hi68, lo95, hi95 = (x * scale for x in v)
    if not np.isfinite(lo95):
        return f"{value:{sign}.{d}f}"
    return (f"{value:{sign}.{d}f} [{lo68:{sign}.{d}f}, {hi68:{sign}.{d}f}] "
            f"[{lo95:{sign}.{d}f}, {hi95:{sign}.{d}f}]")


def check_targets(rows, head, sigma, subset, targets):
    """``target_verdicts`` of the pooled values of one head, noise and subset."""
    return target_verdicts(pooled_values(rows, head, sigma, subset), targets)


def target_verdicts(values, targets):
    """Return [(description, target text, measured, PASS/MISS)] for ``values``
    ({'method:metric': (value, lo68, hi68, lo95, hi95)}); a target with ``needs_interval``
    passes only if its 95 % interval also excludes 0."""
    out = []
    for desc, key, op, thr, needs_interval in targets:
        v = values[key]
        ok = v[0] >= thr if op == ">=" else v[0] <= thr
        text = f"{op} {100 * thr:+g} pts"
        if needs_interval:
            ok = ok and v[3] > 0
            text += ", 95 % interval > 0"
        out.append((desc, text, _fmt(v, points=True) + " pts", "PASS" if ok else "MISS"))
    return out


def rows_to_csv(rows):
    """``metrics.csv`` text: one line per row, floats with 6 significant digits."""
    buf = _stringio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(row[k], float) and np.isnan(row[k]) else
                             f"{row[k]:.6g}" if isinstance(row[k], float) else row[k])
                         for k in CSV_FIELDS})
    return buf.getvalue()


def shown_path(path):
    """A path as results.md shows it: as given if relative, relative to the working
    directory if under it, else the file name alone (never the machine's absolute path)."""
    path = Path(path)
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def _pooled_tables(cfg, values):
    """The headline tables of one head, sigma and subset."""
    cm = cfg.close_max_pix
    lines = ["Each cell: value [68 %] [95 %] galaxy-bootstrap interval.", "",
             f"| method | accuracy | TPR | FPR on isolated | TPR close (< {cm:g} px) | "
             "TPR far |", "|---|---|---|---|---|---|"]
    for method, text in LABELS.items():
        cells = [_fmt(values[f"{method}:{m}"]) for m in
                 ("accuracy", "tpr", "fpr", "tpr_close", "tpr_far")]
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines += ["", f"BH's ROC AUC {_fmt(values['BH:auc'])}; partial AUC over FPR <= 0.05 "
              f"(area / 0.05: 1 perfect, 0.025 random) BH {_fmt(values['BH:pauc'])}"
              + (f", SEP's deblend_cont scan (paper rule, points joined linearly to (1, 1)) "
                 f"{_fmt(values['SEP_paper:pauc_scan'])}" if "SEP_paper:pauc_scan" in values
                 else "") + ".", "",
              "Matched operating points (BH's threshold moved to each SEP rule's point):", "",
              "| SEP rule | SEP FPR | SEP TPR | BH TPR at FPR <= SEP's | BH FPR at TPR >= "
              "SEP's | SEP TPR close | BH TPR close at FPR <= SEP's + 1 pt | BH FPR there |",
              "|---|---|---|---|---|---|---|---|"]
    for rule in ("SEP_paper", "SEP_stage"):
        cells = [values[f"{rule}:fpr"], values[f"{rule}:tpr"],
                 values[f"BH@{rule}:tpr_at_fpr"], values[f"BH@{rule}:fpr_at_tpr"],
                 values[f"{rule}:tpr_close"], values[f"BH@{rule}:tpr_close_at_fpr"],
                 values[f"BH@{rule}:fpr_slack"]]
        lines.append(f"| {rule} | " + " | ".join(_fmt(c) for c in cells) + " |")
    lines += ["", "Paired differences (points; resampled together, so the interval is the "
              "paired galaxy bootstrap; * = 95 % interval excludes 0):", "",
              "| difference | value [68 %] [95 %] |", "|---|---|"]
    diffs = [("hybrid-SEP_stage", "accuracy"), ("hybrid-SEP_stage", "tpr"),
             ("hybrid-SEP_stage", "fpr"), ("hybrid-SEP_paper", "accuracy"),
             ("hybrid-SEP_paper", "fpr"), ("BH-SEP_paper", "accuracy"),
             ("BH-SEP_stage", "accuracy"), ("BH-SEP_paper", "tpr_at_fpr"),
             ("BH-SEP_stage", "tpr_at_fpr"), ("BH-SEP_paper", "fpr_at_tpr"),
             ("BH-SEP_stage", "fpr_at_tpr"), ("BH-SEP_paper", "tpr_close_at_fpr"),
             ("BH-SEP_stage", "tpr_close_at_fpr")]
    for method, metric in diffs:
        v = values[f"{method}:{metric}"]
        star = " *" if v[3] > 0 or v[4] < 0 else ""
        lines.append(f"| {method.replace('-', ' − ')} {metric} | "
                     f"{_fmt(v, points=True)}{star} |")
    return lines


def markdown(cfg, rows, heads, sigmas, info, names, targets):
    """``results.md``: protocol, headline tables with intervals, targets, per-noise and
    per-head tables, figures and provenance."""
    from .. import __version__
    from ..config import config_to_dict

    import yaml

    head0, sigma0 = heads[0]["name"], sigmas[0]
    n_failed = sum(info["n_failed"].values())
    lines = [f"# bh-stage evaluate: BlendHunter vs SEP on `{shown_path(cfg.dataset)}`", "",
             f"{info['n_stamps']} stamps (split '{cfg.split}', max_stamps {cfg.max_stamps}) "
             f"of {info['n_galaxies']} distinct main galaxies ({info['n_companions']} distinct "
             f"companions), noise sigma {', '.join(f'{s:g}' for s in sigmas)} ADU, "
             f"realisations {cfg.realisations}; heads: "
             + ", ".join(f"`{h['name']}` (trained at sigma {h['train_sigma']:g} ADU, "
                         f"blend_threshold {h['thresholds'][0]:.3f}, hybrid_threshold "
                         f"{h['thresholds'][1]:.3f})" for h in heads) + ".", "",
             "BH: `BLEND_PROB >= blend_threshold`. SEP_paper: the paper's rules with the "
             "true positions (section 4.1). SEP_stage: the truth-free rule of "
             "`SEP_BLEND_FLAG`. hybrid: `BH_PAPER_FLAG = SEP_stage or BLEND_PROB >= "
             "hybrid_threshold` (`sep_flags.hybrid_flag`). All methods are scored on the "
             f"same stamps: those where SEP_paper did not fail ({n_failed} failures over all "
             "noise sets are left out).", "",
             f"Intervals: {cfg.n_bootstrap} resamples of a bootstrap over galaxies "
             "(`metrics.group_bootstrap`): each stamp belongs to its main galaxy `gal_id0`; "
             "a resample draws that many main galaxies with replacement and takes all their "
             "stamps, in every noise realisation. The companion of a pair is not resampled "
             "with it: companions are reused across main galaxies, which leaves some "
             "correlation between resampled groups, so the intervals may still be a little "
             "narrow. Differences are computed within each resample (paired). No McNemar "
             "test: it treats stamps as independent, which reused galaxies are not.", ""]
    for subset, title in (("all", "all stamps"),
                          ("snr", f"stamps whose galaxies all have SNR >= {cfg.snr_min:g}")):
        for h in heads:
            for sigma in sigmas:
                values = pooled_values(rows, h["name"], sigma, subset)
                lines += [f"## {title}: head `{h['name']}`, sigma {sigma:g} ADU", ""]
                lines += _pooled_tables(cfg, values) + [""]
        lines += [f"### Targets of issue 12 ({title}; head `{head0}`, sigma {sigma0:g} ADU)",
                  "", "| target | required | measured [68 %] [95 %] | result |",
                  "|---|---|---|---|"]
        for desc, target, shown, verdict in check_targets(rows, head0, sigma0, subset,
                                                          targets):
            lines.append(f"| {desc} | {target} | {shown} | {verdict} |")
        lines.append("")
    if len(sigmas) > 1 or len(heads) > 1 or len(cfg.realisations) > 1:
        lines += ["## Accuracy per head and noise (all stamps; mean over realisations, "
                  "± their std when there are several)", "",
                  "| head | training sigma | test sigma | BH | SEP_paper | SEP_stage | hybrid |",
                  "|---|---|---|---|---|---|---|"]
        for h in sorted(heads, key=lambda h: h["train_sigma"]):
            for sigma in sigmas:
                cells = []
                for method in LABELS:
                    m, s = mean_std(lookup(rows, h["name"], sigma, "all", method, "accuracy"))
                    cells.append(f"{m:.4f}" + (f" ± {s:.4f}" if np.isfinite(s) else ""))
                lines.append(f"| `{h['name']}` | {h['train_sigma']:g} | {sigma:g} | "
                             + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Figures", ""] + [f"- `{name}`" for name in names[2:]]
    shown_cfg = config_to_dict(cfg)
    for key in ("dataset", "output_dir"):
        shown_cfg[key] = shown_path(shown_cfg[key])
    shown_cfg["heads"] = [shown_path(h) for h in shown_cfg["heads"]]
    attrs = info["attrs"]
    lines += ["", "## Provenance", "",
              f"bh-stage {__version__}; data set attributes: seed {attrs.get('seed')}, "
              f"set_kind {attrs.get('set_kind')}; head "
              "weights sha256 " + ", ".join(f"`{h['name']}`: {h['sha256'][:12]}" for h in heads)
              + f"; run time {info['elapsed_s']:.0f} s.", "", "Resolved config:", "",
              "```yaml", yaml.safe_dump(shown_cfg, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)
