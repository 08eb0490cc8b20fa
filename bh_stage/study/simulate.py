"""Simulation step: GalSim stamps and tiles for training, testing and integration tests.

Inputs: a ``SimulateConfig`` and the COSMOS samples in ``cfg.cosmos_dir`` (see
``../shared/cosmos/README.md``). Outputs, in memory: noise-free stamps with their truth table
and attributes (``simulate_stamps``), or a noisy CFIS-like tile with its weight map, truth
table and header cards (``simulate_tile``). ``run_simulate`` joins them with ``io`` and writes
the files.

Models (Farrens et al. 2021, section 2):

- Galaxies are COSMOS parametric fits (Sersic or bulge+disc, ``gal_type='parametric'``) or
  real HST images (``gal_type='real'``), each rotated by a uniform random angle.
- Every galaxy gets an AB magnitude ``m`` drawn from one law, dN/dm ∝ 10^(slope m) between
  ``mag_min`` and ``mag_max``. Its flux is the COSMOS catalogue flux for a 300 s exposure on
  the CFHT (``galsim.COSMOSCatalog(..., exptime=300, area=80216)``) scaled by
  ``10**(-0.4 (m - m_sample))``, where ``m_sample`` is the sample galaxy's own F814W
  magnitude. **Fluxes are in ADU of a 300 s exposure with gain 1** (1 ADU = 1 photon). A real
  galaxy drawn at ``m`` is chosen at random among the sample galaxies with
  ``m_sample <= m + max_brightening_mag`` (default 0.5), so its HST noise is brightened by
  at most that much; parametric models carry no noise and are chosen uniformly. Every galaxy
  is dilated by ``10**(size_slope_dex_per_mag (m - m_sample))`` (default -0.105, the
  size-magnitude slope of both samples), so a galaxy dimmed by 3 mag is half as large.
- PSF: Moffat (beta 4.765, FWHM ``moffat_fwhm_arcsec``, fixed optical shear
  ``optical_g1, optical_g2``) convolved with a Kolmogorov whose shear components are drawn
  from N(0, ``atmos_g_sigma``) per stamp (per tile for tiles). The Kolmogorov FWHM is solved
  by bisection so that the FWHM measured on the unpixelated, unsheared profile equals
  ``fwhm_arcsec`` (default 0.65"; 0.35" Moffat -> about 0.53" Kolmogorov).
- Tiles: ``tile.shear_g1, tile.shear_g2`` shear the whole scene: every galaxy's profile
  (after its rotation, before the PSF) and every separation between galaxies close enough
  to blend (``lensed_positions``); not stars, not the PSF. A second shear plane
  (``tile.other_shear_g1, other_shear_g2``) holds ``tile.other_plane_fraction`` of the single
  galaxies and, with ``tile.companion_other_plane``, the second member of each injected pair,
  so a merged detection can carry two shears (blends across redshifts). No random draw
  depends on the shears, so two tiles of one seed differing only in shear have the same
  objects, PSF and noise.
- A blend holds a second galaxy, drawn on its own and added; by default at a position uniform
  over the stamp (the paper's definition).
- Tiles only, all off by default (``tile.sersic_fraction``, ``tile.knots_fraction``,
  ``tile.augment_real``): galaxies drawn anew per object (kind ``'sersicdraw'``, one galaxy
  each: ``GAL_ID`` is its tile row, ``tiletruth.object_units`` adds the tile) from the
  single-Sersic fits of ``tile.sersic_catalogue`` (optionally pooled with the parametric
  sample's): a fit row resampled and jittered in (log10 n, log10 hlr, |g|), clipped to the
  fitted ranges, n rounded to ``SERSIC_N_STEP``; GalSim ``RandomKnots`` on a fraction of the
  discs; flux ``10**(-0.4 (m - MAGZP))``; the same size law, ``10**(slope (m - m_ref))``,
  with ``m_ref`` such that a pooled parametric row is as large as its galaxy at every
  magnitude and the rows of a file without magnitudes share the parametric sample's median
  ``log10 hlr - slope m`` (``sersic_fits``). Real galaxies of the training
  half can be augmented (flip, shear, dilation). ``tile.size_calibration: real_train``
  dilates the parametric galaxies and the draws by one factor that puts them on the
  size-magnitude relation of the training-half real galaxies (``size_calibration``; the test
  half is never read). The draws use their own random streams
  (``default_rng([seed, 21, 1])`` and ``[seed, 21, 2]``); with the options off nothing
  changes.

Stamp truth fields (one row per stamp; positions 0-based in the 51x51 stamp, add
``attrs['pad_pix']`` for the padded stamp): ``index`` int64, ``label`` int8 (1 blended, 0
isolated), ``split`` int8 (0 train, 1 valid, 2 test), ``kind`` S10 (b'parametric' or
b'real'), ``x0_pix, y0_pix`` float64 central galaxy, ``x1_pix, y1_pix`` companion (NaN if
isolated), ``separation_pix`` (NaN if isolated), ``flux_ratio`` companion/central (NaN if
isolated), ``gal_id0, gal_id1`` int64 COSMOS catalogue row (-1 if none), ``mag0, mag1`` AB
magnitude assigned, ``flux0_adu, flux1_adu`` total flux, ADU, ``snr_unit0, snr_unit1``
matched-filter SNR ``sqrt(sum(model**2))`` of each noise-free galaxy image at sigma = 1 ADU
(the SNR at noise sigma is ``snr_unit / sigma``).

Reproducibility: stamp ``i`` draws everything from ``numpy.random.default_rng([seed, i])``,
so the output does not depend on ``n_workers`` or ``chunk_size``.

Workers: ``n_workers > 1`` uses a ``multiprocessing`` pool with the 'spawn' start method
(GalSim deadlocks in forked workers once the parent has drawn). Spawned workers re-import the
main module, so a script calling ``simulate_stamps`` with ``n_workers > 1`` needs the usual
``if __name__ == "__main__":`` guard.
"""

import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputFileError
from ..extras import require

__all__ = ["simulate_stamps", "simulate_tile", "run_simulate", "psf_image", "TRUTH_DTYPE",
           "TILE_TRUTH_DTYPE", "SPLIT_TRAIN", "SPLIT_VALID", "SPLIT_TEST", "cosmos_catalogue",
           "sample_mags", "real_galaxy_split", "lensed_positions", "sersic_fits",
           "tile_draws", "DRAW_KIND", "SERSIC_N_STEP", "size_calibration",
           "blurred_hlr_arcsec", "SIZE_CALIBRATION_MAG"]

log = logging.getLogger(__name__)

SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = 0, 1, 2
EDGE_MARGIN_PIX = 5.0
"""A companion whose centre is closer than this to the stamp edge counts as 'at the edge'."""
MOFFAT_TRUNC_FWHM = 0.0
"""Truncation radius of the Moffat in units of its FWHM; 0 means untruncated (GalSim's
convention). A truncated Moffat was not faster once the optics object is reused."""
HST_ZEROPOINT_AB = 25.94
HST_EFF_AREA_CM2 = math.pi * 120.0 ** 2 * (1 - 0.33 ** 2)

TRUTH_DTYPE = np.dtype([
    ("index", "i8"), ("label", "i1"), ("split", "i1"), ("kind", "S10"),
    ("x0_pix", "f8"), ("y0_pix", "f8"), ("x1_pix", "f8"), ("y1_pix", "f8"),
    ("separation_pix", "f8"), ("flux_ratio", "f8"), ("gal_id0", "i8"), ("gal_id1", "i8"),
    ("mag0", "f8"), ("mag1", "f8"), ("flux0_adu", "f8"), ("flux1_adu", "f8"),
    ("snr_unit0", "f8"), ("snr_unit1", "f8"),
])

TILE_TRUTH_DTYPE = np.dtype([
    ("ID", "i8"), ("X_PIX0", "f8"), ("Y_PIX0", "f8"), ("X_IMAGE", "f8"), ("Y_IMAGE", "f8"),
    ("RA_DEG", "f8"), ("DEC_DEG", "f8"), ("PAIR_ID", "i8"), ("SEPARATION_PIX", "f8"),
    ("MAG", "f8"), ("FLUX_ADU", "f8"), ("SNR", "f8"), ("GAL_ID", "i8"), ("KIND", "S10"),
    ("PLANE", "i2"), ("SHEAR_G1", "f8"), ("SHEAR_G2", "f8"),
])
"""Tile truth: ``X_PIX0, Y_PIX0`` 0-based (numpy), ``X_IMAGE, Y_IMAGE`` 1-based (FITS and
SExtractor), where the object is drawn (sheared positions); ``PAIR_ID`` -1 for singles;
``SEPARATION_PIX`` to the pair partner before shear (NaN for singles); ``SNR``
matched-filter SNR at the tile's noise sigma; ``PLANE`` 0 (main shear plane), 1 (second
plane) or -1 (star); ``SHEAR_G1, SHEAR_G2`` the reduced shear applied to the object."""


# --- COSMOS samples ---------------------------------------------------------------------

_CATALOGUES = {}
"""Per-process cache of COSMOSCatalog objects, keyed by (folder, file, real, exptime, area)."""


def _check_cosmos_files(cosmos_dir, file_name):
    """Raise InputFileError if the COSMOS folder or catalogue is missing."""
    folder = Path(cosmos_dir)
    fix = ("point cosmos_dir at the folder holding the COSMOS samples or run "
           "galsim_download_cosmos")
    if not folder.is_dir():
        raise InputFileError(f"{folder}: COSMOS folder not found; {fix}")
    path = folder / file_name
    if not path.is_file():
        raise InputFileError(f"{path}: COSMOS catalogue not found; check the catalogue name "
                             f"or {fix}")
    fits_path = folder / file_name.replace(".fits", "_fits.fits")
    if not fits_path.is_file():
        raise InputFileError(f"{fits_path}: COSMOS fit catalogue not found (needed next to "
                             f"{file_name}); {fix}")


