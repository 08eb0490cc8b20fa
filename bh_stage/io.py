"""The only module that opens files.

Tiles and weight maps (plain or tile-compressed FITS), SExtractor catalogues (FITS_LDAC and
FITS_1.0), output catalogues, simulated data sets (HDF5), simulated tiles, and the bytes and sha256 of
head files (``heads`` gives them their format). SExtractor and
FITS positions are 1-based; everything this module returns is 0-based (``FITS_ORIGIN``).
"""

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import CatalogueColumnError, InputFileError, OutputExistsError, OutputFileError

log = logging.getLogger(__name__)

FITS_ORIGIN = 1
"""Index of the first pixel in FITS and SExtractor coordinates; numpy and SEP use 0."""

# --- tiles and catalogues (stage) -------------------------------------------------------

SEXTRACTOR_NULL = -1e29
"""SExtractor writes -1e30 for undefined values; anything at or below this is missing."""


def _fitsio_message(err):
    """First line of a fitsio error, whose text spans several lines of CFITSIO's stack."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _open_fits(path, mode="r"):
    """Open a FITS file with fitsio, turning a missing or corrupt file into InputFileError."""
    import fitsio

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    try:
        return fitsio.FITS(str(path), mode)
    except OSError as err:
        raise InputFileError(f"{path}: not a readable FITS file ({_fitsio_message(err)})") \
            from err


def _first_image_hdu(fits, path):
    for hdu in fits:
        if hdu.get_exttype() == "IMAGE_HDU" and hdu.has_data() and len(hdu.get_dims()) == 2:
            return hdu
    raise InputFileError(f"{path}: no 2-D image in the primary or any extension")


def tile_shape(path):
    """Return ``(ny, nx)`` of a tile's first 2-D image HDU without reading its pixels."""
    with _open_fits(path) as fits:
        return tuple(int(n) for n in _first_image_hdu(fits, path).get_dims())


def read_tile(path):
    """Read a tile's pixels and header.

    Parameters
    ----------
    path : str or pathlib.Path
        FITS image, plain or tile-compressed (``.fits.fz``); the primary HDU or, if it is
        empty, the first 2-D image extension is read.

    Returns
    -------
    image : ndarray, float32, shape (ny, nx)
        Native byte order (SEP refuses big-endian arrays), 0-based ``[y, x]``.
    header : dict
        The HDU's header keys.

    Raises
    ------
    InputFileError
        The file is missing, not FITS, truncated, or holds no 2-D image.
    """
    with _open_fits(path) as fits:
        hdu = _first_image_hdu(fits, path)
        try:
            image = hdu.read()
            header = {rec["name"]: rec.get("value") for rec in hdu.read_header_list()
                      if rec["name"] not in ("COMMENT", "HISTORY", "")}
        except (OSError, ValueError) as err:
            raise InputFileError(f"{path}: cannot read the image ({_fitsio_message(err)}); "
                                 "the file may be truncated") from err
    return np.asarray(image, dtype=np.float32, order="C").astype(np.float32, copy=False), header


TILE_BLOCK_ROWS = 256
"""Rows of a tile that ``tile_row_blocks`` reads at a time (a 10k-wide float32 tile: 10 MB)."""


def tile_row_blocks(path, rows_per_block=TILE_BLOCK_ROWS):
    """Read a tile's pixels a block of rows at a time, as ``read_tile`` reads them whole.

    For what is needed of each pixel once (the weight map's ``> 0``): no array of the whole
    image is made (``read_tile`` of a 10k x 10k weight map: 400 MB to allocate and fill).

    Parameters
    ----------
    path : str or pathlib.Path
        FITS image, plain or tile-compressed; the HDU ``read_tile`` reads.
    rows_per_block : int
        Rows per block.

    Yields
    ------
    first_row : int
        0-based index of the block's first row.
    block : ndarray, float32, shape (rows, nx)
        Native byte order, the values ``read_tile`` gives for those rows.

    Raises
    ------
    InputFileError
        As ``read_tile``.
    """
    with _open_fits(path) as fits:
        hdu = _first_image_hdu(fits, path)
        ny = int(hdu.get_dims()[0])
        for first in range(0, ny, rows_per_block):
            try:
                block = hdu[first:min(first + rows_per_block, ny), :]
            except (OSError, ValueError) as err:
                raise InputFileError(f"{path}: cannot read the image "
                                     f"({_fitsio_message(err)}); the file may be truncated") \
                    from err
            yield first, np.asarray(block, dtype=np.float32, order="C").astype(np.float32,
                                                                                copy=False)


