"""A tile head's 8-bit network (``tile_head_precision: int8``; issue 24: a cheaper stage).

Converts the head's network to TensorFlow Lite with 8-bit weights and activations, the
activations' ranges set on detections of training tiles (``study.quantize``; prepared
here if missing, with the settings the head records of its training tiles), writes
``<name>.int8.tflite`` beside the head and records it in the head's JSON. Validation and test tiles are not read; measure the result on the validation tiles
with ``bench/bench_tile_head_variants.py HEAD.json --precisions f32,int8``.

    python bench/quantize_tile_head.py --work-dir WORKDIR/tiles \\
        bh_stage/data/heads/tile_unrecognised_positions_o2.json --train-seeds 101 \\
        [--n-stamps 1000] [--seed 0]
"""

import argparse
import dataclasses
from pathlib import Path

from bh_stage.config import TileSetConfig, config_from_dict
from bh_stage.study import quantize, tileset, train_tile
from bh_stage.tilehead import load_tile_head


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("head", type=Path, help="the tile head's .json (rewritten)")
    parser.add_argument("--work-dir", required=True, help="tiles.work_dir of train-tile")
    parser.add_argument("--train-seeds", default="101",
                        help="comma-separated seeds of the training tiles to read")
    parser.add_argument("--n-stamps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    meta = load_tile_head(args.head).metadata
    # the tiles the head was trained on (its recorded settings), at the seeds asked for
    known = {f.name for f in dataclasses.fields(TileSetConfig)} - {"train_seeds", "valid_seeds"}
    recorded = {"noise_sigma_adu": meta.get("noise_sigma_adu"), **meta.get("tiles", {})}
    tiles = config_from_dict(TileSetConfig, {
        **{k: v for k, v in recorded.items() if k in known and v is not None},
        "work_dir": args.work_dir,
        "train_seeds": [int(s) for s in args.train_seeds.split(",")]})
    folders = tileset.prepare_role(tiles, "train")
    img, feats, _ = train_tile.role_arrays(folders, meta.get("seed", 0),
                                           train_tile.source_features(meta))
    path = quantize.quantize_tile_head(args.head, img, feats, [f.name for f in folders],
                                       args.n_stamps, args.seed)
    print(f"wrote {path} ({path.stat().st_size} bytes) and its entry in {args.head}")


if __name__ == "__main__":
    main()