def cosmos_catalogue(cosmos_dir, file_name, real, exptime_s, area_cm2):
    """Return the (cached) ``galsim.COSMOSCatalog`` of one sample."""
    key = (str(cosmos_dir), file_name, bool(real), float(exptime_s), float(area_cm2))
    if key not in _CATALOGUES:
        galsim = require("galsim", "study")

        _check_cosmos_files(cosmos_dir, file_name)
        try:
            if real:
                cat = galsim.COSMOSCatalog(file_name=file_name, dir=str(cosmos_dir),
                                           exclusion_level="none", exptime=exptime_s,
                                           area=area_cm2)
            else:
                cat = galsim.COSMOSCatalog(file_name=file_name, dir=str(cosmos_dir),
                                           use_real=False, exptime=exptime_s, area=area_cm2)
        except (OSError, galsim.GalSimError) as err:
            raise InputFileError(f"{Path(cosmos_dir) / file_name}: cannot read COSMOS "
                                 f"catalogue ({err}); point cosmos_dir at a complete sample "
                                 f"or run galsim_download_cosmos") from err
        _CATALOGUES[key] = cat
    return _CATALOGUES[key]


def sample_mags(cat, real):
    """Return the F814W magnitude of every galaxy of a COSMOSCatalog (by its index)."""
    if real:
        return np.asarray(cat.real_cat.cat["MAG"], dtype=np.float64)[cat.orig_index]
    return np.asarray(cat.param_cat["mag_auto"], dtype=np.float64)[cat.orig_index]



def real_galaxy_split(mags):
    """Split the real sample into two halves by alternating magnitude ranks.

    Parameters
    ----------
    mags : ndarray, shape (n,)
        Magnitude of each real galaxy (index into the COSMOSCatalog).

    Returns
    -------
    train, test : ndarray of int64
        Catalogue indices of the training half (even ranks, brightest first) and of the test
        half (odd ranks).
    """
    order = np.argsort(np.asarray(mags), kind="stable")
    return np.sort(order[0::2]).astype(np.int64), np.sort(order[1::2]).astype(np.int64)


class _Sample:
    """Planning view of one sample: indices usable and their magnitudes."""

    def __init__(self, kind, indices, mags, gal_ids):
        self.kind = kind
        self.indices = np.asarray(indices, dtype=np.int64)
        self.mags = np.asarray(mags, dtype=np.float64)[self.indices]
        self.gal_ids = np.asarray(gal_ids, dtype=np.int64)[self.indices]
        order = np.argsort(self.mags, kind="stable")
        self.sorted_indices = self.indices[order]
        self.sorted_mags = self.mags[order]

    def choose(self, rng, mag, max_brightening_mag):
        """Pick a sample galaxy for target magnitude ``mag``; return its catalogue index."""
        if self.kind == "parametric":
            return int(self.indices[rng.integers(self.indices.size)])
        n_ok = int(np.searchsorted(self.sorted_mags, mag + max_brightening_mag, side="right"))
        n_ok = max(n_ok, 1)  # none eligible: the brightest one
        return int(self.sorted_indices[rng.integers(n_ok)])


DRAW_KIND = "sersicdraw"
"""``KIND`` of a galaxy drawn anew per object (``tile.sersic_fraction``)."""
SERSIC_N_STEP = 0.05
"""Sersic draws' n is rounded to this grid so GalSim's per-n Sersic tables (~20 ms each)
are built ~100 times per process, not once per galaxy."""
GALSIM_SERSIC_N_RANGE = (0.3, 6.2)

_SERSIC_FITS = {}


def _bulge_disc_hlr_arcsec(bulge_hlr, bulge_flux, disc_hlr, disc_flux):
    """Circularised half-light radius (arcsec) of a de Vaucouleurs bulge + exponential disc,
    as ``COSMOSCatalog`` builds them: the radius holding half the total flux of the round
    components, whose enclosed flux fraction is ``gammainc(2n, b_n (r / hlr)**(1/n))``."""
    from scipy.optimize import brentq
    from scipy.special import gammainc, gammaincinv

    fb = bulge_flux / (bulge_flux + disc_flux)
    b4, b1 = gammaincinv(8.0, 0.5), gammaincinv(2.0, 0.5)

    def excess(r):
        return (fb * gammainc(8.0, b4 * (r / bulge_hlr) ** 0.25)
                + (1 - fb) * gammainc(2.0, b1 * r / disc_hlr) - 0.5)

    return float(brentq(excess, 1e-6 * min(bulge_hlr, disc_hlr), max(bulge_hlr, disc_hlr)))


def sersic_fits(cosmos_dir, file_name, slope_dex_per_mag, parametric_catalogue,
                pool_parametric=False):
    """Return the fit rows the Sersic draws resample, and each row's reference magnitude.

    The size-magnitude law is the one of every sample: a galaxy drawn at m is dilated by
    ``10**(slope (m - m_ref))``. The rows need an ``m_ref`` that puts them on the relation of
    the parametric sample, in circularised half-light radius h of the profile GalSim draws
    (a Sersic's ``half_light_radius``; for the sample's bulge+disc galaxies,
    ``_bulge_disc_hlr_arcsec``, ~7 % below their single-Sersic fit's):

    - the file's rows carry no magnitude: one ``m_ref_file`` for all, such that their median
      ``log10 h - slope m_ref_file`` equals the parametric sample's median
      ``log10 h_i - slope mag_i`` (mag_i its F814W magnitude). At every magnitude the two
      then have the same median size;
    - a pooled parametric row (the galaxy's single-Sersic fit, h = ``hlr[0]``) gets
      ``m_ref = mag_i + (log10 hlr[0]_i - log10 h_i) / slope``, so at every magnitude it is
      exactly as large as the parametric galaxy ``i`` drawn at that magnitude.

    With slope 0 nothing is dilated and ``m_ref`` is unused (set to the sample's median
    magnitude, and to mag_i).

    Parameters
    ----------
    cosmos_dir : str or Path
        Folder of the COSMOS samples.
    file_name : str
        Text file of single-Sersic fits, one galaxy a row: IDENT, n, half-light radius
        (arcsec), |g|, then columns not used (``cosmos_sersics_sample_N300_cleaned.asc``).
    slope_dex_per_mag : float
        The size-magnitude slope, ``magnitude.size_slope_dex_per_mag``.
    parametric_catalogue : str
        COSMOS catalogue of the parametric sample (its galaxies as ``COSMOSCatalog`` keeps
        them; fits n ``sersicfit[:, 2]``, circularised half-light radius ``hlr[:, 0]``, axis
        ratio ``sersicfit[:, 3]``, ``mag_auto``).
    pool_parametric : bool
        Also pool the parametric sample's single-Sersic fits (|g| = (1 - q) / (1 + q)).

    Returns
    -------
    dict
        ``log_n, log_hlr`` (log10 of n and of the half-light radius parameter in arcsec),
        ``g``, ``m_ref`` (AB), ``ident`` (IDENT of the row), each an ndarray over the pooled
        rows; ``m_ref_file``; ``intercept`` (the parametric sample's median
        ``log10 h_i - slope mag_i``, h in arcsec).

    Raises
    ------
    InputFileError
        A file is missing or has fewer than 4 columns.
    """
    key = (str(cosmos_dir), file_name, float(slope_dex_per_mag), parametric_catalogue,
           bool(pool_parametric))
    if key in _SERSIC_FITS:
        return _SERSIC_FITS[key]
    path = Path(cosmos_dir) / file_name
    try:
        rows = np.loadtxt(path, ndmin=2)
    except (OSError, ValueError) as err:
        raise InputFileError(f"{path}: cannot read the Sersic fits ({err}); set "
                             f"tile.sersic_catalogue to a text file of IDENT, n, hlr (arcsec), "
                             f"|g| rows in cosmos_dir") from err
    if rows.shape[1] < 4:
        raise InputFileError(f"{path}: {rows.shape[1]} columns, expected at least 4 (IDENT, "
                             f"n, hlr arcsec, |g|); check tile.sersic_catalogue")
    pcat = cosmos_catalogue(cosmos_dir, parametric_catalogue, False, 300.0, 80216.0)
    fits = pcat.param_cat[pcat.orig_index]
    p_n = fits["sersicfit"][:, 2].astype(np.float64)
    p_hlr = fits["hlr"][:, 0].astype(np.float64)
    p_q = fits["sersicfit"][:, 3].astype(np.float64)
    p_g = (1 - p_q) / (1 + p_q)
    p_mag = sample_mags(pcat, False)
    h_par = np.array([_bulge_disc_hlr_arcsec(r["hlr"][1], r["flux"][1], r["hlr"][2],
                                             r["flux"][2]) if r["use_bulgefit"]
                      else float(r["hlr"][0]) for r in fits])
    h_file = rows[:, 2]
    sl = float(slope_dex_per_mag)
    intercept = float(np.median(np.log10(h_par) - sl * p_mag))
    m_ref_file = (float((np.median(np.log10(h_file)) - intercept) / sl) if sl
                  else float(np.median(p_mag)))
    out = {"log_n": np.log10(rows[:, 1]), "log_hlr": np.log10(rows[:, 2]),
           "g": rows[:, 3].copy(), "m_ref": np.full(len(rows), m_ref_file),
           "ident": rows[:, 0].astype(np.int64), "m_ref_file": m_ref_file,
           "intercept": intercept}
    if pool_parametric:
        m_ref = p_mag + (np.log10(p_hlr) - np.log10(h_par)) / sl if sl else p_mag
        out["log_n"] = np.concatenate([out["log_n"], np.log10(p_n)])
        out["log_hlr"] = np.concatenate([out["log_hlr"], np.log10(p_hlr)])
        out["g"] = np.concatenate([out["g"], p_g])
        out["m_ref"] = np.concatenate([out["m_ref"], m_ref])
        out["ident"] = np.concatenate([out["ident"], fits["IDENT"].astype(np.int64)])
    _SERSIC_FITS[key] = out
    return out