@dataclasses.dataclass
class Catalogue:
    """Positions read from a SExtractor catalogue.

    Attributes
    ----------
    path : pathlib.Path
    hdu : int
        Index of the objects table in the file.
    extname : str
    nrows : int
    x_pix, y_pix : ndarray, float64
        0-based positions (SExtractor's 1-based values minus ``FITS_ORIGIN``); NaN where the
        catalogue holds SExtractor's -1e30 or a non-finite value.
    ids : ndarray
        The id column (e.g. NUMBER), or the 1-based row number if it is absent.
    """

    path: Path
    hdu: int
    extname: str
    nrows: int
    x_pix: np.ndarray
    y_pix: np.ndarray
    ids: np.ndarray


def _objects_hdu(fits, path, hdu_spec):
    """Find the objects table: ``hdu_spec`` 'auto', an extension name or an index."""
    tables = [i for i, hdu in enumerate(fits) if hdu.get_exttype() in ("BINARY_TBL", "ASCII_TBL")]
    if hdu_spec == "auto":
        names = {fits[i].get_extname().upper(): i for i in tables}
        for name in ("LDAC_OBJECTS", "OBJECTS"):
            if name in names:
                return names[name]
        if tables:
            return tables[0]
        raise CatalogueColumnError(f"{path}: no table HDU; expected a SExtractor FITS_LDAC "
                                   "or FITS_1.0 catalogue")
    index = int(hdu_spec) if str(hdu_spec).isdigit() else None
    for i in tables:
        if i == index or fits[i].get_extname().upper() == str(hdu_spec).upper():
            return i
    raise CatalogueColumnError(f"{path}: no table HDU {hdu_spec!r}; set catalogue_hdu to "
                               "'auto', an extension name or an index")


def read_catalogue(path, x_column, y_column, id_column="NUMBER", hdu="auto"):
    """Read the detection positions of a SExtractor catalogue.

    Parameters
    ----------
    path : str or pathlib.Path
        FITS_LDAC or FITS_1.0 catalogue.
    x_column, y_column : str
        1-based position columns, e.g. XWIN_IMAGE and YWIN_IMAGE.
    id_column : str
        Object id column; absent is allowed (row numbers are used).
    hdu : str
        'auto' (LDAC_OBJECTS, then OBJECTS, then the first table), a name or an index.

    Returns
    -------
    Catalogue

    Raises
    ------
    InputFileError
        Missing, not FITS or truncated.
    CatalogueColumnError
        No table, or a position column is absent.
    """
    path = Path(path)
    with _open_fits(path) as fits:
        index = _objects_hdu(fits, path, hdu)
        table = fits[index]
        names = [c.upper() for c in table.get_colnames()]
        for column in (x_column, y_column):
            if column.upper() not in names:
                raise CatalogueColumnError(
                    f"{path}: no column {column!r} in HDU {table.get_extname() or index}; set "
                    f"x_column / y_column to position columns it has (e.g. X_IMAGE)")
        try:
            nrows = table.get_nrows()
            x = table.read_column(x_column).astype(np.float64) if nrows else np.zeros(0)
            y = table.read_column(y_column).astype(np.float64) if nrows else np.zeros(0)
            if id_column.upper() in names and nrows:
                ids = table.read_column(id_column)
            else:
                ids = np.arange(1, nrows + 1)
        except (OSError, ValueError) as err:
            raise InputFileError(f"{path}: cannot read the catalogue "
                                 f"({_fitsio_message(err)}); the file may be truncated") from err
        extname = table.get_extname()
    for values in (x, y):
        values[~np.isfinite(values) | (values <= SEXTRACTOR_NULL)] = np.nan
    return Catalogue(path, index, extname, nrows, x - FITS_ORIGIN, y - FITS_ORIGIN, ids)


def column_cell_shape(path, column, hdu="auto"):
    """Return the shape of one cell of a catalogue column, e.g. ``(51, 51)`` for
    ``VIGNET(51,51)``, without reading its data.

    Raises
    ------
    InputFileError
        Missing or not FITS.
    CatalogueColumnError
        No such table or column.
    """
    path = Path(path)
    with _open_fits(path) as fits:
        table = fits[_objects_hdu(fits, path, hdu)]
        dtype = table.get_rec_dtype()[0]
        names = {name.upper(): name for name in dtype.names}
        if column.upper() not in names:
            raise CatalogueColumnError(f"{path}: no column {column!r}; add {column}(51,51) to "
                                       "the SExtractor parameter file")
        return tuple(dtype[names[column.upper()]].shape)


