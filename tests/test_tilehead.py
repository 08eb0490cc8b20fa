"""Tests of bh_stage.tilehead: loading a head reads its files only; its network (and
TensorFlow) is built once, on first use or by ``build``, from any thread."""

import subprocess
import sys
import threading

import numpy as np

from bh_stage import tilehead
from bh_stage.errors import ModelShapeError
from bh_stage.heads import load_head
from bh_stage.nets import compact


def test_loading_a_tile_head_does_not_import_tensorflow():
    """``load_tile_head`` reads the JSON and the weights; the stage can check a run's inputs
    before TensorFlow is imported (issue 24). ``build`` imports it."""
    code = ("import sys; from bh_stage import tilehead; "
            "h = tilehead.load_tile_head(tilehead.tile_head_path('default')); "
            "print('tensorflow' in sys.modules, h.n_orientations, h.stamp_features); "
            "h.build(); print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "2", "True", "True"]


def test_network_is_built_once_from_any_thread():
    """Threads calling ``build`` at once get one network, with the head's weights; scoring
    afterwards uses it."""
    head = tilehead.load_tile_head(tilehead.tile_head_path("tile_unrecognised_positions"))
    models = []
    threads = [threading.Thread(target=lambda: models.append(head.build().model))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(models) == 3 and all(m is models[0] for m in models)
    assert head.model is models[0]
    stored = load_head(head.path).weights
    for built, saved in zip(head.model.get_weights(), stored):
        np.testing.assert_array_equal(built, saved)
    # the network built is the head's: a stamp's logit in one orientation, by hand
    rng = np.random.default_rng(1)
    x = compact.scale_stamps(compact.centre_stamps(rng.normal(0, 14.5, (2, 65, 65))), 14.5)
    f = np.tile(np.asarray(head.metadata["feature_mean"], np.float32), (2, 1))
    zero = np.zeros((2, f.shape[1]), np.float32)  # features at their mean, once scaled
    direct = np.asarray(head.model([x, zero], training=False)).reshape(-1)
    np.testing.assert_allclose(head.input_logits(x, f, 1), direct, rtol=1e-5, atol=1e-6)


def test_weights_that_do_not_fit_are_refused_when_built(tmp_path):
    """A head whose weights do not fit its architecture loads (its files are read, nothing
    is built) and is refused by ``build`` with ModelShapeError naming the file."""
    import pytest

    from bh_stage.errors import ModelShapeError
    from bh_stage.heads import save_head

    good = load_head(tilehead.tile_head_path("tile_unrecognised_positions"))
    weights = [np.zeros((3, 3, 1, 8), np.float32)] + good.weights[1:]  # 8 filters, not 32
    meta = {k: v for k, v in good.metadata.items()
            if k not in ("weights_file", "weights_sha256", "n_weight_arrays")}
    path = save_head(tmp_path / "bad.json", weights, meta)
    head = tilehead.load_tile_head(path)
    with pytest.raises(ModelShapeError, match="bad.json: its weights do not fit"):
        head.build()


def test_bf16_head_computes_in_bfloat16_with_the_same_weights():
    """``tile_head_precision: bf16``: a head of its own in the cache, whose layers compute in
    bfloat16 from the stored float32 weights; its logits move from the float32 ones (the
    arithmetic changed) by less than bfloat16's rounding can explain, and any other
    precision is refused."""
    import pytest

    path = tilehead.tile_head_path("default")
    f32, bf16 = tilehead.load_tile_head(path), tilehead.load_tile_head(path, "bf16")
    assert bf16 is not f32 and bf16 is tilehead.load_tile_head(path, "bf16")
    assert (f32.precision, bf16.precision) == ("f32", "bf16")
    convs = [layer for layer in bf16.model.layers if "conv" in layer.name]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    for built, saved in zip(bf16.model.get_weights(), load_head(path).weights):
        assert built.dtype == np.float32
        np.testing.assert_array_equal(built, saved)
    rng = np.random.default_rng(2)
    stamps = rng.normal(0, 14.5, (64, 65, 65)).astype(np.float32)
    stamps[:, 28:37, 28:37] += 200.0  # a bright source at the centre
    feats = np.tile(np.asarray(f32.metadata["feature_mean"], np.float32), (64, 1))
    z32, z16 = f32.logits(stamps, 14.5, feats), bf16.logits(stamps, 14.5, feats)
    assert z16.dtype == np.float64 and np.isfinite(z16).all()
    assert not np.array_equal(z16, z32)
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9 per value); through 7
    # layers the logit moves by a few hundredths of its scale, never by a whole unit
    assert np.abs(z16 - z32).max() < 0.05 * max(1.0, np.abs(z32).max())
    with pytest.raises(ValueError, match="precision 'f16'"):
        tilehead.TileHead(load_head(path), "f16")


def _source_stamps(n, seed=2):
    """Noise stamps (65x65, rms 14.5 ADU) with a Gaussian source at the centre: those of
    bench/bench_int8_isa.py (``source_stamps``, run from the script's folder)."""
    import runpy

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))  # the bench imports benchlib from there
    try:
        bench = runpy.run_path(str(REPO / "bench" / "bench_int8_isa.py"))
    finally:
        sys.path.remove(str(REPO / "bench"))
    return bench["source_stamps"](n, seed)


