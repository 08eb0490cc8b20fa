"""Tile sets of the tile-level study: simulate, SExtract, give truth, cut and featurise.

A tile folder holds ``tile.fits``, ``tile.weight.fits``, ``tile_truth.fits``,
``tile_models.h5`` (noise-free object images), and, from ``source-extractor``, ``tile.cat``
and ``tile_seg.fits``. ``prepare_tile`` makes what is missing; ``detection_table`` gives each
detection its truth classes (``tiletruth``) and catalogue features (``cues``);
``detection_stamps`` cuts the stage's stamps, cached in the folder.
"""

import logging
from pathlib import Path

import numpy as np

from .. import cues, io

from . import tiletruth
from ..stamps import cut_stamps

__all__ = ["TILE_FILES", "ROLES", "prepare_tile", "prepare_role", "tile_folders",
           "simulate_config", "detection_table", "detection_stamps", "run_stage_on_tile"]

log = logging.getLogger(__name__)

TILE_FILES = {"image": "tile.fits", "weight": "tile.weight.fits", "truth": "tile_truth.fits",
              "models": "tile_models.h5", "catalogue": "tile.cat",
              "segmentation": "tile_seg.fits"}
"""Files of a tile folder, by role."""


def prepare_tile(folder, sim_cfg, sextractor_config, progress=None):
    """Simulate the tile of ``sim_cfg`` into ``folder`` and SExtract it, unless present.

    ``sim_cfg`` is a ``SimulateConfig`` in mode 'tile'; its output paths are replaced by the
    folder's ``TILE_FILES``.
    """
    import dataclasses

    from .sextractor import run_sextractor
    from .simulate import run_simulate

    folder = Path(folder)
    files = {k: folder / v for k, v in TILE_FILES.items()}
    if not all(files[k].is_file() for k in ("image", "weight", "truth", "models")):
        tile = dataclasses.replace(sim_cfg.tile, image=str(files["image"]),
                                   weight=str(files["weight"]), truth=str(files["truth"]),
                                   models=str(files["models"]))
        run_simulate(dataclasses.replace(sim_cfg, mode="tile", tile=tile, overwrite=True),
                     progress)
    if not (files["catalogue"].is_file() and files["segmentation"].is_file()):
        run_sextractor(files["image"], files["weight"], files["catalogue"], sextractor_config,
                       files["segmentation"])
    return files


def run_stage_on_tile(folder, run_cfg, output_name, progress=None):
    """Run ``bh-stage run`` with ``run_cfg`` on a prepared tile folder (its catalogue, weight
    map and image); return the output catalogue, ``folder / output_name``."""
    import dataclasses

    from ..stage import run_stage

    files = {k: Path(folder) / v for k, v in TILE_FILES.items()}
    out = Path(folder) / output_name
    run_stage(dataclasses.replace(run_cfg, catalogue=str(files["catalogue"]),
                                  weight=str(files["weight"]), output=str(out)),
              files["image"], progress=progress)
    return out


def detection_table(folder, x_column="XWIN_IMAGE", y_column="YWIN_IMAGE"):
    """Return ``(positions, truth_classes, catalogue_features)`` of a prepared tile folder.

    positions : (x_pix, y_pix) 0-based; truth_classes : ``tiletruth.TRUTH_CLASS_DTYPE``, its
    ``GROUP`` global across tiles (stars keyed by the tile's seed, ``BH_SEED``);
    catalogue_features : ``cues.catalogue_features``.
    """
    import fitsio

    folder = Path(folder)
    f = {k: folder / v for k, v in TILE_FILES.items()}
    cat = io.read_catalogue(f["catalogue"], x_column, y_column)
    columns = io.read_columns(f["catalogue"], cues.CATALOGUE_COLUMNS)
    corners, images = io.read_tile_models(f["models"])
    truth, header = fitsio.read(str(f["truth"]), ext="TRUTH", header=True)
    classes = tiletruth.classify_detections(io.read_segmentation(f["segmentation"]),
                                            np.asarray(cat.ids), truth, corners, images,
                                            tile_key=int(header["BH_SEED"]))
    feats = cues.catalogue_features(columns, cat.x_pix, cat.y_pix)
    return (cat.x_pix, cat.y_pix), classes, feats


