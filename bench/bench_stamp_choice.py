"""Choose the stamp head's preprocessing on validation stamps (issue 12's held-out protocol).

Reads the ``metrics.csv`` of ``bh-stage evaluate`` runs of candidate heads on the same
validation stamps (realistic stamps of training galaxies: ``set_kind: real``,
``real_half: train`` for heads trained on the training half), prints their pooled
galaxy-bootstrap values side by side and picks, by a rule fixed before the runs, the
candidate with the highest partial AUC of BlendHunter alone over FPR <= 0.05 (``BH:pauc``):
threshold-free and in the low-FPR region where BlendHunter is used. Writes a JSON.

    python bench/bench_stamp_choice.py --candidate caffe_clip=WORKDIR/eval/valA_caffe_clip \
        --candidate caffe=WORKDIR/eval/valA_caffe --reference shipped=WORKDIR/eval/valA_80k \
        --output bench/results/stamp_choice.json
"""

import argparse
import csv
from pathlib import Path

import benchlib

RULE = "BH:pauc"
SHOWN = ["BH:pauc", "BH:auc", "BH:accuracy", "BH:fpr", "BH@SEP_paper:tpr_at_fpr",
         "BH@SEP_paper:tpr_close_at_fpr", "hybrid:accuracy", "hybrid-SEP_stage:accuracy",
         "SEP_stage:accuracy", "SEP_paper:accuracy"]


def pooled(folder):
    """{'method:metric': [value, lo68, hi68, lo95, hi95]} of the pooled rows, all stamps."""
    with open(Path(folder) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f)
                if r["realisation"] == "pooled" and r["stamps"] == "all"]
    return {f'{r["method"]}:{r["metric"]}': [float(r[k]) if r[k] else float("nan")
                                             for k in ("value", "lo68", "hi68", "lo95",
                                                       "hi95")] for r in rows}


def named(text):
    name, _, folder = text.partition("=")
    if not folder:
        raise argparse.ArgumentTypeError(f"{text}: expected NAME=FOLDER")
    return name, Path(folder)


def main():
    ap = benchlib.parser(__doc__, "stamp_choice.json")
    ap.add_argument("--candidate", action="append", required=True, type=named,
                    help="NAME=evaluate output folder of a candidate head")
    ap.add_argument("--reference", action="append", default=[], type=named,
                    help="NAME=folder of a head shown beside the candidates, not chosen")
    args = ap.parse_args()

    values = {name: pooled(folder) for name, folder in args.candidate + args.reference}
    choice = max((name for name, _ in args.candidate), key=lambda n: values[n][RULE][0])
    print("metric".ljust(32) + "".join(n.rjust(24) for n in values))
    for key in SHOWN:
        print(key.ljust(32) + "".join(
            f"{v[key][0]:.4f} [{v[key][3]:.4f},{v[key][4]:.4f}]".rjust(24)
            for v in values.values()))
    print(f"chosen by {RULE}: {choice}")
    benchlib.write_result(args.output, {
        "rule": f"highest {RULE} on validation", "choice": choice,
        "candidates": {n: str(f) for n, f in args.candidate},
        "references": {n: str(f) for n, f in args.reference},
        "interval": "value, 68 % (lo, hi), 95 % (lo, hi), galaxy bootstrap",
        "validation": values})
    print(choice)


if __name__ == "__main__":
    main()