def read_column_rows(path, column, start, stop, hdu="auto"):
    """Read rows ``start`` to ``stop - 1`` (0-based) of a catalogue column, e.g. one batch of
    VIGNET stamps, so a large column is never held whole in memory.

    Returns
    -------
    ndarray, float32, native byte order, shape (stop - start,) + cell shape

    Raises
    ------
    InputFileError
        Missing, not FITS or truncated.
    """
    path = Path(path)
    with _open_fits(path) as fits:
        table = fits[_objects_hdu(fits, path, hdu)]
        try:
            values = table.read_column(column, rows=range(start, stop))
        except (OSError, ValueError) as err:
            raise InputFileError(f"{path}: cannot read rows {start + 1}-{stop} of {column} "
                                 f"({_fitsio_message(err)}); the file may be truncated") from err
    return np.asarray(values, dtype=np.float32)


def ldac_image_shape(path):
    """Return ``(ny, nx)`` of the image a FITS_LDAC catalogue was extracted from (NAXIS2 and
    NAXIS1 of its LDAC_IMHEAD), or None without an LDAC_IMHEAD."""
    from astropy.io.fits import Header

    path = Path(path)
    with _open_fits(path) as fits:
        names = [hdu.get_extname().upper() for hdu in fits]
        if "LDAC_IMHEAD" not in names:
            return None
        cards = fits[names.index("LDAC_IMHEAD")].read()["Field Header Card"][0]
    header = Header.fromstring("".join(str(card).ljust(80) for card in cards))
    if "NAXIS1" not in header or "NAXIS2" not in header:
        raise InputFileError(f"{path}: LDAC_IMHEAD has no NAXIS1/NAXIS2; pass the tile")
    return int(header["NAXIS2"]), int(header["NAXIS1"])


@dataclasses.dataclass
class TableInfo:
    """Shape and header of a catalogue's objects table, read by ``read_table_info``.

    Attributes
    ----------
    path : pathlib.Path
    hdu : int
        Index of the table in the file.
    nrows : int
    columns : list of str
        Column names, upper case.
    header : dict
        Header keys of the table (no COMMENT/HISTORY).
    """

    path: Path
    hdu: int
    nrows: int
    columns: list
    header: dict


def read_table_info(path, hdu="auto"):
    """Read the row count, column names and header of a table without its data.

    The last row is read too, so a truncated file is refused rather than reported complete.
    Used to check that a stage output is complete before skipping its tile.

    Parameters
    ----------
    path : str or pathlib.Path
        FITS catalogue (input or ``bh-stage run`` output).
    hdu : str
        'auto' (LDAC_OBJECTS, then OBJECTS, then the first table), a name or an index.

    Returns
    -------
    TableInfo

    Raises
    ------
    InputFileError
        Missing, not FITS or truncated.
    CatalogueColumnError
        No such table.
    """
    path = Path(path)
    with _open_fits(path) as fits:
        index = _objects_hdu(fits, path, hdu)
        table = fits[index]
        try:
            nrows = table.get_nrows()
            if nrows:
                table.read(rows=[nrows - 1])
            header = {rec["name"]: rec.get("value") for rec in table.read_header_list()
                      if rec["name"] not in ("COMMENT", "HISTORY", "")}
        except (OSError, ValueError) as err:
            raise InputFileError(f"{path}: cannot read the table ({_fitsio_message(err)}); "
                                 "the file may be truncated") from err
        columns = [c.upper() for c in table.get_colnames()]
    return TableInfo(path, index, nrows, columns, header)


PSFEX_HDU = "PSF_DATA"
"""Extension of a PSFEx ``.psf`` file holding the model (one row, column ``PSF_MASK``)."""


