"""Compact network inference: TensorFlow (the stage's f32) against OpenVINO f32 (issue 15).

Times the shipped tile head's network (or, with ``--paper-head``, a compact paper head's),
one orientation, on random input in batches of 1024, both runtimes interleaved, best of
``--repeat``; prints network-only stamps/s, their ratio and the largest logit difference;
writes a JSON.

    python bench/bench_tile_head_runtime.py
    python bench/bench_tile_head_runtime.py --paper-head compact_paper_sigma15 \
        --output bench/results/compact_paper_runtime.json
"""

import json
import time

import numpy as np

from bh_stage import model, tilehead

import benchlib


def best_rate(fn, n, repeat):
    fn()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return n / best, out


def main():
    ap = benchlib.parser(__doc__, "tile_head_runtime.json")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--paper-head", help="a compact paper head (name or .json) instead")
    args = ap.parse_args()
    import openvino as ov
    import tensorflow as tf

    if args.paper_head:
        head = model.load_classifier(args.paper_head)
        k = n_features = 0
    else:
        head = tilehead.load_tile_head(tilehead.tile_head_path("default"))
        k, n_features = len(head.catalogue_columns), len(head.metadata["feature_mean"])
    side = head.metadata["stamp_side_pix"]
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (args.n, side, side, 1)).astype(np.float32)
    f = rng.normal(0, 1, (args.n, n_features)).astype(np.float32)
    spec = [tf.TensorSpec([None, side, side, 1], tf.float32),
            tf.TensorSpec([None, f.shape[1]], tf.float32)]
    # the network as the head runs it (TileHead and CompactClassifier alike)
    fn = tf.function(lambda x, f: head.model([x, f], training=False), autograph=False,
                     reduce_retracing=True)
    concrete = tf.function(fn, autograph=False, input_signature=spec)
    compiled = ov.Core().compile_model(ov.convert_model(concrete.get_concrete_function()),
                                       "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    batches = range(0, args.n, 1024)
    res = {"n": args.n, "head": str(head.metadata["architecture"]), "catalogue_columns": k,
           "openvino": ov.__version__, "tensorflow": tf.__version__}
    rates = {"tensorflow": [], "openvino": []}
    outs = {}
    for _ in range(2):  # interleaved, so both see the same machine load
        r, outs["tensorflow"] = best_rate(lambda: np.concatenate(
            [np.asarray(fn(x[i:i + 1024], f[i:i + 1024])) for i in batches]),
            args.n, args.repeat)
        rates["tensorflow"].append(r)
        r, outs["openvino"] = best_rate(lambda: np.concatenate(
            [compiled([x[i:i + 1024], f[i:i + 1024]])[0] for i in batches]),
            args.n, args.repeat)
        rates["openvino"].append(r)
    res.update({f"{k}_stamps_per_s": max(v) for k, v in rates.items()})
    res["openvino_over_tensorflow"] = res["openvino_stamps_per_s"] / res[
        "tensorflow_stamps_per_s"]
    res["max_abs_logit_difference"] = float(np.max(np.abs(
        outs["openvino"].ravel() - outs["tensorflow"].ravel())))
    print(json.dumps(res, indent=1))
    benchlib.write_result(args.output, res)


if __name__ == "__main__":
    main()