class _SersicPool:
    """Planning view of the Sersic draws: ``choose`` resamples a fit row."""

    kind = DRAW_KIND

    def __init__(self, fits):
        self.fits = fits
        self.indices = np.arange(len(fits["g"]), dtype=np.int64)
        self.gal_ids = self.indices  # replaced by the object's tile row in _plan_tile

    def choose(self, rng, mag, max_brightening_mag):
        return int(rng.integers(self.indices.size))


SIZE_CALIBRATION_MAG = 25.0
"""AB magnitude at which ``size_calibration`` matches the median sizes: the middle of the
detected tile galaxies (counts rise 0.3 dex/mag to 26.5; most detections are 24-26 mag),
where the size gap between the parametric and the real samples was measured."""
SIZE_BLUR_FWHM_ARCSEC = 0.1
"""Gaussian the sizes are measured through: about the HST F814W resolution, below which a
real galaxy (a deconvolved HST image) has no information, and which point-like knots need."""
SIZE_PIXEL_ARCSEC = 0.02
SIZE_IMAGE_PIX = 256
SIZE_CALIBRATION_TOL_DEX = 5e-4

_SIZE_CALIBRATIONS = {}


def blurred_hlr_arcsec(gal):
    """Half-light radius (arcsec) of ``gal`` seen through a ``SIZE_BLUR_FWHM_ARCSEC``
    Gaussian: drawn without pixel response on ``SIZE_IMAGE_PIX`` square pixels of
    ``SIZE_PIXEL_ARCSEC``, centred on the profile's origin; the radius where the flux
    enclosed by the pixel centres, sorted by radius, reaches half the image's sum (linear
    interpolation between two pixels)."""
    galsim = require("galsim", "study")

    n, scale = SIZE_IMAGE_PIX, SIZE_PIXEL_ARCSEC
    arr = galsim.Convolve(gal, galsim.Gaussian(fwhm=SIZE_BLUR_FWHM_ARCSEC)).drawImage(
        nx=n, ny=n, scale=scale, method="no_pixel", dtype=np.float64).array
    y, x = np.indices(arr.shape) - (n - 1) / 2.0  # an even image: its centre is a corner
    r = np.hypot(x, y).ravel() * scale
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(arr.ravel()[order])
    half = 0.5 * cum[-1]
    k = max(int(np.searchsorted(cum, half)), 1)
    return float(np.interp(half, cum[k - 1:k + 1], r[order][k - 1:k + 1]))


def size_calibration(cosmos_dir, parametric_catalogue, real_catalogue, slope_dex_per_mag,
                     max_brightening_mag, exptime_s=300.0, area_cm2=80216.0,
                     mag=SIZE_CALIBRATION_MAG):
    """Size offset that puts the parametric sample on the real training half's relation.

    Every sample follows one law, a galaxy drawn at m dilated by ``10**(slope (m - m_i))``
    from its size at its own magnitude; ``tile.size_calibration: real_train`` multiplies the
    parametric galaxies and the Sersic draws by ``10**offset_dex`` on top (the same as
    moving their reference magnitudes by ``-offset_dex / slope``; the slope is unchanged).
    ``offset_dex`` is solved by bisection so that, at ``mag``, the median of
    ``blurred_hlr_arcsec`` over the parametric sample drawn at ``mag`` equals the median over
    the real galaxies of the **training half** (``real_galaxy_split``) that a tile draws at
    ``mag`` (those with F814W magnitude <= ``mag + max_brightening_mag``), each drawn at
    ``mag``, unrotated, unaugmented. The test half is never drawn nor measured. The Sersic
    draws follow the parametric sample (``sersic_fits``), so one offset serves both.

    Parameters
    ----------
    cosmos_dir : str or Path
        Folder of the COSMOS samples.
    parametric_catalogue, real_catalogue : str
        The two samples' catalogues.
    slope_dex_per_mag : float
        ``magnitude.size_slope_dex_per_mag``.
    max_brightening_mag : float
        ``magnitude.max_brightening_mag`` (which real galaxies a tile draws at ``mag``).
    exptime_s, area_cm2 : float
        Flux scaling of the catalogues (sizes do not depend on it).
    mag : float
        AB magnitude of the match; default ``SIZE_CALIBRATION_MAG``.

    Returns
    -------
    dict
        ``offset_dex`` (log10 of the extra dilation), ``mag``, ``real_indices`` (catalogue
        indices of the training-half galaxies measured), ``real_median_hlr_arcsec``,
        ``parametric_median_hlr_arcsec`` (before the offset) and
        ``calibrated_median_hlr_arcsec`` (after), all at ``mag`` through the blur.

    Raises
    ------
    InputFileError
        A COSMOS catalogue is missing or unreadable.
    """
    key = (str(cosmos_dir), parametric_catalogue, real_catalogue, float(slope_dex_per_mag),
           float(max_brightening_mag), float(exptime_s), float(area_cm2), float(mag))
    if key in _SIZE_CALIBRATIONS:
        return _SIZE_CALIBRATIONS[key]
    t0 = time.perf_counter()
    settings = {"cosmos_dir": str(cosmos_dir), "parametric_catalogue": parametric_catalogue,
                "real_catalogue": real_catalogue, "exptime_s": exptime_s,
                "area_cm2": area_cm2, "size_slope_dex_per_mag": slope_dex_per_mag}
    rcat = cosmos_catalogue(cosmos_dir, real_catalogue, True, exptime_s, area_cm2)
    r_mags = sample_mags(rcat, True)
    train, _ = real_galaxy_split(r_mags)  # the test half is dropped here, unread
    sample = _Sample("real", train, r_mags, rcat.orig_index)
    n_ok = max(int(np.searchsorted(sample.sorted_mags, mag + max_brightening_mag,
                                   side="right")), 1)  # as _Sample.choose
    real_idx = np.sort(sample.sorted_indices[:n_ok])
    target = float(np.median(np.log10(
        [blurred_hlr_arcsec(_galaxy(settings, "real", int(i), mag, 0.0)[0])
         for i in real_idx])))
    pcat = cosmos_catalogue(cosmos_dir, parametric_catalogue, False, exptime_s, area_cm2)
    params = [_galaxy(settings, "parametric", i, mag, 0.0)[0] for i in range(pcat.nobjects)]

    def median_log_hlr(offset_dex):
        return float(np.median(np.log10([blurred_hlr_arcsec(g.dilate(10.0 ** offset_dex))
                                         for g in params])))

    before = median_log_hlr(0.0)
    # the blur shrinks size differences, so the offset is beyond target - before: bracket
    # from there, widened until it holds the root (the median grows with the offset)
    lo, hi = sorted((0.0, 1.5 * (target - before)))
    f_lo, f_hi = median_log_hlr(lo) - target, median_log_hlr(hi) - target
    while f_lo > 0:
        lo -= 0.25
        f_lo = median_log_hlr(lo) - target
    while f_hi < 0:
        hi += 0.25
        f_hi = median_log_hlr(hi) - target
    while hi - lo > SIZE_CALIBRATION_TOL_DEX:
        mid = 0.5 * (lo + hi)
        if median_log_hlr(mid) < target:
            lo = mid
        else:
            hi = mid
    offset = 0.5 * (lo + hi)
    out = {"offset_dex": offset, "mag": float(mag),
           "real_indices": tuple(int(i) for i in real_idx),
           "real_median_hlr_arcsec": 10.0 ** target,
           "parametric_median_hlr_arcsec": 10.0 ** before,
           "calibrated_median_hlr_arcsec": 10.0 ** median_log_hlr(offset)}
    log.info("size calibration: parametric galaxies and Sersic draws x 10**(%.4f) = %.3f; "
             "median half-light radius at %.1f mag through a %.2f\" Gaussian: %.3f\" -> "
             "%.3f\" (real training half, %d galaxies: %.3f\"); %.1f s", offset,
             10.0 ** offset, mag, SIZE_BLUR_FWHM_ARCSEC, out["parametric_median_hlr_arcsec"],
             out["calibrated_median_hlr_arcsec"], len(real_idx),
             out["real_median_hlr_arcsec"], time.perf_counter() - t0)
    _SIZE_CALIBRATIONS[key] = out
    return out


def _size_offset_dex(cfg):
    """``offset_dex`` of ``size_calibration`` for a tile config (0 when it is 'none')."""
    if cfg.tile.size_calibration == "none":
        return 0.0
    return size_calibration(cfg.cosmos_dir, cfg.parametric_catalogue, cfg.real_catalogue,
                            cfg.magnitude.size_slope_dex_per_mag,
                            cfg.magnitude.max_brightening_mag, cfg.exptime_s,
                            cfg.area_cm2)["offset_dex"]


COMPACT_KNOTS = {"sigma_arcsec": 0.06, "max_knots": 3, "flux_fraction": (0.1, 0.4),
                 "radius_arcsec": (0.3, 0.9)}
"""``tile.compact_knots_fraction``: 1 to ``max_knots`` Gaussian knots (equally likely counts)
sharing a fraction of the galaxy's light uniform in ``flux_fraction``, each at a radius
uniform in ``radius_arcsec`` and a uniform angle, added to a parametric galaxy after its
size-magnitude dilation (so at fixed arcsec whatever its size); set before any head was
trained with them, around COSMOS index 36's knot (37 % of the light, 0.66 arcsec out;
tile_study_v2.md) and bench_clumps.py's probe (30 %, 0.4-0.7 arcsec)."""


