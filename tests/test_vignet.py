"""``stamp.source: vignet``: stamps read from SExtractor's VIGNET column instead of cut from
the tile. Unit tests on synthetic FITS_LDAC catalogues (FakeTileHead, no TensorFlow), and the
conventions of the real source-extractor's VIGNET (integration)."""

import shutil
import subprocess

import fitsio
import numpy as np
import pytest

from bh_stage.cli import main
from bh_stage.config import RunConfig, config_from_dict
from bh_stage.errors import CatalogueColumnError, ConfigError, InputFileError
from bh_stage.sep_flags import BH_EDGE, BH_MASKED
from bh_stage.pixels import tile_pixels
from bh_stage.stage import OUTPUT_COLUMNS, run_stage
from bh_stage.stamps import nearest_pixel, window_pixels

from conftest import REPO, gaussian_image, write_ldac

SHAPE = (160, 170)
SOURCES = [(20.0, 22.0), (80.0, 80.0), (83.0, 81.5), (150.3, 95.2)]
"""0-based (x, y): two edge objects (first, last), an interior close pair."""
NULL = np.float32(-1e30)
COMPARED = [c for c in OUTPUT_COLUMNS if c not in ("BH_PAPER_PROB", "BH_PAPER_FLAG")]


def cfg(**kwargs):
    return config_from_dict(RunConfig, kwargs)


def sextractor_vignets(tile, weight, x_pix, y_pix, size_pix=51):
    """VIGNETs as SExtractor 2.25 writes them (test_sextractor_vignet_conventions): the
    background-subtracted tile at the nearest pixel, -1e30 off the image, weight-0 pixels
    kept. The background is the stage's own, so these stamps equal the tile-cut ones."""
    image, _, rms_adu = tile_pixels(tile, weight)
    raw = fitsio.read(str(tile)).astype(np.float32)
    subtracted = raw - (raw - image)  # the stage zeroes bad pixels; SExtractor does not
    return window_pixels(subtracted, nearest_pixel(x_pix), nearest_pixel(y_pix), size_pix,
                         NULL), rms_adu


@pytest.fixture
def vignet_tile(tmp_path):
    """A 170x160 tile with a weight-0 block beside the pair, its catalogue without VIGNET,
    and a catalogue with VIGNET alone in another folder (no tile beside it)."""
    tile = tmp_path / "tile.fits"
    image = gaussian_image(SHAPE, SOURCES)
    weight = np.ones(SHAPE, dtype=np.float32)
    weight[70:75, 95:100] = 0  # inside the pair's stamps
    image[72, 97] = 1e6  # a hot pixel under the mask: must not reach the network
    fitsio.write(str(tile), image, clobber=True)
    fitsio.write(str(tmp_path / "tile.weight.fits"), weight, clobber=True)
    x, y = np.array(SOURCES).T
    write_ldac(tmp_path / "tile.cat", x, y)
    vignets, rms_adu = sextractor_vignets(tile, tmp_path / "tile.weight.fits", x, y)
    (tmp_path / "sp").mkdir()
    write_ldac(tmp_path / "sp" / "tile.cat", x, y, vignet=vignets, image_shape=SHAPE)
    return tmp_path, rms_adu


def outputs(path):
    return fitsio.read(str(path), ext="LDAC_OBJECTS")


def test_vignet_stamps_give_the_tile_stage_output(vignet_tile, fake_classifier):
    """Identical stamps give identical columns: BLEND_PROB, SEP, flags and fractions, with
    the weight map masking in both (SExtractor's VIGNET does not mark weight-0 pixels)."""
    folder, rms_adu = vignet_tile
    run_stage(cfg(), folder / "tile.fits")
    ref = outputs(folder / "tile_bh.cat")
    run_stage(cfg(stamp={"source": "vignet", "rms_adu": rms_adu},
                  weight=str(folder / "tile.weight.fits")), folder / "sp" / "tile.fits")
    out = outputs(folder / "sp" / "tile_bh.cat")
    for name in COMPARED:
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)
    assert (ref["BH_FLAGS"] & BH_EDGE).tolist() == [1, 0, 0, 1]
    assert (ref["BH_MASK_FRAC"][1:3] > 0).all() and (ref["BH_FLAGS"][1:3] & BH_MASKED).all()
    assert ref["BLEND_PROB"][1] > 0.5 > ref["BLEND_PROB"][0]
    header = fitsio.read_header(str(folder / "sp" / "tile_bh.cat"), ext="LDAC_OBJECTS")
    assert header["BH_STSRC"] == "vignet" and header["BH_RMS"] == pytest.approx(rms_adu)