def read_psfex(path):
    """Read the model of a PSFEx ``.psf`` file, checked, for ``psf.read_psfex``.

    PSFEx (3.x) writes one row in extension ``PSF_DATA``: column ``PSF_MASK`` of shape
    ``(PSFAXIS3, PSFAXIS2, PSFAXIS1)`` = (number of polynomial terms, ny, nx), and the
    polynomial's context in the header: ``POLNAXIS`` variables (2: x and y; 0: a constant
    PSF), each with ``POLGRP<i>``, ``POLNAME<i>``, ``POLZERO<i>``, ``POLSCAL<i>``, in
    ``POLNGRP`` groups of degree ``POLDEG<g>``; ``PSF_SAMP`` is the model's sampling step in
    image pixels. Positions in PSFEx are SExtractor's, 1-based (``FITS_ORIGIN``).

    Returns
    -------
    dict
        ``components`` (float64, (n_terms, ny, nx), native order), ``degree`` (int),
        ``zero_pix`` ((x0, y0): POLZERO1/2 minus ``FITS_ORIGIN``, 0-based pixels; (0, 0) for a
        constant PSF), ``scale_pix`` ((POLSCAL1, POLSCAL2), pixels; (1, 1) for a constant PSF),
        ``sample_pix`` (PSF_SAMP), ``context`` ((POLNAME1, POLNAME2) or ()), ``path``.

    Raises
    ------
    InputFileError
        Missing or not FITS; no PSF_DATA extension or PSF_MASK column; a model this reader
        does not evaluate (context other than two X*_IMAGE/Y*_IMAGE positions in one
        group, PSFNAXIS not 3); sizes that disagree; non-finite values.
    """
    path = Path(path)
    with _open_fits(path) as fits:
        names = [hdu.get_extname().upper() for hdu in fits]
        if PSFEX_HDU not in names:
            raise InputFileError(f"{path}: no {PSFEX_HDU} extension; is it a PSFEx .psf file "
                                 "(psfex CATALOG -PSF_SUFFIX .psf)?")
        hdu = fits[names.index(PSFEX_HDU)]
        if "PSF_MASK" not in [c.upper() for c in hdu.get_colnames()]:
            raise InputFileError(f"{path}: {PSFEX_HDU} has no PSF_MASK column; is it a "
                                 "PSFEx .psf file?")
        header = hdu.read_header()
        try:
            mask = hdu.read_column("PSF_MASK")[0]
        except (OSError, ValueError) as err:
            raise InputFileError(f"{path}: cannot read PSF_MASK ({_fitsio_message(err)}); "
                                 "the file may be truncated") from err

    def key(name):
        if name not in header:
            raise InputFileError(f"{path}: {PSFEX_HDU} header has no {name}; is it a PSFEx "
                                 ".psf file?")
        return header[name]

    if int(key("PSFNAXIS")) != 3:
        raise InputFileError(f"{path}: PSFNAXIS = {key('PSFNAXIS')}; bh-stage reads PSFEx "
                             "models of PSFNAXIS 3 (PSFEx 3.x)")
    shape = tuple(int(key(f"PSFAXIS{i}")) for i in (3, 2, 1))
    n_context = int(key("POLNAXIS"))
    if n_context == 0:  # PSFVAR_DEGREES 0: one component, no context
        degree, zero, scale, context = 0, (0.0, 0.0), (1.0, 1.0), ()
    else:
        context = (str(key("POLNAME1")).strip(), str(key("POLNAME2")).strip()
                   if n_context >= 2 else "")
        good_names = (context[0].startswith("X") and context[0].endswith("IMAGE")
                      and context[1].startswith("Y") and context[1].endswith("IMAGE"))
        if (n_context != 2 or not good_names or int(key("POLNGRP")) != 1
                or int(key("POLGRP1")) != 1 or int(key("POLGRP2")) != 1):
            raise InputFileError(
                f"{path}: PSFEx context {', '.join(filter(None, context))} in "
                f"{header.get('POLNGRP')} group(s); bh-stage evaluates PSFEx models of x and "
                "y only: rerun psfex with PSFVAR_KEYS X_IMAGE,Y_IMAGE (or XWIN_IMAGE,"
                "YWIN_IMAGE) and PSFVAR_GROUPS 1,1")
        degree = int(key("POLDEG1"))
        zero = (float(key("POLZERO1")) - FITS_ORIGIN, float(key("POLZERO2")) - FITS_ORIGIN)
        scale = (float(key("POLSCAL1")), float(key("POLSCAL2")))
    n_terms = (degree + 1) * (degree + 2) // 2
    if shape[0] != n_terms or mask.size != np.prod(shape):
        raise InputFileError(f"{path}: PSF_MASK holds {mask.size} values, PSFAXIS3/2/1 say "
                             f"{shape} and POLDEG1 {degree} needs {n_terms} components; "
                             "is the file truncated?")
    components = np.asarray(mask, dtype=np.float64).reshape(shape)
    sample = float(key("PSF_SAMP"))
    if not (np.isfinite(components).all() and np.isfinite(zero + scale).all()
            and sample > 0 and all(s != 0 for s in scale)):
        raise InputFileError(f"{path}: the PSFEx model has non-finite values, a zero "
                             "POLSCAL or PSF_SAMP <= 0; did psfex fail on this tile?")
    return {"components": components, "degree": degree, "zero_pix": zero,
            "scale_pix": scale, "sample_pix": sample, "context": context, "path": path}


