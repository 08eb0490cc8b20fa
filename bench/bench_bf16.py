"""How far is precision bf16 (OpenVINO) from f32 (TensorFlow), and how much faster is it?

Run on a CPU where OpenVINO really computes in bf16 (AVX512-bf16 or AMX; the script stops
otherwise). The shipped VGG16 sigma 15 head (``cfis_sigma15_clip_80k``) on synthetic stamps:
one or two Gaussian blobs of 200-2000 ADU peak plus Gaussian noise of 15 ADU, 65x65 padded, as
``tests/test_model.py::blob_stamps``; ``--n`` stamps from ``--seed``, and the 200 stamps of
``test_bf16_close_to_f32`` (seed 2).

For each set: max, 99th and 99.9th percentile of |P_bf16 - P_f32|, the largest logit error
(stamps with 0.01 < P_f32 < 0.99), the fraction of decisions that flip at the head's
``blend_threshold`` and the largest |P_f32 - threshold| of a flipped stamp. Stamps/s of each
precision, best of ``--repeat`` passes over ``--n-time`` stamps (the machine may be shared:
the load average is recorded). Writes ``bench/results/bf16.json`` and prints the numbers.

    python bench/bench_bf16.py --n 8000
"""

import json
import os
import platform
import tempfile
import time

import numpy as np

from bh_stage import model as bh_model
from bh_stage.heads import load_head
from bh_stage.nets import vgg
from bh_stage.nets.openvino import compile_bf16, runs_bf16

import benchlib


def blob_stamps(n, seed=0, sigma_adu=15.0):
    """The stamps of tests/test_model.py: one or two Gaussian blobs plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:65, :65]
    out = rng.normal(0, sigma_adu, (n, 65, 65)).astype(np.float32)
    for i in range(n):
        for k in range(1 + i % 2):
            x, y = 32 + (0 if k == 0 else rng.uniform(-12, 12)), 32 + rng.uniform(-3, 3) * k
            s = rng.uniform(1.5, 3.5)
            out[i] += rng.uniform(200, 2000) * np.exp(-((xx - x)**2 + (yy - y)**2) / (2 * s**2))
    return out


def logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p / (1 - p))


def compare(p32, p16, threshold):
    """|dP| statistics and decision flips of bf16 against f32."""
    dp = np.abs(p16.astype(np.float64) - p32)
    mid = (p32 > 0.01) & (p32 < 0.99)
    flipped = (p16 >= threshold) != (p32 >= threshold)
    return {
        "n": int(p32.size),
        "max_abs_dp": float(dp.max()),
        "p99_abs_dp": float(np.percentile(dp, 99)),
        "p999_abs_dp": float(np.percentile(dp, 99.9)),
        "median_abs_dp": float(np.median(dp)),
        "max_abs_dlogit": float(np.abs(logit(p16[mid]) - logit(p32[mid])).max()),
        "p_f32_range": [float(p32.min()), float(p32.max())],
        "flipped": int(flipped.sum()),
        "flipped_fraction": float(flipped.mean()),
        "max_flipped_distance_to_threshold": (
            float(np.abs(p32[flipped] - threshold).max()) if flipped.any() else 0.0),
    }


def rate(clf, stamps, repeat):
    clf.predict_proba(stamps[:clf.batch_size])  # warm up / trace
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        clf.predict_proba(stamps)
        best = min(best, time.perf_counter() - t0)
    return len(stamps) / best


def main(argv=None):
    parser = benchlib.parser(__doc__, "bf16.json")
    parser.add_argument("--n", type=int, default=8000, help="stamps compared")
    parser.add_argument("--n-time", type=int, default=512, help="stamps per timed pass")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (best kept)")
    parser.add_argument("--batch", type=int, default=256, help="stamps per network call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stamps")
    args = parser.parse_args(argv)

    stamps = blob_stamps(args.n, seed=args.seed)
    backbone = vgg.build_backbone("hed")
    res = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "load_average_start": list(os.getloadavg()), "n_stamps": args.n,
           "seed": args.seed, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        kw = {"backbone": backbone, "batch_size": args.batch}
        head = "cfis_sigma15_clip_80k"
        f32 = bh_model.load_classifier(head, precision="f32", **kw)
        # the precision OpenVINO runs in, from a compilation like the bf16 classifier's own
        compiled = compile_bf16(f32.model, load_head(f32.head_path), f32.input_shape, tmp)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        if not runs_bf16(compiled):
            raise SystemExit(f"OpenVINO runs in {hint} here, not bf16: nothing to measure")
        bf16 = bh_model.load_classifier(head, precision="bf16", ov_cache_dir=tmp, **kw)
        threshold = f32.blend_threshold
        res.update(head=f32.head_path.name, blend_threshold=threshold,
                   openvino_inference_precision=str(hint))
        res["synthetic"] = compare(f32.predict_proba(stamps), bf16.predict_proba(stamps),
                                   threshold)
        own = blob_stamps(200, seed=2)
        res["test_stamps"] = compare(f32.predict_proba(own), bf16.predict_proba(own), threshold)
        timed = stamps[:args.n_time]
        res["f32_stamps_per_s"] = rate(f32, timed, args.repeat)
        res["bf16_stamps_per_s"] = rate(bf16, timed, args.repeat)
        res["bf16_over_f32"] = res["bf16_stamps_per_s"] / res["f32_stamps_per_s"]
    res["load_average_end"] = list(os.getloadavg())
    print(json.dumps(res, indent=1))
    benchlib.write_result(args.output, res)


if __name__ == "__main__":
    main()