def test_vignet_centred_elsewhere_is_shifted_to_the_stage_position(vignet_tile,
                                                                   fake_classifier):
    """Regression (VIGNET mode disagreed with tile mode on merged objects): SExtractor
    centres VIGNET on X_IMAGE/Y_IMAGE, the stage on XWIN/YWIN. With the pair's VIGNETs centred
    3 px right and 2 px down of XWIN/YWIN, each is shifted back: the same BLEND_PROB, SEP
    columns and flags as the tile path; BH_EDGE_FRAC counts the 3 columns and 2 rows that came
    from beyond the VIGNET, without the BH_EDGE bit (the stamp is not off the tile)."""
    folder, rms_adu = vignet_tile
    x, y = np.array(SOURCES).T
    xv, yv = x.copy(), y.copy()
    xv[1:3] += 3
    yv[1:3] -= 2
    vignets, _ = sextractor_vignets(folder / "tile.fits", folder / "tile.weight.fits", xv, yv)
    write_ldac(folder / "sp" / "tile.cat", x, y, vignet=vignets, image_shape=SHAPE,
               vignet_centre=(xv, yv))
    run_stage(cfg(), folder / "tile.fits")
    ref = outputs(folder / "tile_bh.cat")
    run_stage(cfg(stamp={"source": "vignet", "rms_adu": rms_adu},
                  weight=str(folder / "tile.weight.fits")), folder / "sp" / "tile.fits")
    out = outputs(folder / "sp" / "tile_bh.cat")
    for name in ("BLEND_PROB", "BLEND_FLAG", "BH_FLAGS", "BH_NEAREST_PIX", "BH_NDET_STAMP"):
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)
    np.testing.assert_array_equal(out["BH_EDGE_FRAC"][[0, 3]], ref["BH_EDGE_FRAC"][[0, 3]])
    assert ref["BH_EDGE_FRAC"][1:3].tolist() == [0, 0]
    np.testing.assert_allclose(out["BH_EDGE_FRAC"][1:3], 1 - 48 * 49 / 51**2, rtol=1e-6)
    assert not (out["BH_FLAGS"][1:3] & BH_EDGE).any()


def test_vignet_rms_measured_on_the_tile(vignet_tile, fake_classifier):
    """With rms_adu null the tile beside the catalogue gives it, as in tile mode."""
    folder, rms_adu = vignet_tile
    shutil.copy(folder / "tile.fits", folder / "sp")
    shutil.copy(folder / "tile.weight.fits", folder / "sp")
    run_stage(cfg(stamp={"source": "vignet"}), folder / "sp" / "tile.fits")
    run_stage(cfg(), folder / "tile.fits")
    out, ref = outputs(folder / "sp" / "tile_bh.cat"), outputs(folder / "tile_bh.cat")
    np.testing.assert_array_equal(out["BLEND_PROB"], ref["BLEND_PROB"])
    header = fitsio.read_header(str(folder / "sp" / "tile_bh.cat"), ext=2)
    assert header["BH_RMS"] == pytest.approx(rms_adu)


def test_blanked_neighbour_pixels_are_masked(vignet_tile, fake_classifier):
    """-1e30 on the image (MASK_TYPE CORRECT or BLANK blanks neighbours) counts as masked."""
    folder, rms_adu = vignet_tile
    cat = fitsio.read(str(folder / "sp" / "tile.cat"), ext="LDAC_OBJECTS")
    vignets = cat["VIGNET"].copy()
    vignets[1, 20:25, 30:35] = NULL  # 25 interior pixels of the pair's first member
    x, y = np.array(SOURCES).T
    write_ldac(folder / "sp" / "tile.cat", x, y, vignet=vignets, image_shape=SHAPE)
    run_stage(cfg(stamp={"source": "vignet", "rms_adu": rms_adu}, weight=None),
              folder / "sp" / "tile.fits")
    out = outputs(folder / "sp" / "tile_bh.cat")
    assert out["BH_EDGE_FRAC"][1] == 0
    assert out["BH_MASK_FRAC"][1] == pytest.approx(25 / 51**2)
    assert out["BH_FLAGS"][1] & BH_MASKED and not out["BH_FLAGS"][2] & BH_MASKED


def test_vignet_pixels_off_the_image_refused(vignet_tile, fake_classifier):
    folder, rms_adu = vignet_tile
    x, y = np.array(SOURCES).T
    write_ldac(folder / "sp" / "tile.cat", x, y, vignet=np.zeros((4, 51, 51), np.float32),
               image_shape=SHAPE)
    with pytest.raises(InputFileError, match=r"row 1: VIGNET holds pixels off the 170x160"):
        run_stage(cfg(stamp={"source": "vignet", "rms_adu": rms_adu}),
                  folder / "sp" / "tile.fits")
    assert not (folder / "sp" / "tile_bh.cat").exists()


