import pytest

from bh_stage.config import (SCHEMAS, RunConfig, config_from_dict, config_hash,
                             config_reference, load_config)
from bh_stage.errors import ConfigError

from conftest import REPO


def test_defaults_are_the_papers_sep_parameters():
    cfg = RunConfig()
    assert (cfg.sep.thresh_rms, cfg.sep.minarea_pix, cfg.sep.deblend_nthresh,
            cfg.sep.deblend_cont, cfg.sep.match_radius_pix) == (1.5, 5, 32, 0.005, 2.0)
    assert (cfg.stamp.size_pix, cfg.stamp.pad_pix) == (51, 7)


@pytest.mark.parametrize("data, match", [
    ({"batchsize": 3}, "batchsize: unknown key"),
    ({"sep": {"minarea": 3}}, "sep.minarea: unknown key"),
    ({"batch_size": "many"}, "batch_size: expected int"),
    ({"batch_size": 0}, "batch_size: 0 is out of range"),
    ({"stamp": {"size_pix": 50}}, "stamp.size_pix: 50 must be odd"),
    ({"precision": "int8"}, "not one of"),
    ({"overwrite": "yes"}, "expected true or false"),
    ({"blend_threshold": 1.5}, "must be <= 1"),
    ({"sep": 3}, "expected a mapping"),
])
def test_bad_values_are_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(RunConfig, data)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("batch_size: 64\nsep:\n  minarea_pix: 7\n")
    cfg = load_config(path, RunConfig, ["sep.minarea_pix=9", "weight=w.fits"])
    assert (cfg.batch_size, cfg.sep.minarea_pix, cfg.weight) == (64, 9, "w.fits")
    assert cfg.sep.deblend_nthresh == 32
    assert config_hash(cfg) != config_hash(RunConfig())


def test_override_with_a_path_pattern_is_a_string():
    """Regression: --set output={dir}/x.cat is not valid YAML and must stay a string."""
    cfg = load_config(None, RunConfig, ["output={dir}/{stem}_x.cat"])
    assert cfg.output == "{dir}/{stem}_x.cat"


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yml: cannot read"):
        load_config(tmp_path / "nope.yml", RunConfig)
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yml: not valid YAML"):
        load_config(bad, RunConfig)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, RunConfig, ["batch_size"])


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_example_configs_load_and_cover_every_key(name):
    """Each shipped example config loads and lists every key of its schema."""
    example = REPO / "example_config" / ("config.yml" if name == "run" else f"{name}.yml")
    if not example.exists():
        pytest.skip(f"no example config for {name} yet")
    load_config(example, SCHEMAS[name])
    text = example.read_text()
    for line in config_reference(SCHEMAS[name]).splitlines():
        if not line.lstrip().startswith("#"):
            key = line.strip().split(":")[0]
            assert f"{key}:" in text, f"{example.name} lacks key {key}"


def test_override_errors_name_the_override_and_file_errors_the_file(tmp_path):
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text("batch_size: 8\n")
    bad.write_text("batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"^--set sep.minarea_pix=0: sep.minarea_pix: 0 is"):
        load_config(good, RunConfig, ["seed=3", "sep.minarea_pix=0", "batch_size=0"])
    with pytest.raises(ConfigError, match=r"bad.yml: batchsize: unknown key"):
        load_config(bad, RunConfig, ["seed=3"])
    # an override may repair the file's value: defaults < file < command line
    good.write_text("batch_size: 0\n")
    assert load_config(good, RunConfig, ["batch_size=4"]).batch_size == 4


def test_config_hash_ignores_overwrite():
    """Regression: a resumed run (overwrite on) must match the hash of the first run."""
    assert config_hash(RunConfig(overwrite=True)) == config_hash(RunConfig())
    assert config_hash(RunConfig(seed=1)) != config_hash(RunConfig())
