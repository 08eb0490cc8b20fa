"""What every bench script shares: its argument parser, the provenance of a run, and one way
to write a result (JSON, atomically, under ``bench/results/`` unless a path says otherwise).

The scripts run as ``python bench/bench_x.py`` from the repository root, so this folder is on
``sys.path`` and ``import benchlib`` works; a test that loads a script by its path puts this
folder on ``sys.path`` first.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import bh_stage
from bh_stage import io

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

VERSIONED = ("numpy", "tensorflow", "keras", "openvino", "nncf", "sklearn", "galsim", "sep",
             "fitsio", "scipy")
"""Packages whose version ``provenance`` records, each only if the run imported it."""


def parser(doc, output=None, quick=None, required=False):
    """Return an ``ArgumentParser`` with a bench's common arguments.

    Parameters
    ----------
    doc : str
        The script's docstring; its first line describes the parser.
    output : str, optional
        Default of ``--output`` (also spelled ``--out``, as older command lines do), the
        result JSON: a bare file name goes in ``bench/results/``. None: the script names the
        file from its run (say so in ``doc``).
    quick : str, optional
        Help text of ``--quick``, the script's smoke-test mode; None: no ``--quick``.
    required : bool
        ``--output`` must be given.
    """
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    where = "result JSON; a bare file name goes in bench/results/"
    if not required:
        where += f" (default: {'named from the run' if output is None else output})"
    p.add_argument("--output", "--out", dest="output", default=output,
                   required=required, metavar="JSON", help=where)
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    return p


def _git(*args):
    """stdout of ``git -C REPO args``, or None where git or the checkout is missing."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model():
    """The CPU's model name from /proc/cpuinfo (``platform`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance():
    """Return what a result needs to be compared with another one later.

    Returns
    -------
    dict
        ``bh_stage_version``; ``git``: ``commit`` of the checkout and ``dirty`` (tracked files
        changed; both None without git); ``machine``: ``host``, ``cpu`` (model), ``cores``
        (``os.cpu_count``), ``cores_usable`` (this process's affinity), ``load_average``
        (1, 5, 15 min, now); ``python`` and ``versions`` of the ``VERSIONED`` packages the
        run imported; ``date_utc`` (ISO 8601); ``command`` (this process's command line).
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "bh_stage_version": bh_stage.__version__,
        "git": {"commit": _git("rev-parse", "HEAD"),
                "dirty": None if status is None else bool(status)},
        "machine": {"host": platform.node(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                    "cores_usable": usable, "load_average": list(os.getloadavg())},
        "python": platform.python_version(),
        "versions": {name: str(getattr(sys.modules[name], "__version__", "unknown"))
                     for name in VERSIONED if sys.modules.get(name) is not None},
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
    }


def result_path(name_or_path):
    """``bench/results/NAME`` for a bare file name, else the path itself (relative paths
    from the working directory)."""
    path = Path(name_or_path)
    return RESULTS_DIR / path if path.parent == Path() else path


def _plain(value):
    """JSON form of what ``json`` cannot write: numpy values as numbers or lists, else
    ``str`` (paths)."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_result(name_or_path, payload):
    """Write ``payload`` and the run's ``provenance()`` (key ``"provenance"``) as JSON.

    The file is written under a temporary name beside the result, then renamed, so an
    interrupted run never leaves half a result (``bh_stage.io.atomic_output``); an existing
    result is replaced and a missing folder made.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        A bare file name (in ``bench/results/``) or a path (see ``result_path``).
    payload : dict
        The result; it must not have a ``"provenance"`` key.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    if "provenance" in payload:
        raise ValueError("payload has a 'provenance' key; write_result adds it")
    path = result_path(name_or_path)
    text = json.dumps({**payload, "provenance": provenance()}, indent=1, default=_plain)
    with io.atomic_output(path, overwrite=True, make_parents=True) as tmp:
        tmp.write_text(text + "\n")
    print(f"wrote {path}")
    return path
