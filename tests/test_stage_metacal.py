"""``metacal.enabled``: the stage scores the four metacalibration images of every stamp with
a position-only tile head (``FakeStampHead``, no TensorFlow) on the synthetic tile: columns,
header keys, independence of the batching and of the padding's noise, and the checks made
before any pixel is read."""

import hashlib
import json
from types import SimpleNamespace

import fitsio
import numpy as np
import pytest

from bh_stage import stage
from bh_stage.cli import main
from bh_stage.config import (MetacalConfig, RunConfig, config_from_dict, config_hash,
                             config_to_dict)
from bh_stage.errors import ConfigError, InputFileError
from bh_stage.metacal import METACAL_TYPES
from bh_stage.psf import moffat_or_gaussian_psf
from bh_stage.stage import METACAL_COLUMNS, OUTPUT_COLUMNS, output_columns, run_stage
from bh_stage.stamps import cut_stamps

from conftest import REPO, write_psfex

SHEARED = [f"BLEND_PROB_{t.upper()}" for t in METACAL_TYPES]  # noshear first
SHEARED_FLAGS = [f"BLEND_FLAG_{t.upper()}" for t in METACAL_TYPES]
CONFIG = REPO / "example_config" / "config.yml"
FWHM_ARCSEC = 0.8  # the synthetic sources: sigma 1.8 px x 0.187 "/px x 2.3548 = 0.79"


def cfg(**kwargs):
    return config_from_dict(RunConfig, kwargs)


def mcal(**kwargs):
    return {"enabled": True, "psf_fwhm_arcsec": FWHM_ARCSEC, **kwargs}


def read(path):
    with fitsio.FITS(str(path)) as f:
        return f["LDAC_OBJECTS"].read(), f["LDAC_OBJECTS"].read_header()


def gaussian_psfex(path):
    """A PSFEx model (POLDEG 1) of a round Gaussian (sigma 1.7 px) whose width grows with x:
    the term in u is a Laplacian-like ring (PSF_SAMP 1, POLZERO 50.5, POLSCAL 50)."""
    t = np.arange(25) - 12.0
    r2 = t[:, None] ** 2 + t[None, :] ** 2
    g = np.exp(-r2 / (2 * 1.7**2))
    g /= g.sum()
    ring = g * (r2 / (2 * 1.7**2) - 1) * 0.3
    return write_psfex(path, [g, ring, np.zeros_like(g)], 1, (50.5, 50.5), (50.0, 50.0))


def test_metacal_off_adds_nothing(small_tile, fake_stamp_head):
    """Off (the default), a metacal section changes nothing: no column, no header key, and
    the same BH_CFGSH as a config without it (the run's hash leaves a disabled section out)."""
    a, ha = read(run_stage(cfg(), small_tile / "tile.fits").output)
    off = cfg(overwrite=True, metacal={"psf_fwhm_arcsec": 0.7, "step": 0.02})
    b, hb = read(run_stage(off, small_tile / "tile.fits").output)
    assert not set(METACAL_COLUMNS) & set(b.dtype.names)
    assert a.tobytes() == b.tobytes()
    assert not {"BH_MCAL", "BH_MCSTP", "BH_PSFSR", "BH_MCRMS"} & set(hb.keys())
    assert ha["BH_CFGSH"] == hb["BH_CFGSH"]
    assert list(output_columns(cfg(head="default"))) == list(OUTPUT_COLUMNS)


