"""The one config schema of bh-stage, and its loader.

Each subcommand reads one YAML file whose layout is a dataclass below (``RunConfig`` for
``bh-stage run``, ``SimulateConfig`` for ``simulate``, ``TrainConfig`` for ``train``,
``EvaluateConfig`` for ``evaluate``). Every field declares its type, default, help text and
checks, once; ``load_config`` rejects unknown keys, wrong types and out-of-range values before
any pixel is read, and ``config_reference`` prints the commented reference
(``bh-stage show-config run``). Precedence: defaults < config file < ``--set key=value``.
"""

import copy
import dataclasses
import hashlib
import json
import typing
from pathlib import Path

from .errors import ConfigError

__all__ = [
    "SepConfig", "StampConfig", "RunStampConfig", "MetacalConfig", "RunConfig", "load_config",
    "config_from_dict", "config_to_dict", "config_hash", "config_reference", "SCHEMAS",
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
class RunStampConfig(StampConfig):
    """Stamps of ``bh-stage run``: the geometry, and where the pixels come from."""

    source: str = option("tile", "Where stamps come from: 'tile' (cut from the tile) or "
                         "'vignet' (the catalogue's VIGNET(size_pix,size_pix) column, which "
                         "SExtractor centres on X_IMAGE/Y_IMAGE; docs/shapepipe.md).",
                         choices=("tile", "vignet"))
    rms_adu: typing.Optional[float] = option(
        None, "Sky rms (ADU) of the noise filling padding, edges and masked pixels, and given to "
        "the tile head; null: measured on the tile (which must then exist).", min=0,
        min_exclusive=True)


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
class MetacalConfig:
    """BLEND_PROB on metacalibration images (``metacal.metacal_images``), for selection
    responses: with ``enabled``, the stage also scores the four sheared images of every stamp
    and writes BLEND_PROB_1P, _1M, _2P, _2M and BLEND_FLAG_1P, ... Needs a position-only tile
    head (its features are measured on each image) and the tile's PSF: exactly one of
    ``psf_file`` and ``psf_fwhm_arcsec``.
    """

    enabled: bool = option(False, "Also score the four metacalibration images of every stamp "
                           "(sheared by +-step on g1 and g2): BLEND_PROB_1P/_1M/_2P/_2M and "
                           "BLEND_FLAG_*; needs a position-only tile head.")
    step: float = option(0.01, "Reduced shear of the sheared images (ngmix: 0.01); R_sel = "
                         "(<e>_S(1P) - <e>_S(1M)) / (2 step).", min=0, max=0.1,
                         min_exclusive=True)
    psf_file: typing.Optional[str] = option(
        None, "PSFEx model of the tile (.psf; polynomial in X_IMAGE/Y_IMAGE), path or pattern "
        "with {dir} and {stem}; null: use psf_fwhm_arcsec.")
    psf_fwhm_arcsec: typing.Optional[float] = option(
        None, "FWHM of a round Moffat (psf_moffat_beta) or Gaussian PSF, arcsec, for "
        "simulations; null: use psf_file.", min=0, min_exclusive=True)
    psf_moffat_beta: typing.Optional[float] = option(
        None, "Moffat beta of the psf_fwhm_arcsec PSF; null: a Gaussian.", min=1,
        min_exclusive=True)
    pixel_scale_arcsec: float = option(0.187, "Pixel scale, arcsec/pixel (psf_fwhm_arcsec "
                                       "only; CFHT MegaCam: 0.187).", min=0,
                                       min_exclusive=True)
    psf_side_pix: int = option(25, "Side of the PSF image, pixels; odd.", min=3, odd=True)
    psf_cell_pix: int = option(500, "psf_file: the PSF is evaluated at the centre of square "
                               "cells of this side on the tile and used for every detection "
                               "in the cell, pixels.", min=16)
    target_psf: str = option("dilate", "PSF of the metacalibration images: the PSF dilated by "
                             "1 + 2 step (ngmix 'dilate'), or a round Gaussian matched to the "
                             "PSF's major axis and dilated (like ngmix 'fitgauss', metadetect's "
                             "default): images as round as the galaxy whatever the PSF, but "
                             "smoother than the stamps the tile head was trained on, whose "
                             "scores move (docs/metacal.md): keep dilate.",
                             choices=("dilate", "gauss"))

    def validate(self):
        if not self.enabled:
            return
        if (self.psf_file is None) == (self.psf_fwhm_arcsec is None):
            given = "both" if self.psf_file is not None else "neither"
            raise ConfigError(f"metacal: {given} of metacal.psf_file and "
                              "metacal.psf_fwhm_arcsec given; give exactly one (a PSFEx .psf "
                              "file, or the FWHM of a simulation's PSF)")
        if self.psf_file is not None and self.psf_moffat_beta is not None:
            raise ConfigError("metacal.psf_moffat_beta: applies to psf_fwhm_arcsec only, and "
                              "metacal.psf_file is given; set it to null")


@dataclasses.dataclass
class RunConfig:
    """``bh-stage run``: score every detection of a tile.

    Paths may hold ``{dir}`` (the tile's folder) and ``{stem}`` (the tile's name without
    ``.fits``, ``.fits.fz`` or ``.fz``); relative paths are relative to the working directory.
    The shipped example: bh-stage run example_config/config.yml data/example_tile.fits.fz
    """

    catalogue: str = option("{dir}/{stem}.cat", "SExtractor catalogue of the tile "
                            "(FITS_LDAC or FITS_1.0), path or pattern.")
    catalogue_hdu: str = option("auto", "Catalogue HDU name or index; 'auto' takes "
                                "LDAC_OBJECTS, then OBJECTS, then the first table.")
    x_column: str = option("XWIN_IMAGE", "Column of the 1-based x position, pixels.")
    y_column: str = option("YWIN_IMAGE", "Column of the 1-based y position, pixels.")
    id_column: str = option("NUMBER", "Column copied into the 'new' sidecar to join on.")
    weight: typing.Optional[str] = option(
        "auto", "Weight map of the tile (pixels of weight 0 count as masked): 'auto' uses "
        "{stem}.weight.fits or {stem}.weight.fits.fz beside the tile when present, none "
        "otherwise; a path or pattern must exist; null: none.")
    tile_head: str = option("default", "Tile head giving BLEND_PROB, P(unrecognised "
                            "blend): 'default' (the shipped position-only "
                            "tile_unrecognised_positions_o2, which needs only x/y; "
                            "tile_unrecognised_positions: the same network in 4 "
                            "orientations), a shipped head's name (tile_unrecognised: the "
                            "catalogue head of 0.3-0.5; tile_unrecognised_stamp_catalogue_o2: "
                            "the default's features and SExtractor columns, 0.16), or a path "
                            "to a head's .json.")
    head: str = option("none", "Paper head giving BH_PAPER_PROB and BH_PAPER_FLAG (the "
                       "paper's question, not a cut on tiles: README 'Which column to cut "
                       "on'): 'none' (not computed: the fast survey mode), 'default' (the "
                       "shipped one matching the tile's noise: the compact "
                       "compact_paper_sigma15 at CFIS noise), a shipped head's name "
                       "(cfis_sigma15_clip_80k: the paper's VGG16 network), or a path to a "
                       "head's .json.")
    blend_threshold: typing.Optional[float] = option(
        None, "BLEND_FLAG is BLEND_PROB >= this; null: the tile head's threshold (measured on "
        "validation tiles).", min=0, max=1)
    hybrid_threshold: typing.Optional[float] = option(
        None, "BH_PAPER_FLAG is SEP_BLEND_FLAG or BH_PAPER_PROB >= this; null: the paper "
        "head's calibrated hybrid threshold.", min=0, max=1)
    batch_size: int = option(256, "Stamps per network batch.", min=1)
    precision: str = option("f32", "Network arithmetic: 'f32' (TensorFlow) or 'bf16' "
                            "(OpenVINO, paper head only; |dP| <= 0.05 for 99 % of stamps).",
                            choices=("f32", "bf16"))
    tile_head_precision: str = option(
        "auto", "The tile head's arithmetic: 'auto' (the head's 8-bit network where it has "
        "one, as the shipped default head does, else f32; BH_TPREC says which ran), 'int8' "
        "(that network: weights and activations in 8-bit integers, TensorFlow Lite; the same "
        "bits on every x86 CPU measured), 'f32', or 'bf16' (bfloat16 products, float32 "
        "weights: faster on CPUs with bfloat16 matrix units, Intel AMX, slower elsewhere). "
        "int8 and bf16 move BLEND_PROB slightly from f32 (docs/speed.md).",
        choices=("auto", "int8", "f32", "bf16"))
    output: str = option("{dir}/{stem}_bh.cat", "Output catalogue, path or pattern.")
    output_mode: str = option("add", "'add': a copy of the input catalogue with the new "
                              "columns; 'new': a sidecar with the id column and the new "
                              "columns.", choices=("add", "new"))
    overwrite: bool = option(False, "Replace an existing output.")
    seed: int = option(0, "Seed of the noise that fills padding, edges and masked pixels "
                       "(per object: seed + row).", min=0)
    stamp: RunStampConfig = option(RunStampConfig, "Stamp geometry (must match the head) "
                                   "and source.")
    sep: SepConfig = option(SepConfig, "SEP parameters (paper's defaults).")
    metacal: MetacalConfig = option(MetacalConfig, "BLEND_PROB on metacalibration images "
                                    "(selection response of a BLEND_PROB cut).")


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
    """Return the sha256 of the resolved config, for provenance.

    ``overwrite`` is left out: it decides whether an output may be replaced, never what is
    in it. So is a ``metacal`` section that is not enabled: it changes nothing written, and
    the runs made before it existed keep their hash; and, for the same reason, its
    ``target_psf`` when it is the default (``dilate``, the only target before 0.15).
    """
    values = config_to_dict(cfg)
    values.pop("overwrite", None)
    if "metacal" in values and not values["metacal"]["enabled"]:
        values.pop("metacal")
    elif values.get("metacal", {}).get("target_psf") == "dilate":
        values["metacal"].pop("target_psf")
    text = json.dumps(values, sort_keys=True)
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
    try:
        node[last] = yaml.safe_load(text)
    except yaml.YAMLError:
        node[last] = text  # not YAML, e.g. a path pattern such as {dir}/{stem}.cat


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
    file_data = copy.deepcopy(data)
    for assignment in overrides:
        _set_override(data, assignment)
    try:
        return config_from_dict(cls, data)
    except ConfigError as err:
        assignment, first_err = _first_bad_override(cls, file_data, overrides)
        if assignment is not None:
            raise ConfigError(f"--set {assignment}: {first_err}") from err
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from err


def _first_bad_override(cls, file_data, overrides):
    """Return the first override that makes a valid file's config invalid, with its error;
    ``(None, None)`` when the file itself is invalid (or no override is to blame)."""
    try:
        config_from_dict(cls, copy.deepcopy(file_data))
    except ConfigError:
        return None, None
    for assignment in overrides:
        _set_override(file_data, assignment)
        try:
            config_from_dict(cls, copy.deepcopy(file_data))
        except ConfigError as err:
            return assignment, err
    return None, None


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


# --- simulate (bh-stage simulate) -------------------------------------------------------


@dataclasses.dataclass
class PsfConfig:
    """CFIS-like PSF: an elliptical Moffat (optics) convolved with a Kolmogorov (seeing).

    The Kolmogorov FWHM is solved so that the FWHM measured on the noise-free, unpixelated
    PSF profile equals ``fwhm_arcsec``.
    """

    fwhm_arcsec: float = option(0.65, "Total FWHM of the PSF (Moffat * Kolmogorov, before "
                                "pixelisation), arcsec; the Kolmogorov FWHM is solved for it.",
                                min=0, min_exclusive=True)
    moffat_beta: float = option(4.765, "Moffat beta of the optical component (paper: 4.765).",
                                min=1.1)
    moffat_fwhm_arcsec: float = option(0.35, "FWHM of the optical Moffat component, arcsec; "
                                       "must be smaller than fwhm_arcsec.", min=0,
                                       min_exclusive=True)
    optical_g1: float = option(0.03, "Fixed reduced shear g1 of the optical component "
                               "(CFHT-like optical ellipticity).", min=-0.5, max=0.5)
    optical_g2: float = option(0.0, "Fixed reduced shear g2 of the optical component.",
                               min=-0.5, max=0.5)
    atmos_g_sigma: float = option(0.01, "Standard deviation of each ellipticity component "
                                  "(g1, g2) of the Kolmogorov, drawn per stamp or per tile.",
                                  min=0, max=0.2)

    def validate(self):
        if self.moffat_fwhm_arcsec >= self.fwhm_arcsec:
            raise ConfigError(f"psf.moffat_fwhm_arcsec: {self.moffat_fwhm_arcsec} must be "
                              f"smaller than psf.fwhm_arcsec ({self.fwhm_arcsec}); lower it")


@dataclasses.dataclass
class MagnitudeConfig:
    """One target magnitude law for every simulated galaxy: dN/dm ∝ 10^(slope * m)."""

    mag_min: float = option(20.0, "Brightest AB magnitude drawn.", min=10, max=35)
    mag_max: float = option(24.5, "Faintest AB magnitude drawn; > mag_min.", min=10, max=35)
    slope_dex_per_mag: float = option(0.3, "Slope of the number counts, dlog10(N)/dm "
                                      "(CFIS-like: 0.3; 0: flat in m).", min=-2, max=2)
    max_brightening_mag: float = option(0.5, "Real HST cut-outs: a galaxy drawn at magnitude "
                                        "m uses a sample galaxy not fainter than m + this, so "
                                        "its HST noise (median 1.2 ADU a CFIS pixel at its "
                                        "own magnitude, bench/bench_hst_noise.py) is "
                                        "brightened by at most this (the brightest galaxy "
                                        "where none qualifies). Before 0.3: 3.",
                                        min=0, min_exclusive=True)
    size_slope_dex_per_mag: float = option(
        -0.105, "A galaxy moved from its sample magnitude to m is dilated by "
        "10**(this * (m - m_sample)), keeping the size-magnitude relation of the samples "
        "(both COSMOS samples: dlog10(FLUX_RADIUS)/dm = -0.105). 0: size kept (before 0.3).",
        min=-1, max=1)

    def validate(self):
        if self.mag_max <= self.mag_min:
            raise ConfigError(f"magnitude.mag_max: {self.mag_max} must be > magnitude.mag_min "
                              f"({self.mag_min})")


@dataclasses.dataclass
class SeparationConfig:
    """Where the central galaxy and the companion of a blend land in the stamp."""

    close_fraction: typing.Optional[float] = option(
        None, "null: companion uniform over the stamp (the paper's definition). A number f: "
        "a fraction f of blends has separation uniform in [min_separation_pix, close_max_pix), "
        "the rest uniform over the stamp beyond close_max_pix.", min=0, max=1)
    close_max_pix: float = option(10.0, "Separation below which a blend counts as close, "
                                  "pixels.", min=0, min_exclusive=True)
    min_separation_pix: float = option(0.0, "Smallest separation of a blend, pixels.", min=0)
    center_jitter_pix: float = option(0.5, "The central galaxy sits at the stamp centre plus "
                                      "a uniform offset in [-this, this] on each axis, pixels.",
                                      min=0, max=5)

    def validate(self):
        if self.close_fraction is not None and self.min_separation_pix >= self.close_max_pix:
            raise ConfigError(f"separation.min_separation_pix: {self.min_separation_pix} must "
                              f"be < separation.close_max_pix ({self.close_max_pix})")


@dataclasses.dataclass
class NoiseConfig:
    """Noise grid recorded with a stamp set; noise is added by consumers, not stored."""

    sigma_grid_adu: typing.List[float] = option([5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0],
                                                "Gaussian noise levels, ADU (paper: 5..35).",
                                                min=0, min_exclusive=True)
    n_realisations: int = option(10, "Noise realisations per level (paper: 10).", min=1)
    realistic_sigma_adu: float = option(14.5, "Noise of CFIS r-band tiles, ADU; used for the "
                                        "SNR summary and for tiles.", min=0,
                                        min_exclusive=True)


@dataclasses.dataclass
class TileConfig:
    """A CFIS-like tile (``mode: tile``): Poisson galaxies, injected close pairs, noise."""

    nx_pix: int = option(2000, "Tile width, pixels.", min=64)
    ny_pix: int = option(2000, "Tile height, pixels.", min=64)
    density_per_arcmin2: float = option(20.0, "Mean number of objects (singles + pair "
                                        "members) per arcmin^2; positions are Poisson.",
                                        min=0, min_exclusive=True)
    close_pair_fraction: float = option(0.1, "Fraction of objects that are members of an "
                                        "injected close pair.", min=0, max=1)
    pair_min_separation_pix: float = option(3.0, "Smallest separation of an injected pair, "
                                            "pixels.", min=0)
    pair_max_separation_pix: float = option(10.0, "Largest separation of an injected pair, "
                                            "pixels.", min=0, min_exclusive=True)
    galaxy_kind: str = option("parametric", "Galaxy models: 'parametric'; 'real' (HST "
                              "images of the real_half of the real sample); 'mixed' (training "
                              "galaxies: parametric + the training half of the real sample, "
                              "real_fraction of them real).",
                              choices=("parametric", "real", "mixed"))
    star_density_per_arcmin2: float = option(0.0, "Mean number of stars (PSF images) per "
                                             "arcmin^2, Poisson positions.", min=0)
    star_mag_min: float = option(18.0, "Brightest star, AB magnitude (uniform in m).",
                                 min=10, max=35)
    star_mag_max: float = option(24.0, "Faintest star, AB magnitude.", min=10, max=35)
    noise_sigma_adu: float = option(14.5, "Gaussian noise of the tile, ADU (sky-subtracted, "
                                    "mean 0).", min=0)
    draw_size_pix: int = option(64, "Side of the postage stamp each galaxy is drawn in.",
                                min=16)
    crval_ra_deg: float = option(150.0, "RA of the tile centre (CRVAL1), degrees.", min=0,
                                 max=360)
    crval_dec_deg: float = option(2.2, "Dec of the tile centre (CRVAL2), degrees.", min=-90,
                                  max=90)
    gain_e_per_adu: float = option(1.0, "GAIN header key, e-/ADU.", min=0, min_exclusive=True)
    saturate_adu: float = option(60000.0, "SATURATE header key; pixels are clipped there.",
                                 min=0, min_exclusive=True)
    mask_box_pix: int = option(0, "Side of a square of weight 0 (and image 0) near the "
                                "corner (1/4, 1/4) of the tile; 0: none.", min=0)
    shear_g1: float = option(0.0, "Constant reduced shear g1 of every galaxy (not stars, not "
                             "the PSF): its profile before PSF convolution and its separation "
                             "from every galaxy it could blend with (the whole scene, "
                             "simulate.lensed_positions); the random draws do not depend on "
                             "it.", min=-0.5, max=0.5)
    shear_g2: float = option(0.0, "Constant reduced shear g2, as shear_g1.", min=-0.5, max=0.5)
    other_plane_fraction: float = option(0.0, "Fraction of single galaxies on a second shear "
                                         "plane (other_shear_g1/g2), e.g. at another redshift; "
                                         "drawn from their own random stream.", min=0, max=1)
    companion_other_plane: bool = option(False, "The second member of every injected pair is "
                                         "on the second shear plane.")
    other_shear_g1: float = option(0.0, "Constant reduced shear g1 of the second plane's "
                                   "galaxies.", min=-0.5, max=0.5)
    other_shear_g2: float = option(0.0, "Constant reduced shear g2 of the second plane.",
                                   min=-0.5, max=0.5)
    image: str = option("simulated/tile.fits", "Output image (.fits or tile-compressed "
                        ".fits.fz).")
    weight: str = option("simulated/tile.weight.fits", "Output weight map (1/sigma^2).")
    truth: str = option("simulated/tile_truth.fits", "Output truth table (FITS binary table).")
    models: typing.Optional[str] = option(None, "Output HDF5 of every object's noise-free "
                                          "image (draw_size_pix square, odd), for tile-level "
                                          "truth from segmentation maps; null: not written.")
    sersic_fraction: float = option(0.0, "Fraction of the galaxies drawn anew per object from "
                                    "the single-Sersic fits of sersic_catalogue (kind "
                                    "'sersicdraw': n, half-light radius and |g| of a "
                                    "resampled fit row, jittered; each draw its own galaxy). "
                                    "galaxy_kind 'parametric' or 'mixed' only; 0: none.",
                                    min=0, max=1)
    sersic_catalogue: str = option("cosmos_sersics_sample_N300_cleaned.asc", "Text file of "
                                   "single-Sersic fits in cosmos_dir (IDENT, n, half-light "
                                   "radius arcsec, |g|, ...), used by sersic_fraction.")
    sersic_pool_parametric: bool = option(False, "Pool the Sersic draws' fit rows with the "
                                          "single-Sersic fits of parametric_catalogue.")
    sersic_bandwidth: float = option(0.45, "Jitter of a resampled fit row (Gaussian kernel "
                                     "of a KDE in log10 n, log10 hlr, |g|), in units of "
                                     "each column's standard deviation (Scott's rule for "
                                     "276 rows in 3 dimensions: 0.45); draws are clipped "
                                     "to the fitted ranges.", min=0, max=2)
    knots_fraction: float = option(0.0, "Fraction of the Sersic draws with n < "
                                   "knots_max_sersic_n (discs) given GalSim RandomKnots "
                                   "star-forming clumps.", min=0, max=1)
    knots_flux_fraction: float = option(0.3, "Fraction of such a disc's flux in its knots.",
                                        min=0, max=1, min_exclusive=True)
    knots_npoints: int = option(30, "Number of knots of a clumpy disc.", min=1)
    knots_max_sersic_n: float = option(1.5, "Sersic draws with n below this count as discs "
                                       "for knots_fraction.", min=0)
    compact_knots_fraction: float = option(0.0, "Fraction of the parametric galaxies given "
                                           "1-3 compact knots (Gaussians of sigma 0.06 arcsec, "
                                           "unresolved here) holding 10-40 % of the light "
                                           "between them, each 0.3-0.9 arcsec from the centre: "
                                           "one clumpy galaxy, one truth row "
                                           "(simulate.COMPACT_KNOTS). galaxy_kind 'parametric' "
                                           "or 'mixed' only; 0: none.", min=0, max=1)
    augment_real: bool = option(False, "Augment the real galaxies (training half only; "
                                "refused for the test half): a random flip, a random shear "
                                "|g| <= augment_max_shear and a dilation within "
                                "+-augment_max_dilation, besides the random rotation.")
    augment_max_shear: float = option(0.05, "Largest |g| of the augmentation shear (uniform "
                                      "over the disc |g| <= this).", min=0, max=0.05)
    augment_max_dilation: float = option(0.1, "Augmentation dilation uniform in "
                                         "[1 - this, 1 + this].", min=0, max=0.1)
    size_calibration: str = option("none", "Size-magnitude relation of the parametric "
                                   "galaxies and the Sersic draws: 'none' (each keeps its "
                                   "own); 'real_train' (both dilated by one factor, chosen "
                                   "so that at magnitude 25 their median half-light radius "
                                   "is that of the real galaxies of the training half a tile "
                                   "draws there; never the test half). galaxy_kind "
                                   "'parametric' or 'mixed' only.",
                                   choices=("none", "real_train"))

    def validate(self):
        not_on_real = (  # (option, its off value, why a tile of real galaxies refuses it)
            ("size_calibration", "none", "it rescales parametric galaxies and Sersic draws; "
             "real galaxies are the reference"),
            ("sersic_fraction", 0.0, "tiles of real galaxies, e.g. test tiles, hold real "
             "galaxies only"),
            ("compact_knots_fraction", 0.0, "knots are added to parametric galaxies"))
        for name, off, why in not_on_real:
            value = getattr(self, name)
            if value != off and self.galaxy_kind == "real":
                raise ConfigError(f"tile.{name}: {value!r} needs tile.galaxy_kind "
                                  f"'parametric' or 'mixed', not 'real' ({why}); set it to "
                                  f"{off!r} or change galaxy_kind")
        if self.star_mag_min >= self.star_mag_max:
            raise ConfigError(f"tile.star_mag_min: {self.star_mag_min} must be < "
                              f"tile.star_mag_max ({self.star_mag_max})")
        if self.pair_min_separation_pix >= self.pair_max_separation_pix:
            raise ConfigError(f"tile.pair_min_separation_pix: {self.pair_min_separation_pix} "
                              f"must be < tile.pair_max_separation_pix "
                              f"({self.pair_max_separation_pix})")


@dataclasses.dataclass
class SimulateConfig:
    """``bh-stage simulate``: a stamp data set (``mode: stamps``) or a tile (``mode: tile``).

    Fluxes are in ADU of a 300 s CFHT exposure (area 80216 cm^2, gain 1): the COSMOS
    catalogue's flux scaled by ``10**(-0.4 (m - m_sample))`` for the drawn magnitude ``m``.
    """

    mode: str = option("stamps", "'stamps': a training/test data set (HDF5); 'tile': a "
                       "CFIS-like tile (see the tile section).", choices=("stamps", "tile"))
    set_kind: str = option("mixed", "'parametric': COSMOS Sersic/bulge+disc fits; "
                           "'real': HST images of one half of the real sample (real_half); "
                           "'mixed': parametric + real images of mixed_real_half.",
                           choices=("parametric", "real", "mixed"))
    real_half: str = option("test", "Half of the real sample used by set_kind 'real'.",
                            choices=("train", "test"))
    mixed_real_half: str = option("train", "Half of the real sample whose images set_kind "
                                  "'mixed' uses: 'train'; 'test' only for the second fold of "
                                  "the 2-fold cross-validation (a head trained on the test "
                                  "half, tested on the training half).",
                                  choices=("train", "test"))
    real_fraction: float = option(0.5, "set_kind 'mixed': fraction of stamps drawn from real "
                                  "images.", min=0, max=1)
    n_stamps: int = option(1000, "Number of stamps; each split gets an even count, half "
                           "blended (paper: 80000).", min=8)
    train_fraction: float = option(0.45, "Fraction of stamps in the training split.", min=0,
                                   max=1)
    valid_fraction: float = option(0.45, "Fraction in the validation split; the test split "
                                   "is the rest.", min=0, max=1)
    seed: int = option(0, "Seed; stamp i uses default_rng([seed, i]).", min=0)
    n_workers: int = option(2, "Worker processes (spawn); 1 draws in this process.", min=1)
    chunk_size: int = option(50, "Stamps (or tile galaxies) per worker task.", min=1)
    output: str = option("simulated/mixed.h5", "Output data set (HDF5), mode 'stamps'.")
    overwrite: bool = option(False, "Replace existing outputs.")
    cosmos_dir: str = option("../shared/cosmos", "Folder of the COSMOS samples "
                             "(galsim_download_cosmos layout).")
    parametric_catalogue: str = option("real_galaxy_catalog_23.5_example.fits",
                                       "COSMOS catalogue with Sersic fits (parametric models).")
    real_catalogue: str = option("real_galaxy_catalog_26_extension_example.fits",
                                 "COSMOS catalogue with real HST images.")
    pixel_scale_arcsec: float = option(0.187, "Pixel scale, arcsec/pixel (CFHT MegaCam).",
                                       min=0, min_exclusive=True)
    exptime_s: float = option(300.0, "Exposure time for the flux scaling, s.", min=0,
                              min_exclusive=True)
    area_cm2: float = option(80216.0, "Collecting area for the flux scaling, cm^2 (CFHT).",
                             min=0, min_exclusive=True)
    stamp: StampConfig = option(StampConfig, "Stamp geometry (contract: 51 + 2 x 7).")
    psf: PsfConfig = option(PsfConfig, "PSF model.")
    magnitude: MagnitudeConfig = option(MagnitudeConfig, "Target magnitude distribution.")
    separation: SeparationConfig = option(SeparationConfig, "Blend geometry.")
    noise: NoiseConfig = option(NoiseConfig, "Noise grid recorded in the data set.")
    tile: TileConfig = option(TileConfig, "Tile simulator (mode 'tile').")

    def validate(self):
        t = self.tile
        real_half = {"real": self.real_half, "mixed": self.mixed_real_half}.get(t.galaxy_kind)
        if t.augment_real and real_half == "test":
            raise ConfigError(f"tile.augment_real: the real galaxies of galaxy_kind "
                              f"'{t.galaxy_kind}' here are the test half, which is never "
                              f"augmented; set tile.augment_real to false")
        if self.train_fraction + self.valid_fraction > 1:
            raise ConfigError(f"train_fraction + valid_fraction = "
                              f"{self.train_fraction + self.valid_fraction} must be <= 1")
        side_arcsec = self.stamp.size_pix * self.pixel_scale_arcsec
        if side_arcsec < 4 * self.psf.fwhm_arcsec:
            raise ConfigError(f"stamp.size_pix: {self.stamp.size_pix} px x "
                              f"{self.pixel_scale_arcsec}\"/px is smaller than 4 PSF FWHM "
                              f"({4 * self.psf.fwhm_arcsec}\"); raise stamp.size_pix")


SCHEMAS["simulate"] = SimulateConfig


@dataclasses.dataclass
class TrainConfig:
    """``bh-stage train``: train a head on simulated data sets and calibrate its thresholds.

    ``architecture: vgg16``: the paper's head on the frozen VGG16 base; bottleneck features are
    computed once per (data set, noise, realisation, preprocessing, backbone, augmented copy)
    and cached in ``cache_dir``, so a rerun resumes. A compact architecture trains a small CNN
    on the stamps themselves, noise drawn anew every epoch (``train.train_compact``).
    """

    architecture: str = option("vgg16", "'vgg16': the paper's network (frozen VGG16 base + "
                               "head); 'compact_cnn_paper_v1': a compact CNN on the 51x51 "
                               "stamp, 19 million multiply-adds an orientation (issue 15).",
                               choices=("vgg16", "compact_cnn_paper_v1"))
    teacher: typing.Optional[str] = option(None, "Compact architectures: a VGG16 head (name "
                                           "or .json) to distil from, its probability on "
                                           "the training stamps mixed into the target; "
                                           "null: labels only.")
    distill_weight: float = option(0.5, "Compact architectures with a teacher: target = "
                                   "(1 - w) label + w teacher probability.", min=0, max=1)
    n_orientations: int = option(4, "Compact architectures: flips and quarter turns whose "
                                 "logits are averaged when scoring (1-8).", min=1, max=8)

    datasets: typing.List[str] = option([], "Simulated data sets (.h5 from `bh-stage "
                                        "simulate`); their train/valid/test splits are used.")
    recipe: str = option("mixed", "'mixed': every stamp of the data sets (parametric + "
                         "real-image); 'paper': parametric stamps only, and the 0.5 "
                         "threshold is reported as well.", choices=("mixed", "paper"))
    noise_sigma_adu: float = option(15.0, "Gaussian noise added to the noise-free stamps, "
                                    "ADU (CFIS: about 14.5).", min=0, min_exclusive=True)
    realisations: typing.List[int] = option([0], "Noise realisations of the training split, "
                                            "each an independent noise copy; validation and "
                                            "test use the first.", min=0)
    backbone: str = option("hed", "Backbone weights: 'hed' (offline), 'imagenet' (download) "
                           "or a path to a Keras VGG16 conv-base .weights.h5.")
    preprocess: str = option("caffe_clip", "Stamp preprocessing saved with the head: "
                             "'caffe_clip' (best on the realistic set), 'caffe', 'paper' or "
                             "'caffe_signed' (see nets.vgg.preprocess).",
                             choices=("caffe", "paper", "caffe_clip", "caffe_signed"))
    output_dir: str = option("bh_stage/data/heads", "Folder of the trained head.")
    head_name: typing.Optional[str] = option(None, "Head name (<name>.json and "
                                             "<name>.weights.npz); null: "
                                             "<backbone>_<recipe>_sigma<noise>.")
    cache_dir: str = option("cache/features", "Folder of cached bottleneck features.")
    batch_size: int = option(250, "Head training batch size (paper: 250).", min=1)
    feature_batch_size: int = option(256, "Stamps per backbone call when extracting "
                                     "features.", min=1)
    max_epochs: int = option(500, "Maximum number of epochs (paper: 500).", min=1)
    learning_rate: float = option(1e-3, "Adam learning rate (paper: 1e-3).", min=0,
                                  min_exclusive=True)
    patience_epochs: int = option(10, "Stop after this many epochs without a lower "
                                  "validation loss (paper: 10).", min=1)
    lr_patience_epochs: int = option(5, "Halve the learning rate after this many epochs "
                                     "without a lower validation loss (paper: 5).", min=1)
    seed: int = option(0, "Seed of shuffling, weight initialisation, dropout, augmentation "
                       "and subsampling.", min=0)
    n_augment: int = option(0, "Extra augmented copies of the training split (shear 0.2, "
                            "zoom 0.2, horizontal flip, as Keras' ImageDataGenerator).", min=0)
    max_train_stamps: typing.Optional[int] = option(None, "Use at most this many training "
                                                    "stamps (and half as many valid and test "
                                                    "stamps), drawn at random; null: all.",
                                                    min=1)
    overwrite: bool = option(False, "Replace an existing head of the same name.")
    stamp: StampConfig = option(StampConfig, "Stamp geometry; must match the data sets.")
    sep: SepConfig = option(SepConfig, "SEP parameters of the hybrid threshold calibration.")

    def validate(self):
        if not self.realisations:
            raise ConfigError("realisations: give at least one noise realisation, e.g. [0]")
        if len(set(self.realisations)) != len(self.realisations):
            raise ConfigError(f"realisations: {self.realisations} has repeats")


SCHEMAS["train"] = TrainConfig


# --- evaluate (bh-stage evaluate) -------------------------------------------------------


@dataclasses.dataclass
class EvaluateConfig:
    """``bh-stage evaluate``: BlendHunter, SEP and the hybrid flag on a simulated test set.

    Reproduces the paper's section 4 (its Figures 3-6) on one data set: every head scores the
    same noisy stamps (noise ``stamps.dataset_noise_seeds``: reproducible per stamp), SEP
    labels them with the paper's rules using the true positions and with the stage's rule, and
    the hybrid flag is the stage's ``sep_flags.hybrid_flag``.
    """

    dataset: str = option("simulated/realistic.h5", "Simulated test data set (.h5 from "
                          "`bh-stage simulate`), e.g. the realistic real-image test set.")
    heads: typing.List[str] = option(["default"], "Heads to evaluate: 'default', shipped "
                                     "head names or .json paths; the first is the one the "
                                     "targets are checked on. Several heads trained at "
                                     "different noise give the paper's Figures 5-6.")
    noise_sigma_adu: typing.List[float] = option([14.5], "Gaussian noise added to the "
                                                 "noise-free stamps, ADU; several values give "
                                                 "accuracy vs noise (Figure 4). CFIS: 14.5.",
                                                 min=0, min_exclusive=True)
    realisations: typing.List[int] = option([0], "Noise realisations per noise level (paper: "
                                            "10); intervals pool them, figures show their "
                                            "spread.", min=0)
    split: str = option("test", "Stamps evaluated: 'test' (the data set's test split) or "
                        "'all' (every stamp; right for a set made only of test-half galaxies, "
                        "e.g. set_kind 'real' with real_half 'test').",
                        choices=("test", "all"))
    max_stamps: typing.Optional[int] = option(2000, "Evaluate at most this many stamps, "
                                              "drawn at random with `seed` (reduced scale); "
                                              "null: all.", min=2)
    seed: int = option(0, "Seed of the stamp subsample (max_stamps) and of the galaxy "
                       "bootstrap.", min=0)
    separation_bins_pix: typing.List[float] = option(
        [0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 25.0, 30.0, 40.0],
        "Edges of the separation bins of accuracy vs separation (Figure 3), pixels; "
        "increasing.", min=0)
    close_max_pix: float = option(10.0, "Blends closer than this are 'close', the others "
                                  "'far', pixels (paper: 10).", min=0, min_exclusive=True)
    snr_min: float = option(10.0, "Metrics are reported again on the stamps whose galaxies "
                            "all have matched-filter SNR >= this at the evaluation noise.",
                            min=0)
    sep_scan_deblend_cont: typing.List[float] = option(
        [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001, 1e-05],
        "SEP's ROC: deblend_cont values scanned to trace SEP's ROC points (paper rule); "
        "their partial AUC over FPR <= 0.05 is reported; []: no scan.", min=0, max=1)
    n_bootstrap: int = option(1000, "Resamples of the galaxy bootstrap behind every interval "
                              "(distinct main galaxies drawn with replacement).", min=10)
    precision: str = option("f32", "Network arithmetic: 'f32' (TensorFlow) or 'bf16' "
                            "(OpenVINO).", choices=("f32", "bf16"))
    batch_size: int = option(256, "Stamps per network batch.", min=1)
    output_dir: str = option("results/evaluate", "Folder of the figures, results.md and "
                             "metrics.csv (created if missing).")
    overwrite: bool = option(False, "Replace existing outputs in output_dir.")
    sep: SepConfig = option(SepConfig, "SEP parameters (paper's defaults).")

    def validate(self):
        if not self.heads:
            raise ConfigError("heads: give at least one head, e.g. ['default']")
        if not self.noise_sigma_adu:
            raise ConfigError("noise_sigma_adu: give at least one noise level, e.g. [14.5]")
        if not self.realisations:
            raise ConfigError("realisations: give at least one noise realisation, e.g. [0]")
        if len(set(self.realisations)) != len(self.realisations):
            raise ConfigError(f"realisations: {self.realisations} has repeats")
        edges = self.separation_bins_pix
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"separation_bins_pix: {edges} must hold >= 2 strictly "
                              f"increasing edges, e.g. [0, 5, 10, 20, 40]")


