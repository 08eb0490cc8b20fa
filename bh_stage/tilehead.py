"""The tile head, ready to score: P(unrecognised blend) of a detection (``BLEND_PROB``).

Input: the central ``STAMP_SIDE_PIX`` square of the stage's own stamps (``cut_stamps`` at
SExtractor detections, noise-filled off the tile), scaled by the tile rms, and the detection's
features: for a position-only head (``compact_cnn_stamp_v1``) what the stage measures on the
stamp and the positions (``features.FEATURE_NAMES``), so any catalogue with x/y will do; for
the catalogue head (``compact_cnn_catalogue_v1``) SExtractor columns
(``cues.catalogue_features``); for ``compact_cnn_stamp_catalogue_v1`` both
(``features.UNION_FEATURE_NAMES``). Output: a logit per detection (the mean over
the head's ``n_orientations`` flips and quarter turns) and the calibrated probability
``sigmoid(a * logit + b)``, computed from the logit so that it does not saturate.

The network is ``nets.compact.build_compact`` (the head's architecture); training,
calibration and the ``BLEND_FLAG`` threshold are ``bh_stage.study.train_tile`` (see there and
the docs for why not the VGG16 base).
"""

import concurrent.futures
import logging
import os
import pickle
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from . import cues, features
from . import children
from .errors import ModelShapeError
from .heads import head_path, load_head
from .nets.compact import (ARCHITECTURE, STAMP_ARCHITECTURE, STAMP_CATALOGUE_ARCHITECTURE,
                           build_compact, centre_stamps, orientation_logits, scale_stamps,
                           sigmoid)

__all__ = ["TARGET", "TileHead", "DEFAULT_TILE_HEAD", "HEAD_FEATURES", "PRECISIONS", "INT8_KEY",
           "reads_stamp_features", "feature_names", "read_int8_network", "tile_head_path",
           "load_tile_head", "NetworkProcess"]

log = logging.getLogger(__name__)

HEAD_FEATURES = {ARCHITECTURE: cues.FEATURE_NAMES, STAMP_ARCHITECTURE: features.FEATURE_NAMES,
                 STAMP_CATALOGUE_ARCHITECTURE: features.UNION_FEATURE_NAMES}