def test_vignet_of_another_size_refused(vignet_tile, fake_classifier):
    folder, _ = vignet_tile
    with pytest.raises(CatalogueColumnError, match=r"VIGNET is 3x3, stamp.size_pix 51; set "
                       r"VIGNET\(51,51\)"):
        run_stage(cfg(stamp={"source": "vignet"}), folder / "tile.fits")


def test_no_tile_and_no_rms_is_a_config_error(vignet_tile, capsys):
    folder, _ = vignet_tile
    (folder / "run.yml").write_text("stamp: {source: vignet}\n")
    assert main(["-q", "run", str(folder / "run.yml"), str(folder / "sp" / "tile.fits")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no such tile, and stamp.rms_adu is null" in err
    with pytest.raises(ConfigError):
        run_stage(cfg(stamp={"source": "vignet"}), folder / "sp" / "tile.fits")


# --- the real source-extractor ---------------------------------------------------------


@pytest.fixture(scope="module")
def sextracted(tmp_path_factory, sextractor):
    """A 240x200 tile on a sloped sky with an edge object, a close pair and a weight-0
    block, SExtracted with VIGNET(51,51) (MASK_TYPE NONE and CORRECT) and check images."""
    folder = tmp_path_factory.mktemp("vignet")
    shape = (200, 240)
    sources = [(30.3, 40.2), (120.7, 100.1), (125.0, 104.6), (5.2, 180.4), (230.1, 10.7),
               (100.0, 150.0), (180.4, 60.3)]
    image = gaussian_image(shape, sources, flux_adu=20000.0, seed=1)
    image += 1000.0 + 0.5 * np.arange(shape[1], dtype=np.float32)  # sky with a gradient
    weight = np.ones(shape, dtype=np.float32)
    weight[140:160, 105:115] = 0
    fitsio.write(str(folder / "tile.fits"), image, clobber=True)
    fitsio.write(str(folder / "tile.weight.fits"), weight, clobber=True)
    param = (REPO / "example_config/sextractor/bh.param").read_text()
    (folder / "vignet.param").write_text(param.replace("VIGNET(5,5)", "VIGNET(51,51)"))
    for mask_type in ("NONE", "CORRECT"):
        checks = (["-CHECKIMAGE_TYPE", "BACKGROUND,SEGMENTATION", "-CHECKIMAGE_NAME",
                   f"{folder}/background.fits,{folder}/segmentation.fits"]
                  if mask_type == "NONE" else [])
        subprocess.run([sextractor, str(folder / "tile.fits"), "-c",
                        "example_config/sextractor/bh.sex",
                        "-PARAMETERS_NAME", str(folder / "vignet.param"),
                        "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE",
                        str(folder / "tile.weight.fits"), "-MASK_TYPE", mask_type,
                        "-CATALOG_NAME", str(folder / f"mask_{mask_type}.cat"), *checks],
                       cwd=REPO, check=True)
    return folder


def test_sextractor_vignet_conventions(sextracted):
    """source-extractor 2.25: VIGNET[i] is the tile minus SExtractor's background map,
    centred on the 0-based pixel nearest (X_IMAGE - 1, Y_IMAGE - 1), -1e30 exactly off the
    image. Weight-0 pixels are not marked: they hold SExtractor's interpolation
    (INTERP_TYPE ALL, the default). With MASK_TYPE CORRECT (or BLANK) the pixels of
    neighbouring detections are -1e30 as well; MASK_TYPE NONE keeps them."""
    folder = sextracted
    raw = fitsio.read(str(folder / "tile.fits")).astype(np.float64)
    subtracted = (raw - fitsio.read(str(folder / "background.fits"))).astype(np.float32)
    segmentation = fitsio.read(str(folder / "segmentation.fits"))
    weight = fitsio.read(str(folder / "tile.weight.fits"))
    cat = fitsio.read(str(folder / "mask_NONE.cat"), ext="LDAC_OBJECTS")
    assert len(cat) == 7
    xc, yc = nearest_pixel(cat["X_IMAGE"] - 1), nearest_pixel(cat["Y_IMAGE"] - 1)
    expected = window_pixels(subtracted, xc, yc, 51, NULL)
    w0 = window_pixels(weight, xc, yc, 51, np.float32(1)) == 0
    assert w0.sum() == 200
    np.testing.assert_array_equal(cat["VIGNET"][~w0], expected[~w0])
    assert (cat["VIGNET"] == NULL).sum() == (expected == NULL).sum() > 0  # edge objects
    assert (cat["VIGNET"][w0] > -1e29).all() and (cat["VIGNET"][w0] != expected[w0]).any()
    blanked = fitsio.read(str(folder / "mask_CORRECT.cat"), ext="LDAC_OBJECTS")
    assert (blanked["NUMBER"] == cat["NUMBER"]).all()
    seg = window_pixels(segmentation, xc, yc, 51, -1)
    nulls = (blanked["VIGNET"] <= -1e29) & (seg >= 0)
    pair = (seg > 0) & (seg != cat["NUMBER"][:, None, None])  # another detection's pixels
    assert nulls.sum(axis=(1, 2)).tolist() == [0, 0, 0, 75, 86, 0, 0]
    assert (seg[nulls] > 0).all() and (nulls & pair).sum() >= 0.7 * nulls.sum()
    keep = ~nulls & ~w0
    np.testing.assert_array_equal(blanked["VIGNET"][keep], cat["VIGNET"][keep])


def test_stage_on_sextractor_vignets(sextracted, fake_classifier):
    """The stage from VIGNET against the stage from the tile, both centred on X_IMAGE: the
    same edge and mask flags and fractions; stamps that differ only by the two background
    estimates (SExtractor's map in VIGNET, SEP's in the stage), so BLEND_PROB agrees."""
    folder = sextracted
    shutil.copy(folder / "mask_NONE.cat", folder / "tile.cat")
    common = {"x_column": "X_IMAGE", "y_column": "Y_IMAGE", "overwrite": True}
    run_stage(cfg(**common), folder / "tile.fits")
    ref = outputs(folder / "tile_bh.cat")
    rms_adu = fitsio.read_header(str(folder / "tile_bh.cat"), ext=2)["BH_RMS"]
    run_stage(cfg(stamp={"source": "vignet", "rms_adu": rms_adu},
                  output="{dir}/{stem}_vignet.cat", **common), folder / "tile.fits")
    out = outputs(folder / "tile_vignet.cat")
    for name in ("BH_FLAGS", "BH_EDGE_FRAC", "BH_MASK_FRAC", "BH_NEAREST_PIX",
                 "BH_NDET_STAMP"):
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)
    assert (ref["BH_FLAGS"] & BH_EDGE).sum() == 2 and (ref["BH_FLAGS"] & BH_MASKED).sum() >= 1
    np.testing.assert_allclose(out["BLEND_PROB"], ref["BLEND_PROB"], atol=0.21)
    # the stamps themselves: the two backgrounds differ by a small fraction of the rms
    image, bad, _ = tile_pixels(folder / "tile.fits", folder / "tile.weight.fits")
    cat = fitsio.read(str(folder / "tile.cat"), ext="LDAC_OBJECTS")
    xc, yc = nearest_pixel(cat["X_IMAGE"] - 1), nearest_pixel(cat["Y_IMAGE"] - 1)
    cut = window_pixels(image, xc, yc, 51, NULL)
    valid = (cut > -1e29) & ~window_pixels(bad, xc, yc, 51, True)
    assert np.abs(cut - cat["VIGNET"])[valid].max() < 0.2 * rms_adu


def test_stage_on_sextractor_vignets_at_xwin(sextracted, fake_classifier):
    """The default centre (XWIN/YWIN) with the real source-extractor's VIGNETs, centred on
    X_IMAGE/Y_IMAGE: shifted to XWIN/YWIN, they give the tile path's flags and, up to the two
    background estimates, its BLEND_PROB, on objects whose two centres differ as well."""
    folder = sextracted
    shutil.copy(folder / "mask_NONE.cat", folder / "tile.cat")
    cat = fitsio.read(str(folder / "tile.cat"), ext="LDAC_OBJECTS")
    moved = ((nearest_pixel(cat["X_IMAGE"] - 1) != nearest_pixel(cat["XWIN_IMAGE"] - 1))
             | (nearest_pixel(cat["Y_IMAGE"] - 1) != nearest_pixel(cat["YWIN_IMAGE"] - 1)))
    assert moved.any()
    run_stage(cfg(overwrite=True), folder / "tile.fits")
    ref = outputs(folder / "tile_bh.cat")
    rms_adu = fitsio.read_header(str(folder / "tile_bh.cat"), ext=2)["BH_RMS"]
    run_stage(cfg(stamp={"source": "vignet", "rms_adu": rms_adu}, overwrite=True,
                  output="{dir}/{stem}_vignet.cat"), folder / "tile.fits")
    out = outputs(folder / "tile_vignet.cat")
    np.testing.assert_array_equal(out["BH_FLAGS"], ref["BH_FLAGS"])
    np.testing.assert_array_equal(out["BH_EDGE_FRAC"][~moved], ref["BH_EDGE_FRAC"][~moved])
    assert (out["BH_EDGE_FRAC"][moved] > ref["BH_EDGE_FRAC"][moved]).all()
    np.testing.assert_allclose(out["BLEND_PROB"], ref["BLEND_PROB"], atol=0.21)
