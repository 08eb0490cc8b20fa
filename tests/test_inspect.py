"""``bh-stage inspect`` on the synthetic tile after a stage run with the fake heads: the rows
picked, the stamps shown (those the tile head saw), the markers, the PNGs and bad inputs."""

import fitsio
import numpy as np
import pytest
from PIL import Image

from bh_stage import tilehead
from bh_stage.cli import main
from bh_stage.config import RunConfig, config_from_dict
from bh_stage.errors import CatalogueColumnError, InputFileError, OutputExistsError
from bh_stage.inspect_output import (gallery_stamps, neighbours_in_stamps, pick_rows,
                                     read_stage_output, run_inspect, stamp_sources)
from bh_stage.pixels import tile_pixels
from bh_stage.stage import run_stage

from conftest import SOURCES_XY, TILE_SHAPE, FakeTileHead, gaussian_image

PNGS = ("gallery.png", "histograms.png", "tile_map.png")
NAN = np.nan


@pytest.mark.parametrize("thr, n, expected", [
    # rows:  0    1    2    3    4     5     6    7
    (0.5, 4, {"highest": [1, 7, 5, 3], "threshold": [5, 3, 4, 6], "lowest": [0, 6, 4, 3]}),
    # nothing above: the nearest four below; 0.9 twice keeps row order
    (0.95, 4, {"highest": [1, 7, 5, 3], "threshold": [1, 7, 5, 3], "lowest": [0, 6, 4, 3]}),
    # one row below: three above
    (0.2, 4, {"highest": [1, 7, 5, 3], "threshold": [3, 4, 6, 0], "lowest": [0, 6, 4, 3]}),
    # odd n: the extra row is taken at or above the threshold
    (0.5, 3, {"highest": [1, 7, 5], "threshold": [5, 3, 4], "lowest": [0, 6, 4]}),
    # more rows asked than scored: every scored row, NaN never
    (0.5, 10, {"highest": [1, 7, 5, 3, 4, 6, 0], "threshold": [1, 7, 5, 3, 4, 6, 0],
               "lowest": [0, 6, 4, 3, 5, 1, 7]}),
])
def test_pick_rows_known_answers(thr, n, expected):
    prob = [0.1, 0.9, NAN, 0.5, 0.45, 0.55, 0.3, 0.9]
    got = pick_rows(prob, thr, n)
    assert {k: v.tolist() for k, v in got.items()} == expected


def test_pick_rows_nothing_scored():
    assert all(len(v) == 0 for v in pick_rows([NAN, NAN], 0.5).values())


def test_neighbours_in_stamps_boundary_and_origin():
    """The stamp centre (32, 32) is the pixel nearest the row; a detection 32.4 px away is
    inside the 65 px stamp, 32.6 px is not; NaN positions and the row itself never are."""
    x = np.array([10.0, 12.4, 42.4, 42.6, NAN])
    y = np.array([10.0, 10.0, 10.0, 10.0, 10.0])
    inside = neighbours_in_stamps(x, y, [0, 1], 65)
    np.testing.assert_allclose(inside[0], [[34.4, 32.0], [64.4, 32.0]])
    # row 1 is centred on pixel 12 (nearest to 12.4): x - 12 + 32
    np.testing.assert_allclose(inside[1], [[30.0, 32.0], [62.4, 32.0], [62.6, 32.0]])


@pytest.fixture
def seen(monkeypatch, fake_classifier):
    """The stamps the fake tile head was given, in catalogue order."""
    stamps = []

    class Recording(FakeTileHead):
        def predict_proba(self, batch, rms_adu, features):
            stamps.extend(np.array(batch))
            return super().predict_proba(batch, rms_adu, features)

    monkeypatch.setattr(tilehead, "load_tile_head", Recording)
    return stamps


def stage_output(folder, **kwargs):
    return run_stage(config_from_dict(RunConfig, kwargs), folder / "tile.fits").output


