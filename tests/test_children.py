"""The stage's child processes end with their run (bh_stage.children): a child started with
``child_environment()`` is killed when its parent dies, even by SIGKILL (Linux)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bh_stage.children import PARENT_PID_VARIABLE, child_environment, die_with_parent

from conftest import alive

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


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
def test_child_whose_parent_is_already_gone_exits():
    """A child whose recorded parent is not its parent (it ended before the request):
    exit code 1 at once."""
    env = {**os.environ, PARENT_PID_VARIABLE: str(2**22 + 7)}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          timeout=30)
    assert done.returncode == 1 and done.stdout == b""
