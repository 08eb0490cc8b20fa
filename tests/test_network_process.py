"""The stage's networks in a child process (``tilehead.NetworkProcess``, issue 24): the same
probabilities, to the bit, as in this process; the child's errors raised by the parent; the
child ended by an error, Ctrl-C or SIGTERM, whatever the parent was doing."""

import os
import signal

import fitsio
import numpy as np
import pytest

from bh_stage import heads, model, tilehead
from bh_stage.config import RunConfig, config_from_dict
from bh_stage.errors import InputFileError, ModelShapeError
from bh_stage.heads import load_head, save_head
from bh_stage.stage import run_stage

from conftest import REPO, alive, alive_after, children_of, signal_when_ready, write_ldac


def _inputs(head, n=300, seed=3):
    """Noise stamps (65x65, rms 14.5 ADU) and features near the head's training mean."""
    rng = np.random.default_rng(seed)
    stamps = rng.normal(0.0, 14.5, (n, 65, 65)).astype(np.float32)
    mean = np.asarray(head.metadata["feature_mean"], np.float32)
    scale = np.asarray(head.metadata["feature_scale"], np.float32)
    feats = (mean + scale * rng.normal(size=(n, mean.size))).astype(np.float32)
    return stamps, feats


def test_child_scores_as_this_process():
    """The tile head and the compact paper head give the same bytes in the child as in this
    process; features may come as a function (the stamp features, once SEP measured them);
    the paper head's attributes are the ones ``model.load_classifier`` gives here."""
    head = tilehead.load_tile_head(tilehead.tile_head_path("default"))
    stamps, feats = _inputs(head)
    paper_json = heads.head_path("default")
    with tilehead.NetworkProcess(head) as net:
        assert net.build() is net
        child = net.submit(stamps, 14.5, feats)
        child_later = net.submit(stamps[:7], 14.5, lambda: feats[:7])
        remote = net.load_classifier(paper_json, batch_size=128)
        child_paper = remote.predict_proba(stamps, 14.5)
        child, child_later = child.result(), child_later.result()
    here = head.predict_proba(stamps, 14.5, feats)
    assert child.dtype == here.dtype == np.float64
    assert child.tobytes() == here.tobytes()
    assert child_later.tobytes() == here[:7].tobytes()
    clf = model.load_classifier(paper_json, batch_size=128)
    assert child_paper.tobytes() == clf.predict_proba(stamps, 14.5).tobytes()
    for name in tilehead.CLASSIFIER_ATTRIBUTES:
        assert getattr(remote, name) == getattr(clf, name), name


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_child_builds_the_precision_it_is_given(precision):
    """A bfloat16 or 8-bit tile head (``tile_head_precision``) is built so in the child too:
    the same bytes as in this process."""
    head = tilehead.load_tile_head(tilehead.tile_head_path("default"), precision)
    stamps, feats = _inputs(head, n=64)
    with tilehead.NetworkProcess(head) as net:
        child = net.submit(stamps, 14.5, feats).result()
    assert child.tobytes() == head.predict_proba(stamps, 14.5, feats).tobytes()


def test_build_error_is_raised_by_the_parent_and_the_child_killed(tmp_path):
    """A head whose weights do not fit its network loads here (files only); the child's
    ModelShapeError comes out of ``build``, and leaving the block on it kills the child."""
    good = load_head(tilehead.tile_head_path("tile_unrecognised_positions"))
    weights = [np.zeros((3, 3, 1, 8), np.float32)] + good.weights[1:]  # 8 filters, not 32
    meta = {k: v for k, v in good.metadata.items()
            if k not in ("weights_file", "weights_sha256", "n_weight_arrays")}
    head = tilehead.load_tile_head(save_head(tmp_path / "bad.json", weights, meta))
    with pytest.raises(ModelShapeError, match="bad.json: its weights do not fit"):
        with tilehead.NetworkProcess(head) as net:
            net.build()
    assert net._proc.poll() is not None


def _run_twice(tile, **settings):
    """Output catalogue rows and header cards (but BH_DATE) of ``run_stage`` with the
    networks in a child process, then in this process, same output path."""
    out = []
    for in_child in (True, False):
        cfg = config_from_dict(RunConfig, dict(settings, overwrite=True))
        result = run_stage(cfg, tile, network_process=in_child)
        with fitsio.FITS(str(result.output)) as fits:
            cards = [(r["name"], r.get("value")) for r in fits["LDAC_OBJECTS"].read_header()
                     .records() if r["name"] != "BH_DATE"]
            out.append((fits["LDAC_OBJECTS"].read(), cards))
    return out


@pytest.mark.parametrize("head", ["none", "default"])
def test_stage_writes_the_same_bytes_with_the_networks_in_a_child(small_tile, head):
    """``run_stage`` with the shipped tile head (and the compact paper head) writes the same
    rows and header cards, BH_DATE aside, whether the networks run in a child process (the
    command line's default) or in this process."""
    (child, child_cards), (here, here_cards) = _run_twice(
        small_tile / "tile.fits", weight="{dir}/{stem}.weight.fits", head=head)
    assert child.tobytes() == here.tobytes()
    assert child_cards == here_cards
    assert np.isfinite(child["BLEND_PROB"]).all()


