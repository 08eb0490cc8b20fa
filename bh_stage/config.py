"""The one config schema of bh-stage, and its loader.

Each subcommand reads one YAML file whose layout is a dataclass below (``RunConfig`` for
``bh-stage run``, ``SimulateConfig`` for ``simulate``, ``TrainConfig`` for ``train``,
``EvaluateConfig`` for ``evaluate``). Every field declares its type, default, help text and
checks, once; ``load_config`` rejects unknown keys, wrong types and out-of-range values before
any pixel is read, and ``config_reference`` prints the commented reference
(``bh-stage show-config run``). Precedence: defaults < config file < ``--set key=value``.
"""

import dataclasses
import hashlib
import json
import typing
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "SepConfig", "StampConfig", "RunConfig", "load_config", "config_from_dict",
    "config_to_dict", "config_hash", "config_reference", "SCHEMAS",
]


def option(default, help, *, choices=None, min=None, max=None, min_exclusive=False,
           odd=False):
    """Declare one config field: its default, help text and checks.

    Parameters
    ----------
    default : object
        Default value; a dataclass type means "that section with its defaults", a list is
        copied per instance.
    help : str
        One line shown in ``config_reference``.
    choices : sequence, optional
        Allowed values.
    min, max : float, optional
        Inclusive bounds (``min`` exclusive with ``min_exclusive=True``), applied to a number
        or to each element of a list.
    odd : bool
        The integer must be odd.
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max,
            "min_exclusive": min_exclusive, "odd": odd}
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class StampConfig:
    """How a stamp is cut and padded (paper section 2.1)."""

    size_pix: int = option(51, "Side of the stamp cut at each detection, in pixels; odd.",
                           min=9, odd=True)
    pad_pix: int = option(7, "Padding added on every side before the network (paper: 7).",
                          min=0)


@dataclasses.dataclass
class SepConfig:
    """SEP parameters; the defaults are the paper's (its Table 2)."""

    thresh_rms: float = option(1.5, "Detection threshold in units of the stamp's global rms.",
                               min=0, min_exclusive=True)
    minarea_pix: int = option(5, "Minimum number of pixels above threshold.", min=1)
    deblend_nthresh: int = option(32, "Number of deblending thresholds.", min=1)
    deblend_cont: float = option(0.005, "Minimum contrast ratio for deblending.", min=0, max=1)
    filter_kernel: str = option("3x3", "Detection filter: '3x3' (SExtractor's default "
                                "kernel_3x3.conv) or 'none'.", choices=("3x3", "none"))
    match_radius_pix: float = option(2.0, "A SEP source matches a known position within this "
                                     "distance, in pixels (paper: 2).", min=0,
                                     min_exclusive=True)


@dataclasses.dataclass
class RunConfig:
    """``bh-stage run``: score every detection of a tile.

    Paths may hold ``{dir}`` (the tile's folder) and ``{stem}`` (the tile's name without
    ``.fits``, ``.fits.fz`` or ``.fz``); relative paths are relative to the working directory.
    """

    catalogue: str = option("{dir}/{stem}.cat", "SExtractor catalogue of the tile "
                            "(FITS_LDAC or FITS_1.0), path or pattern.")
    catalogue_hdu: str = option("auto", "Catalogue HDU name or index; 'auto' takes "
                                "LDAC_OBJECTS, then OBJECTS, then the first table.")
    x_column: str = option("XWIN_IMAGE", "Column of the 1-based x position, pixels.")
    y_column: str = option("YWIN_IMAGE", "Column of the 1-based y position, pixels.")
    id_column: str = option("NUMBER", "Column copied into the 'new' sidecar to join on.")
    weight: typing.Optional[str] = option(None, "Weight map of the tile, path or pattern; "
                                          "pixels of weight 0 count as masked. null: none.")
    head: str = option("default", "Trained head: 'default' (the shipped one matching the "
                       "tile's noise), a shipped head's name, or a path to a head's .json.")
    blend_threshold: typing.Optional[float] = option(
        None, "BH_BLEND_FLAG is BLEND_PROB >= this; null: the head's calibrated threshold.",
        min=0, max=1)
    hybrid_threshold: typing.Optional[float] = option(
        None, "BLEND_FLAG is SEP_BLEND_FLAG or BLEND_PROB >= this; null: the head's "
        "calibrated hybrid threshold.", min=0, max=1)
    batch_size: int = option(256, "Stamps per network batch.", min=1)
    precision: str = option("f32", "Network arithmetic: 'f32' (TensorFlow) or 'bf16' "
                            "(OpenVINO, about twice as fast, |dP| < 0.02).",
                            choices=("f32", "bf16"))
    output: str = option("{dir}/{stem}_bh.cat", "Output catalogue, path or pattern.")
    output_mode: str = option("add", "'add': a copy of the input catalogue with the new "
                              "columns; 'new': a sidecar with the id column and the new "
                              "columns.", choices=("add", "new"))
    overwrite: bool = option(False, "Replace an existing output.")
    seed: int = option(0, "Seed of the noise that fills padding, edges and masked pixels "
                       "(per object: seed + row).", min=0)
    stamp: StampConfig = option(StampConfig, "Stamp geometry; must match the head.")
    sep: SepConfig = option(SepConfig, "SEP parameters (paper's defaults).")