SCHEMAS["evaluate"] = EvaluateConfig
__all__.append("EvaluateConfig")


# --- tile-level study (bh-stage train-tile, bh-stage evaluate-tile) ---------------------


@dataclasses.dataclass
class TileSetConfig:
    """Simulated CFIS-like tiles with per-object truth: training, validation and test roles.

    Training and validation tiles hold training galaxies only (parametric + the training
    half of the real sample); test tiles hold the test half of the real galaxies only. Tile
    ``<role><seed>`` lives in ``work_dir/<role><seed>/`` and is simulated and SExtracted
    when missing.
    """

    work_dir: str = option("simulated/tiles", "Folder of the tile folders.")
    train_seeds: typing.List[int] = option(list(range(101, 113)), "Seeds of the "
                                           "training tiles (training galaxies).", min=0)
    valid_seeds: typing.List[int] = option([201, 202], "Seeds of the validation tiles "
                                           "(training galaxies; thresholds, calibration and "
                                           "model choice).", min=0)
    test_seeds: typing.List[int] = option([301, 302], "Seeds of the test tiles (test-half "
                                          "real galaxies; reporting only).", min=0)
    size_pix: int = option(4000, "Side of each square tile, pixels.", min=256)
    density_per_arcmin2: float = option(60.0, "Galaxies per arcmin^2 down to mag_max, "
                                        "undetected ones included.", min=0,
                                        min_exclusive=True)
    mag_max: float = option(26.5, "Faintest galaxy, AB magnitude (counts slope 0.3 dex/mag "
                            "from 20).", min=21, max=30)
    max_brightening_mag: float = option(0.5, "magnitude.max_brightening_mag of the tiles "
                                        "(0.6's artefact-free tiles; the 0.3-0.5 catalogue "
                                        "head tile_unrecognised was trained on tiles with 3).",
                                        min=0, min_exclusive=True)
    size_slope_dex_per_mag: float = option(-0.105, "magnitude.size_slope_dex_per_mag of the "
                                           "tiles (0.6; 0 for the tiles of the 0.3-0.5 "
                                           "catalogue head).", min=-1, max=1)
    star_density_per_arcmin2: float = option(1.0, "Stars per arcmin^2 (18-24 mag).", min=0)
    close_pair_fraction: float = option(0.15, "Fraction of galaxies in injected close pairs, "
                                        "validation and test tiles.", min=0, max=1)
    train_close_pair_fraction: float = option(0.3, "The same for training tiles (more "
                                              "unrecognised blends to learn from).", min=0,
                                              max=1)
    pair_min_separation_pix: float = option(1.5, "Smallest pair separation, pixels.", min=0)
    pair_max_separation_pix: float = option(12.0, "Largest pair separation, pixels.", min=0,
                                            min_exclusive=True)
    noise_sigma_adu: float = option(14.5, "Tile noise, ADU (CFIS r: 14.5).", min=0,
                                    min_exclusive=True)
    cosmos_dir: str = option("../shared/cosmos", "Folder of the COSMOS samples.")
    n_workers: int = option(2, "Simulation worker processes.", min=1)
    sextractor_config: str = option("example_config/sextractor/bh.sex", "source-extractor "
                                    "config; bh.param and default.conv sit beside it.")
    training_sample: str = option("cosmos", "Galaxies of the training and validation tiles: "
                                  "'cosmos' (the COSMOS parametric fits + the training half of "
                                  "the real images, as before 0.6); 'diverse' (the same, plus "
                                  "diverse_sersic_fraction of per-object Sersic draws with "
                                  "knots on discs, and the real images augmented). Test tiles "
                                  "never change.", choices=("cosmos", "diverse"))
    diverse_sersic_fraction: float = option(0.5, "training_sample 'diverse': fraction of the "
                                            "galaxies drawn anew per object "
                                            "(tile.sersic_fraction).", min=0, max=1)
    diverse_knots_fraction: float = option(0.5, "training_sample 'diverse': "
                                           "tile.knots_fraction.", min=0, max=1)
    compact_knots_fraction: float = option(0.0, "tile.compact_knots_fraction of the training "
                                           "and validation tiles (never the test tiles): "
                                           "parametric galaxies with compact knots, labelled "
                                           "as the one galaxy they are.", min=0, max=1)


