"""A one-pass student of a tile head: its network trained to give, in one orientation, the
teacher's mean logit over its orientations (issue 24: a cheaper default stage).

The student has the teacher's architecture and starts from its weights; it is trained on the
training tiles' detections (their cached stamps and features, as ``train-tile`` reads them),
each batch turned by a random quarter turn (the teacher's mean over the 4 quarter turns does
not change), with a mean squared error to the teacher's mean logit; the epoch kept is the one
with the smallest error on the validation tiles (no labels used). The student is written as
an uncalibrated head (the teacher's metadata, its weights, ``n_orientations`` 1,
``distilled_from``); calibrate it on the validation tiles, which reads no training tile, with

    bh-stage train-tile example_config/train-tile.yml --set weights_from=STUDENT.json \\
        --set n_orientations=1 --set head_name=NAME ...

Test tiles are never read.

    python bench/distill_tile_head.py --work-dir WORKDIR/tiles \\
        --teacher tile_unrecognised_positions --output-head WORKDIR/heads/student.json \\
        [--epochs 6]
"""

import time
from pathlib import Path

import numpy as np

from bh_stage import tilehead
from bh_stage.config import TileSetConfig, config_from_dict
from bh_stage.heads import save_head
from bh_stage.nets.compact import build_compact
from bh_stage.study import tileset, train_tile

import benchlib


def teacher_logits(head, img, feats, n_orientations):
    """The teacher's mean logit over its orientations (float32)."""
    return head.input_logits(img, feats, n_orientations).astype(np.float32)


def main():
    parser = benchlib.parser(__doc__, "distill_tile_head.json")
    parser.add_argument("--work-dir", required=True, help="tiles.work_dir of train-tile")
    parser.add_argument("--teacher", default="tile_unrecognised_positions")
    parser.add_argument("--output-head", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    tiles = config_from_dict(TileSetConfig, {"work_dir": args.work_dir})
    teacher = tilehead.load_tile_head(tilehead.tile_head_path(args.teacher))
    meta = teacher.metadata
    kind = train_tile.source_features(meta)
    n_teacher = teacher.n_orientations
    t0 = time.perf_counter()
    data = {}
    for role in ("train", "valid"):
        img, feats, _ = train_tile.role_arrays(tileset.tile_folders(tiles, role), 0, kind)
        f = ((feats - teacher._mean) / teacher._scale).astype(np.float32)
        data[role] = (img.astype(np.float32), f, teacher_logits(teacher, img, feats, n_teacher))
        print(f"{role}: {len(img)} detections, teacher logits in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    student = build_compact(meta["stamp_side_pix"], len(teacher.feature_names),
                            meta["architecture"])
    student.set_weights(teacher.model.get_weights())
    optimizer = keras.optimizers.Adam(args.learning_rate)
    student.compile(optimizer=optimizer, loss="mse")
    predict = tf.function(lambda x, f: student([x, f], training=False), autograph=False,
                          reduce_retracing=True)

    def valid_mse():
        img, f, z = data["valid"]
        pred = np.concatenate([np.asarray(predict(img[i:i + 1024], f[i:i + 1024])).reshape(-1)
                               for i in range(0, len(img), 1024)])
        return float(np.mean((pred - z) ** 2))

    rng = np.random.default_rng(args.seed)
    img, f, z = data["train"]
    history = [{"epoch": 0, "valid_mse": valid_mse(), "seconds": time.perf_counter() - t0}]
    print(history[-1], flush=True)
    best = (history[0]["valid_mse"], student.get_weights(), 0)
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(img))
        losses = []
        for i in range(0, len(order), args.batch_size):
            rows = np.sort(order[i:i + args.batch_size])
            turned = np.ascontiguousarray(np.rot90(img[rows], int(rng.integers(4)), axes=(1, 2)))
            losses.append(float(student.train_on_batch([turned, f[rows]], z[rows])))
        history.append({"epoch": epoch, "train_mse": float(np.mean(losses)),
                        "valid_mse": valid_mse(), "seconds": time.perf_counter() - t0})
        print(history[-1], flush=True)
        if history[-1]["valid_mse"] < best[0]:
            best = (history[-1]["valid_mse"], student.get_weights(), epoch)
    out_meta = {k: v for k, v in meta.items()
                if k not in ("weights_file", "weights_sha256", "n_weight_arrays",
                             "bh_stage_version", "calibrated_from", tilehead.INT8_KEY)}
    out_meta.update({
        "n_orientations": 1,
        "distilled_from": {"head": Path(teacher.path).name, "n_orientations": n_teacher,
                           "weights_sha256": meta["weights_sha256"],
                           "train_seeds": tiles.train_seeds, "valid_seeds": tiles.valid_seeds,
                           "loss": "mean squared error to the teacher's mean logit, a random "
                                   "quarter turn a batch",
                           "epochs": args.epochs, "best_epoch": best[2],
                           "learning_rate": args.learning_rate,
                           "batch_size": args.batch_size, "seed": args.seed,
                           "valid_mse": best[0], "history": history,
                           "command": benchlib.provenance()["command"]}})
    save_head(args.output_head, best[1], out_meta, overwrite=True)
    benchlib.write_result(args.output, {"teacher": str(teacher.path),
                                        "student": str(args.output_head),
                                        "best_epoch": best[2], "history": history})


if __name__ == "__main__":
    main()
