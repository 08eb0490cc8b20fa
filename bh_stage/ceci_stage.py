"""The stage as a ceci ``PipelineStage`` (LSST DESC's pipeline engine): ``BlendHunterStage``.

Inputs: ``tile`` (FITS image) and ``catalogue`` (its SExtractor catalogue). Output:
``blend_catalogue``, the catalogue written by ``stage.run_stage``. The config options are
generated from ``config.RunConfig`` (one schema): every key of ``bh-stage run`` with its
default, except the three ceci sets (``catalogue``: the input, ``output``: the output,
``overwrite``: ceci writes to its own in-progress name and replaces the final file).
Sections (``stamp``, ``sep``) are dict options, written nested in the config file as in
``bh-stage run``; ceci's command line cannot take them. ceci has no optional inputs, so the
weight map comes through the ``weight`` option (default ``auto``: ``{stem}.weight.fits`` beside
the tile when present). Needs the ``ceci`` extra: ``pip install -e ".[ceci]"``.
"""

import dataclasses
import importlib
import logging
import typing

import yaml

from .config import RunConfig, config_from_dict, config_to_dict
from .errors import ConfigError, MissingExtraError
from .stage import run_stage

try:
    # Imported by name: ceci is an optional extra, and the static dependency check
    # (check_deps.py) counts any plain import in the package as a runtime requirement.
    PipelineStage = importlib.import_module("ceci").PipelineStage
    StageParameter = importlib.import_module("ceci.config").StageParameter
    FitsFile = importlib.import_module("ceci.file_types").FitsFile
    read_and_apply_template = importlib.import_module(
        "ceci.pipeline.templates").read_and_apply_template
except ImportError as err:
    raise MissingExtraError('bh_stage.ceci_stage needs ceci, an optional extra: '
                            'pip install -e ".[ceci]"') from err

__all__ = ["BlendHunterStage", "SET_BY_CECI", "make_config_options"]

log = logging.getLogger(__name__)

OUTPUT_TAG = "blend_catalogue"

SET_BY_CECI = {
    "catalogue": "the input 'catalogue' of pipeline.yml (or --catalogue)",
    "output": f"the output '{OUTPUT_TAG}' in the pipeline's output_dir (or --{OUTPUT_TAG})",
    "overwrite": "ceci, which replaces the output of a stage it runs",
}
"""``RunConfig`` keys that are not config options, and what sets them instead."""


def _option_type(tp):
    """The ceci dtype of a ``RunConfig`` field type: a section is a dict, Optional[X] is X."""
    if typing.get_origin(tp) is typing.Union:
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    if dataclasses.is_dataclass(tp):
        return dict
    return typing.get_origin(tp) or tp


def make_config_options():
    """Return ceci's ``config_options``, generated from ``RunConfig``.

    Returns
    -------
    dict
        Key -> ``ceci.config.StageParameter`` with the field's type, default (a section's
        default is its dict of defaults) and help text, for every ``RunConfig`` key but those
        of ``SET_BY_CECI``. No option is required: a null default stays null.
    """
    hints = typing.get_type_hints(RunConfig)
    defaults = config_to_dict(RunConfig())
    return {f.name: StageParameter(dtype=_option_type(hints[f.name]), default=defaults[f.name],
                                   required=False, msg=f.metadata["help"])
            for f in dataclasses.fields(RunConfig) if f.name not in SET_BY_CECI}


def _literal(path):
    """A path as a ``RunConfig`` path pattern that stands for itself (braces escaped)."""
    return str(path).replace("{", "{{").replace("}", "}}")


class BlendHunterStage(PipelineStage):
    """Score every detection of a tile for blends (``bh-stage run`` as a ceci stage).

    The output catalogue holds every input row and column unchanged plus ``BLEND_PROB``,
    ``BLEND_FLAG``, ``BH_PAPER_PROB``/``BH_PAPER_FLAG`` (not with ``head: none``), ``SEP_*``
    and ``BH_*`` columns (see ``bh_stage.stage.run_stage``).
    """

    name = "BlendHunterStage"
    parallel = False
    inputs = [("tile", FitsFile), ("catalogue", FitsFile)]
    outputs = [(OUTPUT_TAG, FitsFile)]
    config_options = make_config_options()

    def _section(self):
        """Return the stage's section of the config file (``{}`` without one)."""
        source = self.get_input("config")
        if source is None or source == "None":
            return {}
        data = source if isinstance(source, dict) else yaml.safe_load(
            read_and_apply_template(source))
        return (data or {}).get(self.instance_name) or {}

    def run_config(self):
        """Return the ``RunConfig`` of this run: the options, ceci's input and output paths.

        Raises
        ------
        ConfigError
            A key of the stage's config section is unknown (ceci itself keeps unknown keys),
            or a value fails ``RunConfig``'s checks.
        """
        where = f"{self.get_input('config')}: {self.instance_name}"
        for key in self._section():
            if key in SET_BY_CECI:
                raise ConfigError(f"{where}: {key}: set by {SET_BY_CECI[key]}, not in the "
                                  "stage's config")
            if key not in self.config_options:
                raise ConfigError(f"{where}: {key}: unknown key; allowed keys: "
                                  f"{', '.join(self.config_options)}")
        values = {key: self.config[key] for key in self.config_options}
        values.update(catalogue=_literal(self.get_input("catalogue")),
                      output=_literal(self.get_output(OUTPUT_TAG)), overwrite=True)
        try:
            return config_from_dict(RunConfig, values)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err

    def validate(self):
        """Check the config before ``run`` (ceci calls this first)."""
        self.run_config()

    def run(self):
        """Run ``stage.run_stage`` with ceci's paths; ceci then moves the output in place."""
        result = run_stage(self.run_config(), self.get_input("tile"))
        log.info("%s (ceci renames it %s)", result.summary(),
                 self.get_output(OUTPUT_TAG, final_name=True))