@dataclasses.dataclass
class TrainTileConfig:
    """``bh-stage train-tile``: train the tile head, P(unrecognised blend) of a detection.

    Inputs: the stage's own stamps at the ``source-extractor`` detections of the training
    tiles and the detections' catalogue features; labels from the tile truth (see
    ``bh_stage.tilehead``). Early stopping, calibration and the ``BLEND_FLAG`` threshold use
    the validation tiles, at tile prevalence.
    """

    tiles: TileSetConfig = option(TileSetConfig, "The simulated tiles.")
    flag_fraction: float = option(0.1, "BLEND_FLAG threshold: the fraction of validation "
                                  "detections flagged.", min=0, max=1, min_exclusive=True)
    max_epochs: int = option(80, "Maximum epochs.", min=1)
    patience_epochs: int = option(8, "Stop after this many epochs without a higher "
                                  "validation ROC AUC (the best epoch is kept).", min=1)
    lr_drop_epochs: typing.Optional[int] = option(3, "After this many epochs without a higher "
                                           "validation ROC AUC, go back to the best epoch "
                                           "and multiply the learning rate by 0.3; null: "
                                           "never.", min=1)
    seed: int = option(0, "Seed of weight initialisation, dropout, shuffling and "
                       "augmentation.", min=0)
    n_orientations: int = option(4, "Orientations (of the 8 flips and quarter turns, the "
                                 "4 rotations first) whose logits the head averages when "
                                 "it scores; calibration and threshold use the same.",
                                 min=1, max=8)
    features: str = option("stamp", "What the head reads beside the pixels: "
                           "'catalogue' (SExtractor columns, cues.CATALOGUE_COLUMNS: the "
                           "compact_cnn_catalogue_v1 heads), 'stamp' (measured by the stage "
                           "on the stamp, and the positions: a position-only head, "
                           "compact_cnn_stamp_v1, that runs on any catalogue with x/y) or "
                           "'stamp+catalogue' (both: compact_cnn_stamp_catalogue_v1).",
                           choices=("catalogue", "stamp", "stamp+catalogue"))
    weights_from: typing.Optional[str] = option(None, "A tile head (shipped name or .json) "
                                                "whose network is kept instead of trained: "
                                                "only the calibration, threshold and "
                                                "validation metrics are refitted, in "
                                                "n_orientations; the training tiles are not "
                                                "read. null: train.")
    output_dir: str = option("bh_stage/data/heads", "Folder of the trained head.")
    head_name: str = option("tile_unrecognised_positions", "Head name (<name>.json, "
                            "<name>.weights.npz).")
    overwrite: bool = option(False, "Replace an existing head of the same name.")


