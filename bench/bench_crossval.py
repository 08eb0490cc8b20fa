"""2-fold cross-validation over the real galaxies (issue 12): pool two ``bh-stage evaluate``
runs, each a head scored on the real galaxies it was not trained on.

Fold A: a head trained on parametric + training-half real galaxies, tested on the test half;
fold B: trained on parametric + test-half galaxies (``mixed_real_half: test``), tested on the
training half. So every real galaxy is a test galaxy once. Each fold's ``scores.npz`` holds
its test stamps and its head's thresholds; the pooled value of every metric is the mean of
the two folds, with 68 % and 95 % intervals from a bootstrap that resamples galaxies within
each fold (``evaluate.crossval_intervals``). Prints the headline metrics per fold and
pooled, checks the issue's targets on the pooled values, writes a JSON.

    python bench/bench_crossval.py --fold WORKDIR/eval/testA --fold WORKDIR/eval/testB \
        --output bench/results/crossval.json
"""

from pathlib import Path

from bh_stage.io import read_scores
from bh_stage.study.evaluate import TARGETS, crossval_intervals
from bh_stage.study.evaluate_report import target_verdicts

import benchlib

HEADLINE = [
    "BH:accuracy", "SEP_paper:accuracy", "SEP_stage:accuracy", "hybrid:accuracy",
    "BH:fpr", "SEP_paper:fpr", "SEP_stage:fpr", "hybrid:fpr",
    "BH:tpr_close", "SEP_paper:tpr_close", "hybrid:tpr_close",
    "BH:auc", "BH:pauc", "SEP_paper:pauc_scan", "BH@SEP_paper:tpr_at_fpr",
    "BH@SEP_paper:fpr_at_tpr", "BH@SEP_paper:tpr_close_at_fpr", "BH@SEP_paper:fpr_slack",
    "hybrid-SEP_stage:accuracy", "hybrid-SEP_paper:accuracy", "hybrid-SEP_stage:fpr",
    "BH-SEP_paper:accuracy", "BH-SEP_paper:tpr_close_at_fpr",
    "BH-SEP_stage:tpr_close_at_fpr",
]


def fmt(v):
    return f"{v[0]:+.4f} [{v[1]:+.4f}, {v[2]:+.4f}] [{v[3]:+.4f}, {v[4]:+.4f}]"


def main():
    ap = benchlib.parser(__doc__, "crossval.json")
    ap.add_argument("--fold", action="append", required=True, type=Path,
                    help="an evaluate output folder (with scores.npz); give it once per fold")
    ap.add_argument("--close-max-pix", type=float, default=10.0)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snr", action="store_true",
                    help="only the stamps whose galaxies all reach evaluate's snr_min")
    args = ap.parse_args()

    folds = [read_scores(d / "scores.npz") for d in args.fold]
    if args.snr:
        folds = [({k: (v[:, d["snr_ok"]] if k == "sep_scan" else v[d["snr_ok"]])
                   for k, v in d.items()}, t) for d, t in folds]
    out = crossval_intervals(folds, args.close_max_pix, args.n_bootstrap, args.seed)
    for key in HEADLINE:
        cells = [fmt(f[key]) for f in out["folds"]] + [fmt(out["pooled"][key])]
        print(f"{key:32s} " + " | ".join(cells))
    targets = []
    for (desc, key, _, thr, _), (_, text, _, verdict) in zip(
            TARGETS, target_verdicts(out["pooled"], TARGETS)):
        v = out["pooled"][key]
        targets.append({"target": desc, "key": key, "threshold": thr, "measured": v,
                        "reached": verdict == "PASS"})
        print(f"target {desc} ({text}): {fmt(v)} {verdict}")
    n_gal = [int(len(set(d["gal_id0"].tolist()))) for d, _ in folds]
    n_stamps = [int(len(d["label"])) for d, _ in folds]
    benchlib.write_result(args.output, {
        "folds": [str(d) for d in args.fold], "snr_subset": args.snr,
        "n_stamps": n_stamps, "n_galaxies": n_gal,
        "thresholds": [t for _, t in folds], "n_bootstrap": args.n_bootstrap,
        "interval": "value, 68 % (lo, hi), 95 % (lo, hi); pooled = mean of the folds",
        "pooled": out["pooled"], "per_fold": out["folds"], "targets": targets})


if __name__ == "__main__":
    main()