def _draw_extras(cfg, tile_samples, which, cat_index):
    """Per-object parameters of the Sersic draws and of the real-galaxy augmentation.

    Every galaxy takes the same number of values from two streams of its own,
    ``default_rng([seed, 21, 1])`` (Sersic jitter, knots) and ``[seed, 21, 2]``
    (augmentation), whatever its kind, so a draw depends only on the seed and its row.
    With ``tile.size_calibration`` a parametric galaxy's dict is ``{"size_offset_dex": ...}``
    (a draw's carries the same key; ``size_calibration``). Returns one dict (or None) per
    galaxy.
    """
    t = cfg.tile
    n = len(which)
    extras = [None] * n
    offset = _size_offset_dex(cfg)
    if t.size_calibration != "none":
        for i in range(n):
            if tile_samples[which[i]].kind == "parametric":
                extras[i] = {"size_offset_dex": offset}
    pool = next((smp for smp in tile_samples if smp.kind == DRAW_KIND), None)
    if pool is not None:
        f = pool.fits
        rng = np.random.default_rng([cfg.seed, 21, 1])
        z = rng.normal(size=(n, 3))
        u_knots = rng.random(n)
        knots_seed = rng.integers(1, 2 ** 31 - 1, size=n)
        cols = np.stack([f["log_n"], f["log_hlr"], f["g"]], axis=1)
        lo, hi = cols.min(axis=0), cols.max(axis=0)
        lo[0] = max(lo[0], math.log10(GALSIM_SERSIC_N_RANGE[0]))
        hi[0] = min(hi[0], math.log10(GALSIM_SERSIC_N_RANGE[1]))
        width = t.sersic_bandwidth * cols.std(axis=0)
        n_lo = math.ceil(10 ** lo[0] / SERSIC_N_STEP - 1e-9) * SERSIC_N_STEP
        n_hi = math.floor(10 ** hi[0] / SERSIC_N_STEP + 1e-9) * SERSIC_N_STEP
        for i in range(n):
            if tile_samples[which[i]].kind != DRAW_KIND:
                continue
            row = cat_index[i]
            v = np.clip(cols[row] + width * z[i], lo, hi)
            sersic_n = float(np.clip(round(10 ** v[0] / SERSIC_N_STEP) * SERSIC_N_STEP,
                                     n_lo, n_hi))
            knots = sersic_n < t.knots_max_sersic_n and u_knots[i] < t.knots_fraction
            extras[i] = {"n": round(sersic_n, 6), "hlr_arcsec": float(10 ** v[1]),
                         "g": float(v[2]), "m_ref": float(f["m_ref"][row]),
                         "fit_ident": int(f["ident"][row]), "size_offset_dex": offset,
                         "knots_seed": int(knots_seed[i]) if knots else 0,
                         "knots_npoints": t.knots_npoints,
                         "knots_flux_fraction": t.knots_flux_fraction}
    if t.compact_knots_fraction:
        k = COMPACT_KNOTS
        rng = np.random.default_rng([cfg.seed, 21, 3])
        u = rng.random(n)
        count = rng.integers(1, k["max_knots"] + 1, size=n)
        flux = rng.uniform(*k["flux_fraction"], size=n)
        radius = rng.uniform(*k["radius_arcsec"], size=(n, k["max_knots"]))
        angle = rng.uniform(0.0, 2 * math.pi, size=(n, k["max_knots"]))
        for i in range(n):
            if tile_samples[which[i]].kind == "parametric" and u[i] < t.compact_knots_fraction:
                extras[i] = dict(extras[i] or {}, compact_knots_flux=float(flux[i]),
                                 compact_knots=[(float(r), float(a)) for r, a in
                                                zip(radius[i, :count[i]], angle[i, :count[i]])])
    if t.augment_real:
        rng = np.random.default_rng([cfg.seed, 21, 2])
        flip = rng.random(n) < 0.5
        g_abs = t.augment_max_shear * np.sqrt(rng.random(n))  # uniform over the disc
        beta = rng.uniform(0, math.pi, n)
        dil = rng.uniform(1 - t.augment_max_dilation, 1 + t.augment_max_dilation, n)
        for i in range(n):
            if tile_samples[which[i]].kind == "real":
                extras[i] = {"flip": bool(flip[i]),
                             "g1": float(g_abs[i] * math.cos(2 * beta[i])),
                             "g2": float(g_abs[i] * math.sin(2 * beta[i])),
                             "dilation": float(dil[i])}
    return extras


def tile_draws(cfg):
    """What a tile's galaxies draw, from the seed alone (no image is drawn).

    Returns
    -------
    kinds : list of str
        Kind of each truth row (``'parametric'``, ``'real'``, ``DRAW_KIND``, ``'star'``).
    extras : list of dict or None
        Per truth row: a Sersic draw's ``n``, ``hlr_arcsec`` (before the size-magnitude
        dilation), ``g``, ``m_ref``, ``fit_ident`` (IDENT of the resampled row),
        ``knots_seed`` (0: no knots), ``knots_npoints``, ``knots_flux_fraction``; an augmented
        real galaxy's ``flip``, ``g1``, ``g2``, ``dilation``; a parametric galaxy's
        ``size_offset_dex`` and, with compact knots, ``compact_knots_flux`` and
        ``compact_knots`` (radius arcsec, angle rad of each); None otherwise.
    truth : structured ndarray, ``TILE_TRUTH_DTYPE``
        The planned truth rows (positions, ``MAG``, ``GAL_ID``, ``KIND``; no fluxes).
    """
    kind = cfg.tile.galaxy_kind
    samples, _ = _load_samples(cfg, kind != "real", kind != "parametric")
    plans, truth, _ = _plan_tile(cfg, *_tile_samples(cfg, samples))
    return [p["kind"] for p in plans], [p.get("extra") for p in plans], truth


def _load_samples(cfg, need_parametric, need_real):
    """Load the needed catalogues; return samples, the real split and the zero point."""
    out = {"parametric": None, "real_all": None, "real_train": None, "real_test": None}
    zps = []
    if need_parametric:
        pcat = cosmos_catalogue(cfg.cosmos_dir, cfg.parametric_catalogue, False,
                                cfg.exptime_s, cfg.area_cm2)
        mags = sample_mags(pcat, False)
        out["parametric"] = _Sample("parametric", np.arange(pcat.nobjects), mags,
                                    pcat.orig_index)
        zps.append(mags)
    split = None
    if need_real:
        rcat = cosmos_catalogue(cfg.cosmos_dir, cfg.real_catalogue, True, cfg.exptime_s,
                                cfg.area_cm2)
        mags = sample_mags(rcat, True)
        train, test = real_galaxy_split(mags)
        out["real_train"] = _Sample("real", train, mags, rcat.orig_index)
        out["real_test"] = _Sample("real", test, mags, rcat.orig_index)
        split = {"rule": "sorted by F814W MAG, even ranks (0, 2, ...) -> train, odd -> test",
                 "catalogue": cfg.real_catalogue,
                 "train_gal_ids": [int(v) for v in np.asarray(rcat.orig_index)[train]],
                 "test_gal_ids": [int(v) for v in np.asarray(rcat.orig_index)[test]]}
    return out, split


def magnitude_zeropoint(exptime_s, area_cm2):
    """AB zero point of the flux scaling: ``m = MAGZP - 2.5 log10(flux_adu)``.

    GalSim's COSMOS fluxes are HST counts/s (F814W, AB zero point 25.94) times
    ``exptime * area / HST_area``; the sample magnitudes agree with it to ~0.05 mag.
    """
    return HST_ZEROPOINT_AB + 2.5 * math.log10(exptime_s * area_cm2 / HST_EFF_AREA_CM2)


def draw_magnitudes(rng, n, mag_min, mag_max, slope_dex_per_mag):
    """Draw ``n`` magnitudes from dN/dm ∝ 10^(slope m) on [mag_min, mag_max] (inverse CDF)."""
    u = rng.random(n)
    if abs(slope_dex_per_mag) < 1e-12:
        return mag_min + u * (mag_max - mag_min)
    a = slope_dex_per_mag * math.log(10)
    lo, hi = math.exp(a * (mag_min - mag_max)), 1.0
    return mag_max + np.log(lo + u * (hi - lo)) / a


# --- PSF --------------------------------------------------------------------------------

_KOLMO_CACHE = {}


def solve_kolmogorov_fwhm(fwhm_arcsec, moffat_beta, moffat_fwhm_arcsec):
    """Return the Kolmogorov FWHM (arcsec) giving a total measured FWHM of ``fwhm_arcsec``.

    The total FWHM is measured with ``galsim.Image.calculateFWHM`` on the unsheared,
    unpixelated Moffat * Kolmogorov profile drawn at 1/40 of the target FWHM per pixel.
    """
    key = (fwhm_arcsec, moffat_beta, moffat_fwhm_arcsec)
    if key in _KOLMO_CACHE:
        return _KOLMO_CACHE[key]
    galsim = require("galsim", "study")

    scale = fwhm_arcsec / 40.0

    def measured(fk):
        prof = galsim.Convolve(galsim.Moffat(beta=moffat_beta, fwhm=moffat_fwhm_arcsec,
                                             trunc=MOFFAT_TRUNC_FWHM * moffat_fwhm_arcsec),
                               galsim.Kolmogorov(fwhm=fk))
        return prof.drawImage(nx=257, ny=257, scale=scale, method="no_pixel").calculateFWHM()

    lo, hi = 1e-3 * fwhm_arcsec, fwhm_arcsec
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if measured(mid) < fwhm_arcsec:
            lo = mid
        else:
            hi = mid
    _KOLMO_CACHE[key] = 0.5 * (lo + hi)
    return _KOLMO_CACHE[key]


_OPTICS_CACHE = {}