def test_metacal_columns_and_header(small_tile, fake_stamp_head):
    result = run_stage(cfg(output="{dir}/on.cat", metacal=mcal()), small_tile / "tile.fits")
    plain = run_stage(cfg(output="{dir}/plain.cat"), small_tile / "tile.fits")
    new, header = read(result.output)
    old, _ = read(plain.output)
    names = list(new.dtype.names)
    at = names.index("BLEND_FLAG") + 1
    assert names[at:at + 10] == SHEARED + SHEARED_FLAGS == list(METACAL_COLUMNS)
    for name in old.dtype.names:  # every other column as without metacal
        assert new[name].tobytes() == old[name].tobytes(), name
    scored = np.isfinite(new["BLEND_PROB"])
    assert scored.all()
    for prob, flag in zip(SHEARED, SHEARED_FLAGS):
        assert new[prob].dtype.newbyteorder("=") == np.float64
        assert new[flag].dtype.newbyteorder("=") == np.int16
        np.testing.assert_array_equal(np.isfinite(new[prob]), scored)
        np.testing.assert_array_equal(new[flag], new[prob] >= header["BH_THR"])
        assert ((new[prob] > 0) & (new[prob] < 1)).all()
    values = np.stack([new[p] for p in SHEARED[1:]])  # the four sheared images
    for i in range(4):
        for j in range(i):
            assert (np.abs(values[i] - values[j]) > 1e-6).all(), (SHEARED[i + 1], SHEARED[j + 1])
    for p in SHEARED[1:]:  # the unsheared metacal image is another image again
        assert (new["BLEND_PROB_NOSHEAR"] != new[p]).any()
    assert header["BH_MCAL"] is True and header["BH_MCSTP"] == 0.01
    assert header["BH_PSFSR"] == "gaussian fwhm=0.8"
    # the correction doubles the variance of noise the reconvolution smoothed to 0.48 of the
    # tile's for this PSF (see stage._sheared_rms): 0.98 x the tile's rms, not sqrt(2)
    assert header["BH_MCRMS"] / header["BH_RMS"] == pytest.approx(0.98, abs=0.03)