@dataclasses.dataclass
class NewColumn:
    """A column to add to a catalogue: name, values, TUNIT and TTYPE comment."""

    name: str
    values: np.ndarray
    unit: str
    description: str


def check_output(path, overwrite=False, make_parents=False):
    """Refuse an output that exists (unless ``overwrite``) or that cannot be written.

    Called before any pixel is read: the output must not be a folder, its folder must exist
    (or be made) and accept a new file (``os.access`` and a probe file created and removed,
    since permission bits alone do not stop root or reflect read-only mounts), and an
    existing output to replace must be writable.

    Parameters
    ----------
    path : str or pathlib.Path
    overwrite : bool
        Allow replacing an existing file.
    make_parents : bool
        Create a missing folder instead of refusing it.

    Returns
    -------
    pathlib.Path
        The output's folder.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputFileError
        The output is a folder, is read-only, or its folder does not exist (and
        ``make_parents`` is False), cannot be made or is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputFileError(f"{path}: the output is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists; pass --overwrite (or set overwrite: "
                                "true) to replace it")
    folder = path.parent
    if not folder.is_dir():
        if folder.exists():
            raise OutputFileError(f"{path}: {folder} is not a directory; choose another output")
        if not make_parents:
            raise OutputFileError(f"{path}: output folder {folder} does not exist")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputFileError(f"{path}: cannot create {folder} ({err.strerror})") from err
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputFileError(f"{path}: the output is read-only; make it writable or choose "
                              "another output")
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        fd, probe = tempfile.mkstemp(prefix=f".inprogress_{path.name}.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputFileError(f"{path}: cannot write in {folder} ({err.strerror}); choose "
                              "another output or make the folder writable") from err
    return folder


@contextlib.contextmanager
def atomic_output(path, overwrite=False, make_parents=False):
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    The temporary file is ``.inprogress_<name>.<random>`` in the same folder, so the rename is
    atomic and an interrupted write leaves no file under the final name.

    Raises
    ------
    OutputExistsError, OutputFileError
        As ``check_output``, or the folder is not writable.
    """
    path = Path(path)
    folder = check_output(path, overwrite, make_parents)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".inprogress_{path.name}.", dir=folder)
    except OSError as err:
        raise OutputFileError(f"{path}: cannot write in {folder} ({err.strerror})") from err
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_folder(path, overwrite=False):
    """Refuse an output folder that is a file, holds files (unless ``overwrite``), or cannot
    be made.

    Parameters
    ----------
    path : str or pathlib.Path
        The folder; absent or empty is accepted. Its parent must exist and be writable.
    overwrite : bool
        Accept a folder that holds files (those written again are replaced, others kept).

    Raises
    ------
    OutputExistsError
        ``path`` holds files and ``overwrite`` is False.
    OutputFileError
        ``path`` is a file, or its parent does not exist or is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFileError(f"{path}: exists and is not a folder; choose another folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path}: output folder exists and is not empty; pass "
                                "--overwrite to replace its files, or choose another folder")
    parent = path.parent
    if not parent.is_dir():
        raise OutputFileError(f"{path}: parent folder {parent} does not exist")
    try:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        os.rmdir(tempfile.mkdtemp(prefix=f".inprogress_{path.name}.", dir=parent))
    except OSError as err:
        raise OutputFileError(f"{path}: cannot write in {parent} ({err.strerror}); choose "
                              "another folder or make it writable") from err
    return path


@contextlib.contextmanager
def atomic_folder(path, overwrite=False):
    """Yield a temporary folder beside ``path``; on success its files become ``path``'s.

    An absent ``path`` is the temporary folder renamed; into an existing one (empty, or
    with ``overwrite``) each file is renamed, replacing one of the same name. On error the
    temporary folder is removed and ``path`` is left as it was.

    Raises
    ------
    OutputExistsError, OutputFileError
        As ``check_output_folder``.
    """
    path = Path(path)
    check_output_folder(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".inprogress_{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
        if path.is_dir():
            for item in sorted(tmp.iterdir()):
                os.replace(item, path / item.name)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _describe(hdu, colnum, column):
    """Write TTYPE comment and TUNIT of 1-based column ``colnum``."""
    hdu.write_key(f"TTYPE{colnum}", column.name, comment=column.description[:47])
    if column.unit:
        hdu.write_key(f"TUNIT{colnum}", column.unit)


def write_catalogue(catalogue, path, columns, header_keys, mode="add", id_column="NUMBER",
                    overwrite=False):
    """Write the new columns, keeping every byte of the input catalogue's own content.

    Parameters
    ----------
    catalogue : Catalogue
        The input, as returned by ``read_catalogue``; its file is never modified.
    path : str or pathlib.Path
        Output file, written under a temporary name and renamed when complete.
    columns : list of NewColumn
        Columns of ``catalogue.nrows`` values each.
    header_keys : list of (name, value, comment)
        Provenance keys for the objects HDU header.
    mode : {'add', 'new'}
        'add': a copy of the input (all HDUs, LDAC_IMHEAD included, rows, columns, TUNIT,
        TDIM, TDISP and comments unchanged) with the columns appended to the objects table.
        'new': a sidecar with the id column and the new columns in an 'OBJECTS' table.
    id_column : str
        Column copied into the sidecar ('new' mode) to join on.
    overwrite : bool
        Replace an existing output.
    """
    import fitsio

    with atomic_output(path, overwrite) as tmp:
        if mode == "add":
            shutil.copyfile(catalogue.path, tmp)
            with fitsio.FITS(str(tmp), "rw") as fits:
                hdu = fits[catalogue.hdu]
                for column in columns:
                    hdu.insert_column(column.name, column.values)
                    _describe(hdu, len(hdu.get_colnames()), column)
                hdu.write_keys([{"name": k, "value": v, "comment": c} for k, v, c in header_keys])
        else:
            ids = NewColumn(id_column, np.asarray(catalogue.ids), "", "object id in the input "
                            "catalogue")
            data = np.zeros(catalogue.nrows, dtype=[(c.name, np.asarray(c.values).dtype)
                                                    for c in [ids] + columns])
            for column in [ids] + columns:
                data[column.name] = column.values
            with fitsio.FITS(str(tmp), "rw", clobber=True) as fits:
                fits.write(data, extname="OBJECTS")
                hdu = fits[-1]
                for colnum, column in enumerate([ids] + columns, start=1):
                    _describe(hdu, colnum, column)
                hdu.write_keys([{"name": k, "value": v, "comment": c} for k, v, c in header_keys])




# --- simulated data sets and tiles (simulate) -------------------------------------------


SIM_DATASET_FORMAT = "bh-stage-simulated-stamps-1"
"""Value of the ``format`` attribute of a simulated data set written by ``write_dataset``."""


@dataclasses.dataclass
class Dataset:
    """A simulated stamp data set read back by ``read_dataset``.

    Attributes
    ----------
    stamps : ndarray, float32, shape (n, 65, 65)
        Noise-free, zero-padded stamps in ADU.
    truth : structured ndarray, shape (n,)
        One row per stamp (fields listed in ``bh_stage.simulate``).
    attrs : dict
        File attributes: config, seed, noise grid, real split, fractions, ...
    """

    stamps: "object"
    truth: "object"
    attrs: dict


def write_dataset(path, stamps, truth, attrs, overwrite=False):
    """Write a simulated stamp data set to one HDF5 file, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.h5`` file; written under a temporary name in the same folder, then renamed,
        so an error leaves no partial file.
    stamps : ndarray, float32, shape (n, ny, nx)
        Noise-free stamps, ADU.
    truth : structured ndarray, shape (n,)
        Truth table.
    attrs : dict
        Scalars, strings or arrays stored as HDF5 attributes of the file.
    overwrite : bool
        Replace an existing file.
    """
    import h5py

    with atomic_output(path, overwrite, make_parents=True) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("stamps", data=np.asarray(stamps, dtype=np.float32),
                             chunks=(1,) + tuple(np.shape(stamps)[1:]) if len(stamps) else None,
                             compression="gzip", compression_opts=1, shuffle=True)
            f.create_dataset("truth", data=truth)
            f.attrs["format"] = SIM_DATASET_FORMAT
            for key, value in attrs.items():
                f.attrs[key] = value
    log.info("wrote %d stamps to %s", len(stamps), path)
    return path


def _attr_value(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dataset_rows(n, indices, path):
    """Return (selection for h5py, reordering) that read ``indices`` out of ``n`` rows.

    h5py reads a sorted list of unique rows; ``reordering`` maps them back to the order (and
    repeats) asked for. ``indices`` None selects every row.
    """
    if indices is None:
        return slice(None), slice(None)
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InputFileError(f"{path}: indices out of range 0..{n - 1}")
    uniq, inverse = np.unique(idx, return_inverse=True)
    return uniq, inverse


def read_dataset(path, indices=None, stamps=True):
    """Read a simulated data set written by ``write_dataset`` (no GalSim needed).

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.h5`` file.
    indices : array_like of int, optional
        Rows to read (any order, repeats allowed); default all.
    stamps : bool
        Read the stamps; False reads only the truth and attributes (``Dataset.stamps`` is
        None).

    Returns
    -------
    Dataset

    Raises
    ------
    InputFileError
        The file is missing, not HDF5, or not a bh-stage data set.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: simulated data set not found; make it with "
                             f"'bh-stage simulate CONFIG' or fix the path")
    try:
        with h5py.File(path, "r") as f:
            if "stamps" not in f or "truth" not in f:
                raise InputFileError(f"{path}: not a bh-stage data set (no 'stamps' or "
                                     f"'truth' dataset); make it with 'bh-stage simulate'")
            attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
            rows = _dataset_rows(f["truth"].shape[0], indices, path)
            truth = f["truth"][rows[0]][rows[1]]
            data = f["stamps"][rows[0]][rows[1]] if stamps else None
    except InputFileError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputFileError(f"{path}: cannot read simulated data set ({err}); the file is "
                             f"corrupt or not HDF5, re-create it with 'bh-stage simulate'"
                             ) from err
    return Dataset(stamps=data, truth=truth, attrs=attrs)


