"""``bh-stage inspect``: look at what the stage flagged before trusting its cut.

Input: a ``bh-stage run`` output catalogue (``output_mode: add``: positions and the stage's
columns, header keys ``BH_THR`` and ``BH_RMS``) and its tile. Output: a folder with

- ``gallery.png``: the stamps of the highest, the lowest and the nearest-threshold
  ``BLEND_PROB`` (``pick_rows``), each with SEP's sources (circles), the other catalogue
  detections (plus signs), the tile head's central square (dashed) and a caption: catalogue
  row (1-based, as NUMBER), ``BLEND_PROB``, ``BLEND_FLAG``, ``SEP_NSRC``, decoded ``BH_FLAGS``;
- ``histograms.png``: ``BLEND_PROB`` (log counts) with ``BH_THR``, and ``BH_PAPER_PROB``
  with ``BH_HTHR`` when the run had a paper head;
- ``tile_map.png``: every detection, ``BLEND_FLAG == 1`` in colour.

Stamps are cut as ``run_stage`` cuts them (``pixels.tile_pixels``, ``stamps.cut_stamps`` with
the run's seed and the row's noise), so the gallery shows the networks' input.
"""

import dataclasses
import logging
import typing
from pathlib import Path

import numpy as np

from . import io
from .config import RunConfig
from .errors import CatalogueColumnError, InputFileError
from .sep_flags import decode_flags, extract_sources
from .pixels import tile_pixels
from .stage import auto_weight
from .stamps import cut_stamps, nearest_pixel
from .nets.compact import STAMP_SIDE_PIX

__all__ = ["N_STAMPS", "StageOutput", "read_stage_output", "pick_rows", "gallery_stamps",
           "stamp_sources", "neighbours_in_stamps", "run_inspect"]

log = logging.getLogger(__name__)

N_STAMPS = 12
"""Stamps in each row of the gallery."""

REQUIRED_COLUMNS = ("BLEND_PROB", "BLEND_FLAG", "SEP_NSRC", "BH_FLAGS")
REQUIRED_KEYS = ("BH_THR", "BH_RMS")

RMS_RTOL = 1e-4
"""Largest relative difference between the tile's rms and the run's ``BH_RMS``."""

DEFAULTS = RunConfig()
"""The stage's defaults: position columns, HDU, seed, stamp geometry, SEP parameters."""


@dataclasses.dataclass
class StageOutput:
    """What ``read_stage_output`` reads from a ``bh-stage run`` output.

    Attributes
    ----------
    path : pathlib.Path
    x_pix, y_pix : ndarray, float64
        0-based positions (NaN where absent).
    columns : dict of str -> ndarray, float64
        ``REQUIRED_COLUMNS``, plus ``BH_PAPER_PROB`` if the run had a paper head.
    blend_threshold : float
        ``BH_THR``, the ``BLEND_FLAG`` cut on ``BLEND_PROB``.
    rms_adu : float
        ``BH_RMS``, the tile rms the stage filled the padding with.
    paper_threshold : float or None
        ``BH_HTHR`` (``BH_PAPER_PROB``'s cut); None without a paper head.
    """

    path: Path
    x_pix: np.ndarray
    y_pix: np.ndarray
    columns: dict
    blend_threshold: float
    rms_adu: float
    paper_threshold: typing.Optional[float]


def read_stage_output(path, x_column=DEFAULTS.x_column, y_column=DEFAULTS.y_column,
                      hdu=DEFAULTS.catalogue_hdu):
    """Read the positions, stage columns and header keys of a ``bh-stage run`` output.

    Raises
    ------
    InputFileError
        Missing, not FITS or truncated.
    CatalogueColumnError
        A stage column, header key or position column is absent.
    """
    path = Path(path)
    info = io.read_table_info(path, hdu)
    missing = [f"{what} {', '.join(names)}" for what, names in (
        ("column", [c for c in REQUIRED_COLUMNS if c not in info.columns]),
        ("header key", [k for k in REQUIRED_KEYS if k not in info.header])) if names]
    if missing:
        raise CatalogueColumnError(f"{path}: no {'; no '.join(missing)}; is it the output of "
                                   "'bh-stage run CONFIG TILE'?")
    cat = io.read_catalogue(path, x_column, y_column, hdu=hdu)
    paper = "BH_PAPER_PROB" in info.columns and "BH_HTHR" in info.header
    names = REQUIRED_COLUMNS + (("BH_PAPER_PROB",) if paper else ())
    return StageOutput(path, cat.x_pix, cat.y_pix, io.read_columns(path, names, hdu),
                       float(info.header["BH_THR"]), float(info.header["BH_RMS"]),
                       float(info.header["BH_HTHR"]) if paper else None)