SCHEMAS = {"run": RunConfig}
"""Config class of each subcommand; other modules register theirs here."""


def _type_name(tp):
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check_value(value, tp, where):
    """Return ``value`` converted to ``tp``, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(value, args[0], where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, "
                              f"got {value!r}")
        return [_check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _check_range(value, meta, where):
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        if meta["choices"] is not None and v not in meta["choices"]:
            raise ConfigError(f"{where}: {v!r} is not one of {list(meta['choices'])}")
        lo, hi = meta["min"], meta["max"]
        if lo is not None and (v < lo or (meta["min_exclusive"] and v == lo)):
            sign = ">" if meta["min_exclusive"] else ">="
            raise ConfigError(f"{where}: {v!r} is out of range; it must be {sign} {lo}")
        if hi is not None and v > hi:
            raise ConfigError(f"{where}: {v!r} is out of range; it must be <= {hi}")
        if meta["odd"] and v % 2 != 1:
            raise ConfigError(f"{where}: {v!r} must be odd")


def config_from_dict(cls, data, where=""):
    """Build config ``cls`` from a mapping, checking keys, types and ranges.

    Parameters
    ----------
    cls : type
        A config dataclass.
    data : dict or None
        Values by key; missing keys take their defaults, unknown keys are refused.
    where : str
        Dotted prefix used in error messages.

    Raises
    ------
    ConfigError
        Unknown key, wrong type, value out of range, or a check of ``cls.validate``.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: unknown key; "
                          f"allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _check_value(value, hints[name], key)
        _check_range(kwargs[name], fields[name].metadata, key)
    cfg = cls(**kwargs)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def config_to_dict(cfg):
    """Return the config as plain nested dicts (the inverse of ``config_from_dict``)."""
    return dataclasses.asdict(cfg)


def config_hash(cfg):
    """Return the sha256 of the resolved config, for provenance."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _set_override(data, assignment):
    """Apply one ``a.b=value`` override (value parsed as YAML) to nested dict ``data``."""
    import yaml

    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. sep.minarea_pix=5")
    *parents, last = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
    node[last] = yaml.safe_load(text)


def load_config(path, cls, overrides=()):
    """Read a YAML config file into ``cls``.

    Parameters
    ----------
    path : str or pathlib.Path or None
        YAML file; None uses the defaults alone.
    cls : type
        Config dataclass, e.g. ``RunConfig``.
    overrides : sequence of str
        ``key=value`` assignments applied after the file (dotted keys for sections).

    Raises
    ------
    ConfigError
        The file is missing or not YAML, or a value fails its checks.
    """
    import yaml

    data = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from err
    for assignment in overrides:
        _set_override(data, assignment)
    where = str(path) + ": " if path is not None else ""
    try:
        return config_from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from err


def config_reference(cls, indent=0):
    """Return commented YAML with every key of ``cls``, its default and help text."""
    import yaml

    lines = []
    pad = " " * indent
    for f in dataclasses.fields(cls):
        lines.append(f"{pad}# {f.metadata['help']}")
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else f.default)
        if dataclasses.is_dataclass(default):
            lines.append(f"{pad}{f.name}:")
            lines.append(config_reference(type(default), indent + 2))
        else:
            text = yaml.safe_dump({f.name: default}, default_flow_style=True, width=1000)
            lines.append(pad + text.strip().strip("{}"))
    return "\n".join(lines)
