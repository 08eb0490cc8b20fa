"""Many tiles (bh_stage.tiles): three synthetic tiles, one corrupt, in sequence and on a
loopback Dask cluster; failure report and exit code, resuming, and an interrupted run.

The fake classifier is a monkeypatch, so it reaches Dask workers only when they are threads of
this process (``LocalCluster(processes=False)``); the one test with worker processes scores
with the real shipped head.
"""

import numpy as np
import pytest

from bh_stage import tiles
from bh_stage.cli import main
from bh_stage.config import RunConfig, config_from_dict
from bh_stage.stage import OUTPUT_COLUMNS
from bh_stage.tiles import expand_tiles, format_summary, output_complete, run_tiles

from conftest import SOURCES_XY, TILE_SHAPE, FakeClassifier, gaussian_image, write_ldac

NAMES = ("a", "b", "c")
"""Tiles of the ``three_tiles`` fixture; ``c`` is corrupt (its image is not FITS)."""


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with no cached classifier (the cache is per process)."""
    tiles.clear_classifier_cache()
    yield
    tiles.clear_classifier_cache()


def make_tile(folder, name, seed=0):
    import fitsio

    fitsio.write(str(folder / f"{name}.fits"), gaussian_image(TILE_SHAPE, SOURCES_XY, seed=seed),
                 clobber=True)
    x, y = np.array(SOURCES_XY).T
    write_ldac(folder / f"{name}.cat", x, y)
    return folder / f"{name}.fits"


@pytest.fixture
def three_tiles(tmp_path):
    """Tiles a, b (good) and c (its image is text, its catalogue fine) in tmp_path/tiles."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    paths = [make_tile(folder, name, seed) for seed, name in enumerate(NAMES)]
    paths[2].write_text("this is not a FITS file\n")
    return paths


def cfg(**kwargs):
    """With the paper head: these tests follow its per-process cache."""
    return config_from_dict(RunConfig, {"head": "default", **kwargs})


def check_output(tile):
    """The stage output of a synthetic tile: every column, 3 rows, the known verdicts."""
    import fitsio

    out = fitsio.read(str(tile.with_name(tile.stem + "_bh.cat")), ext="LDAC_OBJECTS")
    assert set(OUTPUT_COLUMNS) <= set(out.dtype.names) and len(out) == 3
    assert out["NUMBER"].tolist() == [1, 2, 3]
    assert out["BLEND_PROB"][0] < 0.5 and (out["BLEND_PROB"][1:] >= 0.5).all()
    assert out["SEP_NSRC"][0] == 1
    assert output_complete(cfg(), tile) == (True, "")


def no_temporaries(folder):
    return not list(folder.glob(".inprogress_*"))


