"""OpenVINO runtime of a fused VGG16 classifier (``precision: bf16``): convert once, cache
on disk, compile for bf16 on CPU. OpenVINO and TensorFlow are imported inside the functions."""

import hashlib
import logging
import os
from pathlib import Path

from ..errors import ConfigError
from ..extras import require

__all__ = ["openvino_model", "runs_bf16", "compile_bf16"]

log = logging.getLogger(__name__)

def _ov_cache_dir(ov_cache_dir):
    if ov_cache_dir is not None:
        return Path(ov_cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bh_stage" / "openvino"


def openvino_model(model, metadata, input_shape, ov_cache_dir=None):
    """Convert the fused model to an OpenVINO model, cached on disk by head weights, backbone
    (from the head's ``metadata``) and OpenVINO version; returns ``(core, ov_model)``."""
    try:
        ov = require("openvino", "paper")
    except ImportError as err:
        raise ConfigError("precision: 'bf16' needs the package openvino "
                          "(pip install 'bh-stage[paper]'), or use precision: 'f32'") from err
    import tensorflow as tf

    # "logit": the fused model ends in the head's logit (0.6; earlier caches hold a sigmoid)
    key = hashlib.sha256(f"{metadata['weights_sha256']}:{metadata['backbone_sha256']}:"
                         f"{tuple(input_shape)}:{ov.__version__}:logit".encode()).hexdigest()[:20]
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


def runs_bf16(compiled):
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
    ov = require("openvino", "paper")

    return compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def compile_bf16(model, head, input_shape, ov_cache_dir=None):
    """Compile the fused model with OpenVINO for bf16 on CPU (f32 where the CPU has no bf16)."""
    core, ov_model = openvino_model(model, head.metadata, input_shape, ov_cache_dir)
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    if not runs_bf16(compiled):
        log.warning("precision bf16: this CPU has no bf16 support (OpenVINO capabilities %s); "
                    "OpenVINO runs in %s, at about f32 speed",
                    core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
                    compiled.get_property("INFERENCE_PRECISION_HINT"))
    return compiled