def test_int8_head_is_the_float_network_in_8_bits():
    """``tile_head_precision: int8``: the shipped default head's 8-bit network, checked
    against its JSON, scores stamps of sources as the float32 network does up to 8-bit
    rounding (logits correlated at > 0.99, median move below a tenth), and a row's logit
    does not depend on the rows scored with it (the interpreter resized between calls)."""
    path = tilehead.tile_head_path("default")
    f32, int8 = tilehead.load_tile_head(path), tilehead.load_tile_head(path, "int8")
    assert isinstance(int8.model, tilehead.Int8Network) and int8.precision == "int8"
    assert tilehead.load_tile_head(path, "auto") is int8  # the stage's default
    stamps = _source_stamps(64)
    feats = np.tile(np.asarray(f32.metadata["feature_mean"], np.float32), (64, 1))
    z32, z8 = f32.logits(stamps, 14.5, feats), int8.logits(stamps, 14.5, feats)
    assert not np.array_equal(z8, z32)
    assert np.corrcoef(z8, z32)[0, 1] > 0.99
    assert np.median(np.abs(z8 - z32)) < 0.1
    alone = np.concatenate([int8.logits(stamps[i:i + 7], 14.5, feats[i:i + 7])
                            for i in range(0, 64, 7)])
    np.testing.assert_array_equal(alone, z8)