@pytest.mark.parametrize("in_child", [True, False])
def test_paper_head_that_does_not_load_gives_the_loaders_error(small_tile, in_child):
    """``head:`` naming a tile head: the loader's ModelShapeError, whether the paper head is
    loaded in the network process (its error raised again by the scoring calls) or here;
    nothing written, no child left."""
    cfg = config_from_dict(RunConfig, {"head": str(tilehead.tile_head_path("default"))})
    with pytest.raises(ModelShapeError, match="not a paper head"):
        run_stage(cfg, small_tile / "tile.fits", network_process=in_child)
    assert not (small_tile / "tile_bh.cat").exists()
    assert not [pid for pid in children_of(os.getpid()) if alive(pid)]


def test_network_process_with_a_classifier_loader_is_refused(small_tile):
    """A classifier_loader loads the paper head in this process: asking for a network
    process as well is a ValueError before anything starts or is written."""
    cfg = config_from_dict(RunConfig, {"head": "default"})
    with pytest.raises(ValueError, match="network_process must then be False or None"):
        run_stage(cfg, small_tile / "tile.fits", classifier_loader=model.load_classifier,
                  network_process=True)
    assert not (small_tile / "tile_bh.cat").exists()
    assert not [pid for pid in children_of(os.getpid()) if alive(pid)]


def test_bad_weight_found_after_the_start_ends_the_child(small_tile):
    """A weight map of the wrong shape is found by the reading, after the network process
    started: the error is raised and no child is left."""
    fitsio.write(str(small_tile / "tile.weight.fits"), np.ones((10, 10), np.float32),
                 clobber=True)
    cfg = config_from_dict(RunConfig, {"weight": "{dir}/{stem}.weight.fits"})
    with pytest.raises(InputFileError, match="weight map is 10x10"):
        run_stage(cfg, small_tile / "tile.fits", network_process=True)
    assert not (small_tile / "tile_bh.cat").exists()
    assert not [pid for pid in children_of(os.getpid()) if alive(pid)]


SLOW_READ = """
import pathlib, sys, time
from bh_stage import stage
from bh_stage.cli import main

folder = pathlib.Path(sys.argv[1])


def slow_read(*args):
    (folder / "reading").touch()  # the network process is importing TensorFlow now
    time.sleep(120)


stage.tile_pixels = slow_read
sys.exit(main(["-q", "run", str(folder / "config.yml"), str(folder / "tile.fits"),
               "--output", str(folder / "out" / "tile_bh.cat")]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("signum, expected_code, word", [(signal.SIGTERM, 143, "terminated"),
                                                         (signal.SIGINT, 130, "interrupted")])
def test_signal_while_reading_ends_the_network_process(small_tile, signum, expected_code, word):
    """`bh-stage run` with the shipped tile head, signalled while it reads the tile (its
    network process started, importing TensorFlow): exit 143 or 130, one line on stderr,
    nothing written, the network process ended."""
    (small_tile / "config.yml").write_text("")
    (small_tile / "out").mkdir()
    before = sorted(p.name for p in small_tile.rglob("*"))
    code, out, err, children = signal_when_ready(
        SLOW_READ, [str(small_tile)], signum,
        lambda children: (small_tile / "reading").exists(), cwd=REPO)
    assert len(children) == 1  # the network process; SEP's start after the reading
    assert code == expected_code
    assert err == f"bh-stage run: {word}\n" and out == ""
    (small_tile / "reading").unlink()
    assert sorted(p.name for p in small_tile.rglob("*")) == before
    assert not alive_after(children)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.parametrize("signum, expected_code, word", [(signal.SIGTERM, 143, "terminated"),
                                                         (signal.SIGINT, 130, "interrupted")])
def test_signal_while_scoring_ends_every_child(tmp_path, signum, expected_code, word):
    """`bh-stage run` with the shipped tile head on 3,000 detections, signalled once its
    network process and both SEP processes run (the SEP processes start with the first
    batches, which the network process scores once it has built the network, so the signal
    may come while it still builds it): exit 143 or 130, one line on stderr, nothing
    written, all three children ended."""
    rng = np.random.default_rng(5)
    fitsio.write(str(tmp_path / "tile.fits"), rng.normal(0, 5, (600, 600)).astype(np.float32))
    fitsio.write(str(tmp_path / "tile.weight.fits"), np.ones((600, 600), np.float32))
    write_ldac(tmp_path / "tile.cat", *rng.uniform(30, 570, (2, 3000)))
    (tmp_path / "config.yml").write_text("")
    (tmp_path / "out").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code_text = ("import sys; from bh_stage.cli import main; "
                 f"sys.exit(main(['-q', 'run', {str(tmp_path / 'config.yml')!r}, "
                 f"{str(tmp_path / 'tile.fits')!r}, '--output', "
                 f"{str(tmp_path / 'out' / 'tile_bh.cat')!r}]))")
    code, out, err, children = signal_when_ready(
        code_text, [], signum, lambda children: len(children) == 3, cwd=REPO)
    assert code == expected_code  # 3 children: the network process, 2 SEP processes
    assert err == f"bh-stage run: {word}\n" and out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not alive_after(children)
