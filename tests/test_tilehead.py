"""Tests of bh_stage.tilehead: loading a head reads its files only; its network (and
TensorFlow) is built once, on first use or by ``build``, from any thread."""

import subprocess
import sys
import threading

import numpy as np

from bh_stage import tilehead
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
