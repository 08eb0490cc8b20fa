"""A tile head's network quantized to 8-bit integers (``tile_head_precision: int8``).

``quantize_tile_head`` converts the head's Keras network, up to its last hidden layer, to a
TensorFlow Lite model whose weights (per output channel) and activations are 8-bit
integers (the logit stays float: ``tilehead.Int8Network``), the activations' ranges set on
the network inputs of detections of training tiles (training galaxies only; never
validation or test tiles), writes it beside the head and records it in the head's JSON
(``tilehead.INT8_KEY``). ``train-tile`` calls it for every head it trains;
``bench/quantize_tile_head.py`` for an existing head. Whether it is good enough is measured
on the validation tiles (``bench/bench_tile_head_variants.py --precisions f32,int8``).
"""

import warnings

import numpy as np

from .. import __version__, heads, tilehead
from ..io import atomic_write_bytes, file_sha256
from ..nets.compact import dihedral

__all__ = ["representative_inputs", "quantize_tile_head"]


def representative_inputs(head, img, features, n_stamps=1000, seed=0):
    """Network inputs of ``n_stamps`` detections drawn at random from ``img`` (scaled
    stamps, ``train_tile.role_arrays``) and their raw ``features``: ``(x, f)``, each stamp
    in one of the head's orientations in turn, the features normalised as the head does."""
    rows = np.sort(np.random.default_rng(seed).choice(len(img), min(n_stamps, len(img)),
                                                      replace=False))
    x = np.concatenate([dihedral(img[r:r + 1], i % head.n_orientations)
                        for i, r in enumerate(rows)])
    mean = np.asarray(head.metadata["feature_mean"], np.float32)
    scale = np.asarray(head.metadata["feature_scale"], np.float32)
    return x, ((np.asarray(features)[rows] - mean) / scale).astype(np.float32)


def quantize_tile_head(head_json, img, features, tiles, n_stamps=1000, seed=0):
    """Write the 8-bit network of the tile head ``head_json`` (``<name>.int8.tflite``) and
    record it in the head's JSON; return the ``.tflite`` path.

    ``img``, ``features``: scaled stamps and raw features of detections of training tiles
    (``train_tile.role_arrays``), whose ``representative_inputs`` set the activations'
    ranges; ``tiles``: the names of those tiles, recorded."""
    import keras
    import tensorflow as tf

    head = tilehead.load_tile_head(head_json)
    x, feats = representative_inputs(head, img, features, n_stamps, seed)
    # the network up to its last hidden layer; the logit, a 128-weight sum, stays float
    # (Int8Network): quantized, it would be clipped to the range of the training tiles
    hidden = keras.Model(head.model.inputs, head.model.get_layer("dense").output,
                         name="bh_tile_head_hidden")
    converter = tf.lite.TFLiteConverter.from_keras_model(hidden)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    names = [t.name.split(":")[0] for t in hidden.inputs]  # 'stamp', 'catalogue'
    converter.representative_dataset = lambda: (
        {names[0]: x[i:i + 1], names[1]: feats[i:i + 1]} for i in range(len(x)))
    with warnings.catch_warnings():  # float32 inputs need no input statistics; tf.lite's
        warnings.simplefilter("ignore")  # notice that LiteRT will replace its interpreter
        blob = converter.convert()
    path = head.path.with_name(head.path.name[:-len(".json")] + ".int8.tflite")
    atomic_write_bytes(path, lambda fh: fh.write(blob))
    meta = dict(head.metadata)
    meta[tilehead.INT8_KEY] = {
        "file": path.name, "sha256": file_sha256(path),
        "weights_sha256": meta["weights_sha256"], "bh_stage_version": __version__,
        "tensorflow_version": tf.__version__,
        "ranges_from": {"tiles": [str(t) for t in tiles], "n_stamps": int(len(x)),
                        "seed": int(seed)}}
    heads.write_metadata(head.path, meta)
    return path
