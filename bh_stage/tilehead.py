"""The tile head, ready to score: P(unrecognised blend) of a detection (``BLEND_PROB``).

Input: the central ``STAMP_SIDE_PIX`` square of the stage's own stamps (``cut_stamps`` at
SExtractor detections, noise-filled off the tile), scaled by the tile rms, and the detection's
features: for a position-only head (``compact_cnn_stamp_v1``) what the stage measures on the
stamp and the positions (``features.FEATURE_NAMES``), so any catalogue with x/y will do; for
the catalogue head (``compact_cnn_catalogue_v1``) SExtractor columns
(``cues.catalogue_features``). Output: a logit per detection (the mean over
the head's ``n_orientations`` flips and quarter turns) and the calibrated probability
``sigmoid(a * logit + b)``, computed from the logit so that it does not saturate.

The network is ``nets.compact.build_compact`` (``compact_cnn_catalogue_v1``); training,
calibration and the ``BLEND_FLAG`` threshold are ``bh_stage.study.train_tile`` (see there and
the docs for why not the VGG16 base).
"""

import logging
import threading
from pathlib import Path

import numpy as np

from . import cues, features
from .errors import ModelShapeError
from .heads import head_path, load_head
from .nets.compact import (ARCHITECTURE, STAMP_ARCHITECTURE, build_compact, centre_stamps,
                           orientation_logits, scale_stamps, sigmoid)

__all__ = ["TARGET", "TileHead", "DEFAULT_TILE_HEAD", "reads_stamp_features", "feature_names",
           "tile_head_path", "load_tile_head"]

log = logging.getLogger(__name__)

TARGET = "unrecognised_blend"
"""``target`` of a tile head: P(the detection holds two or more objects SExtractor merged)."""


class TileHead:
    """A trained tile head, ready to score: ``predict_proba(stamps, rms_adu, features)``.

    Attributes
    ----------
    metadata : dict
        The head's JSON (architecture, calibration, thresholds, training provenance).
    model : keras.Model
        Its network (``build_compact``), for ``train-tile --set weights_from=...``; built,
        with TensorFlow's import, on first use (``build``): loading a head reads only its
        files.
    path : pathlib.Path
    blend_threshold : float
        ``BLEND_FLAG`` is ``BLEND_PROB >= blend_threshold``.
    catalogue_columns : tuple of str
        SExtractor columns the head needs (none for a position-only head).
    stamp_features : bool
        The head reads ``features.FEATURE_NAMES`` measured on the stamp (a position-only
        head, architecture ``compact_cnn_stamp_v1``) rather than ``cues.catalogue_features``.
    feature_names : tuple of str
        Names of the features it reads beside the pixels, in order.
    """

    def __init__(self, head):
        meta = head.metadata
        self.metadata, self.path = meta, head.path
        self.blend_threshold = float(meta["blend_threshold"])
        self.stamp_features = reads_stamp_features(meta)
        self.feature_names = feature_names(meta)
        self.catalogue_columns = tuple(meta.get("catalogue_columns", ()))
        self._mean = np.asarray(meta["feature_mean"], dtype=np.float32)
        self._scale = np.asarray(meta["feature_scale"], dtype=np.float32)
        self._a, self._b = meta["calibration"]["a"], meta["calibration"]["b"]
        self.n_orientations = int(meta.get("n_orientations", 1))
        self._weights = head.weights
        self._model = self._fn = None
        self._lock = threading.Lock()

    def build(self):
        """Build the network (``build_compact``, the head's weights), importing TensorFlow;
        done once, on first use or when ``run_stage`` has checked its inputs and read the
        tile. Thread-safe. Returns the head.

        Raises
        ------
        ModelShapeError
            The head's weights do not fit its architecture.
        """
        with self._lock:
            if self._model is None:
                import tensorflow as tf

                meta = self.metadata
                model = build_compact(meta["stamp_side_pix"], len(self.feature_names),
                                      meta["architecture"])
                try:
                    model.set_weights(self._weights)
                except ValueError as err:
                    raise ModelShapeError(
                        f"{self.path}: its weights do not fit the {meta['architecture']} "
                        f"network on {meta['stamp_side_pix']}px stamps with "
                        f"{len(self.feature_names)} features ({err}); use a head made by "
                        "`bh-stage train-tile`") from err
                self._fn = tf.function(lambda x, f: model([x, f], training=False),
                                       autograph=False, reduce_retracing=True)
                self._model = model
        return self

    @property
    def model(self):
        """The network (keras.Model), built on first use."""
        return self.build()._model

    def logits(self, stamps, rms_adu, features):
        """Uncalibrated logits (mean over the head's orientations) of padded stage stamps
        (ADU) and their raw features (``feature_names``)."""
        x = scale_stamps(centre_stamps(stamps, self.metadata["stamp_side_pix"]), rms_adu)
        return self.input_logits(x, features)

    def input_logits(self, x, features, n_orientations=None):
        """Logits of network input ``x`` (``scale_stamps`` of the central square) and raw
        features, averaged over ``n_orientations`` (default: the head's)."""
        f = ((np.asarray(features, np.float32) - self._mean) / self._scale).astype(np.float32)
        return orientation_logits(self.build()._fn, x, f, n_orientations or self.n_orientations)

    def predict_proba(self, stamps, rms_adu, features):
        """Calibrated P(unrecognised blend), float64 (no saturation below 1 - 1e-16)."""
        return sigmoid(self._a * self.logits(stamps, rms_adu, features) + self._b)


