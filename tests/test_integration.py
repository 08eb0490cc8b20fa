"""End to end: a simulated CFIS-like tile, its catalogue from the real source-extractor, and
``bh-stage run`` with the shipped head (TensorFlow, about 20 s)."""

import subprocess

import fitsio
import numpy as np
import pytest

from bh_stage.cli import main
from bh_stage.config import SCHEMAS, load_config

from conftest import REPO

pytestmark = pytest.mark.integration


def sextract(sextractor, image, weight, catalogue):
    """Run source-extractor 2.25 with the project's config, as data/make_example.sh does."""
    subprocess.run([sextractor, str(image), "-c", "example_config/sextractor/bh.sex",
                    "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", str(weight),
                    "-CATALOG_NAME", str(catalogue)], cwd=REPO, check=True)


@pytest.fixture(scope="module")
def tile_run(tmp_path_factory, cosmos_dir, sextractor):
    """A 1024x1024 tile with many close pairs, its SExtractor catalogue and the stage output."""
    folder = tmp_path_factory.mktemp("integration")
    cfg = load_config(REPO / "example_config" / "simulate_tile.yml", SCHEMAS["simulate"], [
        f"cosmos_dir={cosmos_dir}", "seed=5", "tile.nx_pix=1024", "tile.ny_pix=1024",
        "tile.close_pair_fraction=0.4", f"tile.image={folder}/tile.fits",
        f"tile.weight={folder}/tile.weight.fits", f"tile.truth={folder}/truth.fits"])
    from bh_stage.simulate import run_simulate

    run_simulate(cfg)
    sextract(sextractor, folder / "tile.fits", folder / "tile.weight.fits", folder / "tile.cat")
    (folder / "run.yml").write_text("weight: '{dir}/{stem}.weight.fits'\n")
    assert main(["-q", "run", str(folder / "run.yml"), str(folder / "tile.fits")]) == 0
    return folder


def test_original_columns_bit_identical(tile_run):
    with fitsio.FITS(str(tile_run / "tile.cat")) as fin, \
            fitsio.FITS(str(tile_run / "tile_bh.cat")) as fout:
        assert fin[1].read().tobytes() == fout[1].read().tobytes()  # LDAC_IMHEAD
        old, new = fin[2].read(), fout[2].read()
    assert len(new) == len(old) > 50
    for name in old.dtype.names:
        assert new[name].tobytes() == old[name].tobytes(), name
    assert np.isfinite(new["BLEND_PROB"]).all()
    assert ((new["BLEND_PROB"] >= 0) & (new["BLEND_PROB"] <= 1)).all()


def test_ldactoasc_reads_the_output(tile_run):
    ldactoasc = __import__("shutil").which("ldactoasc")
    if ldactoasc is None:
        pytest.skip("ldactoasc not installed (it comes with source-extractor)")
    text = subprocess.run([ldactoasc, str(tile_run / "tile_bh.cat")], check=True,
                          capture_output=True, text=True).stdout
    assert "BLEND_PROB" in text and "BLEND_FLAG" in text


def close_pair_labels(catalogue, truth, half_pix=35):
    """Label detections: 1 if two true galaxies < 10 px apart lie within 8 px of it, 0 if it
    is the only true galaxy within ``half_pix`` (its 51x51 stamp and 10 px around it, since
    the wings of a neighbour just outside the stamp reach in and SEP detects them), -1
    otherwise (ambiguous or spurious)."""
    x, y = catalogue["XWIN_IMAGE"], catalogue["YWIN_IMAGE"]  # both 1-based
    tx, ty = truth["X_IMAGE"], truth["Y_IMAGE"]
    labels = np.full(len(x), -1)
    for i in range(len(x)):
        dx, dy = tx - x[i], ty - y[i]
        in_stamp = (np.abs(dx) <= half_pix) & (np.abs(dy) <= half_pix)
        near = np.flatnonzero(np.hypot(dx, dy) < 8)
        if in_stamp.sum() == 1 and np.hypot(dx, dy)[in_stamp][0] < 2:
            labels[i] = 0
        elif len(near) == 2 and np.hypot(tx[near[0]] - tx[near[1]],
                                          ty[near[0]] - ty[near[1]]) < 10:
            labels[i] = 1
    return labels


def test_blend_prob_separates_close_pairs(tile_run):
    from bh_stage.evaluate import roc_auc

    out = fitsio.read(str(tile_run / "tile_bh.cat"), ext="LDAC_OBJECTS")
    labels = close_pair_labels(out, fitsio.read(str(tile_run / "truth.fits")))
    keep = labels >= 0
    assert (labels == 1).sum() >= 10 and (labels == 0).sum() >= 10
    auc = roc_auc(out["BLEND_PROB"][keep], labels[keep])
    print(f"ROC AUC of BLEND_PROB, close pairs vs isolated: {auc:.3f} "
          f"({(labels == 1).sum()} pairs, {(labels == 0).sum()} isolated)")
    assert auc > 0.75  # measured 0.854 with cfis_sigma15_clip_80k, 0.83 with the 24k head


def test_shipped_example_runs(tmp_path):
    """The README's main command on data/, written to a temporary folder."""
    out = tmp_path / "example_bh.cat"
    code = main(["-q", "run", str(REPO / "example_config" / "config.yml"),
                 str(REPO / "data" / "example_tile.fits.fz"), "--output", str(out)])
    assert code == 0
    with fitsio.FITS(str(out)) as f, fitsio.FITS(str(REPO / "data" / "example_tile.cat")) as g:
        assert f["LDAC_OBJECTS"].get_nrows() == g["LDAC_OBJECTS"].get_nrows()
        assert f["LDAC_OBJECTS"].read_header()["BH_HEAD"]