"""The features each tile-head architecture reads beside the pixels, in order."""

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
        head, architecture ``compact_cnn_stamp_v1``; ``compact_cnn_stamp_catalogue_v1``
        then also ``features.CATALOGUE_FEATURE_NAMES``) rather than
        ``cues.catalogue_features``.
    feature_names : tuple of str
        Names of the features it reads beside the pixels, in order.
    """

    def __init__(self, head, precision="f32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
        meta = head.metadata
        self.metadata, self.path, self.precision = meta, head.path, precision
        self.blend_threshold = float(meta["blend_threshold"])
        self.stamp_features = reads_stamp_features(meta)
        self.feature_names = feature_names(meta)
        # what the architecture reads, not what the metadata says, decides the inputs built
        self.catalogue_columns = (() if meta["architecture"] == STAMP_ARCHITECTURE
                                  else cues.CATALOGUE_COLUMNS)
        self._mean = np.asarray(meta["feature_mean"], dtype=np.float32)
        self._scale = np.asarray(meta["feature_scale"], dtype=np.float32)
        self._a, self._b = meta["calibration"]["a"], meta["calibration"]["b"]
        self.n_orientations = int(meta.get("n_orientations", 1))
        self._weights = head.weights
        # the 8-bit network's bytes, checked and kept at load (as the weights are)
        self._int8 = read_int8_network(head) if precision == "int8" else None
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
            if self._model is None and self._int8 is not None:
                try:
                    self._fn = Int8Network(self._int8, *self._weights[-2:])
                except ModelShapeError as err:
                    raise ModelShapeError(f"{self.path}: {err}") from err
                self._model = self._fn
            elif self._model is None:
                import tensorflow as tf

                meta = self.metadata
                model = build_compact(meta["stamp_side_pix"], len(self.feature_names),
                                      meta["architecture"], KERAS_POLICIES[self.precision])
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
    def built(self):
        """Whether this process has built the network (``build``)."""
        return self._model is not None

    @property
    def model(self):
        """The network (keras.Model; ``Int8Network`` in precision 'int8'), built on first
        use."""
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
"""Per-process cache of loaded tile heads, by (path, modification time, precision)."""

PRECISIONS = ("f32", "bf16", "int8")
"""The tile head's arithmetic (``tile_head_precision``): float32; bfloat16 products with
float32 weights (Keras' mixed precision), several times faster where the CPU multiplies
bfloat16 matrices (Intel AMX), slower where it emulates them; or the head's network quantized
to 8-bit integers (``INT8_KEY``, TensorFlow Lite). docs/speed.md gives each and what it
changes."""

KERAS_POLICIES = {"f32": None, "bf16": "mixed_bfloat16"}
"""Keras dtype policy of the network built for the precisions that TensorFlow runs."""

INT8_KEY = "int8"
"""Key of a tile head's JSON naming its 8-bit network (``bh_stage.study.quantize``): ``file``
(a TensorFlow Lite model beside the JSON), its ``sha256``, the ``weights_sha256`` of the
float32 weights it was made from, and the tiles and stamps that set its ranges."""


def read_int8_network(head):
    """The bytes of a loaded head's 8-bit network (``INT8_KEY``, a file beside its JSON),
    checked against the JSON.

    Raises
    ------
    ModelShapeError
        The head has no 8-bit network, or it was made from other weights.
    InputFileError
        Its file is missing or its sha256 differs from the JSON's.
    """
    import hashlib

    from .errors import InputFileError

    entry = head.metadata.get(INT8_KEY)
    fix = "set tile_head_precision: f32, or quantize the head again"
    if entry and not all(entry.get(k) for k in ("file", "sha256", "weights_sha256")):
        raise ModelShapeError(f"{head.path}: its {INT8_KEY!r} entry lacks file, sha256 or "
                              f"weights_sha256; {fix}")
    if not entry:
        raise ModelShapeError(f"{head.path}: the head has no 8-bit network for "
                              "tile_head_precision int8 (train-tile makes one for a head it "
                              "trains; bench/quantize_tile_head.py for others); use auto or "
                              "f32")
    if entry["weights_sha256"] != head.metadata["weights_sha256"]:
        raise ModelShapeError(f"{head.path}: its 8-bit network was made from other weights "
                              f"(sha256 {entry['weights_sha256']}); {fix}")
    if Path(entry["file"]).name != entry["file"]:
        raise ModelShapeError(f"{head.path}: its 8-bit network {entry['file']!r} is not a "
                              "file name beside the head")
    path = Path(head.path).with_name(entry["file"])
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputFileError(f"{path}: cannot read the 8-bit network named in {head.path} "
                             f"({err.strerror}); copy it beside the head or {fix}") from err
    sha = hashlib.sha256(data).hexdigest()
    if sha != entry["sha256"]:
        raise InputFileError(f"{path}: sha256 {sha} differs from {entry['sha256']} recorded "
                             f"in {head.path}; the file was changed or corrupted; {fix}")
    return data


class Int8Network:
    """A tile head's 8-bit network (``INT8_KEY``): ``network(x, features)`` returns the
    logits of network input ``x`` (n, s, s, 1) and normalised features (n, k), as the Keras
    network's ``model([x, f])`` does. TensorFlow Lite's interpreter (its XNNPACK kernels,
    one thread) runs the layers up to the last hidden one, weights (per channel) and
    activations in 8-bit integers, products summed in 32-bit integers; the logit is their
    sum with the float32 weights of the last layer, ``logit_kernel`` (h, 1) and
    ``logit_bias`` (1,), in float64 (an 8-bit logit would be clipped to the training tiles'
    range). ``model_content``: the network's bytes (``read_int8_network``). Calls are
    serialised (the interpreter is not thread-safe)."""

    def __init__(self, model_content, logit_kernel, logit_bias, num_threads=1):
        import tensorflow as tf

        interpreter = getattr(getattr(tf, "lite", None), "Interpreter", None)
        if interpreter is None:  # announced to move to the ai_edge_litert package
            raise ModelShapeError(f"TensorFlow {tf.__version__} has no "
                                  "tf.lite.Interpreter to run the tile head's 8-bit network; "
                                  "set tile_head_precision: f32")
        with warnings.catch_warnings():  # tf.lite's notice that LiteRT will replace it
            warnings.simplefilter("ignore")
            self._interpreter = interpreter(model_content=model_content,
                                            num_threads=num_threads)
        inputs = self._interpreter.get_input_details()
        self._inputs = {len(d["shape"]): d for d in inputs}  # 4: stamps, 2: features
        output = self._interpreter.get_output_details()[0]
        if sorted(self._inputs) != [2, 4] or len(inputs) != 2 \
                or output["shape"][-1] != len(logit_kernel):
            raise ModelShapeError(f"not the hidden layers of this tile head (inputs "
                                  f"{[d['shape'].tolist() for d in inputs]}, output "
                                  f"{output['shape'].tolist()}, {len(logit_kernel)} logit "
                                  "weights)")
        self._output = output["index"]
        self._kernel = np.asarray(logit_kernel, np.float64).reshape(-1)
        self._bias = float(np.asarray(logit_bias).reshape(-1)[0])
        self._rows = None
        self._lock = threading.Lock()

    def __call__(self, x, features):
        x = np.ascontiguousarray(x, dtype=np.float32)
        features = np.ascontiguousarray(features, dtype=np.float32)
        with self._lock:
            if len(x) != self._rows:  # batch size changed: resize (costs one allocation)
                for d in self._inputs.values():
                    self._interpreter.resize_tensor_input(d["index"],
                                                          [len(x), *d["shape"][1:]])
                self._interpreter.allocate_tensors()
                self._rows = len(x)
            self._interpreter.set_tensor(self._inputs[4]["index"], x)
            self._interpreter.set_tensor(self._inputs[2]["index"], features)
            self._interpreter.invoke()
            hidden = self._interpreter.get_tensor(self._output)
            # a sum along each row: the same bits whatever the batch (a matrix product is not)
            return (hidden.astype(np.float64) * self._kernel).sum(axis=1) + self._bias


def reads_stamp_features(metadata):
    """Whether a tile head's metadata names a head whose features the stage measures on the
    stamp (``compact_cnn_stamp_v1``, position-only, or ``compact_cnn_stamp_catalogue_v1``,
    which also reads SExtractor columns) rather than a catalogue head."""
    return metadata.get("architecture") in (STAMP_ARCHITECTURE, STAMP_CATALOGUE_ARCHITECTURE)


def feature_names(metadata):
    """The names of the features a tile head reads beside the pixels, in order."""
    key = "stamp_features" if reads_stamp_features(metadata) else "catalogue_features"
    return tuple(metadata[key])


def tile_head_path(name_or_path="default"):
    """Resolve ``tile_head`` to a ``.json``: 'default', a shipped name or a path."""
    return head_path(DEFAULT_TILE_HEAD if name_or_path == "default" else name_or_path)


def load_tile_head(path_json, precision="f32"):
    """Load a tile head written by ``train_tile`` (once per process and ``precision``, one of
    ``PRECISIONS`` or 'auto': 'int8' where the head has an 8-bit network, else 'f32'; the
    head's ``precision`` says which): its files only; the network is built, and TensorFlow
    imported, on first use (``TileHead.build``).

    Raises
    ------
    ModelShapeError
        The JSON is not a tile head, names an unknown architecture, or reads features other
        than those this version computes (by name and order).
    """
    key = (str(Path(path_json).resolve()), Path(path_json).stat().st_mtime_ns, precision)
    if key in _LOADED:
        return _LOADED[key]
    head = load_head(Path(path_json).resolve())  # absolute: the network process reads it too
    meta = head.metadata
    if meta.get("target") != TARGET or meta.get("architecture") not in HEAD_FEATURES:
        raise ModelShapeError(f"{path_json}: not a tile head (target {meta.get('target')!r}, "
                              f"architecture {meta.get('architecture')!r}); tile_head and "
                              f"weights_from take a head made by `bh-stage train-tile`")
    names = feature_names(meta)
    expected = HEAD_FEATURES[meta["architecture"]]
    if names != tuple(expected):
        raise ModelShapeError(f"{path_json}: the head reads the features {', '.join(names)}; "
                              f"this bh-stage computes {', '.join(expected)}; use a head made "
                              f"by this version's `bh-stage train-tile`")
    if precision == "auto":  # one head for 'auto' and what it resolves to
        precision = "int8" if meta.get(INT8_KEY) else "f32"
        resolved = key[:2] + (precision,)
        _LOADED[key] = _LOADED.get(resolved) or TileHead(head, precision)
        _LOADED[resolved] = _LOADED[key]
    else:
        _LOADED[key] = TileHead(head, precision)
    return _LOADED[key]




class NetworkProcess:
    """The stage's networks in a child process, started before the tile is read.

    TensorFlow's import and the tile head's build (about 4 s on one core) then run beside
    the reading of the tile, its bad pixels and its background, and beside the first
    batches' SEP work, instead of before them; the parent never imports TensorFlow. A plain
    subprocess, ``python -m bh_stage.tilehead HEAD.json PRECISION LOG_LEVEL`` (through
    ``children.start``, which first ties it to this process), fed pickled
    calls through a pipe as ``sep_flags.SepProcesses`` feeds SEP's: it loads the tile head
    from ``HEAD.json`` and builds it at once, then answers the calls in order. Each call is
    the method the stage calls in its own process otherwise (``TileHead.predict_proba``,
    ``model.load_classifier`` and the paper head's ``predict_proba``) on the same arrays, so
    the probabilities are the same to the bit. One thread of the parent talks to it: every
    method returns at once (a future), the calls wait in that thread for the build, and an
    error of the build is raised by every call's result.

    Its own session, so Ctrl-C reaches only the parent; the child is killed at once when the
    block ends on an exception (an error, Ctrl-C, SIGTERM), exits at EOF otherwise, and on
    Linux is killed when this process ends in any way (``children.die_with_parent``). Use
    as a context manager.

    Parameters
    ----------
    tile_head : TileHead
        The tile head, loaded in this process (``load_tile_head``); the child loads it again
        from its files.
    """

    def __init__(self, tile_head):
        self._side = int(tile_head.metadata["stamp_side_pix"])
        log_level = logging.getLogger("bh_stage").getEffectiveLevel()
        self._proc = children.start(__name__, tile_head.path, tile_head.precision, log_level)
        try:
            self._thread = concurrent.futures.ThreadPoolExecutor(1)
            self._built = self._thread.submit(self._answer)
        except BaseException:  # Ctrl-C or SIGTERM before the block: no child left behind
            self._proc.kill()
            self._proc.wait()
            raise

    def prepare(self):
        """Nothing to wait for: the child builds the network on its own, and its errors come
        with the calls' results (``build`` waits for it). Returns self."""
        return self

    def build(self):
        """Wait until the child has built the tile head's network; raise what it raised
        (``ModelShapeError``: its weights do not fit). Returns self."""
        self._built.result()
        return self

    def submit(self, stamps, rms_adu, features):
        """Future of ``TileHead.predict_proba(stamps, rms_adu, features)``; ``features`` may
        be a function of no argument returning them, called by the talking thread (the
        stamp features, once SEP has measured them). Only the central square the network
        reads (``centre_stamps``) is sent."""
        return self._thread.submit(lambda: self._call(
            "tile", (centre_stamps(stamps, self._side), rms_adu,
                     features() if callable(features) else features)))

    def load_classifier(self, head_json, precision="f32", batch_size=256):
        """``model.load_classifier(head_json, precision=..., batch_size=...)`` in the child:
        a ``RemoteClassifier``, returned once this process has read the head's files
        (``heads.load_head``: its metadata, and its errors, come before TensorFlow's)."""
        head = load_head(head_path(head_json))
        return RemoteClassifier(self, head.metadata, head.path, self._thread.submit(
            lambda: self._call("load_paper", (str(head.path), precision, batch_size))))

    def submit_paper(self, stamps, rms_adu):
        """Future of the paper head's ``predict_proba(stamps, rms_adu)`` (``load_classifier``
        first)."""
        return self._thread.submit(lambda: self._call("paper", (np.asarray(stamps), rms_adu)))

    def _stopped(self):
        """The error of a child that is gone (its exit code, once it is reaped)."""
        try:
            code = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(f"the network process stopped (exit code {code}); its error, if "
                            "any, is above")

    def _answer(self):
        try:
            ok, value = pickle.load(self._proc.stdout)
        except Exception as err:  # EOF, a broken pipe, an answer that does not unpickle
            raise self._stopped() from err
        if not ok:
            raise value
        return value

    def _call(self, name, args):
        self._built.result()  # done (this thread read it first); raises the build's error
        try:
            pickle.dump((name, args), self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self._proc.stdin.flush()
        except OSError as err:  # BrokenPipeError: the child is gone
            raise self._stopped() from err
        return self._answer()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        """On an exception, kill the child at once; otherwise let the calls made finish,
        end the child (EOF), and raise the build's error if no call's result did."""
        if exc_type is not None:
            self._proc.kill()  # an error, Ctrl-C or SIGTERM: end it now, mid-call or not
        self._thread.shutdown(wait=True, cancel_futures=exc_type is not None)
        children.end(self._proc)
        if exc_type is None:
            self._built.result()


class RemoteClassifier:
    """A paper head loaded by a ``NetworkProcess``: its ``metadata`` and ``head_path`` (its
    files, read in this process), the other attributes (``CLASSIFIER_ATTRIBUTES``) of the
    classifier ``model.load_classifier`` returned in the child, read when first asked for
    (they wait for the load, and raise its error), and its ``predict_proba``, computed
    there."""

    def __init__(self, process, metadata, head_path, attributes):
        self._process, self._attributes = process, attributes
        self.metadata, self.head_path = metadata, head_path

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._attributes.result()[name]
        except KeyError:
            raise AttributeError(name) from None

    def submit(self, stamps, rms_adu=None):
        """Future of ``predict_proba(stamps, rms_adu)``."""
        return self._process.submit_paper(stamps, rms_adu)

    def predict_proba(self, stamps, rms_adu=None):
        """P(blend) of each stamp, computed in the child."""
        return self.submit(stamps, rms_adu).result()


NETWORK_INTEROP_THREADS = 1
"""TensorFlow's inter-op threads in a ``NetworkProcess`` (its default: one per core). The
networks are chains of layers, with nothing to run side by side; one thread spent 2 CPU-s
less of 33 on a 10k tile beside the SEP processes (3 alternated pairs, docs/speed.md), with
the same bits (the scheduling of independent ops, not their arithmetic)."""

CLASSIFIER_ATTRIBUTES = ("metadata", "head_path", "precision", "batch_size",
                         "blend_threshold", "hybrid_threshold", "calibration")
"""What a ``RemoteClassifier`` holds of the classifier loaded in the child."""


def _serve(head_json, precision, log_level):
    """Child of ``NetworkProcess``: build the tile head of ``head_json`` in ``precision``,
    answer ``(ok, value)`` (``value``: None, or the exception), then answer pickled
    ``(name, args)`` calls in order until EOF; log records of ``log_level`` (the parent's
    level of ``bh_stage``) and above go to stderr as the command line's do."""
    from . import LOG_FORMAT, model

    logging.basicConfig(level=int(log_level), format=LOG_FORMAT)

    stdin = sys.stdin.buffer
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the answers
    sys.stdout = sys.stderr

    def answer(call):
        try:
            reply = (True, call())
        except Exception as err:  # sent back to the parent, raised there
            reply = (False, err)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # an exception that does not pickle
            data = pickle.dumps((False, RuntimeError(f"{type(reply[1]).__name__}: "
                                                     f"{reply[1]} ({err})")))
        stdout.write(data)
        stdout.flush()

    head = None
    classifier = None
    load_error = None  # the paper head's, raised again by every call that needs it

    def build():
        nonlocal head
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(NETWORK_INTEROP_THREADS)
        head = load_tile_head(head_json, precision).build()

    def load_paper(path, paper_precision, batch_size):
        nonlocal classifier, load_error
        try:
            classifier = model.load_classifier(path, precision=paper_precision,
                                               batch_size=batch_size)
        except Exception as err:
            load_error = err
            raise
        return {name: getattr(classifier, name) for name in CLASSIFIER_ATTRIBUTES
                if hasattr(classifier, name)}

    def paper(stamps, rms):
        if classifier is None:
            raise load_error or RuntimeError("no paper head loaded")
        return classifier.predict_proba(stamps, rms)

    calls = {"tile": lambda stamps, rms, feats: head.predict_proba(stamps, rms, feats),
             "load_paper": load_paper, "paper": paper}
    answer(build)
    while True:
        try:
            name, args = pickle.load(stdin)
        except EOFError:
            break
        answer(lambda: calls[name](*args))
    stdout.close()
    sys.stderr.flush()
    os._exit(0)  # nothing to tear down: skip TensorFlow's exit


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