DEFAULT_TILE_HEAD = "tile_unrecognised_positions_o2"
"""Shipped tile head used by ``tile_head: default``: the position-only head
(``compact_cnn_stamp_v1``) trained on the artefact-free tiles of the tile study v2 and chosen
there on the validation tiles over the catalogue head of 0.3-0.5 (docs/tile_study_v2.md),
scored in 2 orientations (the stamp and its quarter turn) and calibrated again on the
validation tiles (issue 24: half the network time; validation AUC 0.8700 against 0.8713 in 4
orientations, paired difference -0.0013 [-0.0028, +0.0001], within the rule's 0.003;
docs/speed.md). The 4-orientation head of 0.6 stays shipped as
``tile_unrecognised_positions``; the catalogue head as ``tile_unrecognised`` (4
orientations) and ``tile_unrecognised_o2`` (2)."""


_LOADED = {}
"""Per-process cache of loaded tile heads, by (path, modification time)."""


def reads_stamp_features(metadata):
    """Whether a tile head's metadata names a position-only head (``compact_cnn_stamp_v1``,
    its features measured on the stamp) rather than a catalogue head."""
    return metadata.get("architecture") == STAMP_ARCHITECTURE


def feature_names(metadata):
    """The names of the features a tile head reads beside the pixels, in order."""
    key = "stamp_features" if reads_stamp_features(metadata) else "catalogue_features"
    return tuple(metadata[key])


def tile_head_path(name_or_path="default"):
    """Resolve ``tile_head`` to a ``.json``: 'default', a shipped name or a path."""
    return head_path(DEFAULT_TILE_HEAD if name_or_path == "default" else name_or_path)


def load_tile_head(path_json):
    """Load a tile head written by ``train_tile`` (once per process): its files only; the
    network is built, and TensorFlow imported, on first use (``TileHead.build``).

    Raises
    ------
    ModelShapeError
        The JSON is not a tile head, names an unknown architecture, or reads features other
        than those this version computes (by name and order).
    """
    key = (str(Path(path_json).resolve()), Path(path_json).stat().st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    head = load_head(path_json)
    meta = head.metadata
    if meta.get("target") != TARGET or meta.get("architecture") not in (ARCHITECTURE,
                                                                          STAMP_ARCHITECTURE):
        raise ModelShapeError(f"{path_json}: not a tile head (target {meta.get('target')!r}, "
                              f"architecture {meta.get('architecture')!r}); tile_head and "
                              f"weights_from take a head made by `bh-stage train-tile`")
    names = feature_names(meta)
    expected = features.FEATURE_NAMES if reads_stamp_features(meta) else cues.FEATURE_NAMES
    if names != tuple(expected):
        raise ModelShapeError(f"{path_json}: the head reads the features {', '.join(names)}; "
                              f"this bh-stage computes {', '.join(expected)}; use a head made "
                              f"by this version's `bh-stage train-tile`")
    _LOADED[key] = TileHead(head)
    return _LOADED[key]