def _make_psf(psf, g1, g2):
    """Build the PSF of one stamp (Moffat with optical shear * sheared Kolmogorov)."""
    galsim = require("galsim", "study")

    key = (psf["moffat_beta"], psf["moffat_fwhm_arcsec"], psf["optical_g1"],
           psf["optical_g2"], MOFFAT_TRUNC_FWHM)
    if key not in _OPTICS_CACHE:  # one object per process keeps GalSim's k-space tables warm
        optics = galsim.Moffat(beta=psf["moffat_beta"], fwhm=psf["moffat_fwhm_arcsec"],
                               trunc=MOFFAT_TRUNC_FWHM * psf["moffat_fwhm_arcsec"])
        _OPTICS_CACHE[key] = optics.shear(g1=psf["optical_g1"], g2=psf["optical_g2"])
    optics = _OPTICS_CACHE[key]
    kkey = ("kolmogorov", psf["kolmogorov_fwhm_arcsec"])
    if kkey not in _OPTICS_CACHE:
        _OPTICS_CACHE[kkey] = galsim.Kolmogorov(fwhm=psf["kolmogorov_fwhm_arcsec"])
    atmos = _OPTICS_CACHE[kkey].shear(g1=g1, g2=g2)
    return galsim.Convolve(optics, atmos)


def psf_image(cfg, psf_g1, psf_g2, size_pix):
    """Draw a tile's PSF as its pixels see it (pixel response included), unit flux.

    Parameters
    ----------
    cfg : bh_stage.config.SimulateConfig
        The tile's config (PSF section and pixel scale).
    psf_g1, psf_g2 : float
        Shear of the tile's Kolmogorov, header keys ``BH_PSFG1, BH_PSFG2``.
    size_pix : int
        Side of the image; odd, the PSF centre is the pixel ``size_pix // 2``.

    Returns
    -------
    ndarray, float64, shape (size_pix, size_pix)
    """
    psf = _make_psf(_settings(cfg)["psf"], psf_g1, psf_g2)
    return psf.drawImage(nx=size_pix, ny=size_pix, scale=cfg.pixel_scale_arcsec,
                         dtype=np.float64).array


def _settings(cfg):
    """Picklable settings a worker needs to draw."""
    psf = dict(vars(cfg.psf))
    psf["kolmogorov_fwhm_arcsec"] = solve_kolmogorov_fwhm(
        cfg.psf.fwhm_arcsec, cfg.psf.moffat_beta, cfg.psf.moffat_fwhm_arcsec)
    return {"cosmos_dir": str(cfg.cosmos_dir), "parametric_catalogue": cfg.parametric_catalogue,
            "real_catalogue": cfg.real_catalogue, "exptime_s": cfg.exptime_s,
            "area_cm2": cfg.area_cm2, "pixel_scale_arcsec": cfg.pixel_scale_arcsec,
            "size_slope_dex_per_mag": cfg.magnitude.size_slope_dex_per_mag,
            "size_pix": cfg.stamp.size_pix, "draw_size_pix": cfg.tile.draw_size_pix,
            "psf": psf}


# --- drawing (runs in workers) ----------------------------------------------------------

_WORKER_SETTINGS = {}


def _init_worker(settings):
    _WORKER_SETTINGS.clear()
    _WORKER_SETTINGS.update(settings)


def _flux_adu(settings, mag):
    """Flux in ADU of an AB magnitude (the survey's zero point)."""
    return 10.0 ** (-0.4 * (mag - magnitude_zeropoint(settings["exptime_s"],
                                                       settings["area_cm2"])))


def _size_magnitude(settings, gal, mag, m_ref, offset_dex=0.0):
    """The size-magnitude law of every sample: ``gal`` (its size at ``m_ref``) dilated by
    ``10**(size_slope_dex_per_mag (mag - m_ref) + offset_dex)``, flux kept
    (``offset_dex``: ``size_calibration``'s, 0 without it)."""
    slope = settings["size_slope_dex_per_mag"]
    if not slope and not offset_dex:
        return gal
    return gal.dilate(10.0 ** (slope * (mag - m_ref) + offset_dex))


def _galaxy(settings, kind, cat_index, mag, theta_rad, extra=None):
    """Return the rotated galaxy (a point source for kind 'star') at magnitude ``mag`` (flux
    in ADU) and its flux. ``extra``: a Sersic draw's parameters (kind ``DRAW_KIND``), a
    real galaxy's augmentation or a parametric galaxy's ``size_offset_dex``
    (``_draw_extras``)."""
    galsim = require("galsim", "study")

    if kind == "star":
        star = galsim.DeltaFunction(flux=_flux_adu(settings, mag))
        return star, float(star.flux)
    if kind == DRAW_KIND:
        e = extra
        knots_flux = e["knots_flux_fraction"] if e["knots_seed"] else 0.0
        gal = galsim.Sersic(n=e["n"], half_light_radius=e["hlr_arcsec"], flux=1.0 - knots_flux)
        if knots_flux:
            gal = gal + galsim.RandomKnots(e["knots_npoints"],
                                           half_light_radius=e["hlr_arcsec"], flux=knots_flux,
                                           rng=galsim.BaseDeviate(e["knots_seed"]))
        gal = gal.shear(g=e["g"], beta=0.0 * galsim.radians)
        gal = _size_magnitude(settings, gal.withFlux(_flux_adu(settings, mag)), mag, e["m_ref"],
                              e.get("size_offset_dex", 0.0))
        gal = gal.rotate(theta_rad * galsim.radians)
        return gal, float(gal.flux)
    real = kind == "real"
    cat = cosmos_catalogue(settings["cosmos_dir"],
                           settings["real_catalogue" if real else "parametric_catalogue"], real,
                           settings["exptime_s"], settings["area_cm2"])
    if real:
        gal = cat.makeGalaxy(int(cat_index), gal_type="real", noise_pad_size=0)
    else:
        gal = cat.makeGalaxy(int(cat_index), gal_type="parametric")
    m_sample = sample_mags(cat, real)[int(cat_index)]
    offset = extra.get("size_offset_dex", 0.0) if extra is not None and not real else 0.0
    gal = _size_magnitude(settings, gal.withScaledFlux(10.0 ** (-0.4 * (mag - m_sample))),
                          mag, m_sample, offset)
    if extra is not None and not real and "compact_knots" in extra:
        gal = _with_compact_knots(galsim, gal, extra)
    if extra is not None and real:  # augmentation; flux kept, the rotation below follows
        if extra["flip"]:
            gal = gal.transform(-1.0, 0.0, 0.0, 1.0)
        gal = gal.shear(g1=extra["g1"], g2=extra["g2"]).dilate(extra["dilation"])
    gal = gal.rotate(theta_rad * galsim.radians)
    return gal, float(gal.flux)


def _with_compact_knots(galsim, gal, extra):
    """``gal`` with ``extra``'s compact knots (``COMPACT_KNOTS``), the total flux kept."""
    flux, share = gal.flux, extra["compact_knots_flux"]
    knots = [galsim.Gaussian(sigma=COMPACT_KNOTS["sigma_arcsec"],
                             flux=flux * share / len(extra["compact_knots"]))
             .shift(r * math.cos(a), r * math.sin(a)) for r, a in extra["compact_knots"]]
    return galsim.Add([gal.withScaledFlux(1.0 - share), *knots])


def _draw(settings, gal, psf, size_pix, dx_pix, dy_pix):
    """Draw ``gal * psf`` on a ``size_pix`` square with the profile centre offset from the
    centre pixel ``size_pix // 2`` by (dx, dy) pixels; return a float64 ``[y, x]`` array."""
    img = __import__("galsim").Convolve(gal, psf).drawImage(
        nx=size_pix, ny=size_pix, scale=settings["pixel_scale_arcsec"],
        offset=(dx_pix, dy_pix), dtype=np.float64)
    return img.array  # 0-based [y, x] from here on


def _draw_stamp_chunk(plans):
    """Draw a list of stamp plans; return (stamps, flux0, flux1, snr0, snr1)."""
    s = _WORKER_SETTINGS
    size = s["size_pix"]
    c = size // 2
    n = len(plans)
    stamps = np.zeros((n, size, size), dtype=np.float32)
    flux = np.full((n, 2), np.nan)
    snr = np.full((n, 2), np.nan)
    for k, p in enumerate(plans):
        psf = _make_psf(s["psf"], p["psf_g1"], p["psf_g2"])
        total = np.zeros((size, size))
        for j in range(p["n_gal"]):
            gal, flux[k, j] = _galaxy(s, p["kind"], p["cat_index"][j], p["mag"][j],
                                      p["theta"][j])
            arr = _draw(s, gal, psf, size, p["x"][j] - c, p["y"][j] - c)
            snr[k, j] = math.sqrt(float(np.sum(arr * arr)))
            total += arr
        stamps[k] = total
    return stamps, flux, snr


def _draw_tile_chunk(plans):
    """Draw tile galaxies; return a list of (x_lo, y_lo, array) and fluxes and unit SNRs."""
    s = _WORKER_SETTINGS
    d = s["draw_size_pix"] | 1  # odd, so the centre is a pixel
    c = d // 2
    psf = _make_psf(s["psf"], s["tile_psf_g1"], s["tile_psf_g2"])
    out, flux, snr = [], [], []
    for p in plans:
        gal, f = _galaxy(s, p["kind"], p["cat_index"], p["mag"], p["theta"], p.get("extra"))
        if p["g1"] or p["g2"]:  # lensing (galaxies only: a star's shear is 0), after rotation
            gal = gal.shear(g1=p["g1"], g2=p["g2"])
        ix, iy = int(math.floor(p["x"] + 0.5)), int(math.floor(p["y"] + 0.5))
        arr = _draw(s, gal, psf, d, p["x"] - ix, p["y"] - iy).astype(np.float32)
        out.append((ix - c, iy - c, arr))
        flux.append(f)
        snr.append(math.sqrt(float(np.sum(arr.astype(np.float64) ** 2))))
    return out, np.array(flux), np.array(snr)


def _run_chunks(func, chunks, settings, n_workers, progress=None, sizes=None):
    """Run ``func`` on each chunk, in order, in this process or in a spawn pool."""
    sizes = sizes or [len(c) for c in chunks]
    done, total = np.cumsum(sizes), int(sum(sizes))
    if n_workers <= 1 or len(chunks) <= 1:
        _init_worker(settings)
        for chunk, n_done in zip(chunks, done):
            result = func(chunk)
            if progress is not None:
                progress(int(n_done), total, "stamps")
            yield result
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(min(n_workers, len(chunks)), initializer=_init_worker,
                    initargs=(settings,))
    try:
        for result, n_done in zip(pool.imap(func, chunks), done):
            if progress is not None:
                progress(int(n_done), total, "stamps")
            yield result
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