def pick_rows(prob, threshold, n=N_STAMPS):
    """Return the rows the gallery shows: highest, nearest the threshold, and lowest.

    Parameters
    ----------
    prob : array_like, shape (m,)
        ``BLEND_PROB``; NaN (not scored) rows are never picked.
    threshold : float
        ``BH_THR``.
    n : int
        Rows per group (fewer if fewer are scored).

    Returns
    -------
    dict of str -> ndarray of int
        0-based rows. ``highest``: the ``n`` largest, decreasing. ``threshold``: the
        ``ceil(n / 2)`` nearest at or above the threshold and the ``n // 2`` nearest below
        (more from one side when the other has too few), decreasing, so the cut falls
        inside the group. ``lowest``: the ``n`` smallest, increasing. Equal values keep
        catalogue order.
    """
    prob = np.asarray(prob, dtype=np.float64)
    scored = np.flatnonzero(np.isfinite(prob))
    down = scored[np.lexsort((scored, -prob[scored]))]
    up = scored[np.lexsort((scored, prob[scored]))]
    above = up[prob[up] >= threshold]  # nearest the threshold first
    below = down[prob[down] < threshold]
    n_above = min(len(above), max(-(-n // 2), n - len(below)))
    near = np.concatenate([above[:n_above], below[:n - n_above]])
    return {"highest": down[:n], "threshold": down[np.isin(down, near)], "lowest": up[:n]}


def gallery_stamps(image, bad, rms_adu, x_pix, y_pix, rows, size_pix=DEFAULTS.stamp.size_pix,
                   pad_pix=DEFAULTS.stamp.pad_pix, seed=DEFAULTS.seed):
    """Return the stage's stamps of catalogue rows ``rows``, cut as ``run_stage`` cuts them.

    Parameters
    ----------
    image, bad, rms_adu
        The tile as ``pixels.tile_pixels`` returns it.
    x_pix, y_pix : ndarray, shape (m,)
        0-based positions of every catalogue row.
    rows : array_like of int
        0-based rows; their positions must be finite.
    size_pix, pad_pix, seed : int
        The run's ``stamp.size_pix``, ``stamp.pad_pix`` and ``seed``: row ``r`` draws its
        fill noise from ``stamps.object_rng(seed, r)``, as in the stage.

    Returns
    -------
    ndarray, float32, shape (len(rows), size_pix + 2 pad_pix, same)
    """
    side = size_pix + 2 * pad_pix
    out = np.zeros((len(rows), side, side), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i] = cut_stamps(image, x_pix[row:row + 1], y_pix[row:row + 1], size_pix, pad_pix,
                            bad=bad, fill_sigma=rms_adu, seed=seed, first_index=row)[0][0]
    return out


def stamp_sources(stamps, sep_cfg=DEFAULTS.sep):
    """Return SEP's sources in each stamp, found as the stage finds them.

    Returns
    -------
    list of ndarray, shape (k, 2)
        0-based (x, y) in the stamp; empty where SEP fails (the stage's ``BH_SEP_ERROR``).
    """
    out = []
    for stamp in stamps:
        try:
            objects = extract_sources(stamp, sep_cfg)
        except Exception:  # SEP raises bare Exception; the caption shows BH_SEP_ERROR
            objects = np.zeros(0, dtype=[("x", "f8"), ("y", "f8")])
        out.append(np.stack([objects["x"], objects["y"]], axis=1))
    return out


def neighbours_in_stamps(x_pix, y_pix, rows, side_pix):
    """Return the other catalogue detections inside each row's stamp.

    Parameters
    ----------
    x_pix, y_pix : ndarray, shape (m,)
        0-based positions of every catalogue row.
    rows : array_like of int
        Rows whose stamps are shown.
    side_pix : int
        Side of the padded stamp; odd.

    Returns
    -------
    list of ndarray, shape (k, 2)
        0-based (x, y) in the stamp, whose pixel ``[side // 2, side // 2]`` is the tile pixel
        nearest to the row's position (``stamps.cut_stamps``).
    """
    half = side_pix // 2
    finite = np.isfinite(x_pix) & np.isfinite(y_pix)
    out = []
    for row in rows:
        dx = x_pix - nearest_pixel(x_pix[row]) + half
        dy = y_pix - nearest_pixel(y_pix[row]) + half
        inside = finite & (np.abs(dx - half) < half + 0.5) & (np.abs(dy - half) < half + 0.5)
        inside[row] = False
        out.append(np.stack([dx[inside], dy[inside]], axis=1))
    return out


def _save_png(fig, path, dpi=90):
    """Save a figure as a 256-colour PNG: noisy stamps make an RGBA one thrice as large."""
    import io as bytes_io

    from PIL import Image

    buf = bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    with Image.open(buf) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(
            path, format="PNG", optimize=True)


GROUP_TITLES = {"highest": "highest BLEND_PROB", "threshold": "nearest BH_THR = {thr:.3g}",
                "lowest": "lowest BLEND_PROB"}


def _plot_gallery(path, out, groups, stamps, sources, neighbours):
    """Write the gallery: one labelled row of stamps per group."""
    from matplotlib.figure import Figure

    n = max([len(rows) for rows in groups.values()] + [1])
    width, height = 1.25 * n + 0.4, 1.75 * len(groups) + 0.7
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.4 / width, right=0.995, top=1 - 0.55 / height,
                        bottom=0.3 / height, wspace=0.06, hspace=0.62)
    axes = fig.subplots(len(groups), n, squeeze=False)
    col = out.columns
    for ax_row, (name, rows) in zip(axes, groups.items()):
        ax_row[0].text(-0.16, 0.5, GROUP_TITLES[name].format(thr=out.blend_threshold),
                       transform=ax_row[0].transAxes, rotation=90, va="center", ha="center",
                       fontsize=7)
        for ax in ax_row:
            ax.set_axis_off()
        for ax, stamp, src, nbr, row in zip(ax_row, stamps[name], sources[name],
                                            neighbours[name], rows):
            img = np.arcsinh(stamp / out.rms_adu)  # linear within ~1 rms, log above
            ax.imshow(img, origin="lower", cmap="gray_r", vmin=np.arcsinh(-2.0),
                      vmax=max(img.max(), np.arcsinh(10.0)), interpolation="nearest")
            c, h = stamp.shape[-1] // 2, STAMP_SIDE_PIX / 2
            ax.plot([c - h, c + h, c + h, c - h, c - h], [c - h, c - h, c + h, c + h, c - h],
                    ls="--", lw=0.8, color="tab:green")
            ax.plot(src[:, 0], src[:, 1], "o", ms=6, mfc="none", mec="tab:red", mew=0.7)
            ax.plot(nbr[:, 0], nbr[:, 1], "+", ms=7, color="tab:blue", mew=0.9)
            flags = ",".join(f.removeprefix("BH_") for f in decode_flags(col["BH_FLAGS"][row]))
            ax.set_title(f"#{row + 1} p={col['BLEND_PROB'][row]:.3f} "
                         f"F={col['BLEND_FLAG'][row]:.0f}\nNSRC={col['SEP_NSRC'][row]:.0f}"
                         f" {flags or 'no flags'}", fontsize=6, pad=2)
    fig.suptitle(f"{out.path.name}: stamps by BLEND_PROB (asinh of ADU / BH_RMS "
                 f"{out.rms_adu:.3g})", fontsize=8)
    fig.text(0.5, 0.1 / height, "#row (1-based, as NUMBER)  p: BLEND_PROB  F: BLEND_FLAG  "
             "NSRC: SEP_NSRC  then BH_FLAGS;  red o: SEP sources,  blue +: other catalogue "
             f"detections,  dashed: the tile head's {STAMP_SIDE_PIX}x{STAMP_SIDE_PIX} input",
             ha="center", fontsize=7)
    _save_png(fig, path)


def _plot_histograms(path, out):
    """Write BLEND_PROB's histogram (and BH_PAPER_PROB's if present) with their cuts."""
    from matplotlib.figure import Figure

    shown = [("BLEND_PROB", out.blend_threshold, "BH_THR")]
    if out.paper_threshold is not None:
        shown.append(("BH_PAPER_PROB", out.paper_threshold, "BH_HTHR"))
    fig = Figure(figsize=(4.2 * len(shown), 3.4))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9, wspace=0.3)
    for ax, (name, thr, key) in zip(fig.subplots(1, len(shown), squeeze=False)[0], shown):
        values = out.columns[name][np.isfinite(out.columns[name])]
        counts = ax.hist(values, bins=np.linspace(0.0, 1.0, 41), color="0.5")[0]
        if counts.any():
            ax.set_yscale("log")
        ax.axvline(thr, color="tab:red", lw=1,
                   label=f"{key} = {thr:.3g}: {(values >= thr).sum()} of {len(values)} above")
        ax.set(xlabel=name, ylabel="detections", xlim=(0, 1))
        ax.legend(fontsize=7, loc="upper center")
    fig.suptitle(out.path.name, fontsize=8)
    _save_png(fig, path)


def _plot_map(path, out, shape):
    """Write the tile map: detections in grey, BLEND_FLAG == 1 in colour."""
    from matplotlib.figure import Figure

    ny, nx = shape
    fig = Figure(figsize=(6.0, 6.0 * ny / nx + 0.6))
    ax = fig.subplots()
    # axes in SExtractor's 1-based pixels, as in the catalogue
    x, y = out.x_pix + io.FITS_ORIGIN, out.y_pix + io.FITS_ORIGIN
    flag = out.columns["BLEND_FLAG"] == 1
    ax.plot(x, y, ".", ms=2, color="0.6", label=f"all detections ({np.isfinite(x).sum()})")
    ax.plot(x[flag], y[flag], "o", ms=4, color="tab:red", label=f"BLEND_FLAG = 1 "
            f"({flag.sum()})")
    ax.set(xlim=(0.5, nx + 0.5), ylim=(0.5, ny + 0.5), aspect="equal",
           xlabel="x (1-based pixel)", ylabel="y (1-based pixel)", title=out.path.name)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
    _save_png(fig, path)


def run_inspect(catalogue, tile, outdir=None, weight="auto", x_column=DEFAULTS.x_column,
                y_column=DEFAULTS.y_column, hdu=DEFAULTS.catalogue_hdu, seed=DEFAULTS.seed,
                overwrite=False, n_stamps=N_STAMPS):
    """``bh-stage inspect``: write the gallery, histograms and tile map of one stage output.

    Parameters
    ----------
    catalogue : str or pathlib.Path
        Output catalogue of ``bh-stage run`` (``output_mode: add``).
    tile : str or pathlib.Path
        The tile that run read.
    outdir : str or pathlib.Path, optional
        Output folder; default ``<catalogue stem>_inspect`` beside the catalogue. Absent or
        empty, unless ``overwrite``.
    weight : str or pathlib.Path or None
        The run's weight map: 'auto' (as ``weight: auto``), a path, or None / 'none'.
    x_column, y_column, hdu, seed
        As the run's config keys ``x_column``, ``y_column``, ``catalogue_hdu``, ``seed``.
    overwrite : bool
        Write into a folder that holds files, replacing ours.
    n_stamps : int
        Stamps per gallery row.

    Returns
    -------
    str
        One summary line.

    Raises
    ------
    BhStageError
        A missing or wrong input (a tile whose rms is not the run's ``BH_RMS``), or an
        output folder that exists; nothing is written.
    """
    catalogue, tile = Path(catalogue), Path(tile)
    outdir = (catalogue.parent / f"{catalogue.stem}_inspect" if outdir is None
              else Path(outdir))
    out = read_stage_output(catalogue, x_column, y_column, hdu)
    io.check_output_folder(outdir, overwrite)
    if weight == "auto":
        weight = auto_weight(tile)
    elif weight in (None, "none"):
        weight = None
    log.info("%s: %d rows; tile %s, weight %s", catalogue, len(out.x_pix), tile, weight)
    image, bad, rms_adu = tile_pixels(tile, weight)
    if not np.isclose(rms_adu, out.rms_adu, rtol=RMS_RTOL, atol=0.0):
        raise InputFileError(f"{tile}: rms {rms_adu:.5g} ADU with weight {weight}, but "
                             f"{catalogue} was made at BH_RMS = {out.rms_adu:.5g}; give the "
                             "tile and --weight of that run")
    groups = pick_rows(out.columns["BLEND_PROB"], out.blend_threshold, n_stamps)
    stamp = DEFAULTS.stamp
    side = stamp.size_pix + 2 * stamp.pad_pix
    stamps = {name: gallery_stamps(image, bad, rms_adu, out.x_pix, out.y_pix, rows,
                                   stamp.size_pix, stamp.pad_pix, seed)
              for name, rows in groups.items()}
    sources = {name: stamp_sources(s) for name, s in stamps.items()}
    neighbours = {name: neighbours_in_stamps(out.x_pix, out.y_pix, rows, side)
                  for name, rows in groups.items()}
    with io.atomic_folder(outdir, overwrite) as tmp:
        _plot_gallery(tmp / "gallery.png", out, groups, stamps, sources, neighbours)
        _plot_histograms(tmp / "histograms.png", out)
        _plot_map(tmp / "tile_map.png", out, image.shape)
    n_flag = int((out.columns["BLEND_FLAG"] == 1).sum())
    return (f"{outdir}: gallery.png, histograms.png, tile_map.png; {len(out.x_pix)} "
            f"detections, {n_flag} with BLEND_FLAG (BH_THR {out.blend_threshold:.3g})")