SCHEMAS["train-tile"] = TrainTileConfig


@dataclasses.dataclass
class EvaluateTileConfig:
    """``bh-stage evaluate-tile``: what each column is worth on a tile, against the truth.

    Runs ``bh-stage run`` on the test tiles and scores every column and free catalogue cue
    (and a catalogue-only classifier trained on the training tiles and chosen on the
    validation tiles) on each truth class of ``tiletruth``: ROC AUC, TPR at fixed FPR,
    fraction flagged, with intervals from a bootstrap over galaxies.
    """

    tiles: TileSetConfig = option(TileSetConfig, "The simulated tiles.")
    run_config: typing.Optional[str] = option(None, "Config of `bh-stage run` on the test "
                                              "tiles; null: its defaults (weight: auto).")
    fpr_points: typing.List[float] = option([0.01, 0.05, 0.1], "FPRs at which TPRs are "
                                            "reported.", min=0, max=1)
    snr_min: float = option(10.0, "Also report detections whose main object has SNR >= "
                            "this.", min=0)
    n_bootstrap: int = option(500, "Bootstrap resamples of galaxies.", min=10)
    seed: int = option(0, "Seed of the bootstrap.", min=0)
    output_dir: str = option("results/evaluate_tile", "Folder of results.md, metrics.csv "
                             "and figures.")
    overwrite: bool = option(False, "Replace existing outputs.")

    def validate(self):
        if not self.tiles.test_seeds:
            raise ConfigError("tiles.test_seeds: empty; evaluate-tile reports on the test "
                              "tiles")


SCHEMAS["evaluate-tile"] = EvaluateTileConfig
__all__ += ["TileSetConfig", "TrainTileConfig", "EvaluateTileConfig"]