# --- stamp data sets --------------------------------------------------------------------

def split_sizes(n_stamps, train_fraction, valid_fraction):
    """Return even (train, valid, test) counts summing to ``n_stamps`` (even)."""
    n_train = 2 * int(round(n_stamps * train_fraction / 2))
    n_valid = 2 * int(round(n_stamps * valid_fraction / 2))
    n_valid = min(n_valid, n_stamps - n_train)
    return n_train, n_valid, n_stamps - n_train - n_valid


def _place_companion(rng, x0, y0, size, sep_cfg):
    """Draw the companion position (0-based pixels) of a blend."""
    lo, hi = -0.5, size - 0.5
    close = sep_cfg.close_fraction is not None and rng.random() < sep_cfg.close_fraction
    for _ in range(10000):
        if close:
            r = rng.uniform(sep_cfg.min_separation_pix, sep_cfg.close_max_pix)
            phi = rng.uniform(0, 2 * math.pi)
            x1, y1 = x0 + r * math.cos(phi), y0 + r * math.sin(phi)
            if lo <= x1 <= hi and lo <= y1 <= hi:
                return x1, y1
        else:
            x1, y1 = rng.uniform(lo, hi, 2)
            r = math.hypot(x1 - x0, y1 - y0)
            rmin = (sep_cfg.close_max_pix if sep_cfg.close_fraction is not None
                    else sep_cfg.min_separation_pix)
            if r >= rmin:
                return float(x1), float(y1)
    raise ConfigError("separation: no companion position satisfies the separation limits "
                      "inside the stamp; lower min_separation_pix or close_max_pix")


def _plan_stamps(cfg, samples):
    """Plan every stamp (labels, splits, galaxies, positions, PSF) from the seed."""
    n = cfg.n_stamps
    sizes = split_sizes(n, cfg.train_fraction, cfg.valid_fraction)
    split = np.repeat(np.array([SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST], np.int8), sizes)
    label = np.zeros(n, np.int8)
    lab_rng = np.random.default_rng([cfg.seed, 2 ** 31 - 1])
    start = 0
    for size in sizes:
        lab = np.zeros(size, np.int8)
        lab[: size // 2] = 1
        label[start:start + size] = lab_rng.permutation(lab)
        start += size
    size_pix = cfg.stamp.size_pix
    c = size_pix // 2
    mcfg = cfg.magnitude
    plans = []
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, i])
        if cfg.set_kind == "parametric":
            kind, sample = "parametric", samples["parametric"]
        elif cfg.set_kind == "real":
            kind, sample = "real", samples["real_" + cfg.real_half]
        else:
            is_real = rng.random() < cfg.real_fraction
            kind = "real" if is_real else "parametric"
            sample = samples["real_" + cfg.mixed_real_half] if is_real else samples["parametric"]
        n_gal = 2 if label[i] else 1
        mags = draw_magnitudes(rng, n_gal, mcfg.mag_min, mcfg.mag_max, mcfg.slope_dex_per_mag)
        cat_index = [sample.choose(rng, m, mcfg.max_brightening_mag) for m in mags]
        theta = rng.uniform(0, 2 * math.pi, n_gal)
        g1, g2 = rng.normal(0.0, cfg.psf.atmos_g_sigma, 2)
        jit = cfg.separation.center_jitter_pix
        x0, y0 = c + rng.uniform(-jit, jit, 2)
        xs, ys = [float(x0)], [float(y0)]
        if n_gal == 2:
            x1, y1 = _place_companion(rng, x0, y0, size_pix, cfg.separation)
            xs.append(x1)
            ys.append(y1)
        plans.append({"index": i, "kind": kind, "n_gal": n_gal, "mag": [float(m) for m in mags],
                      "cat_index": cat_index, "gal_id": [int(sample.gal_ids[
                          np.searchsorted(sample.indices, ci)]) for ci in cat_index],
                      "theta": [float(t) for t in theta], "psf_g1": float(g1),
                      "psf_g2": float(g2), "x": xs, "y": ys})
    return plans, label, split


def _stamp_fractions(truth, size_pix, close_max_pix):
    """Return (close fraction, edge fraction, median separation) of the blends."""
    blend = truth["label"] == 1
    if not blend.any():
        return float("nan"), float("nan"), float("nan")
    sep = truth["separation_pix"][blend]
    x1, y1 = truth["x1_pix"][blend], truth["y1_pix"][blend]
    dist_edge = np.minimum.reduce([x1 + 0.5, y1 + 0.5, size_pix - 0.5 - x1,
                                   size_pix - 0.5 - y1])
    return (float(np.mean(sep < close_max_pix)), float(np.mean(dist_edge < EDGE_MARGIN_PIX)),
            float(np.median(sep)))


def simulate_stamps(cfg, progress=None):
    """Simulate a stamp data set in memory.

    Parameters
    ----------
    cfg : bh_stage.config.SimulateConfig
        Resolved config (``set_kind``, ``n_stamps``, ``seed``, ``n_workers``, sections).
    progress : callable, optional
        Called as ``progress(done, total, "stamps")`` after each chunk.

    Returns
    -------
    stamps : ndarray, float32, shape (n, size + 2 pad, size + 2 pad)
        Noise-free stamps, ADU of a 300 s CFHT exposure (gain 1), zero-padded by ``pad_pix``.
    truth : structured ndarray, dtype ``TRUTH_DTYPE``, shape (n,)
        One row per stamp (fields in the module docstring).
    attrs : dict
        ``config`` (YAML), ``seed``, ``bh_stage_version``, ``noise_sigma_adu``,
        ``n_realisations``, ``size_pix``, ``pad_pix``, ``pixel_scale_arcsec``, ``set_kind``,
        ``real_split`` (JSON), ``real_train_gal_ids``, ``real_test_gal_ids``,
        ``close_fraction``, ``edge_fraction``, ``median_separation_pix`` and more.

    Raises
    ------
    InputFileError
        The COSMOS folder or a catalogue is missing or unreadable.
    """
    import yaml

    from .. import __version__
    from ..config import config_to_dict
    from ..stamps import pad_stamps

    t0 = time.perf_counter()
    samples, real_split = _load_samples(cfg, cfg.set_kind in ("parametric", "mixed"),
                                        cfg.set_kind in ("real", "mixed"))
    if real_split is None:  # record the split even for a parametric set, when available
        try:
            _, real_split = _load_samples(cfg, False, True)
        except InputFileError:
            real_split = {"rule": "real sample not available", "train_gal_ids": [],
                          "test_gal_ids": []}
    plans, label, split = _plan_stamps(cfg, samples)
    settings = _settings(cfg)
    chunks = [plans[i:i + cfg.chunk_size] for i in range(0, len(plans), cfg.chunk_size)]
    log.info("simulating %d %s stamps with %d worker(s), %d chunks", len(plans), cfg.set_kind,
             cfg.n_workers, len(chunks))
    parts = list(_run_chunks(_draw_stamp_chunk, chunks, settings, cfg.n_workers, progress))
    raw = np.concatenate([p[0] for p in parts])
    flux = np.concatenate([p[1] for p in parts])
    snr = np.concatenate([p[2] for p in parts])
    stamps = pad_stamps(raw, cfg.stamp.pad_pix)

    truth = np.zeros(len(plans), dtype=TRUTH_DTYPE)
    for name in ("x1_pix", "y1_pix", "separation_pix", "flux_ratio", "mag1"):
        truth[name] = np.nan
    truth["gal_id1"] = -1
    for k, p in enumerate(plans):
        row = truth[k]
        row["index"], row["label"], row["split"] = p["index"], label[k], split[k]
        row["kind"] = p["kind"].encode()
        row["x0_pix"], row["y0_pix"] = p["x"][0], p["y"][0]
        row["gal_id0"], row["mag0"] = p["gal_id"][0], p["mag"][0]
        if p["n_gal"] == 2:
            row["x1_pix"], row["y1_pix"] = p["x"][1], p["y"][1]
            row["separation_pix"] = math.hypot(p["x"][1] - p["x"][0], p["y"][1] - p["y"][0])
            row["gal_id1"], row["mag1"] = p["gal_id"][1], p["mag"][1]
    truth["flux0_adu"], truth["flux1_adu"] = flux[:, 0], flux[:, 1]
    truth["snr_unit0"], truth["snr_unit1"] = snr[:, 0], snr[:, 1]
    truth["flux_ratio"] = truth["flux1_adu"] / truth["flux0_adu"]

    close, edge, median_sep = _stamp_fractions(truth, cfg.stamp.size_pix,
                                               cfg.separation.close_max_pix)
    sigma = cfg.noise.realistic_sigma_adu
    median_snr = float(np.median(truth["snr_unit0"])) / sigma
    elapsed = time.perf_counter() - t0
    log.info("blends: close (< %.0f px) fraction %.3f, companions within %.0f px of the edge "
             "%.3f, median separation %.1f px", cfg.separation.close_max_pix, close,
             EDGE_MARGIN_PIX, edge, median_sep)
    log.info("median SNR of the central galaxy at sigma %.1f ADU: %.1f", sigma, median_snr)
    log.info("simulated %d stamps in %.1f s (%.1f stamps/s)", len(plans), elapsed,
             len(plans) / elapsed)
    attrs = {
        "config": yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
        "seed": int(cfg.seed), "bh_stage_version": __version__,
        "noise_sigma_adu": np.asarray(cfg.noise.sigma_grid_adu, dtype=np.float64),
        "n_realisations": int(cfg.noise.n_realisations),
        "realistic_sigma_adu": float(sigma),
        "size_pix": int(cfg.stamp.size_pix), "pad_pix": int(cfg.stamp.pad_pix),
        "pixel_scale_arcsec": float(cfg.pixel_scale_arcsec), "set_kind": cfg.set_kind,
        "real_split": json.dumps(real_split),
        "real_train_gal_ids": np.asarray(real_split["train_gal_ids"], dtype=np.int64),
        "real_test_gal_ids": np.asarray(real_split["test_gal_ids"], dtype=np.int64),
        "close_max_pix": float(cfg.separation.close_max_pix),
        "close_fraction": close, "edge_margin_pix": EDGE_MARGIN_PIX, "edge_fraction": edge,
        "median_separation_pix": median_sep,
        "median_snr_central_at_realistic_sigma": median_snr,
        "kolmogorov_fwhm_arcsec": settings["psf"]["kolmogorov_fwhm_arcsec"],
        "flux_unit": "ADU of a 300 s CFHT exposure (area 80216 cm2), gain 1",
        "magzp_ab": magnitude_zeropoint(cfg.exptime_s, cfg.area_cm2),
        "stamps_per_s": len(plans) / elapsed,
    }
    return stamps, truth, attrs


