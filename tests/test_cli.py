import pytest

from bh_stage.cli import main


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