def test_round_target_psf_reaches_every_image_and_the_header(small_tile, fake_stamp_head,
                                                             monkeypatch):
    """``metacal.target_psf: gauss`` makes every metacalibration image of the run (the
    stamps' and those that measure BH_MCRMS) with the round target, says so in BH_MCTGT
    (``dilate`` by default) and changes the run's hash, which the default leaves as before."""
    targets = []
    real = stage.metacal_images

    def recording(*args, **kwargs):
        targets.append(kwargs.get("target_psf", "dilate"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "metacal_images", recording)
    gauss = cfg(output="{dir}/gauss.cat", metacal=mcal(target_psf="gauss"))
    _, header = read(run_stage(gauss, small_tile / "tile.fits").output)
    assert header["BH_MCTGT"] == "gauss" and len(targets) >= 2 and set(targets) == {"gauss"}
    dilate = cfg(output="{dir}/dilate.cat", metacal=mcal())
    _, default = read(run_stage(dilate, small_tile / "tile.fits").output)
    assert default["BH_MCTGT"] == "dilate"
    assert config_hash(cfg(metacal=mcal(target_psf="gauss"))) != config_hash(cfg(metacal=mcal()))
    without = config_to_dict(dilate)
    without["metacal"].pop("target_psf")  # a metacal config written before the key existed
    assert default["BH_CFGSH"] == hashlib.sha256(json.dumps(
        {k: v for k, v in without.items() if k != "overwrite"}, sort_keys=True).encode()
    ).hexdigest()


def test_psfex_model_without_a_core_for_the_round_target(small_tile, fake_stamp_head,
                                                         monkeypatch, capsys):
    """A PSFEx PSF whose adaptive moments do not settle cannot size the round target: one
    line naming the file and metacal.psf_file, exit code 2 (a bad input), no output, the tile untouched."""
    gaussian_psfex(small_tile / "tile.psf")

    def unsettled(psf, step):
        raise ValueError("psf_image: adaptive moments did not settle in 100 steps")

    monkeypatch.setattr(stage, "round_target_sigma_pix", unsettled)
    before = (small_tile / "tile.fits").read_bytes()
    code = main(["-q", "run", str(CONFIG), str(small_tile / "tile.fits"),
                 "--set", "output={dir}/round.cat", "--set", "metacal.enabled=true",
                 "--set", "metacal.psf_file={dir}/{stem}.psf",
                 "--set", "metacal.target_psf=gauss"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"bh-stage run: error: {small_tile / 'tile.psf'}: metacal.psf_file: "
                          "the PSFEx PSF at (x, y) = (")
    assert err.rstrip().endswith("psf_image: adaptive moments did not settle in 100 steps")
    assert not (small_tile / "round.cat").exists()
    assert (small_tile / "tile.fits").read_bytes() == before


def test_moffat_psf_in_header(small_tile, fake_stamp_head):
    result = run_stage(cfg(metacal=mcal(psf_moffat_beta=4.765)), small_tile / "tile.fits")
    assert read(result.output)[1]["BH_PSFSR"] == "moffat fwhm=0.8 beta=4.765"


@pytest.mark.parametrize("psf", ["fwhm", "psfex"])
def test_sheared_columns_do_not_depend_on_batching(small_tile, fake_stamp_head, monkeypatch,
                                                   psf):
    """Batches and metacal chunks of 1, 2 and 256 rows, and batches of 1 in one chunk, give
    the same values; with a PSFEx model in 40 px cells the three sources fall in three cells
    (one PSF each), two of them in one batch of 2."""
    extra = {}
    if psf == "psfex":
        gaussian_psfex(small_tile / "tile.psf")
        extra = {"psf_fwhm_arcsec": None, "psf_file": "{dir}/{stem}.psf", "psf_cell_pix": 40}
    outputs = []
    for size, chunk_rows in ((1, 1), (2, 1), (256, 1), (1, 1024)):
        monkeypatch.setattr(stage, "METACAL_CHUNK_ROWS", chunk_rows)
        run = cfg(output=f"{{dir}}/b{size}_{chunk_rows}.cat", batch_size=size,
                  metacal=mcal(**extra))
        outputs.append(read(run_stage(run, small_tile / "tile.fits").output))
    for out, header in outputs[1:]:
        for name in SHEARED:
            np.testing.assert_array_equal(out[name], outputs[0][0][name])
    if psf == "psfex":
        assert outputs[0][1]["BH_PSFSR"] == "psfex:tile.psf"


def test_psfex_cells_and_ranks(monkeypatch):
    """Cells of 40 px on a 100x100 tile: 3 x 3, the last ones 20 px wide; each row's rank
    counts the rows of its cell before it; a cell's PSF is the model at the cell's centre."""
    seen = []

    def fake_psfex_psf(model, x_pix, y_pix, side_pix):
        seen.append((x_pix, y_pix))
        return moffat_or_gaussian_psf(0.7, 0.187, side_pix)

    monkeypatch.setattr(stage, "psfex_psf", fake_psfex_psf)
    x = np.array([0.0, 39.4, 39.5, 99.0, 10.0, 45.0, -0.5])
    y = np.array([0.0, 0.0, 0.0, 99.0, 50.0, 0.0, 0.0])
    run = RunConfig(metacal=MetacalConfig(enabled=True, psf_file="m.psf", psf_cell_pix=40))
    m = stage._Metacal(run, SimpleNamespace(path="m.psf", degree=2), x, y, (100, 100), 5.0)
    assert m.cell.tolist() == [0, 0, 1, 8, 3, 1, 0]  # pixel 39 ends at 39.5
    assert m.rank.tolist() == [0, 1, 0, 0, 0, 1, 2]
    m.psf(8)
    assert seen == [(59.5, 59.5), (89.5, 89.5)]  # the tile centre's cell (the rms), cell 8
    # a constant model (POLDEG 0): one cell, the rows' own order
    m = stage._Metacal(run, SimpleNamespace(path="m.psf", degree=0), x, y, (100, 100), 5.0)
    assert m.cell.tolist() == [0] * 7 and m.rank.tolist() == list(range(7))
    assert seen[-1] == (49.5, 49.5)


def test_correction_noise_is_not_the_padding_noise():
    """Regression: a correction noise drawn from the stream of the stamp's own fill noise
    (default_rng([seed, row]), as metacal_images drew it before metacal.NOISE_STREAM) is the
    padding's noise rotated, and a stamp of fill noise would get about twice the expected
    noise rms. A stamp made only of fill noise has the sheared images' rms."""
    m = stage._Metacal(cfg(metacal=mcal()), None, np.zeros(40), np.zeros(40), (100, 100), 5.0)
    image = np.zeros((100, 100), np.float32)
    stamps = cut_stamps(image, np.full(40, 50.0), np.full(40, 50.0), 51, 7,
                        bad=np.ones((100, 100), bool), fill_sigma=5.0, seed=0)[0]
    images = m.images(stamps, slice(0, 40))
    for name, im in images.items():
        rms = np.sqrt(np.mean(im[:, 16:49, 16:49] ** 2))
        assert rms == pytest.approx(m.rms_adu, rel=0.05), name


def test_catalogue_head_refused_before_pixels(small_tile, fake_classifier, monkeypatch,
                                              capsys):
    """FakeTileHead reads catalogue columns: refused with one line naming the key and the fix,
    before the tile's pixels are read."""

    monkeypatch.setattr(stage, "tile_pixels", lambda *a, **k: pytest.fail("pixels read"))
    with pytest.raises(ConfigError, match=r"metacal\.enabled: tile head .* position-only"):
        run_stage(cfg(metacal=mcal()), small_tile / "tile.fits")
    code = main(["-q", "run", str(CONFIG), str(small_tile / "tile.fits"),
                 "--set", "metacal.enabled=true", "--set", "metacal.psf_fwhm_arcsec=0.8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "features=stamp" in err
    assert not (small_tile / "tile_bh.cat").exists()


@pytest.mark.parametrize("psf, match", [({}, "neither"),
                                        ({"psf_file": "x.psf"}, "both")])
def test_exactly_one_psf_source(small_tile, fake_stamp_head, monkeypatch, capsys, psf, match):
    monkeypatch.setattr(stage, "tile_pixels", lambda *a, **k: pytest.fail("pixels read"))
    values = {"enabled": True, "psf_fwhm_arcsec": None if match == "neither" else 0.8, **psf}
    with pytest.raises(ConfigError, match=f"metacal: {match} of metacal.psf_file and "
                                          "metacal.psf_fwhm_arcsec"):
        cfg(metacal=values)
    # a config built directly skips config_from_dict: run_stage checks again
    direct = RunConfig(metacal=MetacalConfig(**values))
    with pytest.raises(ConfigError, match="give exactly one"):
        run_stage(direct, small_tile / "tile.fits")
    code = main(["-q", "run", str(CONFIG), str(small_tile / "tile.fits"),
                 "--set", "metacal.enabled=true",
                 *[f"--set=metacal.{k}={v}" for k, v in values.items() if v is not None]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "give exactly one" in err


def test_missing_or_bad_psfex_file_refused_before_pixels(small_tile, fake_stamp_head,
                                                         monkeypatch):
    monkeypatch.setattr(stage, "tile_pixels", lambda *a, **k: pytest.fail("pixels read"))
    values = {"psf_fwhm_arcsec": None, "psf_file": "{dir}/{stem}.psf"}
    with pytest.raises(InputFileError, match=r"tile\.psf: no such file"):
        run_stage(cfg(metacal=mcal(**values)), small_tile / "tile.fits")
    (small_tile / "tile.psf").write_bytes((small_tile / "tile.weight.fits").read_bytes())
    with pytest.raises(InputFileError, match="no PSF_DATA extension; is it a PSFEx"):
        run_stage(cfg(metacal=mcal(**values)), small_tile / "tile.fits")