# --- tiles ------------------------------------------------------------------------------

def _tile_wcs_cards(cfg):
    t = cfg.tile
    scale_deg = cfg.pixel_scale_arcsec / 3600.0
    return [
        ("CTYPE1", "RA---TAN", "gnomonic projection"),
        ("CTYPE2", "DEC--TAN", "gnomonic projection"),
        ("CRPIX1", (t.nx_pix + 1) / 2.0, "reference pixel, 1-based"),
        ("CRPIX2", (t.ny_pix + 1) / 2.0, "reference pixel, 1-based"),
        ("CRVAL1", t.crval_ra_deg, "RA at the reference pixel, deg"),
        ("CRVAL2", t.crval_dec_deg, "Dec at the reference pixel, deg"),
        ("CD1_1", -scale_deg, "deg/pixel"), ("CD1_2", 0.0, "deg/pixel"),
        ("CD2_1", 0.0, "deg/pixel"), ("CD2_2", scale_deg, "deg/pixel"),
        ("CUNIT1", "deg", ""), ("CUNIT2", "deg", ""),
        ("RADESYS", "ICRS", ""), ("EQUINOX", 2000.0, ""),
    ]


def _tile_samples(cfg, samples):
    """Return the tile's galaxy samples and the probability of drawing from each."""
    kind = cfg.tile.galaxy_kind
    frac = cfg.tile.sersic_fraction
    if frac > 0 and kind in ("parametric", "mixed"):
        pool = _SersicPool(sersic_fits(cfg.cosmos_dir, cfg.tile.sersic_catalogue,
                                       cfg.magnitude.size_slope_dex_per_mag,
                                       cfg.parametric_catalogue, cfg.tile.sersic_pool_parametric))
        if kind == "parametric":
            return [samples["parametric"], pool], [1.0 - frac, frac]
        return ([samples["parametric"], samples["real_" + cfg.mixed_real_half], pool],
                [(1.0 - frac) * (1.0 - cfg.real_fraction), (1.0 - frac) * cfg.real_fraction,
                 frac])
    if kind == "parametric":
        return [samples["parametric"]], [1.0]
    if kind == "real":
        return [samples[f"real_{cfg.real_half}"]], [1.0]
    return ([samples["parametric"], samples["real_" + cfg.mixed_real_half]],
            [1.0 - cfg.real_fraction, cfg.real_fraction])


def _plan_tile(cfg, tile_samples, weights):
    """Plan the objects of a tile: galaxy positions, pairs, magnitudes, models, then stars."""
    t = cfg.tile
    rng = np.random.default_rng([cfg.seed, 1])
    area_arcmin2 = t.nx_pix * t.ny_pix * (cfg.pixel_scale_arcsec / 60.0) ** 2
    n_obj = int(rng.poisson(t.density_per_arcmin2 * area_arcmin2))
    n_pairs = int(round(t.close_pair_fraction * n_obj / 2))
    n_single = n_obj - 2 * n_pairs
    x = list(rng.uniform(-0.5, t.nx_pix - 0.5, n_single))
    y = list(rng.uniform(-0.5, t.ny_pix - 0.5, n_single))
    pair_id = [-1] * n_single
    sep = [np.nan] * n_single
    margin = t.pair_max_separation_pix + 1
    for k in range(n_pairs):
        xa = rng.uniform(margin, t.nx_pix - 1 - margin)
        ya = rng.uniform(margin, t.ny_pix - 1 - margin)
        r = rng.uniform(t.pair_min_separation_pix, t.pair_max_separation_pix)
        phi = rng.uniform(0, 2 * math.pi)
        x += [xa, xa + r * math.cos(phi)]
        y += [ya, ya + r * math.sin(phi)]
        pair_id += [k, k]
        sep += [r, r]
    n = len(x)
    mags = draw_magnitudes(rng, n, cfg.magnitude.mag_min, cfg.magnitude.mag_max,
                           cfg.magnitude.slope_dex_per_mag)
    theta = rng.uniform(0, 2 * math.pi, n)
    which = rng.choice(len(tile_samples), size=n, p=weights)
    cat_index = [tile_samples[w].choose(rng, m, cfg.magnitude.max_brightening_mag)
                 for w, m in zip(which, mags)]
    gal_ids = [int(tile_samples[w].gal_ids[np.searchsorted(tile_samples[w].indices, ci)])
               for w, ci in zip(which, cat_index)]
    kinds = [tile_samples[w].kind for w in which]
    extras = _draw_extras(cfg, tile_samples, which, cat_index)
    gal_ids = [i if k == DRAW_KIND else g for i, (k, g) in enumerate(zip(kinds, gal_ids))]
    n_star = int(rng.poisson(t.star_density_per_arcmin2 * area_arcmin2))
    x += list(rng.uniform(-0.5, t.nx_pix - 0.5, n_star))
    y += list(rng.uniform(-0.5, t.ny_pix - 0.5, n_star))
    mags = np.concatenate([mags, rng.uniform(t.star_mag_min, t.star_mag_max, n_star)])
    theta = np.concatenate([theta, np.zeros(n_star)])
    cat_index += [-1] * n_star
    extras += [None] * n_star
    gal_ids += [-1] * n_star
    kinds += ["star"] * n_star
    pair_id += [-1] * n_star
    sep += [np.nan] * n_star
    g1, g2 = rng.normal(0.0, cfg.psf.atmos_g_sigma, 2)
    plane = np.full(len(x), -1, np.int16)  # stars
    plane[:n] = np.random.default_rng([cfg.seed, 3]).random(n) < t.other_plane_fraction
    if t.companion_other_plane:
        plane[n_single + 1:n:2] = 1
    plane[n_single:n:2] = 0  # the first member of a pair is on the main plane
    shears = np.zeros((len(x), 2))
    shears[plane == 0] = t.shear_g1, t.shear_g2
    shears[plane == 1] = t.other_shear_g1, t.other_shear_g2
    x, y = lensed_positions(np.array(x), np.array(y), plane, shears, mags)
    plans = [{"kind": kinds[i], "cat_index": cat_index[i], "mag": float(mags[i]),
              "theta": float(theta[i]), "x": float(x[i]), "y": float(y[i]),
              "g1": float(shears[i, 0]), "g2": float(shears[i, 1]), "extra": extras[i]}
             for i in range(len(x))]
    truth = np.zeros(len(x), dtype=TILE_TRUTH_DTYPE)
    truth["ID"] = np.arange(1, len(x) + 1)
    truth["PLANE"] = plane
    truth["SHEAR_G1"], truth["SHEAR_G2"] = shears.T
    truth["X_PIX0"], truth["Y_PIX0"] = x, y
    truth["X_IMAGE"], truth["Y_IMAGE"] = truth["X_PIX0"] + 1, truth["Y_PIX0"] + 1
    truth["PAIR_ID"], truth["SEPARATION_PIX"] = pair_id, sep
    truth["MAG"] = mags
    truth["GAL_ID"] = gal_ids
    truth["KIND"] = [k.encode() for k in kinds]
    return plans, truth, (float(g1), float(g2))


LENS_LINK_PIX = 24.0
"""Friends-of-friends linking length of ``lensed_positions``' groups, pixels (4.5"): beyond
it two galaxies do not blend (the stage's stamp is 51 px, its tile head reads 33)."""