def read_truth(path):
    """Return the truth table of a simulated data set without reading its stamps."""
    return read_dataset(path, stamps=False).truth


def read_array(path):
    """Return the array saved at ``path`` by ``write_array``, or None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return np.load(path)
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); it will be recomputed", path, err)
        return None


def write_array(path, array):
    """Save an array (a cache file, e.g. bottleneck features) atomically as ``.npy``."""
    with atomic_output(path, overwrite=True, make_parents=True) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def _write_fits_atomic(path, hdus, overwrite):
    """Write an astropy HDUList under a temporary name, then rename it to ``path``."""
    with atomic_output(path, overwrite, make_parents=True) as tmp:
        hdus.writeto(tmp, overwrite=True)


def write_tile(path, image, weight_path, weight, header_cards, compress=False,
               overwrite=False):
    """Write a simulated tile and its weight map, each atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Image file; ``.fits``, or tile-compressed (RICE, quantised at sigma/16 with dithering)
        when ``compress`` is True or the name ends in ``.fz``.
    image : ndarray, float32, shape (ny, nx)
        Tile in ADU, 0-based ``[y, x]``.
    weight_path : str or pathlib.Path
        Weight map file (plain FITS, or losslessly GZIP-compressed when compressing).
    weight : ndarray, float32, shape (ny, nx)
        Inverse variance, 1/ADU^2; 0 marks masked pixels.
    header_cards : list of (key, value, comment)
        Header cards (WCS, GAIN, SATURATE, SEEING, EXPTIME, MAGZP, ...).
    compress : bool
        Tile-compress both files.
    overwrite : bool
        Replace existing files.
    """
    import numpy as np
    from astropy.io import fits

    header = fits.Header()
    for key, value, comment in header_cards:
        header[key] = (value, comment)
    compress = compress or str(path).endswith(".fz")

    def hdulist(data, hdr, lossless):
        data = np.asarray(data, dtype=np.float32)
        if compress and lossless:
            comp = fits.CompImageHDU(data=data, header=hdr, compression_type="GZIP_2",
                                     quantize_level=0.0)
            return fits.HDUList([fits.PrimaryHDU(), comp])
        if compress:
            comp = fits.CompImageHDU(data=data, header=hdr, compression_type="RICE_1",
                                     quantize_level=16.0, quantize_method=2, dither_seed=1)
            return fits.HDUList([fits.PrimaryHDU(), comp])
        return fits.HDUList([fits.PrimaryHDU(data=data, header=hdr)])

    _write_fits_atomic(path, hdulist(image, header, lossless=False), overwrite)
    whdr = header.copy()
    whdr["BH_WHAT"] = ("weight", "inverse variance, 1/ADU^2; 0 = masked")
    # The weight map is compressed losslessly (GZIP_2, no quantisation).
    _write_fits_atomic(weight_path, hdulist(weight, whdr, lossless=True), overwrite)
    log.info("wrote tile %s and weight %s", path, weight_path)


def write_truth(path, table, header_cards=(), overwrite=False):
    """Write a truth table (structured ndarray) as a FITS binary table, atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.fits`` file.
    table : structured ndarray
        One row per object.
    header_cards : sequence of (key, value, comment)
        Extra cards for the table header.
    overwrite : bool
        Replace an existing file.
    """
    from astropy.io import fits

    hdu = fits.BinTableHDU(data=table, name="TRUTH")
    for key, value, comment in header_cards:
        hdu.header[key] = (value, comment)
    _write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(), hdu]), overwrite)
    log.info("wrote truth table of %d rows to %s", len(table), path)


# --- tile-level truth (evaluate-tile) ---------------------------------------------------


def write_tile_models(path, models, overwrite=False):
    """Write every object's noise-free image of a simulated tile to one HDF5 file.

    Parameters
    ----------
    path : str or pathlib.Path
        Output ``.h5``, written atomically.
    models : list of (x_lo, y_lo, ndarray)
        Per truth row: 0-based tile pixel of the image's lower-left corner and the square
        float32 image in ADU (all the same size).
    overwrite : bool
        Replace an existing file.
    """
    import h5py

    corners = np.array([(x_lo, y_lo) for x_lo, y_lo, _ in models], dtype=np.int64)
    arrays = np.stack([arr for _, _, arr in models]).astype(np.float32)
    with atomic_output(path, overwrite, make_parents=True) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("corner_xy_pix", data=corners.reshape(-1, 2))
            f.create_dataset("images", data=arrays, compression="gzip", compression_opts=1,
                             shuffle=True, chunks=(1,) + arrays.shape[1:] if len(arrays)
                             else None)
    log.info("wrote %d object models to %s", len(models), path)


def read_tile_models(path):
    """Read ``write_tile_models`` output: corners (n, 2) int64 0-based x, y and images."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file; simulate the tile with tile.models set")
    try:
        with h5py.File(path, "r") as f:
            return f["corner_xy_pix"][()], f["images"][()]
    except (OSError, KeyError) as err:
        raise InputFileError(f"{path}: not a tile model file ({err})") from err


