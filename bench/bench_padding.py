"""Which padding should inference use? Scores the realistic set two ways with one head.

Training stamps get noise over the whole 65x65 stamp (51x51 + 7 px zero padding, then noise).
At inference the 51x51 cut from the tile is noisy and the 7 px border must be filled: with
Gaussian noise of the tile's rms (what ``stamps.cut_stamps`` does, ``noise``) or with zeros
(``zeros``). Prints BLEND_PROB's accuracy at the head's threshold and ROC AUC for each and
writes bench/results/padding.json.

    python bench/bench_padding.py --dataset simulated/realistic4k.h5 --max-stamps 2000
"""

import numpy as np

from bh_stage import heads, io, model
from bh_stage.stamps import add_noise, dataset_noise_seeds
from bh_stage.study.metrics import accuracy, roc_auc

import benchlib


def main():
    parser = benchlib.parser(__doc__, "padding.json")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--head", default="cfis_sigma15_clip_80k")
    parser.add_argument("--sigma-adu", type=float, default=14.5)
    parser.add_argument("--max-stamps", type=int, default=2000)
    args = parser.parse_args()

    truth = io.read_truth(args.dataset)
    rows = np.sort(np.random.default_rng(0).permutation(len(truth))[:args.max_stamps])
    ds = io.read_dataset(args.dataset, rows)
    pad = int(ds.attrs["pad_pix"])
    noisy = add_noise(ds.stamps, args.sigma_adu,
                      dataset_noise_seeds(ds.attrs["seed"], args.sigma_adu, 0, rows))
    zeros = noisy.copy()
    border = np.ones(noisy.shape[1:], dtype=bool)
    border[pad:-pad, pad:-pad] = False
    zeros[:, border] = 0.0
    clf = model.load_classifier(heads.head_path(args.head))
    label = ds.truth["label"] == 1
    out = {"dataset": str(args.dataset), "head": str(clf.head_path), "n": len(rows)}
    for name, stamps in (("noise", noisy), ("zeros", zeros)):
        p = clf.predict_proba(stamps)
        out[name] = {"accuracy": accuracy(p >= clf.blend_threshold, label),
                     "auc": roc_auc(p, label)}
        print(f"padding {name}: accuracy {out[name]['accuracy']:.4f}, "
              f"AUC {out[name]['auc']:.4f} ({len(rows)} stamps)")
    benchlib.write_result(args.output, out)


if __name__ == "__main__":
    main()
