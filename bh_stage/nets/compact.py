"""The compact CNNs at the stamp's native resolution, inference side.

``build_compact`` builds an architecture of ``COMPACT_LAYERS``: 3x3 convolutions on the
central ``side_pix`` square of a stage stamp scaled by ``scale_stamps`` (asinh of the
stamp over the tile rms), whose flattened map meets ``n_features`` per-detection features
in a dense layer, ending in one logit. ``compact_cnn_catalogue_v1`` is the tile head's
network (27 million multiply-adds a stamp and orientation), ``compact_cnn_paper_v1``
the compact network for the paper's question (19 million, no features).
``orientation_logits`` averages a network's logits over flips and quarter turns.
"""

import numpy as np

from .. import cues

__all__ = ["STAMP_SIDE_PIX", "ASINH_SOFTENING_RMS", "ARCHITECTURE", "STAMP_ARCHITECTURE",
           "STAMP_CATALOGUE_ARCHITECTURE",
           "COMPACT_LAYERS",
           "centre_stamps", "asinh_scale", "scale_stamps", "dihedral",
           "orientation_logits", "build_compact", "dihedral_tf", "sigmoid"]

STAMP_SIDE_PIX = 33
"""Side of the central square of the stage stamp the tile head reads, pixels."""


ASINH_SOFTENING_RMS = 3.0
"""Stamps enter as ``asinh(x / (this * rms))``: linear up to a few sigma, compressed above."""


ARCHITECTURE = "compact_cnn_catalogue_v1"
"""Name of the tile head's network, recorded in a head's ``architecture``."""


STAMP_ARCHITECTURE = "compact_cnn_stamp_v1"
"""The position-only tile head's network: ``ARCHITECTURE``'s layers, its features measured by
the stage on the stamp (``features.FEATURE_NAMES``) instead of read from the catalogue."""


STAMP_CATALOGUE_ARCHITECTURE = "compact_cnn_stamp_catalogue_v1"
"""``STAMP_ARCHITECTURE`` that also reads SExtractor columns (``features.UNION_FEATURE_NAMES``:
the stamp's features, then the catalogue head's SExtractor features)."""


COMPACT_LAYERS = {
    ARCHITECTURE: ((32, False), (32, True), (64, False), (64, True), (64, False)),
    STAMP_ARCHITECTURE: ((32, False), (32, True), (64, False), (64, True), (64, False)),
    STAMP_CATALOGUE_ARCHITECTURE: ((32, False), (32, True), (64, False), (64, True),
                                   (64, False)),
    # the paper's question on the 51x51 stamp: 19 million multiply-adds an orientation
    "compact_cnn_paper_v1": ((16, False), (16, True), (32, False), (32, True), (64, True),
                             (64, False)),
}
"""``build_compact``'s architectures: (filters, 2x2 max-pool after) of each 3x3 convolution."""


def centre_stamps(stamps, side_pix=STAMP_SIDE_PIX):
    """Return the central ``side_pix`` square of odd-sided stamps (the object pixel stays at
    the centre)."""
    stamps = np.asarray(stamps)
    c, h = stamps.shape[-1] // 2, side_pix // 2
    return stamps[..., c - h:c + h + 1, c - h:c + h + 1]


def asinh_scale(x, rms_adu, asinh=np.arcsinh):
    """``asinh(x / (3 rms))``: the tile head's input scaling, for numpy (default) or, with
    ``asinh=tf.math.asinh``, inside TensorFlow (noise drawn on the fly in training)."""
    return asinh(x / (ASINH_SOFTENING_RMS * rms_adu))


def scale_stamps(stamps, rms_adu):
    """Network input of stamps in ADU: ``asinh_scale``, float32, shape (n, s, s, 1)."""
    x = asinh_scale(np.asarray(stamps, dtype=np.float32), rms_adu)
    return x[..., None].astype(np.float32)


def dihedral(stamps, k):
    """The k-th (0..7) of the 8 flips and 90 degree rotations of (n, s, s[, 1]) stamps:
    a rotation by ``k % 4`` quarter turns, then, for k >= 4, a left-right flip."""
    x = np.rot90(stamps, k % 4, axes=(1, 2))
    return np.ascontiguousarray(x[:, :, ::-1] if k >= 4 else x)


def orientation_logits(predict, stamps, features, n_orientations, batch_size=4096):
    """Mean logit over the first ``n_orientations`` of the ``dihedral`` transforms.

    ``predict(stamps, features)`` returns one logit per row of a batch; ``stamps`` are the
    scaled network input (n, s, s, 1). Returns float64, shape (n,).
    """
    total = np.zeros(len(stamps), dtype=np.float64)
    for k in range(n_orientations):
        turned = dihedral(stamps, k)
        total += np.concatenate([np.asarray(predict(turned[i:i + batch_size],
                                                    features[i:i + batch_size])).reshape(-1)
                                 for i in range(0, len(stamps), batch_size)] or [np.zeros(0)])
    return total / n_orientations


def build_compact(side_pix=STAMP_SIDE_PIX, n_features=len(cues.FEATURE_NAMES),
                  architecture=ARCHITECTURE, dtype=None):
    """A compact network of ``COMPACT_LAYERS``: ``[stamp (s, s, 1), features (k,)] -> logit``
    (k = 0: the stamp alone). ``dtype``: the layers' Keras dtype policy (None: float32;
    ``"mixed_bfloat16"``: bfloat16 arithmetic, float32 weights), but for the last layer,
    float32 always (a bfloat16 logit would keep 8 bits: ties in the probability). Layers
    are named, not numbered by Keras' counter, so a converted network (``study.quantize``)
    has the same bytes whatever else the process built."""
    import keras

    img = keras.Input((side_pix, side_pix, 1), name="stamp")
    feats = keras.Input((n_features,), name="catalogue")
    x = img
    for i, (filters, pool) in enumerate(COMPACT_LAYERS[architecture]):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", dtype=dtype,
                                name=f"conv{i}")(x)
        if pool:
            x = keras.layers.MaxPooling2D(dtype=dtype, name=f"pool{i}")(x)
    x = keras.layers.Concatenate(dtype=dtype, name="concatenate")(
        [keras.layers.Flatten(dtype=dtype, name="flatten")(x), feats])
    x = keras.layers.Dense(128, activation="relu", dtype=dtype, name="dense")(x)
    x = keras.layers.Dropout(0.2, dtype=dtype, name="dropout")(x)
    logit = keras.layers.Dense(1, dtype=None if dtype is None else "float32", name="logit")(x)
    return keras.Model([img, feats], logit, name="bh_tile_head")


def dihedral_tf(x, k):
    """``dihedral`` in TensorFlow (same k order): training augmentation inside ``tf.data``."""
    import tensorflow as tf

    x = tf.image.rot90(x, k % 4)
    return tf.cond(k >= 4, lambda: tf.image.flip_left_right(x), lambda: x)


def sigmoid(z):
    """Logistic function, float64, without overflow."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))
