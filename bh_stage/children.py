"""The stage's child processes (``tilehead.NetworkProcess``, ``sep_flags.SepProcesses``) end
with their run.

The parent starts each child with ``child_environment()`` (its own pid in
``PARENT_PID_VARIABLE``); the child's first step, ``die_with_parent()``, asks Linux to kill
it (SIGKILL) when that process ends, however it ends: an error, Ctrl-C, SIGTERM, even SIGKILL,
or a signal that came while ``subprocess.Popen`` was still starting it (the parent then never
held its handle to kill it). Elsewhere, and without the variable, a child ends when its
stdin closes, as before.
"""

import ctypes
import os
import signal
import sys

__all__ = ["PARENT_PID_VARIABLE", "child_environment", "die_with_parent"]

PARENT_PID_VARIABLE = "BH_STAGE_PARENT_PID"
"""Environment variable of a child: the pid of the process that started it."""

_PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal a process gets when its parent ends."""


def child_environment():
    """The environment of a child process: this one's, and this process's pid."""
    return {**os.environ, PARENT_PID_VARIABLE: str(os.getpid())}


def die_with_parent():
    """In a child: be killed when the parent ends (Linux ``prctl(PR_SET_PDEATHSIG,
    SIGKILL)``); exit now if it has already ended. Returns whether the kernel will do so
    (False off Linux, or without ``PARENT_PID_VARIABLE``)."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if parent is None or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    if os.getppid() != int(parent):  # the parent ended before the request: no signal comes
        os._exit(1)
    return True
