"""The ceci stage: options generated from RunConfig, ceci's paths and overrides, and the real
ceci engine running example_config/ceci/pipeline.yml on the shipped example tile."""

import os
import subprocess
import sys
from pathlib import Path

import fitsio
import numpy as np
import pytest
import yaml

from bh_stage.config import RunConfig, config_from_dict, config_hash, config_to_dict
from bh_stage.errors import ConfigError
from bh_stage.sep_flags import BH_NOT_SCORED
from conftest import REPO, _missing

PIPELINE = REPO / "example_config" / "ceci" / "pipeline.yml"
CONFIG = REPO / "example_config" / "ceci" / "config.yml"
TILE = REPO / "data" / "example_tile.fits.fz"
CATALOGUE = REPO / "data" / "example_tile.cat"


@pytest.fixture(scope="module")
def ceci_stage():
    """bh_stage.ceci_stage; skips without ceci (a failure under CI=true)."""
    try:
        import ceci  # noqa: F401
    except ImportError:
        _missing('ceci not installed (pip install -e ".[ceci]")')
    from bh_stage import ceci_stage

    return ceci_stage


def _section(path, **changes):
    """The BlendHunterStage section of a ceci config file, with ``changes``."""
    return {**yaml.safe_load(path.read_text())["BlendHunterStage"], **changes}


def test_config_options_are_the_run_config_defaults(ceci_stage):
    """Every RunConfig key is an option with its default and help, but those ceci sets."""
    options = ceci_stage.BlendHunterStage.config_options
    defaults = config_to_dict(RunConfig())
    assert set(options) == set(defaults) - {"catalogue", "output", "overwrite"}
    for key, param in options.items():
        assert param.default == defaults[key], key
        assert not param.required, key
    assert options["stamp"].dtype is dict and options["sep"].default["minarea_pix"] == 5
    assert options["blend_threshold"].dtype is float and options["weight"].dtype is str
    assert options["head"].msg == RunConfig.__dataclass_fields__["head"].metadata["help"]


def _write(tmp_path, section):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"BlendHunterStage": section, "OtherStage": {"x": 1},
                                    "global": {"chunk_rows": 100}}))
    return path


def test_run_config_takes_ceci_paths_file_and_command_line(ceci_stage, tmp_path):
    """File values over defaults, command line over file; a partial section keeps the other
    defaults; catalogue and output are ceci's paths; other stages' keys are left alone."""
    config = _write(tmp_path, {"head": "none", "batch_size": 16, "sep": {"minarea_pix": 3}})
    out = tmp_path / "out" / "cat{x}.fits"
    stage = ceci_stage.BlendHunterStage.parse_command_line(
        ["BlendHunterStage", f"--tile={TILE}", f"--catalogue={CATALOGUE}",
         f"--config={config}", f"--blend_catalogue={out}", "--batch_size=8"])
    cfg = ceci_stage.BlendHunterStage(stage).run_config()
    assert (cfg.head, cfg.batch_size, cfg.tile_head, cfg.weight) == ("none", 8, "default", "auto")
    assert cfg.sep.minarea_pix == 3 and cfg.sep.deblend_nthresh == 32
    assert cfg.catalogue.format() == str(CATALOGUE)
    assert cfg.output.format() == str(tmp_path / "out" / "inprogress_cat{x}.fits")
    assert cfg.overwrite is True


@pytest.mark.parametrize("section, match", [
    ({"hed": "none"}, r"config.yml: BlendHunterStage: hed: unknown key; allowed keys: "
                      r"catalogue_hdu, "),
    ({"output": "x.cat"}, r"output: set by the output 'blend_catalogue'"),
    ({"sep": {"minarea_pix": 0}}, r"config.yml: BlendHunterStage: sep.minarea_pix: 0 is out "
                                  r"of range; it must be >= 1"),
    ({"stamp": {"size_px": 41}}, r"stamp.size_px: unknown key"),
    ({"precision": "f16"}, r"precision: 'f16' is not one of \['f32', 'bf16'\]"),
])
def test_config_errors_name_the_file_and_key(ceci_stage, tmp_path, section, match):
    stage = ceci_stage.BlendHunterStage.make_stage(
        tile=str(TILE), catalogue=str(CATALOGUE), config=str(_write(tmp_path, section)),
        blend_catalogue=str(tmp_path / "out.fits"))
    with pytest.raises(ConfigError, match=match):
        stage.validate()


@pytest.mark.slow
def test_pipeline_runs_the_stage_on_the_example_tile(ceci_stage, tmp_path):
    """The real ceci engine on example_config/ceci/pipeline.yml (its stage config with
    `head: none`, no VGG16) runs `python -m bh_stage BlendHunterStage` on the shipped tile."""
    section = _section(CONFIG, head="none")
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"BlendHunterStage": section}))
    out_dir, log_dir = tmp_path / "out", tmp_path / "logs"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from ceci.main import main; sys.exit(main())",
         str(PIPELINE), f"config={config}", f"output_dir={out_dir}", f"log_dir={log_dir}"],
        cwd=REPO, env=env, text=True, capture_output=True)
    logs = "".join(p.read_text() for p in sorted(log_dir.glob("*")))
    assert run.returncode == 0, run.stdout + run.stderr + logs
    assert "Pipeline successful" in run.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["blend_catalogue.fits"]
    with fitsio.FITS(str(CATALOGUE)) as fin:
        n_rows = fin["LDAC_OBJECTS"].get_nrows()
    assert f"{n_rows} objects" in logs

    with fitsio.FITS(str(CATALOGUE)) as fin, \
            fitsio.FITS(str(out_dir / "blend_catalogue.fits")) as fout:
        assert fin[1].read().tobytes() == fout[1].read().tobytes()  # LDAC_IMHEAD
        old, new = fin[2].read(), fout[2].read()
        header = fout[2].read_header()
    assert len(new) == len(old) == n_rows
    for name in old.dtype.names:
        assert new[name].tobytes() == old[name].tobytes(), name
    assert "BH_PAPER_PROB" not in new.dtype.names  # head: none
    scored = (new["BH_FLAGS"] & BH_NOT_SCORED) == 0
    assert scored.sum() > 200
    prob = new["BLEND_PROB"][scored]
    assert np.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()
    assert np.isnan(new["BLEND_PROB"][~scored]).all()
    # The config the stage ran with: the section plus ceci's paths (output: in-progress name)
    expected = config_from_dict(RunConfig, {
        **section, "catalogue": "data/example_tile.cat", "overwrite": True,
        "output": str(out_dir / "inprogress_blend_catalogue.fits")})
    assert header["BH_CFGSH"] == config_hash(expected)
    assert header["BH_HEAD"] == "none"


def test_single_stage_command_gives_one_line_and_exit_code_2(ceci_stage, tmp_path):
    """`python -m bh_stage BlendHunterStage ...`: a config error is one line on stderr, exit
    code 2, no output."""
    out = tmp_path / "out.fits"
    run = subprocess.run(
        [sys.executable, "-m", "bh_stage", "BlendHunterStage", f"--tile={TILE}",
         f"--catalogue={CATALOGUE}", f"--config={_write(tmp_path, {'hed': 'none'})}",
         f"--blend_catalogue={out}"], cwd=tmp_path, text=True, capture_output=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"bh_stage BlendHunterStage: error: {tmp_path / 'config.yml'}: BlendHunterStage: hed: "
        f"unknown key; allowed keys: {', '.join(ceci_stage.BlendHunterStage.config_options)}"]
    assert list(tmp_path.iterdir()) == [tmp_path / "config.yml"]
