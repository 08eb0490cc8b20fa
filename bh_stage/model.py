"""The paper heads, ready to score: ``load_classifier`` (BH_PAPER_PROB, the paper's question).

A paper head answers P(another galaxy in the 51x51 stamp). It is either the paper's network,
a VGG16 conv base and a trained head fused into ``nets.vgg.Classifier``, or a compact network
(``CompactClassifier``, ``nets.compact``), with the same interface: ``predict_proba(stamps,
rms_adu)`` on padded stamps ``(n, 65, 65)`` in ADU. Head files: ``heads``.
"""

import logging

import numpy as np

from .errors import ModelShapeError
from .heads import PAPER_TARGET, check_head_compatible, head_path, is_compact, load_head
from .nets import compact
from .nets.vgg import Classifier, backbone_sha256, build_backbone, build_head

__all__ = ["Classifier", "CompactClassifier", "load_classifier", "fuse"]

log = logging.getLogger(__name__)


class CompactClassifier(Classifier):
    """A compact network for the paper's question (``nets.compact``, no backbone), with
    ``Classifier``'s interface, f32 only (another ``precision`` is logged and ignored).

    It reads the central ``stamp_side_pix`` square of each padded stamp, scaled by
    ``compact.scale_stamps`` with the sky rms; its logit is the mean over ``n_orientations``
    flips and quarter turns (``compact.orientation_logits``), as trained, and its probability
    ``Classifier.probability`` of it (calibrated where the head says). Build it with
    ``load_classifier``.
    """

    def __init__(self, net, head, batch_size=256):
        import tensorflow as tf

        self._set_head(net, head, "f32", batch_size)
        self.side_pix = int(head.metadata["stamp_side_pix"])
        self.n_orientations = int(head.metadata["n_orientations"])
        self._fn = tf.function(lambda x, f: net([x, f], training=False), autograph=False,
                               reduce_retracing=True)

    def predict_logits(self, stamps, rms_adu=None):
        """The network's mean logit of each stamp, float64, before any calibration.

        Parameters
        ----------
        stamps : array_like, shape (n, 65, 65)
            Padded stamps in ADU.
        rms_adu : float, optional
            Sky rms of the stamps, ADU; default the head's training ``noise_sigma_adu``.
        """
        stamps = self._check_stamps(stamps)
        rms = float(self.metadata["noise_sigma_adu"] if rms_adu is None else rms_adu)
        x = compact.scale_stamps(compact.centre_stamps(stamps, self.side_pix), rms)
        return compact.orientation_logits(self._fn, x, np.zeros((len(x), 0), np.float32),
                                          self.n_orientations, self.batch_size)


def _load_compact(head, precision, batch_size):
    """``CompactClassifier`` of a compact paper head (see ``load_classifier``)."""
    meta = head.metadata
    if meta.get("target", PAPER_TARGET) != PAPER_TARGET:
        raise ModelShapeError(f"head {head.path}: a {meta.get('target')!r} head, not a paper "
                              f"head; give it as tile_head, or a paper head as head")
    if precision != "f32":
        log.warning("head %s: a compact head runs in f32 only; precision %s ignored",
                    head.path, precision)
    net = compact.build_compact(int(meta["stamp_side_pix"]), 0, meta["architecture"])
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
    head_model = build_head(backbone.output_shape[1:], logit=True)
    try:
        head_model.set_weights(head.weights)
    except ValueError as err:
        raise ModelShapeError(f"head {head.path}: weights do not fit the head for backbone "
                              f"output {backbone.output_shape[1:]} ({err})") from err
    model = fuse(backbone, head_model)
    log.info("loaded head %s (%s, %s)", head.path, source, precision)
    return Classifier(model, head, precision, batch_size, ov_cache_dir)