def test_int8_network_checked_against_the_head(tmp_path, monkeypatch):
    """``study.quantize.quantize_tile_head`` writes the 8-bit network beside the head and its
    entry in the head's JSON, leaving the other keys as they were, and makes the same bytes
    twice; 'auto' runs a head in int8 where it has that network (the same head as 'int8',
    its path made absolute and its bytes read at load, so a later change of directory does
    not matter) and in f32 where it has none; a head with no 8-bit network, one made from
    other weights, a changed file, a missing one and an incomplete entry are refused with
    the file and the fix named."""
    import json
    import shutil

    import pytest

    from bh_stage.errors import InputFileError
    from bh_stage.study import quantize

    src = tilehead.tile_head_path("tile_unrecognised_positions")
    for f in src.parent.glob(src.name[:-len(".json")] + ".*"):
        shutil.copy(f, tmp_path)
    path = tmp_path / src.name
    before = json.loads(path.read_text())
    with pytest.raises(ModelShapeError, match=f"{path}: the head has no 8-bit network"):
        tilehead.load_tile_head(path, "int8")
    assert tilehead.load_tile_head(path, "auto").precision == "f32"
    head = tilehead.load_tile_head(path)
    stamps = _source_stamps(40, seed=5)
    x = compact.scale_stamps(compact.centre_stamps(stamps), 14.5)
    raw = np.tile(np.asarray(head.metadata["feature_mean"], np.float32), (40, 1))
    out = quantize.quantize_tile_head(path, x, raw, ["train101"])
    first = out.read_bytes()
    assert out == tmp_path / "tile_unrecognised_positions.int8.tflite"
    after = json.loads(path.read_text())
    entry = after.pop(tilehead.INT8_KEY)
    assert after == before
    assert entry["weights_sha256"] == before["weights_sha256"]
    assert entry["ranges_from"] == {"tiles": ["train101"], "n_stamps": 40, "seed": 0}
    assert quantize.quantize_tile_head(path, x, raw, ["train101"]).read_bytes() == first
    monkeypatch.chdir(tmp_path)
    int8 = tilehead.load_tile_head(src.name, "int8")  # a path relative to tmp_path
    assert int8.path == path  # absolute, for the network process too
    monkeypatch.undo()
    assert tilehead.load_tile_head(path, "auto") is int8
    z8 = int8.input_logits(x, raw)  # built here, in another directory
    assert np.corrcoef(z8, head.input_logits(x, raw))[0, 1] > 0.99

    stale = dict(after, int8=dict(entry, weights_sha256="0" * 64))
    path.write_text(json.dumps(stale))
    with pytest.raises(ModelShapeError, match=f"{path}: its 8-bit network was made from "
                                              "other weights .* tile_head_precision: f32"):
        tilehead.load_tile_head(path, "int8")
    path.write_text(json.dumps(dict(after, int8=entry)))
    out.write_bytes(first[:-1] + bytes([first[-1] ^ 1]))
    with pytest.raises(InputFileError, match=f"{out}: sha256 .* differs .* in {path}; .*"
                                             "tile_head_precision: f32"):
        tilehead.load_tile_head(path, "auto")
    out.unlink()
    path.write_text(json.dumps(dict(after, int8=entry)))
    with pytest.raises(InputFileError, match=f"{out}: cannot read the 8-bit network named "
                                             f"in {path} .* copy it beside the head"):
        tilehead.load_tile_head(path, "auto")
    path.write_text(json.dumps(dict(after, int8=dict(entry, file=""))))
    with pytest.raises(ModelShapeError, match=f"{path}: its 'int8' entry lacks file"):
        tilehead.load_tile_head(path, "auto")
    path.write_text(json.dumps(dict(after, int8=dict(entry, file="../x.int8.tflite"))))
    with pytest.raises(ModelShapeError, match=f"{path}: its 8-bit network '../x.int8.tflite' "
                                              "is not a file name beside the head"):
        tilehead.load_tile_head(path, "auto")


def test_int8_network_without_tflite_names_the_fix(monkeypatch):
    """TensorFlow has announced that ``tf.lite.Interpreter`` moves to another package; a
    TensorFlow without it refuses the 8-bit network with the setting that avoids it."""
    import pytest
    import tensorflow as tf

    head = tilehead.load_tile_head(tilehead.tile_head_path("default"))
    data = tilehead.read_int8_network(head)
    monkeypatch.setattr(tf.lite, "Interpreter", None)
    with pytest.raises(ModelShapeError, match=r"has no tf.lite.Interpreter .* "
                                              r"tile_head_precision: f32"):
        tilehead.Int8Network(data, *load_head(head.path).weights[-2:])


def test_int8_network_of_another_head_is_refused():
    """An 8-bit network whose last hidden layer does not fit the float32 logit weights it is
    given (another architecture's) is refused, with the shapes."""
    import pytest

    head = tilehead.load_tile_head(tilehead.tile_head_path("default"))
    kernel, bias = load_head(head.path).weights[-2:]
    with pytest.raises(ModelShapeError, match=r"not the hidden layers of this tile head "
                                              r".*output \[1, 128\], 64 logit weights"):
        tilehead.Int8Network(tilehead.read_int8_network(head), kernel[:64], bias)
