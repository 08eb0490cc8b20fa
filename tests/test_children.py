"""The stage's child processes end with their run (bh_stage.children): a child started with
``child_environment()`` is killed when its parent dies, even by SIGKILL (Linux); the SEP
processes are started that way."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bh_stage.children import (PARENT_PID_VARIABLE, child_command, child_environment,
                               die_with_parent, end, start)
from bh_stage.sep_flags import SepProcesses

from conftest import alive, children_of

LINUX = sys.platform.startswith("linux")

CHILD = ("import sys, time; from bh_stage.children import die_with_parent; "
         "print(die_with_parent(), flush=True); time.sleep(60)")

PARENT = f"""
import subprocess, sys, time
from bh_stage.children import child_environment
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdout=subprocess.PIPE,
                         text=True, env=child_environment())
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(60)
"""


def test_child_environment_names_this_process():
    env = child_environment()
    assert env[PARENT_PID_VARIABLE] == str(os.getpid())
    assert env["PATH"] == os.environ["PATH"]


def test_without_the_variable_nothing_is_asked(monkeypatch):
    monkeypatch.delenv(PARENT_PID_VARIABLE, raising=False)
    assert die_with_parent() is False


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
def test_child_of_a_killed_parent_is_killed():
    """The parent is SIGKILLed (no clean-up can run); its child, which would sleep 60 s,
    is gone within 10 s (the kernel kills it at once)."""
    with subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                          text=True) as parent:
        try:
            pid, asked = parent.stdout.readline().split()
            pid = int(pid)
            assert asked == "True" and alive(pid)
            parent.send_signal(signal.SIGKILL)
            parent.wait(timeout=30)
            for _ in range(100):
                if not alive(pid):
                    break
                time.sleep(0.1)
            assert not alive(pid)
        finally:
            parent.kill()
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
def test_child_whose_parent_is_already_gone_exits():
    """A child whose recorded parent is not its parent (it ended before the request):
    exit code 1 at once."""
    env = {**os.environ, PARENT_PID_VARIABLE: str(2**22 + 7)}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          timeout=30)
    assert done.returncode == 1 and done.stdout == b""


def test_child_command_runs_the_module_with_its_arguments():
    """``calendar 2026 12`` through ``child_command``: the same output as ``python -m
    calendar 2026 12`` (December 2026)."""
    done = subprocess.run(child_command("calendar", 2026, 12), env=child_environment(),
                          capture_output=True, text=True, timeout=30)
    want = subprocess.run([sys.executable, "-m", "calendar", "2026", "12"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "December 2026" in done.stdout
    assert done.stdout == want.stdout


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_sep_processes_are_tied_to_this_process():
    """The SEP processes run ``child_command`` with this process's pid in their
    environment."""
    with SepProcesses(2):
        pids = children_of(os.getpid())
        assert len(pids) == 2
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"{PARENT_PID_VARIABLE}={os.getpid()}".encode() in environ
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"die_with_parent()" in cmdline[2] and cmdline[3] == b"bh_stage.sep_flags"


def test_end_closes_stdin_then_kills_a_child_that_does_not_exit():
    """``end``: a SEP child exits at EOF (code 0); a child that ignores its stdin (``python
    -m timeit`` of a 60 s sleep) is killed after the timeout (SIGKILL: code -9)."""
    served = start("bh_stage.sep_flags")
    end(served)
    assert served.returncode == 0 and served.stdin.closed and served.stdout.closed
    sleeper = start("timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)")
    end(sleeper, timeout_s=0.5)
    assert sleeper.returncode == -signal.SIGKILL