def detection_stamps(folder, seed=0, x_column="XWIN_IMAGE", y_column="YWIN_IMAGE",
                     side_pix=None):
    """The tile head's input of every detection: the central square of the stage's stamp.

    Stamps are cut exactly as ``bh-stage run`` cuts them (51 px + 7 px noise padding, filled
    with noise where off the tile or masked, seeded per object), then cropped to ``side_pix``
    (default ``nets.compact.STAMP_SIDE_PIX``; 65 keeps the paper heads' whole padded stamp);
    cached in the folder as ``stamps_<seed>.npz`` (``stamps_<seed>_<side>px.npz`` for
    another side).

    Returns
    -------
    stamps : ndarray, float32, shape (n, s, s)
        ADU, background subtracted.
    rms_adu : float
        The tile's rms.
    """
    from ..nets.compact import STAMP_SIDE_PIX, centre_stamps
    from ..pixels import tile_pixels

    side_pix = STAMP_SIDE_PIX if side_pix is None else side_pix
    folder = Path(folder)
    cache = folder / (f"stamps_{seed}.npz" if side_pix == STAMP_SIDE_PIX
                      else f"stamps_{seed}_{side_pix}px.npz")
    if cache.is_file():
        with np.load(cache) as z:
            return z["stamps"], float(z["rms_adu"])
    f = {k: folder / v for k, v in TILE_FILES.items()}
    cat = io.read_catalogue(f["catalogue"], x_column, y_column)
    image, bad, rms = tile_pixels(f["image"], f["weight"])
    x = np.where(np.isfinite(cat.x_pix), cat.x_pix, 0.0)
    y = np.where(np.isfinite(cat.y_pix), cat.y_pix, 0.0)
    parts = []
    for start in range(0, cat.nrows, 1024):
        rows = slice(start, min(start + 1024, cat.nrows))
        stamps, _, _ = cut_stamps(image, x[rows], y[rows], 51, 7, bad=bad, fill_sigma=rms,
                                  seed=seed, first_index=start)
        parts.append(centre_stamps(stamps, side_pix))
    stamps = (np.concatenate(parts) if parts
              else np.zeros((0, side_pix, side_pix), np.float32))
    io.atomic_write_bytes(cache, lambda fh: np.savez(fh, stamps=stamps, rms_adu=rms))
    return stamps, rms


ROLES = ("train", "valid", "test")
"""Tile roles: training and validation tiles hold training galaxies, test tiles test ones."""


def tile_folders(tiles, role):
    """Folders of the tiles of one role: ``work_dir/<role><seed>``."""
    seeds = getattr(tiles, f"{role}_seeds")
    return [Path(tiles.work_dir) / f"{role}{seed}" for seed in seeds]


def simulate_config(tiles, role, seed, shear_g1=0.0, shear_g2=0.0, **tile_options):
    """The ``SimulateConfig`` (mode 'tile') of one tile of the tile set, its galaxies sheared
    by the constant reduced shear ``(shear_g1, shear_g2)``; ``tile_options`` set other keys
    of its ``tile`` section (e.g. the second shear plane's).

    Roles 'train' and 'valid' with ``training_sample: diverse`` add the per-object Sersic
    draws (``diverse_sersic_fraction``, fits pooled with the parametric sample's), knots on
    ``diverse_knots_fraction`` of their discs and augmented training-half real galaxies, and
    put the parametric galaxies and the draws on the size-magnitude relation of the
    training-half real galaxies (``tile.size_calibration: real_train``,
    ``simulate.size_calibration``). Role 'test' is the test half of the real galaxies only,
    whatever ``training_sample``. ``compact_knots_fraction`` gives parametric galaxies of
    the training and validation tiles compact knots (``tile.compact_knots_fraction``)."""
    from ..config import SimulateConfig, config_from_dict

    pairs = tiles.train_close_pair_fraction if role == "train" else tiles.close_pair_fraction
    if role != "test" and tiles.training_sample == "diverse":  # never on test tiles
        tile_options = {"sersic_fraction": tiles.diverse_sersic_fraction,
                        "sersic_pool_parametric": True,
                        "knots_fraction": tiles.diverse_knots_fraction,
                        "augment_real": True, "size_calibration": "real_train",
                        **tile_options}
    if role != "test" and tiles.compact_knots_fraction:  # never on test tiles
        tile_options = {"compact_knots_fraction": tiles.compact_knots_fraction,
                        **tile_options}
    return config_from_dict(SimulateConfig, {
        "mode": "tile", "seed": seed, "cosmos_dir": tiles.cosmos_dir,
        "n_workers": tiles.n_workers, "real_half": "test",
        "magnitude": {"mag_max": tiles.mag_max,
                      "max_brightening_mag": tiles.max_brightening_mag,
                      "size_slope_dex_per_mag": tiles.size_slope_dex_per_mag},
        "tile": {"nx_pix": tiles.size_pix, "ny_pix": tiles.size_pix,
                 "galaxy_kind": "real" if role == "test" else "mixed",
                 "density_per_arcmin2": tiles.density_per_arcmin2,
                 "star_density_per_arcmin2": tiles.star_density_per_arcmin2,
                 "close_pair_fraction": pairs,
                 "pair_min_separation_pix": tiles.pair_min_separation_pix,
                 "pair_max_separation_pix": tiles.pair_max_separation_pix,
                 "noise_sigma_adu": tiles.noise_sigma_adu,
                 "shear_g1": shear_g1, "shear_g2": shear_g2, **tile_options}})


def prepare_role(tiles, role, progress=None):
    """Simulate and SExtract the missing tiles of one role; return their folders."""
    folders = tile_folders(tiles, role)
    for folder, seed in zip(folders, getattr(tiles, f"{role}_seeds")):
        prepare_tile(folder, simulate_config(tiles, role, seed), tiles.sextractor_config,
                     progress)
    return folders
