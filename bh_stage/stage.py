"""The pipeline stage, ``bh-stage run``: validate -> read -> stamps -> score -> SEP -> write.

Input: a tile (optionally with a weight map) and its SExtractor catalogue. Output: the
catalogue with every input row and column unchanged plus the columns in ``OUTPUT_COLUMNS``.
This is the only module that joins ``io`` to the science modules. Follow one detection:
``io.read_catalogue`` gives its 0-based position and ``cues`` its catalogue features,
``stamps.cut_stamps`` its 65x65 stamp (``features.measure_stamps`` what SEP measures on it, for
a tile head whose features are measured on the stamp), ``tilehead.TileHead.predict_proba`` its
``BLEND_PROB`` (P(unrecognised blend)), ``model.Classifier.predict_proba`` its
``BH_PAPER_PROB`` (the paper's question), ``sep_flags.classify_stamps`` its SEP verdict, and
``io.write_catalogue`` appends them to its row. With ``metacal.enabled``, ``psf`` gives the
PSF at its position, ``metacal.metacal_images`` the four sheared images of its stamp, and the
tile head scores each of them as it scores the stamp (``BLEND_PROB_1P``, ...).
"""

import collections
import contextlib
import dataclasses
import datetime
import functools
import logging
import sys
import threading
import time
import typing
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from . import __version__, cues, features, heads, io, model, tilehead
from .config import config_hash
from .errors import CatalogueColumnError, ConfigError, InputFileError, ModelShapeError
from .metacal import METACAL_TYPES, SHEAR_TYPES, metacal_images, round_target_sigma_pix
from .psf import moffat_or_gaussian_psf, psfex_psf, read_psfex
from .sep_flags import (BH_EDGE, BH_MASKED, BH_NOT_SCORED, BH_SEP_ERROR, SepProcesses,
                        decode_flags, hybrid_flag)
from .pixels import read_bad_pixels, tile_pixels
from .stamps import (cut_stamps, fill_and_pad, nearest_pixel, off_image, off_image_any,
                     shift_stamps, window_pixels)

__all__ = ["run_stage", "StageResult", "OUTPUT_COLUMNS", "METACAL_COLUMNS", "output_columns",
           "resolve_paths", "auto_weight"]

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = {
    "BLEND_PROB": ("f8", "", "P(unrecognised blend); NaN: not scored"),
    "BLEND_FLAG": ("i2", "", "recommended cut: BLEND_PROB >= BH_THR"),
    "BH_PAPER_PROB": ("f8", "", "P(paper blend: another galaxy in the stamp)"),
    "BH_PAPER_FLAG": ("i2", "", "SEP_BLEND_FLAG or BH_PAPER_PROB >= BH_HTHR"),
    "SEP_NSRC": ("i2", "", "SEP sources in the stamp; -1: not run or error"),
    "SEP_BLEND_FLAG": ("i2", "", "SEP: central source merged or NSRC >= 2"),
    "BH_NEAREST_PIX": ("f4", "pixel", "distance to the nearest other detection"),
    "BH_NDET_STAMP": ("i2", "", "other detections in the 51x51 stamp"),
    "BH_FLAGS": ("i2", "", "1 edge, 2 masked, 4 not scored, 8 SEP error"),
    "BH_EDGE_FRAC": ("f4", "", "fraction of the stamp off the tile"),
    "BH_MASK_FRAC": ("f4", "", "fraction of on-tile stamp pixels masked"),
}
"""Columns added by the stage: name -> (dtype, TUNIT, description used as TTYPE comment)."""

PAPER_COLUMNS = ("BH_PAPER_PROB", "BH_PAPER_FLAG")
"""Columns of the paper head, not written with ``head: none``."""


MCAL_IMAGE_TYPES = METACAL_TYPES
"""The metacalibration images the tile head scores: ``noshear`` (the image the cut is applied
to when its selection is calibrated: it has the sheared images' noise) and ``1p``, ``1m``,
``2p``, ``2m``."""


def _mcal_text(t):
    if t == "noshear":
        return "BLEND_PROB, unsheared metacal image (apply the cut here)"
    return f"BLEND_PROB, image sheared g{t[0]} = {'+' if t[1] == 'p' else '-'}BH_MCSTP"


METACAL_COLUMNS = {
    **{f"BLEND_PROB_{t.upper()}": ("f8", "", _mcal_text(t)) for t in MCAL_IMAGE_TYPES},
    **{f"BLEND_FLAG_{t.upper()}": ("i2", "", f"BLEND_PROB_{t.upper()} >= BH_THR")
       for t in MCAL_IMAGE_TYPES},
}
"""Columns of ``metacal.enabled``, written after ``BLEND_FLAG``: BLEND_PROB and BLEND_FLAG
(same threshold) of the metacalibration images ``noshear``, ``1p``, ``1m``, ``2p``, ``2m``.
A survey applies the cut on ``BLEND_FLAG_NOSHEAR`` and calibrates it with
R_sel = (<e> on BLEND_FLAG_1P == 0 - <e> on BLEND_FLAG_1M == 0) / (2 step): the sheared
images' noise differs from the stamp's, so the plain ``BLEND_FLAG`` is not the cut R_sel
describes."""


def output_columns(cfg):
    """The ``OUTPUT_COLUMNS`` (and ``METACAL_COLUMNS``) a run with config ``cfg`` writes, in
    order."""
    out = {}
    for name, spec in OUTPUT_COLUMNS.items():
        if cfg.head != "none" or name not in PAPER_COLUMNS:
            out[name] = spec
        if name == "BLEND_FLAG" and cfg.metacal.enabled:
            out.update(METACAL_COLUMNS)
    return out


@dataclasses.dataclass
class StageResult:
    """What ``run_stage`` wrote: output path and counts for the summary line."""

    output: Path
    n_objects: int
    n_blend_flag: int
    n_paper_flag: typing.Optional[int]
    n_blend_sep: int
    n_not_scored: int
    seconds: float

    def summary(self):
        rate = self.n_objects / self.seconds if self.seconds > 0 else 0.0
        paper = ("" if self.n_paper_flag is None
                 else f"{self.n_paper_flag} by BH_PAPER_FLAG, ")
        return (f"{self.output}: {self.n_objects} objects; BLEND_FLAG (unrecognised blends) "
                f"{self.n_blend_flag}; paper blends: {paper}{self.n_blend_sep} by SEP; "
                f"{self.n_not_scored} not scored; "
                f"{self.seconds:.1f} s ({rate:.1f} stamps/s)")


