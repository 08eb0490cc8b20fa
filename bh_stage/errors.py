"""Exception tree of bh-stage.

Which class to raise:

- ``ConfigError``: a config key is unknown, missing, of the wrong type or out of range.
- ``InputFileError``: a tile, catalogue, weight map, head or data set is missing or unreadable.
- ``CatalogueColumnError``: a required column or HDU is absent from a catalogue.
- ``ModelShapeError``: a head does not fit the backbone, the preprocessing or the stamp size.
- ``SepError``: SEP failed on a stamp (wraps SEP's bare ``Exception``).
- ``OutputExistsError``: the output exists and overwrite was not asked for.
- ``OutputFileError``: the output cannot be written (missing or read-only folder).
- ``MissingExtraError``: an optional module's extra (e.g. ``ceci``) is not installed.

Every class derives from ``BhStageError`` and from the matching builtin, so ``except
ValueError`` still works. The CLI prints the message of a ``BhStageError`` on one line and
exits with code 2.
"""

__all__ = [
    "BhStageError", "ConfigError", "InputFileError", "CatalogueColumnError",
    "ModelShapeError", "SepError", "OutputExistsError", "OutputFileError", "MissingExtraError",
]


class BhStageError(Exception):
    """Base class of every error that a user can fix."""


class ConfigError(BhStageError, ValueError):
    """A config key is unknown, missing, of the wrong type or out of range."""


class InputFileError(BhStageError, OSError):
    """An input file is missing, unreadable, corrupt or inconsistent."""


class CatalogueColumnError(BhStageError, KeyError):
    """A required catalogue column or HDU is absent."""

    def __str__(self):
        # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class ModelShapeError(BhStageError, ValueError):
    """A head does not match the backbone, the preprocessing or the stamp size."""


class SepError(BhStageError, RuntimeError):
    """SEP failed on a stamp."""


class OutputExistsError(BhStageError, FileExistsError):
    """The output exists and overwrite was not asked for."""


class OutputFileError(BhStageError, OSError):
    """The output cannot be written: missing or read-only folder."""


class MissingExtraError(BhStageError, ImportError):
    """An optional module needs a package of an extra that is not installed."""