def test_gallery_stamps_are_the_stage_stamps(small_tile, seen):
    """Each gallery stamp equals, pixel for pixel (noise fill included), the stamp the tile
    head scored for the row it names; SEP's sources in it are as many as SEP_NSRC."""
    out = read_stage_output(stage_output(small_tile))
    assert len(seen) == 3
    image, bad, rms_adu = tile_pixels(small_tile / "tile.fits", small_tile / "tile.weight.fits")
    assert rms_adu == pytest.approx(out.rms_adu, rel=1e-6)
    rows = [2, 0]
    stamps = gallery_stamps(image, bad, rms_adu, out.x_pix, out.y_pix, rows)
    for stamp, row in zip(stamps, rows):
        np.testing.assert_array_equal(stamp, seen[row])
    assert [len(s) for s in stamp_sources(stamps)] == out.columns["SEP_NSRC"][rows].tolist()
    # another seed fills the off-tile pixels (every stamp crosses the edge) differently
    other = gallery_stamps(image, bad, rms_adu, out.x_pix, out.y_pix, rows, seed=1)
    assert not np.array_equal(other, stamps)


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_inspect_writes_three_pngs(small_tile, fake_classifier):
    catalogue = stage_output(small_tile)
    code = main(["-q", "inspect", str(catalogue), str(small_tile / "tile.fits")])
    assert code == 0
    outdir = small_tile / "tile_bh_inspect"
    assert sorted(p.name for p in outdir.iterdir()) == sorted(PNGS)
    assert not list(small_tile.glob(".inprogress_*"))
    for name in PNGS:
        width, height = png_size(outdir / name)
        assert 300 <= width <= 2500 and 200 <= height <= 1500, name
        assert 2_000 < (outdir / name).stat().st_size < 300_000, name


def test_head_none_has_one_histogram(small_tile, fake_classifier):
    """Without a paper head there is no BH_PAPER_PROB panel: half the width."""
    widths = {}
    for head in ("default", "none"):
        catalogue = stage_output(small_tile, head=head, output=f"{{dir}}/{head}.cat")
        out = read_stage_output(catalogue)
        assert (out.paper_threshold is None) == (head == "none")
        run_inspect(catalogue, small_tile / "tile.fits")
        widths[head] = png_size(small_tile / f"{head}_inspect" / "histograms.png")[0]
    assert widths["none"] == pytest.approx(widths["default"] / 2, rel=0.05)


def test_existing_folder_needs_overwrite(small_tile, fake_classifier, capsys):
    catalogue, tile = str(stage_output(small_tile)), str(small_tile / "tile.fits")
    outdir = small_tile / "qa"
    outdir.mkdir()
    run_inspect(catalogue, tile, outdir)  # an empty folder is accepted
    before = (outdir / "gallery.png").read_bytes()
    (outdir / "notes.txt").write_text("mine")
    assert main(["inspect", catalogue, tile, "-o", str(outdir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(outdir) in err and "--overwrite" in err
    with pytest.raises(OutputExistsError):
        run_inspect(catalogue, tile, outdir)
    assert main(["-q", "inspect", catalogue, tile, "-o", str(outdir), "--overwrite"]) == 0
    assert (outdir / "notes.txt").read_text() == "mine"
    assert (outdir / "gallery.png").read_bytes() == before  # same inputs, same picture


@pytest.mark.parametrize("case", ["missing catalogue", "missing tile", "not a stage output",
                                  "no BH_RMS", "another tile"])
def test_bad_input_one_line_exit_2_no_folder(small_tile, fake_classifier, capsys, case):
    catalogue, tile = stage_output(small_tile), small_tile / "tile.fits"
    named = {"missing catalogue": small_tile / "nope_bh.cat", "missing tile": tile,
             "not a stage output": small_tile / "tile.cat", "no BH_RMS": catalogue,
             "another tile": tile}[case]
    if case == "missing catalogue":
        catalogue = named
    elif case == "missing tile":
        tile = named = small_tile / "nope.fits"
    elif case == "not a stage output":
        catalogue = named
    elif case == "no BH_RMS":
        with fitsio.FITS(str(catalogue), "rw") as fits:
            fits["LDAC_OBJECTS"].delete_key("BH_RMS")
    else:  # same size and sources, twice the noise
        fitsio.write(str(tile), gaussian_image(TILE_SHAPE, SOURCES_XY, noise_adu=10.0),
                     clobber=True)
    before = sorted(p.name for p in small_tile.iterdir())
    assert main(["inspect", str(catalogue), str(tile)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(named) in err, err
    assert err.startswith("bh-stage inspect: error: ")
    if case in ("not a stage output", "no BH_RMS"):
        assert ("BLEND_PROB" in err) == (case == "not a stage output") and "BH_RMS" in err
    assert sorted(p.name for p in small_tile.iterdir()) == before  # no folder, no temporary


def test_errors_are_the_right_classes(small_tile, fake_classifier):
    with pytest.raises(CatalogueColumnError, match="no column BLEND_PROB, BLEND_FLAG, SEP_NSRC, "
                       "BH_FLAGS; no header key BH_THR, BH_RMS;"):
        read_stage_output(small_tile / "tile.cat")
    with pytest.raises(InputFileError, match="no such file"):
        read_stage_output(small_tile / "absent.cat")
    catalogue = stage_output(small_tile)
    with pytest.raises(CatalogueColumnError, match="X_IMAGE"):
        read_stage_output(catalogue, x_column="X_IMAGE")