def _stem(tile):
    name = tile.name
    for suffix in (".fits.fz", ".fits.gz", ".fits", ".fit", ".fz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return tile.stem


WEIGHT_AUTO_SUFFIXES = (".weight.fits", ".weight.fits.fz")
"""``weight: auto`` takes the first ``<stem><suffix>`` beside the tile that exists."""


def auto_weight(tile_path):
    """Return the weight map ``weight: auto`` takes for a tile: the first of
    ``WEIGHT_AUTO_SUFFIXES`` beside it that is a file, or None."""
    tile = Path(tile_path)
    return next((p for p in (tile.parent / f"{_stem(tile)}{suffix}"
                             for suffix in WEIGHT_AUTO_SUFFIXES) if p.is_file()), None)


def resolve_paths(cfg, tile_path):
    """Return the tile, catalogue, weight (or None) and output paths for one tile.

    Patterns in the config take ``{dir}`` (the tile's folder) and ``{stem}`` (its name
    without the FITS suffix). ``weight: auto`` gives the first of ``WEIGHT_AUTO_SUFFIXES``
    beside the tile that is a file, or None.
    """
    tile = Path(tile_path)
    if cfg.weight == "auto":
        weight = auto_weight(tile)
    else:
        weight = _fill(cfg.weight, "weight", tile) if cfg.weight else None
    return (tile, _fill(cfg.catalogue, "catalogue", tile), weight,
            _fill(cfg.output, "output", tile))


def _fill(pattern, key, tile):
    """The path of config value ``pattern`` (config key ``key``) for one tile."""
    try:
        return Path(pattern.format(dir=str(tile.parent), stem=_stem(tile)))
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{key}: bad pattern {pattern!r}; use {{dir}} and {{stem}}") from err


def _check_positions(cat, shape, margin_pix):
    """Refuse a catalogue with positions far off the tile: it belongs to another image.

    SExtractor's windowed positions of objects cut by the border may fall a little outside
    the tile; those are scored and flagged ``BH_EDGE``. A position more than ``margin_pix``
    (half a stamp) outside cannot come from this tile. Returns the finite-position mask.
    """
    ny, nx = shape
    x, y = cat.x_pix, cat.y_pix
    finite = np.isfinite(x) & np.isfinite(y)
    # A pixel i covers [i - 0.5, i + 0.5) in 0-based coordinates.
    lo, hi_x, hi_y = -0.5 - margin_pix, nx - 0.5 + margin_pix, ny - 0.5 + margin_pix
    outside = finite & ((x < lo) | (x >= hi_x) | (y < lo) | (y >= hi_y))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise InputFileError(
            f"{cat.path}: {outside.sum()} of {cat.nrows} positions lie outside the "
            f"{nx}x{ny} tile by more than {margin_pix} px (first: row {first + 1}, "
            f"x={x[first] + io.FITS_ORIGIN:.1f}, y={y[first] + io.FITS_ORIGIN:.1f}, 1-based); "
            "is it the catalogue of this tile?")
    return finite


VIGNET_COLUMN = "VIGNET"
"""SExtractor's stamp column, read with ``stamp.source: vignet``."""

VIGNET_CENTRE_COLUMNS = ("X_IMAGE", "Y_IMAGE")
"""SExtractor centres VIGNET on the pixel nearest its (1-based) isophotal barycentre,
X_IMAGE/Y_IMAGE, whatever the config's x_column/y_column (checked on source-extractor 2.25 in
tests/test_vignet.py). The stage shifts each VIGNET to its own position (``_vignet_stamps``)."""


def _vignet_stamps(cfg, cat_path, rows, centre, xc, yc, shape, bad, rms_adu):
    """Stamps of catalogue rows ``rows`` from its VIGNET column, as ``cut_stamps`` makes them.

    SExtractor's VIGNET (2.25, tests/test_vignet.py) is the tile minus SExtractor's own
    background map, centred on the pixel ``centre`` (0-based ``(xv, yv)``, from
    X_IMAGE/Y_IMAGE), -1e30 off the image and, with MASK_TYPE CORRECT or BLANK, on the pixels
    of neighbouring detections; pixels of weight 0 hold SExtractor's interpolation, unmarked.
    Each VIGNET is shifted by whole pixels to the stage's own centre ``(xc, yc)`` (the
    config's x/y columns, XWIN/YWIN by default), as the tile path centres its stamps: for a
    merged pair the isophotal barycentre and the windowed centroid differ by pixels. What
    enters from beyond the VIGNET is filled with noise and counted in ``BH_EDGE_FRAC``, like
    pixels off the tile (the ``BH_EDGE`` bit stays "off the tile", set by the caller). -1e30
    off the image counts as off the tile, -1e30 on the image and the weight map's bad pixels
    (``bad``) as masked (``BH_MASKED``), as ``cut_stamps`` counts them.
    """
    size = cfg.stamp.size_pix
    xv, yv = centre[0][rows], centre[1][rows]
    vignet = io.read_column_rows(cat_path, VIGNET_COLUMN, rows.start, rows.stop,
                                 cfg.catalogue_hdu)
    null = vignet <= io.SEXTRACTOR_NULL
    wrong = np.flatnonzero((off_image(shape, xv, yv, size) & ~null).any(axis=(1, 2)))
    if wrong.size:
        row = rows.start + int(wrong[0])
        raise InputFileError(f"{cat_path}: row {row + 1}: VIGNET holds pixels off the "
                             f"{shape[1]}x{shape[0]} image; is X_IMAGE/Y_IMAGE or the image "
                             "size (LDAC_IMHEAD or the tile) that of this catalogue?")
    dx, dy = xc[rows] - xv, yc[rows] - yv
    vignet, outside = shift_stamps(vignet, dx, dy)
    null = shift_stamps(null, dx, dy, fill=False)[0]
    off = off_image(shape, xc[rows], yc[rows], size)
    if bad is not None:
        null |= window_pixels(bad, xc[rows], yc[rows], size, False)
    return fill_and_pad(vignet, off | outside, null & ~outside, cfg.stamp.pad_pix, rms_adu,
                        cfg.seed, rows.start)


def _check_head_shape(cfg, path, meta):
    """Refuse a head trained on stamps of another size or padding than the config's."""
    if (meta["size_pix"], meta["pad_pix"]) != (cfg.stamp.size_pix, cfg.stamp.pad_pix):
        raise ModelShapeError(f"{path}: head trained on {meta['size_pix']}px stamps padded by "
                              f"{meta['pad_pix']}, config asks {cfg.stamp.size_pix} and "
                              f"{cfg.stamp.pad_pix}; set stamp.size_pix / stamp.pad_pix")


def _no_progress(done, total, step):
    """The ``progress`` of a run without a progress bar."""


SEP_PROCESSES = 2
"""SEP child processes of a run (``sep_flags.SepProcesses``)."""

BATCHES_IN_FLIGHT = 16
"""Images of stamps (a batch's stamps, each of its metacalibration images) cut and handed to
SEP and a ``tilehead.NetworkProcess`` before the stage waits for the oldest batch (it
finishes any batch whose scores are back before): while the network process still imports
TensorFlow, the SEP processes measure these (16 x 256 stamps: about 2 CPU-s of SEP, 70 MB of
stamps). With the networks in this process (nothing to overlap), ``SEP_PROCESSES``
batches."""

MAIN_BLAS_THREADS = 1
"""BLAS threads of the stage's own process while it scores (``threadpoolctl``; numpy's
default is one a core, restored after; None: numpy's default): the SEP and network
processes share the cores, and BLAS threads that wait for work by spinning take cycles from
them, in the metacalibration images' matrix products (the g1 resampling, a PSF's filters).
docs/metacal.md gives the A/B."""

_BLAS_LOCK = threading.Lock()
_BLAS_RUNS = [0, None]
"""Runs of this process inside ``_blas_limit`` and the ``threadpool_limits`` they share."""


@contextlib.contextmanager
def _blas_limit():
    """``MAIN_BLAS_THREADS`` while at least one run of this process scores: runs in several
    threads of one process (a Dask worker's) share one limit, and the last to finish gives
    back the thread count found by the first (a process-wide setting)."""
    with _BLAS_LOCK:
        if _BLAS_RUNS[0] == 0 and MAIN_BLAS_THREADS is not None:
            _BLAS_RUNS[1] = threadpool_limits(MAIN_BLAS_THREADS, user_api="blas")
        _BLAS_RUNS[0] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_RUNS[0] -= 1
            if _BLAS_RUNS[0] == 0 and _BLAS_RUNS[1] is not None:
                _BLAS_RUNS[1].restore_original_limits()
                _BLAS_RUNS[1] = None


_NETWORK_PROCESSES = 0
"""Runs of this process that scored in a ``tilehead.NetworkProcess``."""


def _start_networks(tile_head, classifier_loader, network_process):
    """The networks of a run: a ``tilehead.NetworkProcess`` (started now) or
    ``_LocalNetworks``, as ``run_stage``'s ``network_process`` says. Its default (None): a
    process for a ``TileHead`` loaded from files and not built here, without a
    ``classifier_loader``, in a process that has not imported TensorFlow nor run the stage
    in a network process before."""
    global _NETWORK_PROCESSES
    if network_process and classifier_loader is not None:
        raise ValueError("a classifier_loader loads the paper head in this process; "
                         "network_process must then be False or None")
    if not isinstance(tile_head, tilehead.TileHead):
        network_process = False  # a stand-in: no files for a child to load
    elif network_process is None:
        network_process = (not tile_head.built and classifier_loader is None
                           and "tensorflow" not in sys.modules and _NETWORK_PROCESSES == 0)
    if not network_process:
        return _LocalNetworks(tile_head, classifier_loader)
    _NETWORK_PROCESSES += 1
    return tilehead.NetworkProcess(tile_head)


class _Deferred:
    """A call made when its result is first asked for (``result()``, as a future's)."""

    def __init__(self, func, *args):
        self._func, self._args, self._done, self._value = func, args, False, None

    def done(self):
        """Whether the call was made (a future's ``done``: the stage waits to finish the
        batch until it must)."""
        return self._done

    def result(self):
        if not self._done:
            self._value, self._done = self._func(*self._args), True
            self._func = self._args = None
        return self._value


class _LocalNetworks:
    """The networks in this process, with ``tilehead.NetworkProcess``'s methods: each
    prediction is made (by the main thread, TensorFlow using the cores) when its batch is
    finished."""

    def __init__(self, tile_head, classifier_loader=None):
        self.tile_head, self.loader, self.clf = tile_head, classifier_loader, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def prepare(self):
        """Build the tile head's network now (TensorFlow's import)."""
        self.tile_head.build()
        return self

    def load_classifier(self, head_json, precision="f32", batch_size=256):
        loader = model.load_classifier if self.loader is None else self.loader
        self.clf = loader(head_json, precision=precision, batch_size=batch_size)
        return self.clf

    def submit(self, stamps, rms_adu, feats):
        return _Deferred(lambda: self.tile_head.predict_proba(
            stamps, rms_adu, feats() if callable(feats) else feats))

    def submit_paper(self, stamps, rms_adu):
        return _Deferred(self.clf.predict_proba, stamps, rms_adu)

METACAL_CELL_STRIDE = 2**32
"""The correction noise of the metacalibration images of the object of rank ``r`` among the
objects of PSF cell ``c`` is ``metacal_images``' noise of index ``c * METACAL_CELL_STRIDE +
r`` with the run's seed (its own stream, ``metacal.NOISE_STREAM``, not the fill noise's): the
row itself for one PSF (a single cell), distinct objects never share a noise, and no image
depends on the batching."""

METACAL_CHUNK_ROWS = 1024
"""With metacal and several PSF cells (a PSFEx model) the stage cuts and shears this many
rows at a time (a multiple of ``batch_size``), one ``metacal_images`` call per cell present,
so larger chunks make fewer, larger calls (0.6: a 4k tile, 4.8 times the plain run's time
instead of 6.2, when each call also computed its PSF's filters, now kept across calls; one
PSF: 0.6 GB more memory for nothing, so batch by batch)."""

METACAL_DTYPE = np.float32
"""Precision of the stage's metacalibration images (``metacal_images``' ``dtype``): that of
the stamps its networks and SEP read."""

METACAL_RMS_STAMPS = 16
"""Pure-noise stamps through which ``_sheared_rms`` measures the sheared images' rms."""
METACAL_RMS_SEED = 2022
"""Seed of those stamps and of their correction noise (fixed: the rms is the same in every
run with the same PSF)."""


class _Metacal:
    """The metacalibration images of the stage's stamps (``metacal.enabled``).

    The stamps are the stage's padded stamps as the tile head reads them (``stamp.size_pix +
    2 stamp.pad_pix`` wide, noise of the tile's rms in the padding, off the tile and on
    masked pixels), so the sheared images are those of what the head scores, noise
    included. Each object's PSF is the PSF of its cell: the whole tile for a Moffat or
    Gaussian, squares of ``metacal.psf_cell_pix`` for a PSFEx model (evaluated at the
    square's centre); ``metacal_images`` runs once per cell present in a chunk of rows
    (``METACAL_CHUNK_ROWS``), with the correction noise of ``METACAL_CELL_STRIDE``, so no
    image depends on the batching.

    Attributes
    ----------
    source : str
        The PSF, for the header (``BH_PSFSR``).
    rms_adu : float
        Pixel rms of the sheared images' noise (``_sheared_rms``, with the PSF of the tile's
        centre), ADU: the features' threshold and the head's scale on them.
    cell, rank : ndarray of int, shape (n,)
        Each row's PSF cell, and its rank among the rows of that cell (catalogue order).
    several_psfs : bool
        The rows fall in more than one cell.
    """

    def __init__(self, cfg, psf_model, x_pix, y_pix, shape, noise_adu):
        mc = cfg.metacal
        self.step, self.noise_adu, self.seed = mc.step, noise_adu, cfg.seed
        self.target_psf = mc.target_psf
        self._psfs, self._side = {}, mc.psf_side_pix
        n = len(x_pix)
        if psf_model is None:
            self._psfs[0] = moffat_or_gaussian_psf(mc.psf_fwhm_arcsec, mc.pixel_scale_arcsec,
                                                   mc.psf_side_pix, mc.psf_moffat_beta)
            self.source = (f"gaussian fwhm={mc.psf_fwhm_arcsec:g}" if mc.psf_moffat_beta is None
                           else f"moffat fwhm={mc.psf_fwhm_arcsec:g} beta={mc.psf_moffat_beta:g}")
            self.cell, self.rank = np.zeros(n, np.int64), np.arange(n)
            centre = 0
        else:
            self.source = f"psfex:{Path(psf_model.path).name}"
            ny, nx = shape
            size = mc.psf_cell_pix if psf_model.degree > 0 else max(nx, ny)  # 0: one PSF
            ncx, ncy = -(-nx // size), -(-ny // size)
            # pixel i covers [i - 0.5, i + 0.5): cell k holds pixels k * size .. (k+1) * size - 1
            cx = np.clip(np.floor((x_pix + 0.5) / size), 0, ncx - 1).astype(np.int64)
            cy = np.clip(np.floor((y_pix + 0.5) / size), 0, ncy - 1).astype(np.int64)
            self.cell = cy * ncx + cx
            order = np.argsort(self.cell, kind="stable")
            first = np.searchsorted(self.cell[order], self.cell[order])
            self.rank = np.empty(n, np.int64)
            self.rank[order] = np.arange(n) - first

            def cell_centre(c):  # 0-based; the last cells may be cut by the tile's edge
                kx, ky = c % ncx, c // ncx
                return ((kx * size + min((kx + 1) * size, nx) - 1) / 2,
                        (ky * size + min((ky + 1) * size, ny) - 1) / 2)

            self._cell_centre, self._model = cell_centre, psf_model
            centre = int((ny // 2) // size * ncx + (nx // 2) // size)
        self.several_psfs = bool((self.cell != self.cell[:1]).any())
        self.rms_adu = _sheared_rms(self.psf(centre), cfg.stamp.size_pix + 2 * cfg.stamp.pad_pix,
                                    self.step, noise_adu, self.target_psf)

    def psf(self, cell):
        """The PSF image of a cell."""
        if cell not in self._psfs:
            x, y = self._cell_centre(cell)
            try:
                psf = psfex_psf(self._model, x, y, self._side)
            except ValueError as err:  # a model that sums to <= 0 there (names the file)
                raise InputFileError(f"metacal.psf_file: {err}") from err
            if self.target_psf == "gauss":  # the round target is sized on the PSF's core
                try:
                    round_target_sigma_pix(psf, self.step)
                except ValueError as err:
                    raise InputFileError(f"{self._model.path}: metacal.psf_file: the PSFEx "
                                         f"PSF at (x, y) = ({x:.1f}, {y:.1f}): {err}") from err
            self._psfs[cell] = psf
        return self._psfs[cell]

    def images(self, stamps, rows):
        """The sheared images of the stamps of catalogue rows ``rows`` (a slice):
        ``METACAL_DTYPE``, type of ``MCAL_IMAGE_TYPES`` -> (n, side, side)."""
        out = {t: np.empty(stamps.shape, METACAL_DTYPE) for t in MCAL_IMAGE_TYPES}
        cells = self.cell[rows]
        for c in np.unique(cells):
            members = np.flatnonzero(cells == c)  # ranks first .. first + len - 1 of cell c
            first = int(self.rank[rows.start + members[0]])
            images = metacal_images(stamps[members], self.psf(int(c)), self.step,
                                    self.noise_adu, self.seed, types=MCAL_IMAGE_TYPES,
                                    first_index=int(c) * METACAL_CELL_STRIDE + first,
                                    dtype=METACAL_DTYPE, target_psf=self.target_psf)
            for t in MCAL_IMAGE_TYPES:
                out[t][members] = images[t]
        return out


def _sheared_rms(psf, side_pix, step, noise_adu, target_psf="dilate"):
    """Pixel rms of the noise of the sheared images (ADU) of stamps of white noise
    ``noise_adu``, measured on ``METACAL_RMS_STAMPS`` such stamps (fixed seed) in the central
    half of the stamp (the outer pixels see the zeros beyond the stamp).

    Not ``sqrt(2) noise_adu``: the correction doubles the variance of an image whose noise
    the reconvolution (the target PSF holds a pixel) has smoothed, e.g. to 0.48 of the
    tile's for a 0.8" FWHM Gaussian at 0.187"/px, so the rms is 0.98 times the tile's there
    (1.05 at 0.7", 1.19 for a 0.65" Moffat of beta 4.765, 1.50 for the PSFEx model of a
    simulated v2 tile, bench/bench_metacal_stage.py: the rougher the PSF image at high
    frequencies, the more its deconvolution amplifies the noise; these with the dilated
    target, ``target_psf`` the target of the images).
    """
    noise = np.random.default_rng(METACAL_RMS_SEED).normal(
        0.0, noise_adu, (METACAL_RMS_STAMPS, side_pix, side_pix))
    images = metacal_images(noise, psf, step, noise_adu, METACAL_RMS_SEED, types=SHEAR_TYPES,
                            dtype=METACAL_DTYPE, target_psf=target_psf)
    q = side_pix // 4
    return float(np.sqrt(np.mean([np.mean(im[:, q:side_pix - q, q:side_pix - q] ** 2)
                                  for im in images.values()])))


def _batches(n, batch_size, stamps_of, mcal):
    """Yield ``(rows, stamps, edge_frac, mask_frac, sheared)`` for each batch of
    ``batch_size`` rows; ``sheared``: the stamps' images by ``MCAL_IMAGE_TYPES`` (empty without
    ``mcal``). With ``mcal`` and several PSF cells the stamps are cut and sheared
    ``METACAL_CHUNK_ROWS`` rows at a time (one ``metacal_images`` call a cell a chunk), the
    same stamps and images as batch by batch."""
    chunk = batch_size
    if mcal is not None and mcal.several_psfs:
        chunk *= max(1, METACAL_CHUNK_ROWS // batch_size)
    for first in range(0, n, chunk):
        chunk_rows = slice(first, min(first + chunk, n))
        stamps, edge, mask = stamps_of(chunk_rows)
        sheared = {} if mcal is None else mcal.images(stamps, chunk_rows)
        for start in range(0, chunk_rows.stop - first, batch_size):
            part = slice(start, min(start + batch_size, chunk_rows.stop - first))
            yield (slice(first + part.start, first + part.stop), stamps[part], edge[part],
                   mask[part], {name: images[part] for name, images in sheared.items()})


def _stamp_features(measured, position_features):
    """``features.stamp_features`` of a batch once SEP has measured it (``measured``: the
    future of ``SepProcesses.submit_measure``)."""
    return features.stamp_features(measured.result(), position_features)


def _score(cfg, networks, paper_head, stamp_features, head_inputs, stamps_of, rms_adu, n,
           scorable, progress, mcal=None):
    """Stream the catalogue in batches (``stamps_of(rows)`` gives the stamps and fractions of
    a slice of rows); return BLEND_PROB, BH_PAPER_PROB (NaN without a paper head,
    ``paper_head`` False), SEP columns, the fractions and the BLEND_PROB of each sheared
    image (a dict by ``MCAL_IMAGE_TYPES``; empty without ``mcal``, a ``_Metacal``).

    ``networks`` (``tilehead.NetworkProcess`` or ``_LocalNetworks``) scores each batch with
    the tile head (``submit``) and the paper head (``submit_paper``); batches are finished
    in order, each once its scores are back or when more wait than ``BATCHES_IN_FLIGHT``
    allows. ``head_inputs`` holds, per row, the tile head's catalogue features, or for a
    head whose features are measured on the stamp (``stamp_features``) the position cues and
    any SExtractor features it also reads; its pixel features are then measured on each
    batch's stamps in the SEP processes and the batch is scored when they come back. With
    ``mcal`` the same is done on each sheared image of the stamps (made here, measured in
    the SEP processes with the sheared images' rms, scored with it), beside the same
    position cues."""
    prob = np.full(n, np.nan, dtype=np.float64)
    sheared_prob = {t: np.full(n, np.nan, dtype=np.float64)
                    for t in (MCAL_IMAGE_TYPES if mcal is not None else ())}
    paper = np.full(n, np.nan, dtype=np.float64)
    sep_out = np.zeros(n, dtype=[("nsrc", "i2"), ("blend", "i1"), ("error", "?")])
    edge = np.zeros(n, dtype=np.float32)
    mask = np.zeros(n, dtype=np.float32)
    progress(0, n, "objects")
    pending = collections.deque()  # batches being scored, oldest first
    in_flight = (SEP_PROCESSES if isinstance(networks, _LocalNetworks) else
                 max(SEP_PROCESSES, BATCHES_IN_FLIGHT // (1 + len(sheared_prob))))

    def oldest_done():
        _, _, job, _, scores = pending[0]
        return job.done() and all(score.done() for _, score in scores)

    def finish_oldest():
        rows, ok, job, idx, scores = pending.popleft()
        for out, score in scores:
            out[idx] = score.result()
        batch_sep = job.result()
        batch_sep[~ok] = (-1, 0, False)  # no pixels of the object, no SEP verdict
        sep_out[rows] = batch_sep
        log.debug("objects %d-%d scored", rows.start, rows.stop - 1)
        progress(rows.stop, n, "objects")

    with SepProcesses(SEP_PROCESSES) as sep_workers:
        for rows, stamps, edge[rows], mask[rows], sheared_images in _batches(
                n, cfg.batch_size, stamps_of, mcal):
            ok = scorable[rows] & (edge[rows] < 1) & (mask[rows] < 1)
            idx = np.arange(rows.start, rows.stop)[ok]
            job = sep_workers.submit(stamps, cfg.sep, rows.start)
            scores = []  # (output array, future of its values at idx)
            if ok.any():
                kept = stamps[ok]
                feats = (functools.partial(_stamp_features, sep_workers.submit_measure(
                    kept, rms_adu), head_inputs[idx]) if stamp_features else head_inputs[idx])
                scores.append((prob, networks.submit(kept, rms_adu, feats)))
                for name, images in sheared_images.items():
                    feats = functools.partial(_stamp_features, sep_workers.submit_measure(
                        images[ok], mcal.rms_adu), head_inputs[idx])
                    scores.append((sheared_prob[name],
                                   networks.submit(images[ok], mcal.rms_adu, feats)))
                if paper_head:
                    scores.append((paper, networks.submit_paper(kept, rms_adu)))
            pending.append((rows, ok, job, idx, scores))
            while pending and (len(pending) > in_flight or oldest_done()):
                finish_oldest()
        while pending:
            finish_oldest()
    edge[~scorable] = mask[~scorable] = np.nan  # no position, no stamp
    return prob, paper, sep_out, edge, mask, sheared_prob


def _provenance(cfg, clf, tile_head, rms_adu, blend_thr, hybrid_thr, mcal=None):
    paper = [] if clf is None else [
        ("BH_HSHA", clf.metadata["weights_sha256"][:64], "sha256 of the paper head's weights"),
        ("BH_BACKB", clf.metadata["backbone"], "backbone of the paper head"),
        ("BH_HARCH", clf.metadata.get("architecture", "vgg16"), "paper head network"),
        ("BH_PREC", clf.precision, "paper head network precision"),
        ("BH_HCAL", "none" if clf.calibration == (1.0, 0.0) else
         f"{clf.calibration[0]:.6g} {clf.calibration[1]:+.6g}",
         "BH_PAPER_PROB = sigmoid(a logit + b): a b"),
        ("BH_HTHR", float(hybrid_thr), "BH_PAPER_FLAG threshold on BH_PAPER_PROB"),
    ]
    return [
        # the sha256 values with their comments take CONTINUE cards (FITS standard 4.0
        # appendix; fitsverify warns when they are not declared)
        ("LONGSTRN", "OGIP 1.0", "The OGIP Long String Convention may be used."),
        ("BH_VERS", __version__, "bh-stage version"),
        ("BH_TARGET", tile_head.metadata["target"], "what BLEND_PROB is the probability of"),
        ("BH_THEAD", Path(tile_head.path).name, "tile head (BLEND_PROB)"),
        ("BH_TSHA", tile_head.metadata["weights_sha256"][:64], "sha256 of its weights"),
        ("BH_TPREC", tile_head.precision, "tile head network precision"),
        ("BH_THR", float(blend_thr), "BLEND_FLAG threshold on BLEND_PROB"),
        *([] if "isolated_threshold" not in tile_head.metadata else [
            ("BH_THRI", float(tile_head.metadata["isolated_threshold"]),
             f"BLEND_PROB cut flagging {tile_head.metadata['isolated_fpr']:.0%} of isolated"),
        ]),
        ("BH_HEAD", "none" if clf is None else Path(clf.head_path).name,
         "paper head (BH_PAPER_PROB)"),
        *paper,
        ("BH_RMS", rms_adu, "[ADU] sky rms used to fill padding"),
        ("BH_STSRC", cfg.stamp.source, "stamps: cut from the tile, or VIGNET"),
        *([] if mcal is None else [
            ("BH_MCAL", True, "BLEND_PROB_1P.. on metacalibration images"),
            ("BH_MCSTP", float(mcal.step), "shear step of the metacalibration images"),
            ("BH_PSFSR", mcal.source, "their PSF (fwhm in arcsec)"),
            ("BH_MCTGT", mcal.target_psf, "their target PSF: dilate or gauss (round)"),
            ("BH_MCRMS", mcal.rms_adu, "[ADU] their noise rms (features, head)"),
        ]),
        ("BH_CFGSH", config_hash(cfg), "sha256 of the resolved config"),
        ("BH_DATE", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "UTC date of the run"),
    ]


def run_stage(cfg, tile_path, progress=None, classifier_loader=None, network_process=None):
    """Score every detection of one tile and write the output catalogue.

    Parameters
    ----------
    cfg : bh_stage.config.RunConfig
        Resolved config.
    tile_path : str or pathlib.Path
        The tile, plain or tile-compressed FITS.
    progress : callable, optional
        Called as ``progress(done, total, step)``: steps ``"reading tile"`` and
        ``"loading network"`` (0 then 1 of 1), then ``"objects"`` (0 before the first batch,
        then after each batch).
    classifier_loader : callable, optional
        ``classifier_loader(head_path, precision=..., batch_size=...)`` returning a classifier;
        default ``model.load_classifier``. ``bh_stage.tiles`` passes a per-process cache so a
        worker loads the network once for many tiles. The classifier is not modified.
    network_process : bool, optional
        Run the networks in a child process (``tilehead.NetworkProcess``) started before the
        tile is read, so that TensorFlow's import and the build run beside the reading; the
        probabilities are the same to the bit. Default (None): when it pays, that is when
        this process has not imported TensorFlow, has not built the tile head, and has not
        run the stage in a child process before, and no ``classifier_loader`` is given: the
        command line's single tile and the ceci stage, not a loop of runs in one process
        (it imports TensorFlow once, in the second run, and keeps the networks) nor
        ``bh_stage.tiles``' workers (their cache). A tile head that is not a ``TileHead``
        loaded from files (a test's stand-in) is always scored in this process. True with a
        ``classifier_loader`` raises ValueError.

    Returns
    -------
    StageResult

    The output holds every input row and column unchanged plus, per object:
    ``BLEND_PROB`` (float64, P(unrecognised blend): two or more objects reported as this one
    detection, from the tile head; NaN if not scored), ``BLEND_FLAG`` (int16, 0/1, the
    recommended cut ``BLEND_PROB >= blend_threshold``), ``BH_PAPER_PROB`` (float64, P(another
    galaxy in the 51x51 stamp), the paper's question), ``BH_PAPER_FLAG`` (int16, 0/1, SEP or
    ``BH_PAPER_PROB >= hybrid_threshold``), ``SEP_NSRC`` (int16, number of SEP sources; -1 on
    SEP error or where the object was not scored: no finite position, or no unmasked pixel of
    its stamp on the tile), ``SEP_BLEND_FLAG`` (int16, 0/1), ``BH_NEAREST_PIX`` (float32,
    pixels to the nearest other detection; NaN without a position), ``BH_NDET_STAMP`` (int16,
    other detections in the stamp; -1 without a position), ``BH_FLAGS`` (int16, bits of
    ``sep_flags.BH_FLAGS``), ``BH_EDGE_FRAC`` and ``BH_MASK_FRAC`` (float32, fractions).
    With ``metacal.enabled``, after ``BLEND_FLAG``: ``BLEND_PROB_NOSHEAR``,
    ``BLEND_PROB_1P``, ``BLEND_PROB_1M``, ``BLEND_PROB_2P``, ``BLEND_PROB_2M`` (float64,
    BLEND_PROB of the stamp's unsheared metacalibration image and of those sheared by
    ``g1 = +step``, ``g1 = -step``, ``g2 = +step``, ``g2 = -step``; NaN where BLEND_PROB is)
    and ``BLEND_FLAG_NOSHEAR``, ``BLEND_FLAG_1P``, ... (int16, 0/1, ``>= blend_threshold``),
    so that the cut ``BLEND_PROB_NOSHEAR < t`` has the selection response ``R_sel,11 =
    (<e1>_S(1P) - <e1>_S(1M)) / (2 step)`` from the catalogue alone (``<e1>_S(1P)``: the
    mean shape, on the unsheared image, of the objects with ``BLEND_PROB_1P < t``), and
    header keys
    ``BH_MCAL``, ``BH_MCSTP`` (step), ``BH_PSFSR`` (the PSF) and ``BH_MCRMS`` (the images'
    noise rms, ADU). The images are those of the stamp the head scores, padding included
    (``_Metacal``); their features are measured on them with their own noise rms; the two
    position cues are the catalogue's, not sheared.

    Raises
    ------
    BhStageError
        Any input, config or output problem, before the output is created; with
        ``metacal.enabled``, a tile head that is not position-only, or not exactly one of
        ``metacal.psf_file`` and ``metacal.psf_fwhm_arcsec`` (ConfigError), or a PSFEx file
        that is missing or not one (InputFileError), before any pixel is read.
    """
    t0 = time.perf_counter()
    if progress is None:
        progress = _no_progress
    tile, cat_path, weight_path, output = resolve_paths(cfg, tile_path)
    if output.resolve() in (tile.resolve(), cat_path.resolve()):
        raise ConfigError(f"output {output} would overwrite an input; choose another output")
    psf_path = None
    if cfg.metacal.enabled:
        cfg.metacal.validate()  # a config built without config_from_dict
        if cfg.metacal.psf_file is not None:
            psf_path = _fill(cfg.metacal.psf_file, "metacal.psf_file", tile)
    vignet = cfg.stamp.source == "vignet"
    if vignet and cfg.stamp.rms_adu is None and not tile.exists():
        raise ConfigError(f"{tile}: no such tile, and stamp.rms_adu is null; with "
                          "stamp.source: vignet give the tile or set stamp.rms_adu")
    read_tile = not vignet or cfg.stamp.rms_adu is None
    for path in ((tile, cat_path, weight_path, psf_path) if read_tile or tile.exists()
                 else (cat_path, weight_path, psf_path)):
        if path is not None and path.is_dir():
            raise InputFileError(f"{path}: is a directory, not a FITS file")
        if path is not None and not path.is_file():
            raise InputFileError(f"{path}: no such file")
    if cfg.weight == "auto":
        tried = " or ".join(_stem(tile) + suffix for suffix in WEIGHT_AUTO_SUFFIXES)
        log.info("weight: auto: %s", weight_path or f"none ({tried} not beside the tile)")
    io.check_output(output, cfg.overwrite)
    psf_model = None if psf_path is None else read_psfex(psf_path)
    cat = io.read_catalogue(cat_path, cfg.x_column, cfg.y_column, cfg.id_column,
                            cfg.catalogue_hdu)
    shape = io.tile_shape(tile) if tile.exists() else io.ldac_image_shape(cat_path)
    if shape is None:
        raise InputFileError(f"{cat_path}: no LDAC_IMHEAD giving the image size; give the tile "
                             "or a FITS_LDAC catalogue")
    finite = _check_positions(cat, shape, cfg.stamp.size_pix // 2)
    if vignet:
        cell = io.column_cell_shape(cat_path, VIGNET_COLUMN, cfg.catalogue_hdu)
        if cell != (cfg.stamp.size_pix,) * 2:
            raise CatalogueColumnError(
                f"{cat_path}: {VIGNET_COLUMN} is {'x'.join(map(str, cell))}, stamp.size_pix "
                f"{cfg.stamp.size_pix}; set {VIGNET_COLUMN}({cfg.stamp.size_pix},"
                f"{cfg.stamp.size_pix}) in the SExtractor parameter file")
        centre = io.read_catalogue(cat_path, *VIGNET_CENTRE_COLUMNS, cfg.id_column,
                                   cfg.catalogue_hdu)
        finite &= np.isfinite(centre.x_pix) & np.isfinite(centre.y_pix)
    log.info("%s: %d objects from %s (HDU %s)", tile, cat.nrows, cat_path, cat.extname)
    tile_head = tilehead.load_tile_head(tilehead.tile_head_path(cfg.tile_head),
                                        cfg.tile_head_precision)
    if cfg.metacal.enabled and (tile_head.catalogue_columns or not tile_head.stamp_features):
        raise ConfigError(f"metacal.enabled: tile head {Path(tile_head.path).name} reads "
                          "SExtractor columns, which the sheared images do not have; set "
                          "tile_head to a position-only head (compact_cnn_stamp_v1, `bh-stage "
                          "train-tile --set features=stamp`) or metacal.enabled: false")
    half_pix = cfg.stamp.size_pix // 2
    columns = (io.read_columns(cat_path, tile_head.catalogue_columns, cfg.catalogue_hdu)
               if tile_head.catalogue_columns else None)
    _check_head_shape(cfg, tile_head.path, tile_head.metadata)
    # every check that needs no pixel is done: the networks' process starts now, and imports
    # TensorFlow and builds the tile head beside the reading below
    with _blas_limit(), \
            _start_networks(tile_head, classifier_loader, network_process) as networks:
        nearest_pix = cues.nearest_detection_pix(cat.x_pix, cat.y_pix)
        ndet_stamp = cues.detections_in_stamp(cat.x_pix, cat.y_pix, half_pix)
        if tile_head.stamp_features:  # measured on the stamp, beside the positions' cues
            head_inputs = features.position_cues(cat.x_pix, cat.y_pix, half_pix, nearest_pix,
                                                 ndet_stamp)
            if columns:  # compact_cnn_stamp_catalogue_v1: and SExtractor's, after them
                head_inputs = np.column_stack([head_inputs, cues.sextractor_features(columns)])
        else:
            head_inputs = (cues.catalogue_features(columns, cat.x_pix, cat.y_pix, half_pix,
                                                   nearest_pix, ndet_stamp)
                           if columns else np.zeros((cat.nrows, 0), np.float32))

        progress(0, 1, "reading tile")
        image = bad = None
        if read_tile:
            image, bad, rms_adu = tile_pixels(tile, weight_path)
            log.info("tile rms %.3g ADU, %.2g %% of pixels masked", rms_adu,
                     100 * np.count_nonzero(bad) / bad.size)
        elif weight_path is not None:
            bad = read_bad_pixels(None, weight_path, shape)
        if cfg.stamp.rms_adu is not None:
            rms_adu = cfg.stamp.rms_adu
            log.info("sky rms from stamp.rms_adu: %.3g ADU", rms_adu)
        x = np.where(finite, cat.x_pix, 0.0)  # 0: a placeholder position, never scored
        y = np.where(finite, cat.y_pix, 0.0)
        if vignet:
            image = None  # VIGNET is already background-subtracted by SExtractor
            xv = nearest_pixel(np.where(finite, centre.x_pix, 0.0))
            yv = nearest_pixel(np.where(finite, centre.y_pix, 0.0))
            xc, yc = nearest_pixel(x), nearest_pixel(y)
            log.info("stamps from %s's %s (centred on %s), shifted to %s/%s: %d objects by "
                     "1 px or more", cat_path, VIGNET_COLUMN, "/".join(VIGNET_CENTRE_COLUMNS),
                     cfg.x_column, cfg.y_column, int(((xc != xv) | (yc != yv))[finite].sum()))

            def stamps_of(rows):
                return _vignet_stamps(cfg, cat_path, rows, (xv, yv), xc, yc, shape, bad,
                                      rms_adu)
        else:
            def stamps_of(rows):
                return cut_stamps(image, x[rows], y[rows], cfg.stamp.size_pix,
                                  cfg.stamp.pad_pix, bad=bad, fill_sigma=rms_adu,
                                  seed=cfg.seed, first_index=rows.start)

        progress(1, 1, "reading tile")
        progress(0, 1, "loading network")
        # in this process: TensorFlow's import, now that every input is checked and the tile
        # read; in the network process: nothing to wait for, the first scores wait for it
        networks.prepare()
        clf = None
        if cfg.head != "none":
            head = heads.head_path(cfg.head, noise_sigma_adu=rms_adu)
            clf = networks.load_classifier(head, precision=cfg.precision,
                                           batch_size=cfg.batch_size)
        progress(1, 1, "loading network")
        if clf is not None:
            _check_head_shape(cfg, clf.head_path, clf.metadata)
        blend_thr = (tile_head.blend_threshold if cfg.blend_threshold is None
                     else cfg.blend_threshold)
        log.info("tile head %s, BLEND_FLAG threshold %.3g%s", tile_head.path, blend_thr,
                 "" if isinstance(networks, _LocalNetworks) else ", in a child process")

        mcal = None
        if cfg.metacal.enabled:
            mcal = _Metacal(cfg, psf_model, x, y, shape, rms_adu)
            log.info("metacal: PSF %s, step %g, sheared images' noise rms %.3g ADU (tile "
                     "%.3g)", mcal.source, mcal.step, mcal.rms_adu, rms_adu)
        prob, paper, sep_out, edge, mask, sheared_prob = _score(
            cfg, networks, clf is not None, tile_head.stamp_features, head_inputs, stamps_of,
            rms_adu, cat.nrows, finite, progress, mcal)
    hybrid_thr = None
    if clf is not None:
        hybrid_thr = (clf.hybrid_threshold if cfg.hybrid_threshold is None
                      else cfg.hybrid_threshold)
        log.info("paper head %s (trained at sigma %.3g ADU), BH_PAPER_FLAG threshold %.3f",
                 head, clf.metadata["noise_sigma_adu"], hybrid_thr)
    del image, bad, stamps_of

    scored = np.isfinite(prob)
    flag = (scored & (prob >= blend_thr)).astype(np.int16)
    sep_flag = (sep_out["blend"] == 1).astype(np.int16)
    paper_flag = (None if clf is None else
                  hybrid_flag(sep_flag, paper, hybrid_thr).astype(np.int16))
    # BH_EDGE: part of the stamp off the tile (with VIGNET stamps BH_EDGE_FRAC also counts
    # what the shift to the stage's centre brought in from beyond the VIGNET)
    off_tile = (finite & off_image_any(shape, xc, yc, cfg.stamp.size_pix) if vignet
                else edge > 0)
    flags = (np.where(off_tile, BH_EDGE, 0) | np.where(mask > 0, BH_MASKED, 0)
             | np.where(~scored, BH_NOT_SCORED, 0)
             | np.where(sep_out["error"], BH_SEP_ERROR, 0)).astype(np.int16)
    values = {"BLEND_PROB": prob, "BLEND_FLAG": flag, "BH_PAPER_PROB": paper,
              "BH_PAPER_FLAG": paper_flag, "SEP_NSRC": sep_out["nsrc"],
              "SEP_BLEND_FLAG": sep_flag,
              "BH_NEAREST_PIX": nearest_pix, "BH_NDET_STAMP": ndet_stamp,
              "BH_FLAGS": flags, "BH_EDGE_FRAC": edge, "BH_MASK_FRAC": mask}
    for name, values_t in sheared_prob.items():
        values[f"BLEND_PROB_{name.upper()}"] = values_t
        values[f"BLEND_FLAG_{name.upper()}"] = (np.isfinite(values_t)
                                                & (values_t >= blend_thr)).astype(np.int16)
    columns = [io.NewColumn(name, np.asarray(values[name], dtype=dtype), unit, text)
               for name, (dtype, unit, text) in output_columns(cfg).items()]
    header = _provenance(cfg, clf, tile_head, rms_adu, blend_thr, hybrid_thr, mcal)
    io.write_catalogue(cat, output, columns, header, cfg.output_mode, cfg.id_column,
                       cfg.overwrite)
    for bit in (BH_EDGE, BH_MASKED, BH_NOT_SCORED, BH_SEP_ERROR):
        count = int(((flags & bit) != 0).sum())
        if count:
            log.info("%d objects flagged %s", count, decode_flags(bit)[0])
    return StageResult(output, cat.nrows, int(flag.sum()),
                       None if paper_flag is None else int(paper_flag.sum()),
                       int(sep_flag.sum()), int((~scored).sum()), time.perf_counter() - t0)