def read_segmentation(path):
    """Read a SExtractor segmentation map: int32 ``[y, x]`` of NUMBER, 0 for sky."""
    image, _ = read_tile(path)
    return np.rint(image).astype(np.int32)


def read_columns(path, names, hdu="auto"):
    """Read catalogue columns (float64, SExtractor's -1e30 as NaN) into a dict by name.

    Raises
    ------
    CatalogueColumnError
        A column is absent; the message lists the missing ones.
    """
    path = Path(path)
    with _open_fits(path) as fits:
        table = fits[_objects_hdu(fits, path, hdu)]
        present = {c.upper() for c in table.get_colnames()}
        missing = [n for n in names if n.upper() not in present]
        if missing:
            raise CatalogueColumnError(f"{path}: no column {', '.join(missing)}; add it to "
                                       "the SExtractor parameter file")
        out = {}
        for name in names:
            values = table.read_column(name).astype(np.float64) if table.get_nrows() else \
                np.zeros(0)
            values[~np.isfinite(values) | (values <= SEXTRACTOR_NULL)] = np.nan
            out[name] = values
    return out


def write_scores(path, data, thresholds, overwrite):
    """Write the stamp arrays of one head at one noise (``evaluate.galaxy_intervals``'
    ``data``) and its ``(blend_threshold, hybrid_threshold)`` to an ``.npz``, atomically."""
    with atomic_output(path, overwrite) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, thresholds=np.asarray(thresholds, dtype=np.float64), **data)


def read_scores(path):
    """Read ``write_scores``' file: (data dict, thresholds tuple)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: no such file (made by bh-stage evaluate)")
    with np.load(path) as f:
        data = {k: f[k] for k in f.files if k != "thresholds"}
        return data, tuple(float(v) for v in f["thresholds"])


# --- hashes and raw bytes (heads) ------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _sha256_cached(path, mtime_ns, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path):
    """Return the hex sha256 of a file (cached on path, size and modification time)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as err:
        raise InputFileError(f"{path}: cannot read ({err.strerror})") from err
    return _sha256_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def atomic_write_bytes(path, write):
    """Call ``write(file)`` on a temporary binary file that replaces ``path`` when complete."""
    with atomic_output(path, overwrite=True, make_parents=True) as tmp:
        with open(tmp, "wb") as f:
            write(f)
