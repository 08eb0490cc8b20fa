"""The default tile head's logits on two instruction sets: the same bits in int8, in f32?

Scores 64 seeded stamps of Gaussian sources (noise of rms 14.5 ADU, features at the head's
training mean) with the shipped default tile head in f32 and in int8 and saves the logits
(``--save``); run once natively and once under ``valgrind --tool=none``, whose emulated CPU
offers AVX2 and FMA but no AVX-512 or AMX (TensorFlow's start-up message lists what it
found), then compare the two files (``--compare``), which writes the result JSON.

    python bench/bench_int8_isa.py --save WORKDIR/native.npz
    valgrind --tool=none python bench/bench_int8_isa.py --save WORKDIR/avx2.npz
    python bench/bench_int8_isa.py --compare WORKDIR/native.npz WORKDIR/avx2.npz

Writes bench/results/int8_isa.json.
"""

import numpy as np

from bh_stage import tilehead

import benchlib


def source_stamps(n, seed=11):
    """Noise stamps (65x65, rms 14.5 ADU) with a Gaussian source of random flux (20-500
    ADU) and sigma (1-4 px) at the centre."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:65, :65] - 32
    stamps = rng.normal(0, 14.5, (n, 65, 65)).astype(np.float32)
    flux = rng.uniform(20, 500, n)[:, None, None]
    size = rng.uniform(1.0, 4.0, n)[:, None, None]
    return stamps + (flux * np.exp(-(xx ** 2 + yy ** 2) / (2 * size ** 2))).astype(np.float32)


def main():
    parser = benchlib.parser(__doc__, "int8_isa.json")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", help="score the stamps here and save the logits (.npz)")
    mode.add_argument("--compare", nargs=2, metavar="NPZ", help="compare two saved runs")
    parser.add_argument("--n-stamps", type=int, default=64)
    args = parser.parse_args()
    if args.save:
        stamps = source_stamps(args.n_stamps)
        logits = {}
        for precision in ("f32", "int8"):
            head = tilehead.load_tile_head(tilehead.tile_head_path("default"), precision)
            feats = np.tile(np.asarray(head.metadata["feature_mean"], np.float32),
                            (len(stamps), 1))
            logits[precision] = head.logits(stamps, 14.5, feats)
        np.savez(args.save, **logits)
        print(f"saved {args.save}")
        return
    a, b = (np.load(path) for path in args.compare)
    rows = {}
    for precision in ("f32", "int8"):
        diff = np.abs(a[precision] - b[precision])
        rows[precision] = {"n": int(diff.size), "differing": int((diff != 0).sum()),
                           "max_abs_difference": float(diff.max())}
        print(f"{precision}: {rows[precision]['differing']} of {diff.size} logits differ, "
              f"by at most {diff.max():.3g}")
    benchlib.write_result(args.output, {"files": args.compare, **rows})


if __name__ == "__main__":
    main()
