"""Head files: their format (``save_head`` / ``load_head``) and lookup (``head_path``).

A head on disk is ``<name>.weights.npz`` plus ``<name>.json`` (metadata, with the sha256 of
the weights and, for the VGG16 paper heads, of the backbone weights). The shipped heads are
package data, ``bh_stage/data/heads`` (``HEADS_DIR``, found with ``importlib.resources``).
Both kinds use this module: paper heads (``model.load_classifier``) and tile heads
(``tilehead.load_tile_head``).
"""

import dataclasses
import importlib.resources
import json
import logging
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ConfigError, InputFileError, ModelShapeError
from .io import atomic_write_bytes, file_sha256

__all__ = ["HEADS_DIR", "PAPER_TARGET", "DEFAULT_HEAD_SIGMA_ADU", "BACKBONES", "Head",
           "save_head", "write_metadata", "load_head", "head_path", "check_head_compatible",
           "is_compact"]

log = logging.getLogger(__name__)

HEADS_DIR = Path(str(importlib.resources.files("bh_stage") / "data" / "heads"))
"""Folder of the shipped heads: package data, in a checkout and once installed."""


BACKBONES = ("hed", "imagenet")
"""Named backbone weight sources; anything else is a path to a ``.weights.h5`` file."""


PAPER_TARGET = "paper_blend"
"""``target`` of the paper's heads: P(another galaxy in the 51x51 stamp); heads written
before targets were recorded are paper heads."""


DEFAULT_HEAD_SIGMA_ADU = 15.0
"""'default' head: the shipped head whose training noise is closest to this (CFIS: 14.5)."""


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
    atomic_write_bytes(path_w, lambda f: np.savez(f, **arrays))
    meta = dict(metadata)
    meta.update(bh_stage_version=__version__, weights_file=path_w.name,
                weights_sha256=file_sha256(path_w), n_weight_arrays=len(arrays))
    meta["input_shape"] = [int(v) for v in meta["input_shape"]]
    write_metadata(path_json, meta)
    log.info("saved head %s (weights %s)", path_json, path_w.name)
    return path_json


def write_metadata(path_json, metadata):
    """Write a head's JSON metadata (sorted keys, indented; replaced only when complete)."""
    text = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write_bytes(path_json, lambda f: f.write(text.encode()))


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
        Folder of shipped heads; default ``HEADS_DIR``.

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


def is_compact(metadata):
    """Whether a head's metadata names a compact network (``nets.compact.COMPACT_LAYERS``)."""
    from .nets.compact import COMPACT_LAYERS

    return metadata.get("architecture") in COMPACT_LAYERS
