"""The stage's child processes (``tilehead.NetworkProcess``, ``sep_flags.SepProcesses``):
started by ``start`` and ended by ``end``, they end with their run.

A child runs ``child_command(module, *args)``: ``python -c START module args``, whose first
step, before the module's imports, is ``die_with_parent()``: with the parent's pid in
``PARENT_PID_VARIABLE`` (``child_environment()``) it asks Linux to kill it (SIGKILL) when the
parent ends, however it ends (an error, Ctrl-C, SIGTERM, even SIGKILL or the out-of-memory
killer), and exits at once if the parent has already ended (e.g. signalled while
``subprocess.Popen`` was still starting the child, so that it never held its handle). The
parent is the thread that called ``Popen`` (Linux's rule): the stage starts its children in
the thread of ``run_stage``, which outlives them. Elsewhere, and without the variable, a child
ends when its stdin closes, as before.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys

__all__ = ["PARENT_PID_VARIABLE", "child_environment", "child_command", "die_with_parent",
           "start", "end"]

logger = logging.getLogger(__name__)

PARENT_PID_VARIABLE = "BH_STAGE_PARENT_PID"
"""Environment variable of a child: the pid of the process that started it."""

_PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal a process gets when its parent ends."""

START = ("import runpy, sys; from bh_stage.children import die_with_parent; "
         "die_with_parent(); "
         "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")
"""``python -c`` code of a child: ``die_with_parent``, then the module named by the first
argument as ``python -m`` runs it (its arguments after it)."""


def child_environment():
    """The environment of a child process: this one's, and this process's pid."""
    return {**os.environ, PARENT_PID_VARIABLE: str(os.getpid())}


def child_command(module, *args):
    """The command line of a child that runs ``python -m module args`` after
    ``die_with_parent`` (start it with ``env=child_environment()``)."""
    return [sys.executable, "-c", START, module, *map(str, args)]


def die_with_parent():
    """In a child: be killed when the parent ends (Linux ``prctl(PR_SET_PDEATHSIG,
    SIGKILL)``); exit now if it has already ended. Returns whether the kernel will do so
    (False off Linux, without ``PARENT_PID_VARIABLE``, or if ``prctl`` fails)."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if parent is None or not sys.platform.startswith("linux"):
        return False
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        logger.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    if os.getppid() != int(parent):  # the parent ended before the request: no signal comes
        os._exit(1)
    return True


def start(module, *args):
    """Start a child of this process running ``python -m module args`` (``child_command``,
    ``child_environment``), in its own session (Ctrl-C reaches only the parent), talked to
    through its stdin and stdout pipes. Returns its ``subprocess.Popen``."""
    return subprocess.Popen(child_command(module, *args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True,
                            env=child_environment())


def end(proc, timeout_s=10):
    """End a child of ``start`` whose calls are done or which was killed: close its pipes
    (EOF on stdin: it exits; a pipe already broken is no error), wait up to ``timeout_s``,
    then kill it."""
    for pipe in (proc.stdin, proc.stdout):
        try:
            pipe.close()
        except OSError:  # the child is gone and the pipe broken
            pass
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
