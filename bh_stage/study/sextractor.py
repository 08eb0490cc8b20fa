"""Step 0, before the stage: run the real ``source-extractor`` on a tile (evaluation only).

Input: a plain FITS tile and weight map. Output: a FITS_LDAC catalogue and, optionally, the
segmentation map (``CHECKIMAGE_TYPE SEGMENTATION``: each pixel holds the NUMBER of the
detection it belongs to, 0 for sky), from which ``tiletruth`` tells which true objects each
detection holds. A pipeline runs SExtractor itself; ``bh-stage evaluate-tile`` calls this.
"""

import shutil
import subprocess
from pathlib import Path

from ..errors import ConfigError, InputFileError

__all__ = ["run_sextractor"]


def run_sextractor(image, weight, catalogue, config, segmentation=None, executable=None):
    """Run ``source-extractor`` with the project's config on one tile.

    Parameters
    ----------
    image, weight : pathlib.Path
        Plain (not tile-compressed: SExtractor 2.25 cannot read ``.fz``) FITS tile and
        weight map (``WEIGHT_TYPE MAP_WEIGHT``).
    catalogue : pathlib.Path
        Output FITS_LDAC catalogue.
    config : pathlib.Path
        ``.sex`` file; its ``.param`` and ``.conv`` files are taken from the same folder
        (``bh.param``, ``default.conv``).
    segmentation : pathlib.Path, optional
        Output segmentation map.
    executable : str, optional
        Default: ``source-extractor`` (Debian) or ``sex`` on the PATH.

    Raises
    ------
    ConfigError
        No SExtractor executable.
    InputFileError
        SExtractor failed; the message holds its last line of stderr.
    """
    exe = executable or shutil.which("source-extractor") or shutil.which("sex")
    if exe is None:
        raise ConfigError("source-extractor not found; apt-get install source-extractor")
    config = Path(config)
    args = [exe, str(image), "-c", str(config),
            "-PARAMETERS_NAME", str(config.with_name("bh.param")),
            "-FILTER_NAME", str(config.with_name("default.conv")),
            "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", str(weight),
            "-CATALOG_NAME", str(catalogue)]
    if segmentation is not None:
        args += ["-CHECKIMAGE_TYPE", "SEGMENTATION", "-CHECKIMAGE_NAME", str(segmentation)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise InputFileError(f"{image}: source-extractor failed ({last})")