@pytest.fixture
def thread_cluster():
    """A loopback Dask cluster of 2 single-thread workers inside this process."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=None) as cluster:
        yield cluster


def test_cli_on_a_cluster_reports_the_corrupt_tile_and_skips_done_ones(
        three_tiles, fake_classifier, thread_cluster, tmp_path, capsys):
    config = tmp_path / "config.yml"
    config.write_text("seed: 0\nhead: default\n")
    argv = ["-q", "run", str(config), *map(str, three_tiles), "--scheduler",
            thread_cluster.scheduler_address]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    for tile in three_tiles[:2]:
        check_output(tile)
    assert not (three_tiles[2].parent / "c_bh.cat").exists()
    assert no_temporaries(three_tiles[0].parent)
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(str(tmp_path))}
    assert rows[str(three_tiles[0])].split()[1:3] == ["done", "3"]
    assert rows[str(three_tiles[2])].split()[1] == "failed"
    assert "c.fits: not a readable FITS file" in rows[str(three_tiles[2])]
    assert "1 of 3 tiles failed" in err and "Traceback" not in err
    # Both worker threads share this process, so the network was loaded once.
    assert len(fake_classifier) == 1

    assert main(argv) == 2  # re-run: a and b are complete and skipped, c fails again
    out, _ = capsys.readouterr()
    assert "3 tiles: 0 done, 2 skipped, 1 failed" in out


def test_serial_run_returns_one_result_per_tile(three_tiles, fake_classifier):
    seen = []
    results = run_tiles(cfg(), three_tiles, workers=0,
                        progress=lambda done, total, step: seen.append((done, total, step)))
    assert [r.status for r in results] == ["done", "done", "failed"]
    assert [r.n_objects for r in results] == [3, 3, None]
    assert results[2].error.startswith(f"{three_tiles[2]}: not a readable FITS file")
    assert "\n" not in results[2].error and results[2].output == three_tiles[2].with_name(
        "c_bh.cat")
    assert seen == [(1, 3, "tiles"), (2, 3, "tiles"), (3, 3, "tiles")]
    assert len(fake_classifier) == 1 and fake_classifier[0].calls == 2  # loaded once
    assert [r.classifier_loads for r in results[:2]] == [1, 1]
    table = format_summary(results)
    assert table.splitlines()[0].split() == ["tile", "status", "objects", "seconds", "error"]
    assert table.splitlines()[-1] == "3 tiles: 2 done, 0 skipped, 1 failed; 6 objects scored"


def test_incomplete_outputs_are_recomputed(three_tiles, fake_classifier):
    import shutil

    a, b, _ = three_tiles
    run_tiles(cfg(), three_tiles[:2], workers=0)
    out_a, out_b = (t.with_name(t.stem + "_bh.cat") for t in (a, b))

    data = out_a.read_bytes()
    out_a.write_bytes(data[: len(data) - 2880])  # truncated by one FITS block
    shutil.copyfile(b.with_suffix(".cat"), out_b)  # no BLEND_PROB column
    assert not output_complete(cfg(), a)[0]
    assert output_complete(cfg(), b) == (False, "no column BLEND_PROB in the output")
    results = run_tiles(cfg(), three_tiles[:2], workers=0)
    assert [r.status for r in results] == ["done", "done"]
    check_output(a), check_output(b)

    assert [r.status for r in run_tiles(cfg(), three_tiles[:2], workers=0)] == ["skipped"] * 2
    other = cfg(seed=1)  # another config: the outputs are not its own
    assert output_complete(other, a) == (False, "made with another config (BH_CFGSH differs)")
    assert [r.status for r in run_tiles(other, [a], workers=0)] == ["done"]
    assert [r.status for r in run_tiles(cfg(seed=1, overwrite=True), [a], workers=0)] == \
        ["done"]  # --overwrite reruns a complete tile
    assert [r.status for r in run_tiles(other, [a], workers=0)] == ["skipped"]


def test_killed_run_restarts_with_correct_outputs(three_tiles, fake_classifier, monkeypatch):
    a, b, _ = three_tiles
    c = make_tile(a.parent, "d", seed=5)
    calls = []
    original = FakeClassifier.predict_proba

    def killed_on_second_tile(self, stamps, rms_adu=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or the batch system killing the job
        return original(self, stamps, rms_adu)

    monkeypatch.setattr(FakeClassifier, "predict_proba", killed_on_second_tile)
    with pytest.raises(KeyboardInterrupt):
        run_tiles(cfg(), [a, b, c], workers=0)
    assert output_complete(cfg(), a) == (True, "")
    assert not b.with_name("b_bh.cat").exists() and not c.with_name("d_bh.cat").exists()
    assert no_temporaries(a.parent)

    results = run_tiles(cfg(), [a, b, c], workers=0)
    assert [r.status for r in results] == ["skipped", "done", "done"]
    for tile in (a, b, c):
        check_output(tile)
    assert no_temporaries(a.parent)


def test_glob_patterns_and_shared_outputs(three_tiles, fake_classifier, tmp_path):
    folder = three_tiles[0].parent
    assert expand_tiles([str(folder / "*.fits"), str(three_tiles[0])]) == three_tiles
    with pytest.raises(tiles.InputFileError, match=r"nomatch\*.fits: the pattern matches no"):
        expand_tiles([str(folder / "nomatch*.fits")])
    with pytest.raises(tiles.ConfigError, match="would both write .*use \\{stem\\}"):
        run_tiles(cfg(output=str(tmp_path / "all.cat")), three_tiles[:2], workers=0)
    # A quoted pattern through the CLI, in sequence.
    config = tmp_path / "config.yml"
    config.write_text("seed: 0\nhead: default\n")
    assert main(["-q", "run", str(config), str(folder / "[ab].fits"), "--serial"]) == 0
    check_output(three_tiles[0]), check_output(three_tiles[1])


@pytest.mark.slow
def test_worker_processes_load_the_real_head_once(tmp_path):
    """Worker processes (no monkeypatch reaches them): the shipped head, loaded once per
    worker; about 10 s (worker start-up and TensorFlow import)."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    paths = [make_tile(folder, name, seed) for seed, name in enumerate(("p", "q"))]
    results = run_tiles(cfg(), paths, workers=1)
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    assert results[0].worker == results[1].worker != "local"
    assert [r.classifier_loads for r in results] == [1, 1]
    assert all(output_complete(cfg(), p)[0] for p in paths)


def test_a_task_lost_on_the_cluster_is_a_failed_tile(three_tiles, fake_classifier,
                                                      thread_cluster, monkeypatch):
    """A task that raises on the cluster itself (as ``KilledWorker`` does when a worker dies)
    fails its tile only; the type and message are in the result."""
    real_run_one = tiles._run_one

    def lost_on_b(cfg_, tile):
        if tile.name == "b.fits":
            raise RuntimeError("worker lost\nsecond line")
        return real_run_one(cfg_, tile)

    monkeypatch.setattr(tiles, "_run_one", lost_on_b)
    results = run_tiles(cfg(), three_tiles[:2], scheduler=thread_cluster.scheduler_address)
    assert [r.status for r in results] == ["done", "failed"]
    assert results[1].error == "RuntimeError: worker lost"
    assert results[0].worker.startswith("tcp://127.0.0.1:")
    check_output(three_tiles[0])
