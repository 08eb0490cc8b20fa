"""Benchmark the BlendHunter network on this machine.

Prints backbone + head stamps/s in f32 (TensorFlow ``tf.function``) and bf16 (OpenVINO), their
ratio, max |dP| between them, and feature-extraction stamps/s (preprocess + backbone, as
training does); writes the numbers as JSON to ``bench/results/bench_model_<host>.json``.

Usage: ``python bench/bench_model.py [--n 512] [--batch 256]``
"""

import logging
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from bh_stage import heads
from bh_stage import model as bh_model
from bh_stage.nets import vgg
from bh_stage.nets.openvino import compile_bf16

import benchlib

log = logging.getLogger("bench_model")


def _stamps(n, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:65, :65]
    out = rng.normal(0, 15, (n, 65, 65)).astype(np.float32)
    for i in range(n):
        s = rng.uniform(1.5, 3.5)
        out[i] += rng.uniform(200, 2000) * np.exp(-((xx - 32)**2 + (yy - 32)**2) / (2 * s**2))
    return out


def _rate(fn, stamps, repeat=2):
    fn(stamps[:16])  # warm up / trace
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(stamps)
        best = min(best, time.perf_counter() - t0)
    return len(stamps) / best, out


def main(argv=None):
    parser = benchlib.parser(__doc__)
    parser.add_argument("--n", type=int, default=512, help="stamps per timing")
    parser.add_argument("--batch", type=int, default=256, help="stamps per network call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stamps = _stamps(args.n)
    backbone = vgg.build_backbone("hed")
    rng = np.random.default_rng(1)
    shapes = [(2048, 256), (256,), (256, 1024), (1024,), (1024, 1), (1,)]
    weights = [rng.normal(0, 0.02, s).astype(np.float32) for s in shapes]
    meta = {"backbone": "hed", "backbone_sha256": vgg.backbone_sha256("hed"),
            "preprocess": "caffe", "input_shape": [65, 65, 3], "blend_threshold": 0.5,
            "hybrid_threshold": 0.5}
    res = {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "n_stamps": args.n, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        head = heads.save_head(Path(tmp) / "bench.json", weights, meta)
        f32 = bh_model.load_classifier(head, backbone=backbone, batch_size=args.batch)
        res["f32_stamps_per_s"], p32 = _rate(f32.predict_proba, stamps)
        try:
            t0 = time.perf_counter()
            bf16 = bh_model.load_classifier(head, precision="bf16", backbone=backbone,
                                            batch_size=args.batch, ov_cache_dir=tmp)
            res["bf16_build_s"] = time.perf_counter() - t0
            res["bf16_stamps_per_s"], p16 = _rate(bf16.predict_proba, stamps)
            res["bf16_over_f32"] = res["bf16_stamps_per_s"] / res["f32_stamps_per_s"]
            res["max_abs_dp_bf16_f32"] = float(np.max(np.abs(p16 - p32)))
            # from a compilation like bf16's own, which the classifier keeps to itself
            compiled = compile_bf16(f32.model, heads.load_head(head), f32.input_shape, tmp)
            res["openvino_inference_precision"] = str(
                compiled.get_property("INFERENCE_PRECISION_HINT"))
        except ImportError as err:
            log.warning("no bf16 timing: %s", err)
    res["features_stamps_per_s"], _ = _rate(
        lambda s: vgg.extract_features(s, backbone, "caffe", args.batch), stamps)
    for key, value in res.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    benchlib.write_result(args.output or f"bench_model_{res['host']}.json", res)


if __name__ == "__main__":
    main()
