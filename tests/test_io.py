"""Tests of bh_stage.io on tiny FITS files written with fitsio in tmp_path: tiles (plain and
tile-compressed), SExtractor catalogues (FITS_1.0 and FITS_LDAC, 1-based positions), the
stage output in its two modes, atomic outputs and file hashes. Expected values are written
out by hand or come from fitsio and hashlib, never from io itself."""

import hashlib
import os
import re

import fitsio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bh_stage import io
from bh_stage.errors import (CatalogueColumnError, InputFileError, OutputExistsError,
                             OutputFileError)

from conftest import write_ldac

IMAGE = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
"""A 4 x 3 (nx x ny) tile, -5.5 to 5.5: ``IMAGE[y, x] = 4 y + x - 5.5``."""


def names_in(folder):
    return sorted(p.name for p in folder.iterdir())


# --- tiles ------------------------------------------------------------------------------

def test_read_tile_plain_image_and_header(tmp_path):
    path = tmp_path / "tile.fits"
    fitsio.write(str(path), IMAGE, header={"GAIN": 2.5, "SATURATE": 60000.0})
    with fitsio.FITS(str(path), "rw") as fits:
        fits[0].write_comment("a comment card")
        fits[0].write_history("a history card")
    image, header = io.read_tile(path)
    assert image.shape == (3, 4)
    assert image[1, 3] == 1.5 and image[2, 0] == 2.5  # 0-based [y, x]: 4 y + x - 5.5
    np.testing.assert_array_equal(image, IMAGE)
    assert (header["GAIN"], header["SATURATE"]) == (2.5, 60000.0)
    assert (header["NAXIS1"], header["NAXIS2"]) == (4, 3)
    assert "COMMENT" not in header and "HISTORY" not in header
    assert io.tile_shape(path) == (3, 4)


@pytest.mark.parametrize("stored", [">i2", ">i4", ">f4", ">f8"])
def test_read_tile_gives_native_float32_whatever_the_bitpix(tmp_path, stored):
    """SEP refuses big-endian arrays: every BITPIX comes back as native, C-ordered float32."""
    path = tmp_path / "tile.fits"
    fitsio.write(str(path), (np.arange(12).reshape(3, 4) - 5).astype(stored))
    image, _ = io.read_tile(path)
    assert image.dtype == np.dtype(np.float32) and image.dtype.isnative
    assert image.flags.c_contiguous
    np.testing.assert_array_equal(image, [[-5, -4, -3, -2], [-1, 0, 1, 2], [3, 4, 5, 6]])


@pytest.mark.parametrize("compress, data", [
    ("RICE", np.arange(12, dtype=np.int32).reshape(3, 4) * 1000 - 4000),  # lossless on ints
    ("GZIP", IMAGE),                                                     # lossless on floats
])
def test_read_tile_compressed_is_exact(tmp_path, compress, data):
    path = tmp_path / "tile.fits.fz"
    fitsio.write(str(path), data, compress=compress, qlevel=None, header={"GAIN": 2.5})
    with fitsio.FITS(str(path)) as fits:  # empty primary, the image in extension 1
        assert not fits[0].has_data() and fits[1].is_compressed()
    image, header = io.read_tile(path)
    assert image.dtype == np.dtype(np.float32) and image.dtype.isnative
    np.testing.assert_array_equal(image, data.astype(np.float64))
    assert header["GAIN"] == 2.5
    assert io.tile_shape(path) == (3, 4)


def test_read_tile_quantised_rice_is_the_files_pixels(tmp_path):
    """A float tile RICE-compressed with quantisation (as .fits.fz tiles are): exactly the
    pixels cfitsio decompresses, near the original (the step is about noise / 16, 0.3 ADU;
    observed error up to 0.19 ADU)."""
    noisy = np.random.default_rng(0).normal(0.0, 5.0, (40, 50)).astype(np.float32)
    path = tmp_path / "tile.fits.fz"
    fitsio.write(str(path), noisy, compress="RICE", qlevel=16.0, dither_seed=1)
    image, _ = io.read_tile(path)
    np.testing.assert_array_equal(image, fitsio.read(str(path), ext=1))
    np.testing.assert_allclose(image, noisy, atol=0.5)  # a tenth of the noise
    assert not np.array_equal(image, noisy)  # quantised indeed


