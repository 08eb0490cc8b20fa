"""The stage on a synthetic 64x64 tile, scored by FakeClassifier (no TensorFlow): columns,
preservation of the input, and every bad-input path through the CLI."""

import hashlib
import logging
import os

import fitsio
import numpy as np
import pytest

from bh_stage.cli import main
from bh_stage.config import RunConfig, config_from_dict
from bh_stage.pixels import tile_pixels
from bh_stage.sep_flags import BH_MASKED, BH_NOT_SCORED
from bh_stage.stage import OUTPUT_COLUMNS, output_columns, run_stage

from conftest import (REPO, TILE_SHAPE, FakeTileHead, gaussian_image,
                      write_ldac)


def sha(path):
    return "directory" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()


def cfg(**kwargs):
    return config_from_dict(RunConfig, kwargs)


def test_columns_added_and_input_preserved(small_tile, fake_classifier):
    before = sha(small_tile / "tile.cat")
    result = run_stage(cfg(weight="{dir}/{stem}.weight.fits", head="default"),
                       small_tile / "tile.fits")
    assert sha(small_tile / "tile.cat") == before
    out = small_tile / "tile_bh.cat"
    assert result.output == out and result.n_objects == 3
    with fitsio.FITS(str(small_tile / "tile.cat")) as fin, fitsio.FITS(str(out)) as fout:
        assert [h.get_extname() for h in fout] == ["", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        np.testing.assert_array_equal(fout[1].read(), fin[1].read())
        old, new = fin[2].read(), fout[2].read()
        for name in old.dtype.names:
            assert new[name].tobytes() == old[name].tobytes(), name
        assert list(new.dtype.names) == list(old.dtype.names) + list(OUTPUT_COLUMNS)
        hin, hout = fin[2].read_header(), fout[2].read_header()
        for key in ("TTYPE2", "TUNIT2", "TDISP2", "TDIM5"):
            assert hout[key] == hin[key] and hout.get_comment(key) == hin.get_comment(key)
        first_new = f"TTYPE{len(old.dtype.names) + 1}"
        assert hout[first_new] == "BLEND_PROB"
        assert hout.get_comment(first_new) == OUTPUT_COLUMNS["BLEND_PROB"][2]
        assert hout["BH_VERS"] and len(hout["BH_CFGSH"]) == 64
    # Source 1 is isolated; SEP does not split the 3.4 px pair, the fake heads do.
    assert new["SEP_NSRC"][0] == 1 and new["SEP_BLEND_FLAG"][0] == 0
    assert new["BH_FLAGS"].tolist() == [1, 1, 1]  # every 51x51 stamp crosses the tile edge
    assert new["BLEND_PROB"][0] < 0.5 and (new["BLEND_PROB"][1:] >= 0.5).all()
    assert new["BLEND_PROB"].dtype.itemsize == 8  # float64: no saturation at 1
    assert (new["BLEND_FLAG"] == (new["BLEND_PROB"] >= 0.5)).all()
    assert new["BH_PAPER_PROB"][0] < 0.5 and (new["BH_PAPER_PROB"][1:] >= 0.5).all()
    assert (new["BH_PAPER_FLAG"] >= new["SEP_BLEND_FLAG"]).all()
    # the pair members are 3.35 px apart, the isolated source 76.4 px from them
    np.testing.assert_allclose(new["BH_NEAREST_PIX"], [np.hypot(55, 53), np.hypot(3, 1.5),
                                                       np.hypot(3, 1.5)], rtol=1e-6)
    assert new["BH_NDET_STAMP"].tolist() == [0, 1, 1]
    assert hout["BH_TARGET"] == "unrecognised_blend" and hout["BH_THR"] == 0.5
    assert hout["BH_TPREC"] == "f32"  # tile_head_precision 'auto', a head with no int8 network


def test_head_none_skips_the_paper_head(small_tile, fake_classifier):
    """``head: none`` (the default): no network but the tile head is loaded; the paper columns
    and header keys are absent, every other column equals a run with the paper head."""
    with_paper = run_stage(cfg(head="default", output="{dir}/with.cat"),
                           small_tile / "tile.fits")
    without = run_stage(cfg(output="{dir}/without.cat"), small_tile / "tile.fits")  # default
    assert len(fake_classifier) == 1  # loaded by the first run only
    assert with_paper.n_paper_flag is not None and without.n_paper_flag is None
    assert "BH_PAPER_FLAG" not in without.summary() and "by SEP" in without.summary()
    with fitsio.FITS(str(with_paper.output)) as fa, fitsio.FITS(str(without.output)) as fb:
        a, b = fa["LDAC_OBJECTS"].read(), fb["LDAC_OBJECTS"].read()
        header = fb["LDAC_OBJECTS"].read_header()
    assert set(a.dtype.names) - set(b.dtype.names) == {"BH_PAPER_PROB", "BH_PAPER_FLAG"}
    for name in b.dtype.names:
        assert b[name].tobytes() == a[name].tobytes(), name
    assert header["BH_HEAD"] == "none" and "BH_HTHR" not in header and "BH_HSHA" not in header


def test_edge_masked_and_nan_positions_are_flags(small_tile, fake_classifier):
    import fitsio

    weight = np.ones(TILE_SHAPE, dtype=np.float32)
    weight[48:53, 48:53] = 0  # around object 2
    fitsio.write(str(small_tile / "tile.weight.fits"), weight, clobber=True)
    write_ldac(small_tile / "tile.cat", [2.0, 50.0, np.nan], [2.0, 50.0, 5.0])
    run_stage(cfg(weight="{dir}/{stem}.weight.fits"), small_tile / "tile.fits")
    out = fitsio.read(str(small_tile / "tile_bh.cat"), ext="LDAC_OBJECTS")
    # Object 1 at (2, 2): columns and rows -23..27 of which 0..27 are on the tile.
    assert out["BH_EDGE_FRAC"][0] == pytest.approx(1 - 28**2 / 51**2)
    # Object 2 at (50, 50): the whole stamp is on the tile, 25 pixels of weight 0.
    assert out["BH_EDGE_FRAC"][1] == 0
    assert out["BH_MASK_FRAC"][1] == pytest.approx(25 / 51**2)
    assert out["BH_FLAGS"].tolist() == [1, 2, 4]
    assert np.isnan(out["BLEND_PROB"][2]) and out["BLEND_FLAG"][2] == 0
    assert np.isnan(out["BH_EDGE_FRAC"][2]) and np.isnan(out["BH_MASK_FRAC"][2])


def test_no_position_gets_no_sep_verdict(small_tile, fake_classifier):
    """Regression: an object without a finite position got the SEP columns of a stamp cut
    at the tile corner, (0, 0), here holding two sources, so SEP_NSRC 2 and a blend flag."""
    fitsio.write(str(small_tile / "tile.fits"),
                 gaussian_image(TILE_SHAPE, [(20.0, 22.0), (8.0, 6.0), (75.0, 75.0)]),
                 clobber=True)
    write_ldac(small_tile / "tile.cat", [20.0, np.nan, 75.0], [22.0, 5.0, np.inf])
    result = run_stage(cfg(head="default"), small_tile / "tile.fits")
    out = fitsio.read(str(small_tile / "tile_bh.cat"), ext="LDAC_OBJECTS")
    assert out["SEP_NSRC"][0] == 2 and out["SEP_BLEND_FLAG"][0] == 1  # the corner pair
    for row in (1, 2):
        assert out["SEP_NSRC"][row] == -1
        assert out["SEP_BLEND_FLAG"][row] == 0 and out["BLEND_FLAG"][row] == 0
        assert out["BH_PAPER_FLAG"][row] == 0 and np.isnan(out["BLEND_PROB"][row])
        assert np.isnan(out["BH_PAPER_PROB"][row]) and out["BH_NDET_STAMP"][row] == -1
        assert out["BH_FLAGS"][row] == BH_NOT_SCORED  # and not BH_SEP_ERROR
    assert result.n_not_scored == 2 and result.n_blend_sep == 1


def test_position_just_off_the_tile_is_an_edge_flag(small_tile, fake_classifier):
    """Regression: a windowed position 0.7 px outside the tile (SExtractor gives such for
    objects cut by the border) is scored and flagged, not refused."""
    write_ldac(small_tile / "tile.cat", [-0.7, 50.0], [50.0, 100.2])
    run_stage(cfg(), small_tile / "tile.fits")
    out = fitsio.read(str(small_tile / "tile_bh.cat"), ext="LDAC_OBJECTS")
    assert out["BH_FLAGS"].tolist() == [1, 1]
    assert np.isfinite(out["BLEND_PROB"]).all()


def test_new_mode_writes_a_sidecar(small_tile, fake_classifier):
    c = cfg(output_mode="new", output="{dir}/side.fits")
    run_stage(c, small_tile / "tile.fits")
    out = fitsio.read(str(small_tile / "side.fits"), ext="OBJECTS")
    assert list(out.dtype.names) == ["NUMBER"] + list(output_columns(c))
    assert "BH_PAPER_PROB" not in out.dtype.names  # head: none by default
    assert out["NUMBER"].tolist() == [1, 2, 3]


def test_empty_catalogue_gives_zero_rows(small_tile, fake_classifier):
    write_ldac(small_tile / "tile.cat", [], [])
    result = run_stage(cfg(), small_tile / "tile.fits")
    assert result.n_objects == 0
    assert fitsio.FITS(str(small_tile / "tile_bh.cat"))[2].get_nrows() == 0


def test_compressed_tile_gives_the_same_columns(small_tile, fake_classifier):
    image = fitsio.read(str(small_tile / "tile.fits"))
    fitsio.write(str(small_tile / "tilez.fits.fz"), image, compress="GZIP", clobber=True)
    (small_tile / "tilez.cat").write_bytes((small_tile / "tile.cat").read_bytes())
    run_stage(cfg(), small_tile / "tile.fits")
    run_stage(cfg(), small_tile / "tilez.fits.fz")
    a = fitsio.read(str(small_tile / "tile_bh.cat"), ext=2)
    b = fitsio.read(str(small_tile / "tilez_bh.cat"), ext=2)
    np.testing.assert_array_equal(a["BLEND_PROB"], b["BLEND_PROB"])


def run_cli(tile_dir, *extra):
    return main(["-q", "run", str(tile_dir / "config.yml"), str(tile_dir / "tile.fits"), *extra])


def corrupt(path):
    path.write_bytes(b"not a FITS file at all" * 10)


def truncate(path):
    path.write_bytes(path.read_bytes()[:4000])


def drop_columns(path):
    import fitsio

    fitsio.write(str(path), np.zeros(2, dtype=[("NUMBER", "i4"), ("X_IMAGE", "f8")]),
                 clobber=True)


def other_tile_catalogue(path):
    write_ldac(path, [500.0, 10.0], [600.0, 10.0])


def make_directory(path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("damage, target, config, extra, message", [
    (None, None, "weight: missing.fits\n", (), "missing.fits: no such file"),
    (lambda p: p.unlink(), "tile.fits", "", (), "tile.fits: no such file"),
    (corrupt, "tile.fits", "", (), "tile.fits: not a readable FITS file"),
    (truncate, "tile.fits", "", (), "tile.fits: "),
    (lambda p: p.unlink(), "tile.cat", "", (), "tile.cat: no such file"),
    (corrupt, "tile.cat", "", (), "tile.cat: not a readable FITS file"),
    (truncate, "tile.cat", "", (), "tile.cat: "),
    (drop_columns, "tile.cat", "", (), "no column 'XWIN_IMAGE'"),
    (other_tile_catalogue, "tile.cat", "", (), "1 of 2 positions lie outside the 100x100 tile"),
    (None, None, "batch_sise: 3\n", (), "batch_sise: unknown key"),
    (None, None, "precision: int4\n", (), "precision: 'int4' is not one of"),
    (None, None, "", ("--output", "/nonexistent/dir/out.cat"), "output folder"),
    (None, None, "", ("--output", "{dir}/tile.cat"), "would overwrite an input"),
    (make_directory, "tile.fits", "", (), "tile.fits: is a directory, not a FITS file"),
    (make_directory, "tile.cat", "", (), "tile.cat: is a directory, not a FITS file"),
    (None, None, "", ("--output", "{dir}"), "the output is a directory"),
    (None, None, "", ("--output", "{dir}/tile.fits/out.cat"), "tile.fits is not a directory"),
    (None, None, "", ("--set", "batchsize=10"), "error: --set batchsize=10: batchsize: unknown"),
])
def test_bad_input_is_one_line_exit_2_no_output(small_tile, fake_classifier, capsys, damage,
                                                target, config, extra, message):
    (small_tile / "config.yml").write_text(config)
    if damage is not None:
        damage(small_tile / target)
    before = {p.name: sha(p) for p in small_tile.iterdir()}
    assert run_cli(small_tile, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    after = {p.name: sha(p) for p in small_tile.iterdir()}
    assert after == before  # inputs untouched, nothing written


@pytest.mark.parametrize("config, message", [
    ("tile_head: tile_unrecognised_positions\ntile_head_precision: int8\n",
     "tile_unrecognised_positions.json: the head has no 8-bit network"),
    ("tile_head: {dir}/heads/copy.json\n",
     "copy.int8.tflite: cannot read the 8-bit network named in"),
])
def test_bad_8bit_tile_head_is_one_line_exit_2_no_output(small_tile, capsys, config, message):
    """The real tile heads (no fake): int8 asked of a head without an 8-bit network, and the
    default head copied without its .tflite (its JSON names it; 'auto' runs it in int8), are
    refused in one line naming the file, before any output."""
    import json
    import shutil

    from bh_stage import tilehead

    src = tilehead.tile_head_path("default")
    heads_dir = small_tile / "heads"
    heads_dir.mkdir()
    meta = json.loads(src.read_text())
    meta["int8"]["file"] = "copy.int8.tflite"
    (heads_dir / "copy.json").write_text(json.dumps(meta))
    shutil.copy(src.with_name(meta["weights_file"]), heads_dir)
    (small_tile / "config.yml").write_text(config.format(dir=small_tile))
    before = {p.name: sha(p) for p in small_tile.iterdir()}
    assert run_cli(small_tile) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert "tile_head_precision" in err  # the setting that avoids it
    assert {p.name: sha(p) for p in small_tile.iterdir()} == before


def test_existing_output_needs_overwrite(small_tile, fake_classifier, capsys):
    (small_tile / "config.yml").write_text("")
    assert run_cli(small_tile) == 0
    assert "3 objects" in capsys.readouterr().out
    assert run_cli(small_tile) == 2
    assert "output exists; pass --overwrite" in capsys.readouterr().err
    assert run_cli(small_tile, "--overwrite") == 0


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["scoring", "writing"])
def test_interrupted_run_leaves_no_output(small_tile, fake_classifier, monkeypatch, where):
    """A run killed while scoring or while writing leaves neither the output nor a
    temporary file."""
    from bh_stage import io

    from conftest import FakeTileHead

    if where == "scoring":
        monkeypatch.setattr(FakeTileHead, "predict_proba", interrupt)
    else:
        monkeypatch.setattr(io, "_describe", interrupt)
    before = sorted(p.name for p in small_tile.iterdir())
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg(), small_tile / "tile.fits")
    assert sorted(p.name for p in small_tile.iterdir()) == before


@pytest.fixture
def no_pixels(monkeypatch):
    """Fail the test if the stage reads a pixel."""
    from bh_stage import io

    def refuse(*args, **kwargs):
        raise AssertionError("a pixel was read")

    monkeypatch.setattr(io, "read_tile", refuse)


def refused_before_pixels(small_tile, capsys, *extra):
    (small_tile / "config.yml").write_text("")
    before = {p.name: sha(p) for p in small_tile.iterdir()}
    assert run_cli(small_tile, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert {p.name: sha(p) for p in small_tile.iterdir()} == before
    return err


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root; "
                    "test_unwritable_folder_refused_before_pixels covers it")
def test_read_only_folder_refused_before_pixels(small_tile, fake_classifier, no_pixels,
                                                capsys):
    folder = small_tile / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        err = refused_before_pixels(small_tile, capsys, "--output", str(folder / "out.cat"))
    finally:
        folder.chmod(0o755)
    assert "cannot write in" in err and "Permission denied" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root")
def test_read_only_output_refused_before_pixels(small_tile, fake_classifier, no_pixels,
                                                capsys):
    (small_tile / "tile_bh.cat").write_bytes(b"old output")
    (small_tile / "tile_bh.cat").chmod(0o444)
    err = refused_before_pixels(small_tile, capsys, "--overwrite")
    assert "tile_bh.cat: the output is read-only" in err


def test_unwritable_folder_refused_before_pixels(small_tile, fake_classifier, no_pixels,
                                                 monkeypatch, capsys):
    """A folder where no file can be made (read-only mount, permissions; as root the
    permission bits pass os.access, so the probe file decides) is refused up front."""
    import tempfile

    def no_file(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no_file)
    err = refused_before_pixels(small_tile, capsys)
    assert "tile_bh.cat: cannot write in" in err and "Permission denied" in err


def test_ctrl_c_is_one_line_exit_130_no_output(small_tile, fake_classifier, monkeypatch,
                                               capsys):
    from conftest import FakeTileHead

    monkeypatch.setattr(FakeTileHead, "predict_proba", interrupt)
    (small_tile / "config.yml").write_text("")
    before = {p.name: sha(p) for p in small_tile.iterdir()}
    assert run_cli(small_tile) == 130
    captured = capsys.readouterr()
    assert captured.err == "bh-stage run: interrupted\n" and captured.out == ""
    assert {p.name: sha(p) for p in small_tile.iterdir()} == before


def test_progress_steps_start_before_their_work(small_tile, fake_classifier):
    """The bar shows reading the tile and loading the network as steps, and the objects bar
    starts at 0 before the first batch, so its rate counts the first batch's time."""
    calls = []
    run_stage(cfg(batch_size=2, head="default"), small_tile / "tile.fits",
              progress=lambda done, total, step: calls.append((step, done, total,
                                                                len(fake_classifier))))
    assert calls == [("reading tile", 0, 1, 0), ("reading tile", 1, 1, 0),
                     ("loading network", 0, 1, 0), ("loading network", 1, 1, 1),
                     ("objects", 0, 3, 1), ("objects", 2, 3, 1), ("objects", 3, 3, 1)]


@pytest.mark.parametrize("name", ["tile.weight.fits", "tile.weight.fits.fz"])
def test_weight_auto_takes_the_weight_map_beside_the_tile(small_tile, fake_classifier,
                                                          caplog, name):
    weight = np.ones(TILE_SHAPE, dtype=np.float32)
    weight[48:53, 48:53] = 0
    (small_tile / "tile.weight.fits").unlink()
    fitsio.write(str(small_tile / name), weight, clobber=True,
                 compress="GZIP" if name.endswith(".fz") else None)
    write_ldac(small_tile / "tile.cat", [50.0], [50.0])
    with caplog.at_level(logging.INFO, logger="bh_stage"):
        run_stage(cfg(), small_tile / "tile.fits")
    out = fitsio.read(str(small_tile / "tile_bh.cat"), ext="LDAC_OBJECTS")
    assert out["BH_FLAGS"][0] == BH_MASKED
    assert f"weight: auto: {small_tile / name}" in caplog.text


def test_weight_auto_without_a_weight_map_runs_unweighted(small_tile, fake_classifier,
                                                          caplog):
    (small_tile / "tile.weight.fits").unlink()
    with caplog.at_level(logging.INFO, logger="bh_stage"):
        run_stage(cfg(), small_tile / "tile.fits")
    assert ("weight: auto: none (tile.weight.fits or tile.weight.fits.fz not beside the "
            "tile)") in caplog.text
    assert fitsio.FITS(str(small_tile / "tile_bh.cat"))[2].get_nrows() == 3


def test_example_config_runs_a_tile_without_weight_map(small_tile, fake_classifier, capsys):
    """Regression: the example config asked for {dir}/{stem}.weight.fits.fz, so every tile
    without exactly that file failed."""
    (small_tile / "tile.weight.fits").unlink()
    assert main(["-q", "run", str(REPO / "example_config" / "config.yml"),
                 str(small_tile / "tile.fits")]) == 0
    assert "3 objects" in capsys.readouterr().out


class BuildingHead(FakeTileHead):
    """A ``FakeTileHead`` with a network to build: ``read_before_build`` records, for each
    ``build``, whether the tile had been read; ``error`` makes it raise."""

    read_before_build = []
    tile_read = False
    error = None

    def build(self):
        BuildingHead.read_before_build.append(BuildingHead.tile_read)
        if BuildingHead.error is not None:
            raise BuildingHead.error
        return self


def test_network_is_built_after_the_reading_and_its_error_raised(small_tile, fake_classifier,
                                                                 monkeypatch):
    """Issue 24: in this process (a stand-in head is never sent to a network process;
    tests/test_network_process.py has the other case) the stage builds the tile head's
    network (TensorFlow's import) once, after the input checks and the reading of the tile;
    an error there is raised by ``run_stage`` and nothing is written."""
    from bh_stage import stage, tilehead
    from bh_stage.errors import ModelShapeError

    def read_pixels(*args):
        BuildingHead.tile_read = True
        return tile_pixels(*args)

    monkeypatch.setattr(tilehead, "load_tile_head", BuildingHead)
    monkeypatch.setattr(stage, "tile_pixels", read_pixels)
    monkeypatch.setattr(BuildingHead, "read_before_build", [])
    monkeypatch.setattr(BuildingHead, "tile_read", False)
    result = run_stage(cfg(), small_tile / "tile.fits")
    assert result.n_objects == 3
    assert BuildingHead.read_before_build == [True]
    (small_tile / "tile_bh.cat").unlink()
    before = sorted(p.name for p in small_tile.iterdir())
    monkeypatch.setattr(BuildingHead, "error", ModelShapeError("weights do not fit"))
    with pytest.raises(ModelShapeError, match="weights do not fit"):
        run_stage(cfg(), small_tile / "tile.fits")
    assert sorted(p.name for p in small_tile.iterdir()) == before


def test_one_blas_thread_while_scoring_then_numpy_default_again(small_tile, fake_classifier,
                                                                 monkeypatch):
    """The stage's process uses one BLAS thread while its SEP (and network) processes share
    the cores (``MAIN_BLAS_THREADS``), from the networks' start to the last score, and gives
    back the thread count it found, also when the run fails, and only when the last of
    overlapping runs (threads of one process) ends."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from bh_stage import stage

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    seen = []

    def cutting(*args, **kwargs):
        seen.append(blas_threads())
        return stage_cut(*args, **kwargs)

    stage_cut = stage.cut_stamps
    monkeypatch.setattr(stage, "cut_stamps", cutting)
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        assert before and set(before) == {2}
        run_stage(cfg(), small_tile / "tile.fits")
        assert seen and all(threads and set(threads) == {1} for threads in seen)
        assert blas_threads() == before
        monkeypatch.setattr(stage, "cut_stamps", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            run_stage(cfg(overwrite=True), small_tile / "tile.fits")
        assert blas_threads() == before
        # runs in two threads of one process, overlapping: one thread until both are done
        first, second = stage._blas_limit(), stage._blas_limit()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert set(blas_threads()) == {1}
        second.__exit__(None, None, None)
        assert blas_threads() == before


def test_bad_input_is_refused_before_tensorflow_is_imported(small_tile):
    """With the shipped tile head, a catalogue without the position columns is refused
    (one line, exit 2, nothing written) before TensorFlow is imported (issue 24: loading
    the tile head reads its files only; the network is built after the checks)."""
    import subprocess
    import sys

    (small_tile / "config.yml").write_text("x_column: NOPE_X\n")
    code = ("import sys; from bh_stage.cli import main; "
            f"code = main(['run', {str(small_tile / 'config.yml')!r}, "
            f"{str(small_tile / 'tile.fits')!r}]); "
            "print(code, 'tensorflow' in sys.modules)")
    before = sorted(p.name for p in small_tile.iterdir())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert "NOPE_X" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert sorted(p.name for p in small_tile.iterdir()) == before


def test_isolated_threshold_goes_into_the_header(small_tile, fake_classifier, monkeypatch):
    """A tile head that carries ``isolated_threshold`` (train-tile since 0.7) has it written
    as BH_THRI beside BH_THR, its FPR in the comment; a head without it writes no BH_THRI."""
    from bh_stage import tilehead

    class IsolatedHead(FakeTileHead):
        def __init__(self, path, precision="f32"):
            super().__init__(path, precision)
            self.metadata = dict(self.metadata, isolated_threshold=0.3125, isolated_fpr=0.05)

    run_stage(cfg(output="{dir}/plain.cat"), small_tile / "tile.fits")
    monkeypatch.setattr(tilehead, "load_tile_head", IsolatedHead)
    run_stage(cfg(output="{dir}/iso.cat"), small_tile / "tile.fits")
    plain = fitsio.read_header(str(small_tile / "plain.cat"), ext="LDAC_OBJECTS")
    iso = fitsio.read_header(str(small_tile / "iso.cat"), ext="LDAC_OBJECTS")
    assert "BH_THRI" not in plain and iso["BH_THR"] == plain["BH_THR"] == 0.5
    assert iso["BH_THRI"] == 0.3125 and "5%" in iso.get_comment("BH_THRI")