def lensed_positions(x_pix, y_pix, plane, shears, mags, link_pix=LENS_LINK_PIX):
    """Where the tile's galaxies are seen once sheared: every separation that can blend.

    Galaxies closer than ``link_pix`` are linked into groups (friends of friends); in each
    group the brightest main-plane galaxy (else the brightest) stays where it is, the
    anchor, and every other member moves to ``x_a + A(g) (x - x_a)`` with ``A``
    (``metacal.shear_matrix``) of its own plane's shear. So every separation within a group
    is sheared exactly as a constant shear shears the sky (across planes, by the local
    difference of the two), while each group keeps its place on the pixel grid: a shear
    about the tile centre would move galaxies far from it by ``g r`` (40 px at 2000 px for
    g = 0.02), so that a tile and its oppositely sheared twin no longer share the noise
    under an object and the pair's noise cancellation is lost. The groups' own
    displacements are a deflection, unobservable under a constant shear. Stars do not move.

    Parameters
    ----------
    x_pix, y_pix : ndarray, shape (n,)
        Unsheared 0-based positions.
    plane : ndarray of int, shape (n,)
        0 main plane, 1 second plane, -1 star.
    shears : ndarray, shape (n, 2)
        Reduced shear of each object (that of its plane).
    mags : ndarray, shape (n,)
        Magnitudes (the brightest member anchors a group).
    link_pix : float
        Linking length, pixels.

    Returns
    -------
    x_pix, y_pix : ndarray, shape (n,)
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from ..metacal import shear_matrix

    x_out, y_out = np.array(x_pix, dtype=float), np.array(y_pix, dtype=float)
    gal = np.flatnonzero(np.asarray(plane) >= 0)
    if len(gal) < 2 or not np.any(shears[gal]):
        return x_out, y_out
    xy = np.stack([x_out[gal], y_out[gal]], axis=1)
    links = cKDTree(xy).query_pairs(link_pix, output_type="ndarray")
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])),
                       shape=(len(gal), len(gal)))
    _, group = connected_components(graph, directed=False)
    # anchor: the brightest main-plane member, else the brightest member: the first member
    # of each group in that order (every group id 0..n_groups-1 occurs)
    order = np.lexsort((np.asarray(mags)[gal], np.asarray(plane)[gal] != 0))
    anchor = order[np.unique(group[order], return_index=True)[1]]
    offset = xy - xy[anchor[group]]
    moved = np.empty_like(xy)
    for g1g2 in np.unique(shears[gal], axis=0):
        rows = np.flatnonzero((shears[gal] == g1g2).all(axis=1))
        moved[rows] = offset[rows] @ shear_matrix(*g1g2).T
    moved += xy[anchor[group]]
    x_out[gal], y_out[gal] = moved[:, 0], moved[:, 1]
    return x_out, y_out


def simulate_tile(cfg, progress=None, keep_models=False):
    """Simulate a CFIS-like tile in memory.

    Parameters
    ----------
    cfg : bh_stage.config.SimulateConfig
        Resolved config; the tile is described by ``cfg.tile``, the PSF, magnitudes, COSMOS
        samples, seed and workers by the top level.
    progress : callable, optional
        Called as ``progress(done, total, "stamps")`` after each chunk of galaxies.
    keep_models : bool
        Also return every object's noise-free image.

    Returns
    -------
    image : ndarray, float32, shape (ny, nx)
        Sky-subtracted tile in ADU (300 s, gain 1) with Gaussian noise, clipped at SATURATE.
    weight : ndarray, float32, shape (ny, nx)
        Inverse variance 1/sigma^2 (1 where sigma is 0), 0 in the optional masked box.
    truth : structured ndarray, dtype ``TILE_TRUTH_DTYPE``
        One row per galaxy; X/Y_PIX0 0-based, X/Y_IMAGE 1-based.
    header_cards : list of (key, value, comment)
        TAN WCS, GAIN, SATURATE, SEEING (arcsec), EXPTIME, MAGZP (AB), provenance.
    models : list of (x_lo, y_lo, ndarray)
        Only with ``keep_models``: per truth row, the 0-based tile pixel of the lower-left
        corner of its noise-free ``draw_size_pix | 1`` square image (float32, ADU).
    """
    from .. import __version__
    from ..config import config_hash

    t = cfg.tile
    t0 = time.perf_counter()
    kind = t.galaxy_kind
    samples, _ = _load_samples(cfg, kind != "real", kind != "parametric")
    plans, truth, (g1, g2) = _plan_tile(cfg, *_tile_samples(cfg, samples))
    settings = _settings(cfg)
    settings["tile_psf_g1"], settings["tile_psf_g2"] = g1, g2
    chunks = [plans[i:i + cfg.chunk_size] for i in range(0, len(plans), cfg.chunk_size)]
    log.info("simulating a %d x %d tile with %d galaxies (%d in pairs), %d worker(s)",
             t.nx_pix, t.ny_pix, len(plans), int(np.sum(truth["PAIR_ID"] >= 0)),
             cfg.n_workers)
    image = np.zeros((t.ny_pix, t.nx_pix), dtype=np.float32)
    fluxes, snrs, models = [], [], []
    for drawn, flux, snr in _run_chunks(_draw_tile_chunk, chunks, settings, cfg.n_workers,
                                        progress):
        fluxes.append(flux)
        snrs.append(snr)
        if keep_models:
            models += drawn
        for x_lo, y_lo, arr in drawn:
            ny, nx = arr.shape
            ty0, ty1 = max(y_lo, 0), min(y_lo + ny, t.ny_pix)
            tx0, tx1 = max(x_lo, 0), min(x_lo + nx, t.nx_pix)
            if ty1 > ty0 and tx1 > tx0:
                image[ty0:ty1, tx0:tx1] += arr[ty0 - y_lo:ty1 - y_lo, tx0 - x_lo:tx1 - x_lo]
    if plans:
        truth["FLUX_ADU"] = np.concatenate(fluxes)
        sigma = t.noise_sigma_adu
        truth["SNR"] = np.concatenate(snrs) / sigma if sigma > 0 else np.inf
    # Noise, row block by row block, each block from its own seed (bounded memory).
    block = 512
    for b, y0 in enumerate(range(0, t.ny_pix, block)):
        rng = np.random.default_rng([cfg.seed, 2, b])
        rows = image[y0:y0 + block]
        rows += rng.normal(0.0, t.noise_sigma_adu, rows.shape).astype(np.float32)
    np.minimum(image, t.saturate_adu, out=image)
    weight = np.full(image.shape, 1.0 / t.noise_sigma_adu ** 2 if t.noise_sigma_adu > 0
                     else 1.0, dtype=np.float32)
    if t.mask_box_pix > 0:
        yb, xb = t.ny_pix // 4, t.nx_pix // 4
        weight[yb:yb + t.mask_box_pix, xb:xb + t.mask_box_pix] = 0.0
        image[yb:yb + t.mask_box_pix, xb:xb + t.mask_box_pix] = 0.0

    from astropy.wcs import WCS

    cards = _tile_wcs_cards(cfg)
    wcs = WCS({k: v for k, v, _ in cards})
    ra, dec = wcs.wcs_pix2world(truth["X_PIX0"], truth["Y_PIX0"], 0)
    truth["RA_DEG"], truth["DEC_DEG"] = ra, dec
    cards += [
        ("GAIN", t.gain_e_per_adu, "e-/ADU"),
        ("SATURATE", t.saturate_adu, "ADU; pixels clipped here"),
        ("SEEING", cfg.psf.fwhm_arcsec, "PSF FWHM, arcsec"),
        ("EXPTIME", cfg.exptime_s, "s"),
        ("MAGZP", round(magnitude_zeropoint(cfg.exptime_s, cfg.area_cm2), 4),
         "AB: m = MAGZP - 2.5 log10(flux_ADU)"),
        ("PIXSCALE", cfg.pixel_scale_arcsec, "arcsec/pixel"),
        ("SKYSIG", t.noise_sigma_adu, "Gaussian noise sigma, ADU; sky-subtracted"),
        ("BH_SEED", cfg.seed, "bh-stage simulate seed"),
        ("BH_VERS", __version__, "bh-stage version"),
        ("BH_CONF", config_hash(cfg)[:16], "sha256 of the resolved config (first 16)"),
        ("BH_NGAL", len(plans), "galaxies drawn"),
        ("BH_PSFG1", g1, "shear g1 of the Kolmogorov PSF"),
        ("BH_PSFG2", g2, "shear g2 of the Kolmogorov PSF"),
        ("BH_SHRG1", t.shear_g1, "constant shear g1 of the galaxies"),
        ("BH_SHRG2", t.shear_g2, "constant shear g2 of the galaxies"),
        ("BH_OPFRC", t.other_plane_fraction, "fraction of singles on the second plane"),
        ("BH_OPCMP", t.companion_other_plane, "pair companions on the second plane"),
        ("BH_OSHG1", t.other_shear_g1, "shear g1 of the second plane"),
        ("BH_OSHG2", t.other_shear_g2, "shear g2 of the second plane"),
    ]
    if t.size_calibration != "none":
        cards.append(("BH_SZOFF", round(_size_offset_dex(cfg), 6),
                      f"log10 dilation, parametric+draws ({t.size_calibration})"))
    log.info("tile simulated in %.1f s", time.perf_counter() - t0)
    if keep_models:
        return image, weight, truth, cards, models
    return image, weight, truth, cards


# --- runner -----------------------------------------------------------------------------

def run_simulate(cfg, progress=None):
    """Simulate and write the outputs named in the config (``bh-stage simulate CONFIG``).

    Mode ``stamps`` writes the HDF5 data set ``cfg.output``; mode ``tile`` writes
    ``cfg.tile.image``, ``cfg.tile.weight`` and ``cfg.tile.truth``. Each file is written
    atomically; nothing is computed if an output exists and ``overwrite`` is false.

    Returns
    -------
    str
        One summary line.

    Raises
    ------
    OutputExistsError, InputFileError, ConfigError
    """
    from .. import io

    t0 = time.perf_counter()
    if cfg.mode == "stamps":
        io.check_output(cfg.output, cfg.overwrite, make_parents=True)
        stamps, truth, attrs = simulate_stamps(cfg, progress)
        io.write_dataset(cfg.output, stamps, truth, attrs, cfg.overwrite)
        dt = time.perf_counter() - t0
        return (f"simulate: wrote {len(stamps)} {cfg.set_kind} stamps to {cfg.output} in "
                f"{dt:.1f} s ({len(stamps) / dt:.1f} stamps/s)")
    t = cfg.tile
    for path in (t.image, t.weight, t.truth, t.models):
        if path is not None:
            io.check_output(path, cfg.overwrite, make_parents=True)
    image, weight, truth, cards, *models = simulate_tile(cfg, progress,
                                                          keep_models=t.models is not None)
    io.write_tile(t.image, image, t.weight, weight, cards,
                  compress=str(t.image).endswith(".fz"), overwrite=cfg.overwrite)
    io.write_truth(t.truth, truth, [c for c in cards if c[0] in ("MAGZP", "BH_SEED")],
                   cfg.overwrite)
    if t.models is not None:
        io.write_tile_models(t.models, models[0], cfg.overwrite)
    dt = time.perf_counter() - t0
    return (f"simulate: wrote a {t.nx_pix}x{t.ny_pix} tile with {len(truth)} galaxies to "
            f"{t.image} in {dt:.1f} s ({len(truth) / dt:.1f} galaxies/s)")