def test_read_tile_takes_the_first_2d_image_extension(tmp_path):
    """Past an empty primary, a table and a 3-D cube, to the first 2-D image."""
    path = tmp_path / "multi.fits"
    with fitsio.FITS(str(path), "rw", clobber=True) as fits:
        fits.write(None)
        fits.write(np.zeros(2, dtype=[("A", "f4")]), extname="TABLE")
        fits.write(np.ones((2, 3, 4), np.float32), extname="CUBE")
        fits.write(IMAGE, extname="SCI", header={"GAIN": 2.5})
        fits.write(np.zeros((5, 6), np.float32), extname="SECOND")
    image, header = io.read_tile(path)
    np.testing.assert_array_equal(image, IMAGE)
    assert header["EXTNAME"] == "SCI" and header["GAIN"] == 2.5
    assert io.tile_shape(path) == (3, 4)


def test_tile_errors(tmp_path):
    missing = tmp_path / "missing.fits"
    with pytest.raises(InputFileError, match=re.escape(f"{missing}: no such file")):
        io.read_tile(missing)
    text = tmp_path / "text.fits"
    text.write_text("not FITS\n")
    with pytest.raises(InputFileError, match=re.escape(f"{text}: not a readable FITS file")):
        io.read_tile(text)
    no_image = tmp_path / "no_image.fits"
    with fitsio.FITS(str(no_image), "rw", clobber=True) as fits:
        fits.write(None)
        fits.write(np.ones((2, 3, 4), np.float32))
    with pytest.raises(InputFileError, match="no 2-D image in the primary or any extension"):
        io.read_tile(no_image)
    with pytest.raises(InputFileError, match="no 2-D image"):
        io.tile_shape(no_image)


