import os
import signal
from pathlib import Path

import pytest

from bh_stage.cli import HideNativeLogLines, main, parse_args

from conftest import REPO, alive_after, signal_when_ready


@pytest.mark.parametrize("name, key", [("run", "x_column: XWIN_IMAGE"),
                                       ("simulate", "n_stamps:"), ("train", "datasets:"),
                                       ("evaluate", "dataset:")])
def test_show_config_prints_every_schema(capsys, name, key):
    assert main(["show-config", name]) == 0
    out = capsys.readouterr().out
    assert key in out and out.lstrip().startswith("#")


@pytest.mark.parametrize("command", ["simulate", "train", "evaluate"])
def test_missing_config_is_one_line_exit_2(tmp_path, capsys, command):
    assert main(["-q", command, str(tmp_path / "nope.yml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.yml: cannot read config file" in err


def test_set_override_is_checked_by_the_schema(tmp_path, capsys):
    cfg = tmp_path / "c.yml"
    cfg.write_text("")
    assert main(["-q", "train", str(cfg), "--set", "batch_size=-3"]) == 2
    assert "batch_size: -3 is out of range" in capsys.readouterr().err


@pytest.mark.parametrize("argv, verbose, quiet", [
    (["-q", "run", "c.yml", "t.fits"], 0, True),
    (["run", "-q", "c.yml", "t.fits"], 0, True),
    (["run", "c.yml", "t.fits", "--quiet"], 0, True),
    (["-v", "run", "c.yml", "t.fits", "-v"], 2, False),
    (["train", "c.yml", "-vv"], 2, False),
    (["show-config", "-q", "run"], 0, True),
])
def test_verbosity_before_or_after_the_subcommand(argv, verbose, quiet):
    """Regression: `bh-stage run -q ...` was refused."""
    args = parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["-q", "run", "-v", "c.yml", "t.fits"])
    assert exit_.value.code == 2
    assert "-q and -v exclude each other" in capsys.readouterr().err


def test_native_start_up_lines_are_hidden(capfd):
    """TensorFlow's C++ lines (absl, before InitializeLog, and TensorFlow Lite's delegate
    line; TF_CPP_MIN_LOG_LEVEL stops neither) are dropped from fd 2; errors, Python's lines,
    other INFO lines and the progress bar pass."""
    with HideNativeLogLines():
        for text in [
            b"WARNING: All log messages before absl::InitializeLog() is called are written "
            b"to STDERR\n",
            b"I0000 00:00:1795599285.163114    6206 port.cc:153] oneDNN custom operations "
            b"are on.\n",
            b"W0000 00:00:1795599285.1 6206 cudart_stub.cc:31] Could not find cuda drivers\n",
            b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
            b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU and more\n",
            b"\robjects:  50%|#####     | 1/2", b"\robjects: 100%|##########| 2/2\n",
            b"E0000 00:00:1795599697.040891    9307 cuda_platform.cc:52] failed call\n",
            b"2026-11-25 bh_stage.stage WARNING: a warning you can act on\n", b"no newline"]:
            os.write(2, text)
    err = capfd.readouterr().err
    assert err == ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU and more\n"
                   "\robjects:  50%|#####     | 1/2\robjects: 100%|##########| 2/2\n"
                   "E0000 00:00:1795599697.040891    9307 cuda_platform.cc:52] failed call\n"
                   "2026-11-25 bh_stage.stage WARNING: a warning you can act on\nno newline")


def test_show_config_run_is_the_example_config(capsys):
    """README: example_config/config.yml is `bh-stage show-config run`."""
    assert main(["show-config", "run"]) == 0
    assert capsys.readouterr().out == (REPO / "example_config" / "config.yml").read_text()


def test_set_error_names_set_not_the_file(tmp_path, capsys):
    """Regression: a bad --set key was blamed on the config file."""
    cfg = tmp_path / "c.yml"
    cfg.write_text("batch_size: 8\n")
    assert main(["-q", "run", str(cfg), str(tmp_path / "t.fits"), "--set", "seed=2",
                 "--set", "batchsize=10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bh-stage run: error: --set batchsize=10: batchsize: unknown key")
    assert "c.yml" not in err


SLOW_RUN = """
import pathlib, sys, time
import conftest
from bh_stage import heads, model, tilehead
from bh_stage.cli import main

folder = pathlib.Path(sys.argv[1])


class SlowTileHead(conftest.FakeTileHead):
    def predict_proba(self, stamps, rms_adu, features):
        (folder / "scoring").touch()  # SEP children are running now
        time.sleep(120)


tilehead.tile_head_path = lambda name: folder / "fake_tile.json"
tilehead.load_tile_head = SlowTileHead
sys.exit(main(["-q", "run", str(folder / "config.yml"), str(folder / "tile.fits"),
               "--output", str(folder / "out" / "tile_bh.cat")]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("signum, expected_code, word", [(signal.SIGTERM, 143, "terminated"),
                                                         (signal.SIGINT, 130, "interrupted")])
def test_real_signal_mid_run_leaves_nothing(small_tile, signum, expected_code, word):
    """The real signal sent to a running `bh-stage run` while it scores: exit 143 for SIGTERM
    (what batch schedulers send first) and 130 for SIGINT, one line on stderr, no output and
    no temporary file, the SEP child processes ended."""
    (small_tile / "config.yml").write_text("")
    (small_tile / "out").mkdir()
    before = sorted(p.name for p in small_tile.rglob("*"))
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    code, out, err, children = signal_when_ready(
        SLOW_RUN, [str(small_tile)], signum,
        lambda children: (small_tile / "scoring").exists(), env=env)
    assert len(children) == 2  # stage.SEP_PROCESSES
    assert code == expected_code
    assert err == f"bh-stage run: {word}\n" and out == ""
    (small_tile / "scoring").unlink()
    assert sorted(p.name for p in small_tile.rglob("*")) == before
    assert not alive_after(children)
