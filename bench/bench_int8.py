"""Can the network run in int8 within |dP| <= 0.02 of f32? Post-training quantisation, measured.

The fused network (backbone + head) is converted to OpenVINO and quantised with NNCF (the
``bench`` extra: ``pip install -e ".[bench]"``; not a dependency of the stage), calibrated on
real-image stamps: the noisy training-split real-image stamps of a training data set. Scored
on realistic stamps against
OpenVINO f32: max and 99th percentile of |dP|, decisions flipped at the head's threshold,
accuracy, stamps/s. Variants: the whole network quantised, and the head (MatMul) kept in f32.
Writes bench/results/int8.json.

    python bench/bench_int8.py --dataset simulated/mixed24k.h5 \
        --realistic simulated/realistic4k.h5 --n-calibration 300 --n-test 1000
"""

import sys
import time

import numpy as np

from bh_stage import heads, io, model
from bh_stage.nets import vgg
from bh_stage.nets.openvino import openvino_model
from bh_stage.study import train

import benchlib
TOLERANCE = 0.02


def network_input(path, attrs, rows, sigma_adu, mode):
    return vgg.preprocess(train.noisy_stamps(path, attrs, rows, sigma_adu), mode)


def scores(compiled, x, batch=256):
    return np.concatenate([compiled(x[i:i + batch])[0].reshape(-1)
                           for i in range(0, len(x), batch)])


def main():
    parser = benchlib.parser(__doc__, "int8.json")
    parser.add_argument("--dataset", required=True, help="training data set (.h5)")
    parser.add_argument("--realistic", required=True, help="realistic test set (.h5)")
    parser.add_argument("--head", default="cfis_sigma15_clip_80k")
    parser.add_argument("--n-calibration", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--train-sigma-adu", type=float, default=15.0)
    parser.add_argument("--test-sigma-adu", type=float, default=14.5)
    args = parser.parse_args()

    try:
        import nncf
    except ImportError:
        sys.exit('bench_int8.py needs NNCF, an optional extra: pip install -e ".[bench]"')

    clf = model.load_classifier(heads.head_path(args.head))
    core, ov_model = openvino_model(clf.model, clf.metadata, clf.input_shape)
    mode = clf.preprocess_mode
    meta = io.read_dataset(args.dataset, stamps=False)
    kind = np.char.strip(np.asarray(meta.truth["kind"]).astype("S"))
    cal_rows = np.flatnonzero((meta.truth["split"] == train.SPLIT_TRAIN) & (kind == b"real"))
    cal = network_input(args.dataset, meta.attrs, cal_rows[:args.n_calibration],
                        args.train_sigma_adu, mode)
    rmeta = io.read_dataset(args.realistic, stamps=False)
    label = rmeta.truth["label"][:args.n_test] == 1
    rows = np.arange(len(label))
    x = network_input(args.realistic, rmeta.attrs, rows, args.test_sigma_adu, mode)
    t0 = time.perf_counter()
    p32 = scores(core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), x)
    out = {"head": str(clf.head_path), "n_calibration": len(cal), "n_test": len(rows),
           "tolerance": TOLERANCE, "f32": {"stamps_per_s": len(x) / (time.perf_counter() - t0),
                                            "accuracy": float(np.mean((p32 >= clf.blend_threshold) == label))}}
    calibration = nncf.Dataset([cal[i:i + 1] for i in range(len(cal))])
    variants = {"all": {}, "head_f32": {"ignored_scope": nncf.IgnoredScope(types=["MatMul"])}}
    for name, kwargs in variants.items():
        t0 = time.perf_counter()
        quantised = nncf.quantize(ov_model, calibration, subset_size=len(cal), **kwargs)
        quantise_s = time.perf_counter() - t0
        compiled = core.compile_model(quantised, "CPU")
        t0 = time.perf_counter()
        p8 = scores(compiled, x)
        speed = len(x) / (time.perf_counter() - t0)
        d = np.abs(p8 - p32)
        out[name] = {"quantise_s": round(quantise_s, 1), "stamps_per_s": speed,
                     "max_abs_dp": float(d.max()), "p99_abs_dp": float(np.percentile(d, 99)),
                     "flipped": int(np.sum((p8 >= clf.blend_threshold)
                                           != (p32 >= clf.blend_threshold))),
                     "accuracy": float(np.mean((p8 >= clf.blend_threshold) == label)),
                     "within_tolerance": bool(d.max() <= TOLERANCE)}
        r = out[name]
        print(f"int8 {name}: {speed:.0f} stamps/s (f32 {out['f32']['stamps_per_s']:.0f}, ratio "
              f"{speed / out['f32']['stamps_per_s']:.2f}); max |dP| {r['max_abs_dp']:.3f}, p99 "
              f"{r['p99_abs_dp']:.3f} (tolerance {TOLERANCE}); {r['flipped']} of {len(x)} "
              f"decisions flipped; accuracy {r['accuracy']:.4f} vs f32 {out['f32']['accuracy']:.4f}")
    benchlib.write_result(args.output, out)


if __name__ == "__main__":
    main()