def test_tile_shape_reads_no_pixels(tmp_path):
    """A tile cut in half keeps its header: tile_shape answers, read_tile refuses it."""
    path = tmp_path / "tile.fits"
    fitsio.write(str(path), np.ones((100, 120), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    assert io.tile_shape(path) == (100, 120)
    with pytest.raises(InputFileError, match="may be truncated"):
        io.read_tile(path)


# --- catalogues -------------------------------------------------------------------------

def write_fits10(path, x_image, y_image, number=(7, 8, 9)):
    """A SExtractor FITS_1.0 catalogue: empty primary and one unnamed table, 1-based
    X_IMAGE/Y_IMAGE; ``number`` None: no NUMBER column."""
    fields = [("X_IMAGE", ">f8"), ("Y_IMAGE", ">f8"), ("FLUX_AUTO", ">f4")]
    rows = np.zeros(len(x_image), dtype=([("NUMBER", ">i4")] if number else []) + fields)
    rows["X_IMAGE"], rows["Y_IMAGE"], rows["FLUX_AUTO"] = x_image, y_image, 100.0
    if number:
        rows["NUMBER"] = number
    fitsio.write(str(path), rows, clobber=True)
    return path


def test_read_catalogue_fits10_positions_are_0_based(tmp_path):
    path = write_fits10(tmp_path / "t.cat", [1.0, 10.5, 100.25], [1.0, 2.0, 0.5])
    cat = io.read_catalogue(path, "X_IMAGE", "Y_IMAGE")
    assert (cat.path, cat.hdu, cat.nrows, cat.extname) == (path, 1, 3, "")
    assert cat.x_pix.dtype == np.float64 and cat.y_pix.dtype == np.float64
    np.testing.assert_array_equal(cat.x_pix, [0.0, 9.5, 99.25])
    np.testing.assert_array_equal(cat.y_pix, [0.0, 1.0, -0.5])
    np.testing.assert_array_equal(cat.ids, [7, 8, 9])


def test_read_catalogue_rows_without_a_position_are_nan(tmp_path):
    """SExtractor's -1e30 (anything <= -1e29) and non-finite values: NaN, not -1e30 - 1."""
    path = write_fits10(tmp_path / "t.cat", [-1e30, np.inf, np.nan, -1e29, 5.0],
                        [3.0] * 5, number=None)
    cat = io.read_catalogue(path, "X_IMAGE", "Y_IMAGE")
    np.testing.assert_array_equal(cat.x_pix, [np.nan] * 4 + [4.0])
    np.testing.assert_array_equal(cat.y_pix, [2.0] * 5)
    np.testing.assert_array_equal(cat.ids, [1, 2, 3, 4, 5])  # no NUMBER: 1-based row numbers


def write_small_ldac(path, xwin, ywin):
    """A FITS_LDAC catalogue: LDAC_IMHEAD (a table, first) and LDAC_OBJECTS (second)."""
    imhead = np.zeros(1, dtype=[("Field Header Card", "S80", (2,))])
    imhead["Field Header Card"][0] = [b"SIMPLE  =                    T", b"END"]
    objects = np.zeros(len(xwin), dtype=[("NUMBER", ">i4"), ("XWIN_IMAGE", ">f8"),
                                         ("YWIN_IMAGE", ">f8")])
    objects["NUMBER"] = np.arange(11, 11 + len(xwin))
    objects["XWIN_IMAGE"], objects["YWIN_IMAGE"] = xwin, ywin
    with fitsio.FITS(str(path), "rw", clobber=True) as fits:
        fits.write(None)
        fits.write(imhead, extname="LDAC_IMHEAD")
        fits.write(objects, extname="LDAC_OBJECTS")
    return path


def test_read_catalogue_ldac_objects_not_the_first_table(tmp_path):
    path = write_small_ldac(tmp_path / "t.cat", [1.0, 42.5], [3.0, 0.75])
    for hdu in ("auto", "LDAC_OBJECTS", "ldac_objects", "2", 2):
        cat = io.read_catalogue(path, "XWIN_IMAGE", "YWIN_IMAGE", hdu=hdu)
        assert (cat.hdu, cat.extname, cat.nrows) == (2, "LDAC_OBJECTS", 2), hdu
        np.testing.assert_array_equal(cat.x_pix, [0.0, 41.5])
        np.testing.assert_array_equal(cat.y_pix, [2.0, -0.25])
        np.testing.assert_array_equal(cat.ids, [11, 12])
    with pytest.raises(CatalogueColumnError, match=r"no table HDU '5'; set catalogue_hdu"):
        io.read_catalogue(path, "XWIN_IMAGE", "YWIN_IMAGE", hdu="5")


def test_missing_position_column_names_the_column_and_file(tmp_path):
    path = write_small_ldac(tmp_path / "t.cat", [1.0], [1.0])
    with pytest.raises(CatalogueColumnError,
                       match=re.escape(f"{path}: no column 'X_IMAGE' in HDU LDAC_OBJECTS")) as err:
        io.read_catalogue(path, "X_IMAGE", "YWIN_IMAGE")
    assert isinstance(err.value, KeyError)
    with pytest.raises(CatalogueColumnError, match=r"no column 'YPEAK_IMAGE'"):
        io.read_catalogue(path, "XWIN_IMAGE", "YPEAK_IMAGE")
    image = tmp_path / "image.fits"
    fitsio.write(str(image), IMAGE)
    with pytest.raises(CatalogueColumnError, match=re.escape(f"{image}: no table HDU")):
        io.read_catalogue(image, "X_IMAGE", "Y_IMAGE")
    with pytest.raises(InputFileError, match="no such file"):
        io.read_catalogue(tmp_path / "absent.cat", "X_IMAGE", "Y_IMAGE")


def test_read_catalogue_of_no_rows(tmp_path):
    cat = io.read_catalogue(write_small_ldac(tmp_path / "t.cat", [], []), "XWIN_IMAGE",
                            "YWIN_IMAGE")
    assert cat.nrows == 0 and cat.x_pix.shape == (0,) and cat.ids.shape == (0,)


def test_a_1_based_position_is_the_0_based_pixel_of_read_tile(tmp_path):
    """SExtractor's first pixel centre is (1, 1): X_IMAGE = 5, Y_IMAGE = 3 is the pixel at
    column 4, row 2 of the array read_tile returns."""
    image = np.zeros((6, 8), np.float32)
    image[2, 4] = 1.0
    fitsio.write(str(tmp_path / "tile.fits"), image)
    tile, _ = io.read_tile(tmp_path / "tile.fits")
    cat = io.read_catalogue(write_fits10(tmp_path / "t.cat", [5.0], [3.0], number=(1,)),
                            "X_IMAGE", "Y_IMAGE")
    assert tile[int(cat.y_pix[0]), int(cat.x_pix[0])] == 1.0 and tile.sum() == 1.0


@settings(max_examples=40, deadline=None)
@given(x=st.lists(st.floats(0.5, 1e6), min_size=1, max_size=12), data=st.data())
def test_positions_round_trip_1_based_to_0_based(tmp_path_factory, x, data):
    """x_pix = X_IMAGE - 1 exactly, and adding FITS_ORIGIN back gives the catalogue's value
    (exact in float64 for positions from 0.5 up)."""
    y = data.draw(st.lists(st.floats(0.5, 1e6), min_size=len(x), max_size=len(x)))
    path = write_fits10(tmp_path_factory.mktemp("rt") / "t.cat", x, y, number=None)
    cat = io.read_catalogue(path, "X_IMAGE", "Y_IMAGE")
    np.testing.assert_array_equal(cat.x_pix, np.array(x) - 1.0)
    np.testing.assert_array_equal(cat.y_pix, np.array(y) - 1.0)
    np.testing.assert_array_equal(cat.x_pix + io.FITS_ORIGIN, x)
    np.testing.assert_array_equal(cat.y_pix + io.FITS_ORIGIN, y)


def test_ldac_helpers_vignet_and_image_shape(tmp_path):
    """column_cell_shape, read_column_rows, ldac_image_shape, read_columns, read_table_info on
    conftest's SExtractor-like LDAC (VIGNET(3,3) holding 0..8 in every row)."""
    path = tmp_path / "t.cat"
    write_ldac(path, [0.0, 10.0, 20.0], [5.0, 6.0, 7.0], image_shape=(40, 60))
    assert io.column_cell_shape(path, "VIGNET") == (3, 3)
    with pytest.raises(CatalogueColumnError, match="no column 'SNAP'"):
        io.column_cell_shape(path, "SNAP")
    rows = io.read_column_rows(path, "VIGNET", 1, 3)
    assert rows.shape == (2, 3, 3) and rows.dtype == np.dtype(np.float32)
    np.testing.assert_array_equal(rows[1], np.arange(9).reshape(3, 3))
    assert io.ldac_image_shape(path) == (40, 60)  # NAXIS2, NAXIS1
    write_ldac(tmp_path / "no_naxis.cat", [0.0], [0.0])
    with pytest.raises(InputFileError, match="LDAC_IMHEAD has no NAXIS1/NAXIS2"):
        io.ldac_image_shape(tmp_path / "no_naxis.cat")
    assert io.ldac_image_shape(write_fits10(tmp_path / "f10.cat", [1.0], [1.0], (1,))) is None
    cols = io.read_columns(path, ["XWIN_IMAGE", "MAG_AUTO"])
    np.testing.assert_array_equal(cols["XWIN_IMAGE"], [1.0, 11.0, 21.0])  # as stored, 1-based
    np.testing.assert_array_equal(cols["MAG_AUTO"], [21.0] * 3)
    with pytest.raises(CatalogueColumnError, match="no column SNR_WIN, ELONGATION"):
        io.read_columns(path, ["SNR_WIN", "XWIN_IMAGE", "ELONGATION"])
    info = io.read_table_info(path)
    assert (info.hdu, info.nrows) == (2, 3)
    assert info.columns[:5] == ["NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "FLAGS", "VIGNET"]
    assert info.header["EXTNAME"] == "LDAC_OBJECTS"


# --- write_catalogue --------------------------------------------------------------------

def new_columns():
    return [io.NewColumn("BLEND_PROB", np.array([0.25, 0.5, np.nan]), "",
                         "P(unrecognised blend); NaN: not scored"),
            io.NewColumn("BH_FLAGS", np.array([0, 1, 4], np.int16), "", "bit flags"),
            io.NewColumn("BH_RADIUS", np.array([1.5, 2.0, 2.5], np.float32), "pixel",
                         "a radius with a description longer than a FITS comment can hold")]


HEADER_KEYS = [("BH_VERS", "0.0.test", "bh-stage version"), ("BH_THR", 0.5, "threshold")]

COLUMN_KEYS = re.compile(r"^T(TYPE|FORM|UNIT|DIM|DISP)(\d+)$")


def column_cards(header, max_column):
    """{key: (value, comment)} of the TTYPE/TFORM/TUNIT/TDIM/TDISP cards of columns 1 to
    ``max_column``."""
    out = {}
    for rec in header.records():
        m = COLUMN_KEYS.match(rec["name"])
        if m and int(m.group(2)) <= max_column:
            out[rec["name"]] = (rec["value"], rec.get("comment", ""))
    return out


def test_write_catalogue_add_keeps_every_input_byte(tmp_path):
    source = tmp_path / "in.cat"
    write_ldac(source, [3.0, 50.0, 97.0], [4.0, 50.0, 98.0], image_shape=(100, 100))
    before = source.read_bytes()
    cat = io.read_catalogue(source, "XWIN_IMAGE", "YWIN_IMAGE")
    out = tmp_path / "out.cat"
    io.write_catalogue(cat, out, new_columns(), HEADER_KEYS, mode="add")
    assert source.read_bytes() == before
    assert names_in(tmp_path) == ["in.cat", "out.cat"]  # no temporary file left
    with fitsio.FITS(str(source)) as fin, fitsio.FITS(str(out)) as fout:
        assert [h.get_extname() for h in fout] == ["", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        assert fout[1].read().tobytes() == fin[1].read().tobytes()
        assert fout[1].read_header().records() == fin[1].read_header().records()
        old, new = fin[2].read(), fout[2].read()
        hin, hout = fin[2].read_header(), fout[2].read_header()
    n_in = len(old.dtype.names)
    assert list(new.dtype.names) == list(old.dtype.names) + ["BLEND_PROB", "BH_FLAGS",
                                                               "BH_RADIUS"]
    for name in old.dtype.names:
        assert new[name].tobytes() == old[name].tobytes(), name
    # the input's column cards, with their comments, unchanged (conftest writes these)
    cards = column_cards(hin, n_in)
    assert cards["TTYPE2"] == ("XWIN_IMAGE", "Windowed position estimate along x")
    assert cards["TUNIT2"][0] == "pixel" and cards["TDISP2"][0] == "F11.4"
    assert cards["TDIM5"][0] == "(3,3)"  # VIGNET
    assert column_cards(hout, n_in) == cards
    # the new columns: values, types, names with their descriptions, units
    np.testing.assert_array_equal(new["BLEND_PROB"], [0.25, 0.5, np.nan])
    np.testing.assert_array_equal(new["BH_FLAGS"], [0, 1, 4])
    np.testing.assert_array_equal(new["BH_RADIUS"], [1.5, 2.0, 2.5])
    assert [new.dtype[c].str[1:] for c in ("BLEND_PROB", "BH_FLAGS", "BH_RADIUS")] == \
        ["f8", "i2", "f4"]
    k = n_in + 1
    assert hout["TTYPE%d" % k] == "BLEND_PROB"
    assert hout.get_comment("TTYPE%d" % k) == "P(unrecognised blend); NaN: not scored"
    assert f"TUNIT{k}" not in hout and hout[f"TUNIT{k + 2}"] == "pixel"
    comment = hout.get_comment(f"TTYPE{k + 2}")  # as much of the description as the card holds
    assert new_columns()[2].description.startswith(comment) and len(comment) >= 40
    assert (hout["BH_VERS"], hout.get_comment("BH_VERS")) == ("0.0.test", "bh-stage version")
    assert hout["BH_THR"] == 0.5


def test_write_catalogue_refuses_an_existing_output_then_replaces_it(tmp_path):
    write_ldac(tmp_path / "in.cat", [3.0, 50.0, 97.0], [4.0, 50.0, 98.0])
    cat = io.read_catalogue(tmp_path / "in.cat", "XWIN_IMAGE", "YWIN_IMAGE")
    out = tmp_path / "out.cat"
    out.write_bytes(b"an earlier output")
    for mode in ("add", "new"):
        with pytest.raises(OutputExistsError, match=re.escape(f"{out}: output exists")):
            io.write_catalogue(cat, out, new_columns(), HEADER_KEYS, mode=mode)
        assert out.read_bytes() == b"an earlier output"
    assert names_in(tmp_path) == ["in.cat", "out.cat"]
    io.write_catalogue(cat, out, new_columns(), HEADER_KEYS, mode="add", overwrite=True)
    np.testing.assert_array_equal(fitsio.read(str(out), ext="LDAC_OBJECTS")["BH_FLAGS"],
                                  [0, 1, 4])
    assert names_in(tmp_path) == ["in.cat", "out.cat"]


@pytest.mark.parametrize("number, ids", [((7, 8, 9), [7, 8, 9]), (None, [1, 2, 3])])
def test_write_catalogue_new_is_a_sidecar_joined_on_the_id(tmp_path, number, ids):
    """'new': an OBJECTS table of the input's ids (its NUMBER, or row numbers without one)
    and the new columns only."""
    source = write_fits10(tmp_path / "in.cat", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], number)
    cat = io.read_catalogue(source, "X_IMAGE", "Y_IMAGE")
    out = tmp_path / "side.fits"
    io.write_catalogue(cat, out, new_columns(), HEADER_KEYS, mode="new")
    assert names_in(tmp_path) == ["in.cat", "side.fits"]
    with fitsio.FITS(str(out)) as fits:
        assert [h.get_extname() for h in fits] == ["", "OBJECTS"]
        table, header = fits[1].read(), fits[1].read_header()
    assert list(table.dtype.names) == ["NUMBER", "BLEND_PROB", "BH_FLAGS", "BH_RADIUS"]
    np.testing.assert_array_equal(table["NUMBER"], ids)
    np.testing.assert_array_equal(table["BLEND_PROB"], [0.25, 0.5, np.nan])
    np.testing.assert_array_equal(table["BH_FLAGS"], [0, 1, 4])
    assert [table.dtype[c].str[1:] for c in ("BLEND_PROB", "BH_FLAGS", "BH_RADIUS")] == \
        ["f8", "i2", "f4"]
    assert header.get_comment("TTYPE1") == "object id in the input catalogue"
    assert header.get_comment("TTYPE3") == "bit flags" and header["TUNIT4"] == "pixel"
    assert header["BH_VERS"] == "0.0.test"


# --- atomic outputs ---------------------------------------------------------------------

def test_check_output_accepts_a_new_file_and_refuses_an_existing_one(tmp_path):
    path = tmp_path / "out.cat"
    assert io.check_output(path) == tmp_path
    assert names_in(tmp_path) == []  # the probe file is gone
    path.write_text("kept")
    with pytest.raises(OutputExistsError, match=re.escape(f"{path}: output exists; pass "
                                                          "--overwrite")) as err:
        io.check_output(path)
    assert isinstance(err.value, FileExistsError)
    assert io.check_output(path, overwrite=True) == tmp_path
    assert path.read_text() == "kept" and names_in(tmp_path) == ["out.cat"]


def test_check_output_folders(tmp_path):
    with pytest.raises(OutputFileError, match="the output is a directory"):
        io.check_output(tmp_path)
    deep = tmp_path / "a" / "b" / "out.cat"
    with pytest.raises(OutputFileError, match=re.escape(f"output folder {deep.parent} does "
                                                        "not exist")):
        io.check_output(deep)
    assert not (tmp_path / "a").exists()
    assert io.check_output(deep, make_parents=True) == deep.parent
    assert deep.parent.is_dir() and names_in(deep.parent) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputFileError, match="is not a directory"):
        io.check_output(tmp_path / "file" / "out.cat", make_parents=True)


def test_atomic_output_renames_a_complete_file(tmp_path):
    path = tmp_path / "out.bin"
    with io.atomic_output(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".inprogress_out.bin.")
        tmp.write_bytes(b"complete")
        assert not path.exists()  # nothing under the final name while writing
    assert path.read_bytes() == b"complete" and names_in(tmp_path) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_output_removes_the_temporary_file_when_the_body_raises(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(ValueError, match="half written"):
        with io.atomic_output(path) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("half written")
    assert names_in(tmp_path) == []
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_output(path, overwrite=True) as tmp:
            tmp.write_bytes(b"new")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and names_in(tmp_path) == ["out.bin"]
    body = []
    with pytest.raises(OutputExistsError):
        with io.atomic_output(path):
            body.append("ran")
    assert body == [] and path.read_bytes() == b"old"


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "new" / "head.weights.npz"
    io.atomic_write_bytes(path, lambda f: f.write(b"\x00\x01weights"))
    assert path.read_bytes() == b"\x00\x01weights"  # the folder made, the file written
    io.atomic_write_bytes(path, lambda f: f.write(b"replaced"))  # replaces, no overwrite flag
    assert path.read_bytes() == b"replaced"

    def fails(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_bytes(path, fails)
    assert path.read_bytes() == b"replaced" and names_in(path.parent) == ["head.weights.npz"]


# --- hashes -----------------------------------------------------------------------------

def test_file_sha256_is_hashlibs(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 3 * 2**20 + 5, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)  # more than one 1 MiB block
    assert io.file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert io.file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])  # changed: the cache on size and mtime gives the new hash
    assert io.file_sha256(path) == hashlib.sha256(data[:-1]).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert io.file_sha256(tmp_path / "empty") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    with pytest.raises(InputFileError, match="absent.bin: cannot read"):
        io.file_sha256(tmp_path / "absent.bin")
