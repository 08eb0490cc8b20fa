"""Metacalibration of stamps: sheared, PSF-reconvolved images, their adaptive-moment shapes and
the shear and selection responses (Huff & Mandelbaum 2017; Sheldon & Huff 2017).

A step after ``stamps`` and before a shear catalogue. Input: background-subtracted stamps
``(n, ny, nx)`` in ADU and the PSF image on the same pixel grid. Output: for each stamp the
images ``1p``, ``1m``, ``2p``, ``2m`` (the galaxy sheared by reduced shear ``+-step`` on
``g1`` and on ``g2``) and ``noshear``, all seen through the same round-ish target PSF; the
adaptive-moment ellipticities of those images; the responses that calibrate a mean shape
into a shear. Arrays only, no file is opened.

The recipe (what ngmix calls ``psf='dilate'``), for every stamp ``I`` and PSF image ``P``
(pixel response included, odd side, centred on its middle pixel, sum 1), in pixel units:

1. ``I`` and ``P`` become continuous profiles by Lanczos interpolation of order 15
   (``X_INTERPOLANT``), zero outside the stamp;
2. deconvolve ``I`` by ``P`` (this removes the PSF and the pixel);
3. shear the result by ``(g1, g2)`` about the stamp's centre pixel (GalSim's ``shear``:
   ``f(x) -> f(A^-1 x)``, ``A = [[1+g1, g2], [g2, 1-g1]] / sqrt(1-g^2)``, area kept);
4. convolve with the target PSF ``T = Pixel * dilate(P / Pixel, 1 + 2 step)``: the PSF
   deconvolved by the unit pixel, dilated (flux kept) by ``reconvolution_dilation(step) =
   1 + 2 step``, convolved with the pixel again (``dilate`` in ngmix: the same ``T`` for
   every type, ``noshear`` included, so the five images differ only by the shear);
5. sample at the stamp's pixel centres without a further pixel (GalSim ``method='no_pixel'``),
   same shape, same centre.

Why ``1 + 2|g|``: in Fourier space the sheared, deconvolved galaxy is ``I(A k) / P(A k)``
and ``|A k| <= (1 + |g|) |k| / sqrt(1 - g^2) < (1 + 2|g|) |k|``, so for a PSF whose transform
falls with ``|k|``, ``T(k) ~ P((1 + 2|g|) k)`` is smaller than ``P(A k)`` everywhere: the
division by ``P`` never amplifies a frequency the reconvolution keeps (Sheldon & Huff 2017).
``T`` is ``P`` dilated, so it is only as round as ``P``: with an anisotropic PSF the mean
shapes also need the PSF-leakage terms, not computed here. ``target_psf="gauss"`` (a round
Gaussian target like ngmix's ``fitgauss``, metadetect's default; not its exact size: ngmix
sizes it from the trace with a capped dilation and adds no pixel) takes instead a round
Gaussian, convolved with the unit pixel, of ``round_target_sigma_pix``: the PSF's adaptive-moment sigma along its major axis (the
Gaussian matched to its core, ``psf_gauss_covariance_pix2``) times ``1 + 2 step``, so that ``T`` falls
at least as fast as ``P(A k)`` in every direction at the core's scale; the five images are
then as round as the galaxy sheared.

Correlated-noise correction (``noise_sigma_adu``; Sheldon & Huff 2017, ngmix ``fixnoise``):
steps 2-4 turn the stamp's white noise into noise correlated along the applied shear, which
itself responds to the shear and biases ``R``. For each stamp a white Gaussian noise image of
the stamp's rms is drawn (``numpy.random.default_rng([seed, first_index + i,
NOISE_STREAM])``, not the stream of the stage's fill noise), rotated by +90 degrees
(``np.rot90``, k=1), put through steps 1-5 with the same shear, rotated back by -90 degrees
and added to the stamp's image of that type (``noshear`` included). A 90-degree
rotation flips the sign of both shear components, so the shear-induced anisotropy of the two
noise fields cancels; the noise variance doubles.

Two routes compute steps 1-5 (``method``), validated against each other in
tests/test_metacal.py (adaptive-moment shapes agree to 6e-7, responses to 6e-5, on noisy
exponential galaxies with the noise correction):

- ``"fft"`` (default): batched FFTs (``scipy.fft``), in float64 or float32 (``dtype``). The
  stamp is zero-padded to an odd side ``M`` (``pad_pix`` a side, default ``max(12, side //
  4)`` rounded up to a fast FFT size), ``D(k) = FFT(stamp)``; the sheared, reconvolved
  image is ``z(A^-1 x)`` with ``Z(k) = D(k) T(A^-1 k) / P(k)`` (the PSF's Fourier
  transform evaluated exactly at any ``k`` as a sum over its pixels, and the Lanczos-15
  transform from a numerical table), then ``z`` is resampled at ``A^-1 x`` by
  trigonometric interpolation: two 1-D matrix products for ``g1`` (a diagonal ``A``),
  three 1-D shears by Fourier phase shifts for ``g2``. It keeps every frequency up to the
  Nyquist one and about 12 pixels of padding; one PSF for all stamps (its filters are kept
  for the next calls with the same PSF).
- ``"galsim"``: the reference, ``galsim.InterpolatedImage`` (``lanczos15``) of stamp and PSF,
  ``galsim.Deconvolve``, ``.shear``, ``galsim.Convolve`` with ``T``, ``drawImage(method=
  'no_pixel')``; GalSim's default accuracy, which drops frequencies where the profiles fall
  below 1e-3 of their flux (``maxk_threshold``). On a noise-free galaxy the two routes
  agree to ~7e-5 of the peak pixel; on noisy stamps their pixels differ by the noise above
  that cut-off (a few percent of a faint galaxy's peak), which adaptive moments do not see.

Shapes, two estimators (``ESTIMATORS``), both the distortion ``e = ((Ixx - Iyy), 2 Ixy) /
(Ixx + Iyy)`` with no PSF correction (the responses calibrate it):
``adaptive_moments`` (GalSim HSM ``FindAdaptiveMom``, Bernstein & Jarvis 2002), the moments
of the elliptical Gaussian weight matched to the image; ``weighted_moments``, the moments under
a fixed round Gaussian weight at a fixed centre (ngmix ``GaussMom``, metadetect's ``wmom``):
a ratio of sums linear in the pixels, with no iteration that can land elsewhere on the ``+g``
and ``-g`` images of one object. For a
selection ``S`` the shear estimate is ``g = (<R_shear>_S + R_sel)^-1 <e>_S`` with
``shear_response`` and ``selection_response``, ``<e>_S`` on the ``noshear`` images.
"""

import functools
import logging
from typing import NamedTuple

import numpy as np
import scipy.fft

from .extras import require

__all__ = [
    "DEFAULT_STEP", "SHEAR_TYPES", "METACAL_TYPES", "METHODS", "X_INTERPOLANT",
    "PSF_SUM_ATOL", "MOM_FAILED", "MOM_NONFINITE", "MOMENTS_DTYPE", "ShearResponse",
    "ESTIMATORS", "TARGET_PSFS", "reconvolution_dilation", "psf_gauss_covariance_pix2",
    "round_target_sigma_pix", "metacal_images", "adaptive_moments",
    "weighted_moments", "metacal_moments",
    "shear_response", "selection_response", "shear_matrix",
]

logger = logging.getLogger(__name__)

DEFAULT_STEP = 0.01
"""Reduced-shear step of the sheared images (ngmix's default)."""
SHEAR_TYPES = ("1p", "1m", "2p", "2m")
"""The sheared images: ``g = (+step, 0), (-step, 0), (0, +step), (0, -step)``."""
METACAL_TYPES = ("noshear",) + SHEAR_TYPES
"""Every image ``metacal_images`` can make; ``noshear`` is reconvolved but not sheared."""
METHODS = ("fft", "galsim")
"""Routes of ``metacal_images``; the first is the default."""
TARGET_PSFS = ("dilate", "gauss")
"""Target PSFs of ``metacal_images`` (module docstring); the first is the default."""
X_INTERPOLANT = "lanczos15"
"""Interpolant of the stamp and the PSF (GalSim's name; Lanczos of order 15)."""
PSF_SUM_ATOL = 1e-3
"""The PSF image must sum to 1 within this."""
_LANCZOS_ORDER = 15
_SHEARS = {"noshear": (0, 0), "1p": (1, 0), "1m": (-1, 0), "2p": (0, 1), "2m": (0, -1)}

MOM_FAILED = 1
"""``FLAGS`` bit: HSM adaptive moments did not converge (or raised); the shape is NaN."""
MOM_NONFINITE = 2
"""``FLAGS`` bit: the image has a non-finite pixel; not measured, the shape is NaN."""

ESTIMATORS = ("adaptive", "weighted")
"""Shape estimators of ``metacal_moments``: ``adaptive_moments``, ``weighted_moments``."""

MOMENTS_DTYPE = np.dtype([("E", "f8", (2,)), ("SIGMA_PIX", "f8"), ("X_PIX", "f8"),
                          ("Y_PIX", "f8"), ("FLUX_ADU", "f8"), ("S2N", "f8"), ("FLAGS", "i2")])
"""Per image, of ``adaptive_moments`` or ``weighted_moments`` (their docstrings give the
details): ``E`` the distortion ``(e1, e2)``; ``SIGMA_PIX`` a size, pixels; ``X_PIX``,
``Y_PIX`` the centroid (adaptive) or the weight's centre (weighted), 0-based pixels of the
stamp; ``FLUX_ADU`` a flux, ADU; ``S2N`` its signal-to-noise (weighted moments given the
noise; NaN otherwise); ``FLAGS`` bits ``MOM_FAILED``, ``MOM_NONFINITE`` (0: measured;
otherwise every float is NaN)."""


def reconvolution_dilation(step):
    """Return the dilation of the PSF in the target PSF, ``1 + 2 step`` (ngmix ``dilate``)."""
    return 1.0 + 2.0 * step


def psf_gauss_covariance_pix2(psf_image, n_iter=100, rtol=1e-10):
    """Covariance (2x2, pixels^2, rows and columns as (x, y)) of the elliptical Gaussian
    matched to a PSF image's core: adaptive moments (Bernstein & Jarvis 2002) by fixed-point
    iteration, a Gaussian weight of covariance ``C`` giving weighted moments ``M`` and the
    profile's ``S = (M^-1 - C^-1)^-1`` (exact for a Gaussian), ``C <- S`` until no element
    moves by more than ``rtol`` times the trace; centred on the image's middle pixel. Numpy
    only. Raises ValueError if it diverges or has not settled after ``n_iter`` steps."""
    psf = np.asarray(psf_image, dtype=np.float64)
    c = np.arange(psf.shape[0]) - psf.shape[0] // 2
    x, y = np.meshgrid(c, c)
    pos = np.stack([x.ravel(), y.ravel()])
    value = psf.ravel()
    cov = np.eye(2) * max(float((value * (x.ravel() ** 2)).sum() / value.sum()), 1.0)
    for _ in range(n_iter):
        w = value * np.exp(-0.5 * np.einsum("in,ij,jn->n", pos, np.linalg.inv(cov), pos))
        moments = (pos * w) @ pos.T / w.sum()
        new = np.linalg.inv(np.linalg.inv(moments) - np.linalg.inv(cov))
        if not np.all(np.isfinite(new)) or np.linalg.eigvalsh(new)[0] <= 0:
            raise ValueError("psf_image: adaptive moments did not converge")
        done = np.abs(new - cov).max() <= rtol * np.trace(new)
        cov = new
        if done:
            return cov
    raise ValueError(f"psf_image: adaptive moments did not settle in {n_iter} steps")


def round_target_sigma_pix(psf_image, step=DEFAULT_STEP):
    """Sigma of the round Gaussian of ``target_psf="gauss"``, pixels: the major-axis sigma of
    ``psf_gauss_covariance_pix2`` times ``reconvolution_dilation(step)``."""
    return float(np.sqrt(np.linalg.eigvalsh(psf_gauss_covariance_pix2(psf_image))[-1])
                 * reconvolution_dilation(step))


NOISE_STREAM = 22
"""Third entry of the correction noise's seed, so that it is not the stream the stage fills
padding and masked pixels from (``stamps.object_rng(seed, index)``)."""


def _noise_rng(seed, index):
    """Generator of object ``index``'s correction noise, independent of its fill noise."""
    return np.random.default_rng([int(seed), int(index), NOISE_STREAM])


def metacal_images(stamps, psf_image, step=DEFAULT_STEP, noise_sigma_adu=None, seed=0, *,
                   types=SHEAR_TYPES, method="fft", first_index=0, pad_pix=None,
                   batch_size=32, noise_index=None, dtype=np.float64, target_psf="dilate"):
    """Return the metacalibration images of stamps (see the module docstring for the recipe).

    Parameters
    ----------
    stamps : array_like, shape (n, s, s)
        Background-subtracted stamps, ADU, square with an odd side ``s``, each centred on its
        object (the shear is applied about pixel ``[s // 2, s // 2]``). A stamp with a
        non-finite pixel gives NaN images (fill masked pixels first, as ``cut_stamps`` does).
    psf_image : array_like, shape (p, p)
        The PSF at the stamps' position as the pixels see it (pixel response included), same
        pixel scale, odd side ``p`` (any, independent of ``s``), centred on pixel
        ``[p // 2, p // 2]``, summing to 1 within ``PSF_SUM_ATOL``. One PSF for all stamps.
    step : float
        Reduced shear of the sheared images, ``0 < step <= 0.1``. Default 0.01.
    noise_sigma_adu : float, optional
        The stamps' noise rms, ADU. Given: the correlated-noise correction (module
        docstring) adds a sheared, rotated noise image to every output image, doubling its
        noise variance. Default None: no correction (noise-free stamps).
    seed : int
        Seed of the correction's noise: stamp ``i`` draws from
        ``numpy.random.default_rng([seed, first_index + i, NOISE_STREAM])``. Default 0.
    types : sequence of str
        Images to return, from ``METACAL_TYPES``. Default ``SHEAR_TYPES`` (the four sheared
        ones); add ``"noshear"`` for the unsheared reconvolved image.
    method : {"fft", "galsim"}
        Route (module docstring). Default ``"fft"``: 23 times less CPU than ``"galsim"`` in
        float64 (0.9 ms a 51x51 stamp for the five images with the noise correction, one
        thread, bench/bench_metacal.py); ``"galsim"`` needs GalSim (the ``metacal`` extra), ``"fft"``
        only numpy and scipy.
    first_index : int
        Index of the first stamp in the whole catalogue, so the noise of a stamp does not
        depend on the batch it falls in. Default 0.
    noise_index : array_like of int, shape (n,), optional
        Each stamp's noise index instead of ``first_index + i`` (e.g. its true object, so
        that two oppositely sheared simulations draw the same correction noise for it).
    pad_pix : int, optional
        ``"fft"`` only: zero padding on each side before the FFT (rounded up to a fast FFT
        size). Default ``max(12, s // 4)``.
    batch_size : int
        ``"fft"`` only: stamps per batch of FFTs; 16-32 keeps a batch in the CPU's cache and
        is fastest (1024 is 3 times slower). Default 32.
    dtype : {numpy.float64, numpy.float32}
        Precision of the images and, on the ``"fft"`` route, of its transforms and products
        (the stamps and the correction noise are drawn and checked in float64): in float32
        the five images with the correction take 1.8 times less CPU
        (bench/bench_metacal.py, ``fft_float32`` against ``fft``), rounding below 1e-6 of a
        stamp's peak, far below its noise. Default float64; the stage, whose networks read
        float32, uses float32.
    target_psf : {"dilate", "gauss"}
        The reconvolution PSF (module docstring): the PSF dilated (ngmix ``dilate``, the
        default) or a round Gaussian (``fitgauss``), whose images are round whatever the PSF.

    Returns
    -------
    dict of str to ndarray
        For each name of ``types``, the images, of ``dtype``, shape (n, s, s), ADU, on the
        stamps' pixel grid.

    Raises
    ------
    ValueError
        Stamps not 3-D, not square or of even side; PSF not 2-D, not square, of even side,
        not finite, not summing to 1 or not centred; ``step``, ``noise_sigma_adu``, ``types``,
        ``method``, ``batch_size``, ``pad_pix``, ``dtype`` or ``target_psf`` out of range.
    """
    types = tuple(types)
    stamps, psf = _check_inputs(stamps, psf_image, step, noise_sigma_adu, types, method,
                                target_psf)
    if int(batch_size) < 1 or (pad_pix is not None and int(pad_pix) < 0):
        raise ValueError(f"batch_size must be >= 1 and pad_pix >= 0 or None; got {batch_size}"
                         f" and {pad_pix}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype must be float64 or float32; got {dtype}")
    shears = [(name, _SHEARS[name][0] * step, _SHEARS[name][1] * step) for name in types]
    run = (functools.partial(_galsim_route, target_psf=target_psf)
           if method == "galsim" else functools.partial(
               _fft_route, pad_pix=pad_pix, batch_size=batch_size, dtype=dtype,
               target_psf=target_psf))
    finite = np.isfinite(stamps).all(axis=(1, 2))
    if not finite.all():
        logger.info("metacal: %d stamps with non-finite pixels give NaN images",
                    int((~finite).sum()))
    out = {name: np.full(stamps.shape, np.nan, dtype) for name in types}
    if not finite.any():
        return out
    batch = stamps[finite]
    n_valid = len(batch)
    if noise_sigma_adu is not None:  # the noise images go through the same batches
        index = (first_index + np.arange(len(stamps)) if noise_index is None
                 else np.asarray(noise_index, dtype=np.int64))[finite]
        noise = np.stack([_noise_rng(seed, i).normal(0.0, noise_sigma_adu, stamps.shape[1:])
                          for i in index])
        batch = np.concatenate([batch, np.rot90(noise, k=1, axes=(1, 2))])
    images = run(batch, psf, step, shears)
    for name in types:
        out[name][finite] = images[name][:n_valid]
        if noise_sigma_adu is not None:
            out[name][finite] += np.rot90(images[name][n_valid:], k=-1, axes=(1, 2))
    return out


def _check_inputs(stamps, psf_image, step, noise_sigma_adu, types, method, target_psf):
    """Validate ``metacal_images``' arguments; return the stamps and PSF as float64."""
    stamps = np.asarray(stamps, dtype=np.float64)
    if stamps.ndim != 3:
        raise ValueError(f"stamps must be 3-D (n, ny, nx); got shape {stamps.shape} "
                         "(use stamps[None] for one stamp)")
    if stamps.shape[1] != stamps.shape[2]:
        raise ValueError(f"stamps must be square; got ny, nx = {stamps.shape[1:]}")
    if stamps.shape[1] % 2 == 0:
        raise ValueError(f"the stamp side must be odd (the shear is about the centre pixel); "
                         f"got {stamps.shape[1]}")
    psf = np.asarray(psf_image, dtype=np.float64)
    if psf.ndim != 2 or psf.shape[0] != psf.shape[1]:
        raise ValueError(f"psf_image must be a square 2-D image; got shape {psf.shape}")
    if psf.shape[0] % 2 == 0:
        raise ValueError(f"the PSF side must be odd (centred on its middle pixel); got "
                         f"{psf.shape[0]}")
    if not np.isfinite(psf).all():
        raise ValueError("psf_image has non-finite pixels")
    total = psf.sum()
    if abs(total - 1.0) > PSF_SUM_ATOL:
        raise ValueError(f"psf_image must sum to 1 (within {PSF_SUM_ATOL}); it sums to "
                         f"{total:.6g}: pass psf_image / psf_image.sum()")
    c = np.arange(psf.shape[0]) - psf.shape[0] // 2
    centroid = (psf.sum(axis=0) @ c, psf.sum(axis=1) @ c)
    if max(abs(centroid[0]), abs(centroid[1])) > 0.5:
        raise ValueError(f"psf_image must be centred on its middle pixel; its centroid is "
                         f"off by (dx, dy) = ({centroid[0]:.3f}, {centroid[1]:.3f}) pixels")
    if not 0.0 < step <= 0.1:
        raise ValueError(f"step must be in (0, 0.1]; got {step}")
    if noise_sigma_adu is not None and not (np.isfinite(noise_sigma_adu)
                                            and noise_sigma_adu > 0):
        raise ValueError(f"noise_sigma_adu must be a positive number or None; got "
                         f"{noise_sigma_adu}")
    unknown = [t for t in types if t not in METACAL_TYPES]
    if unknown or len(types) == 0 or len(set(types)) != len(types):
        raise ValueError(f"types must be distinct names from {METACAL_TYPES}; got "
                         f"{tuple(types)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if target_psf not in TARGET_PSFS:
        raise ValueError(f"target_psf must be one of {TARGET_PSFS}; got {target_psf!r}")
    return stamps, psf


def _galsim_route(stamps, psf, step, shears, target_psf="dilate"):
    """Steps 1-5 through GalSim, one stamp at a time; name -> (n, s, s)."""
    galsim = require("galsim", "metacal")
    psf_int = galsim.InterpolatedImage(galsim.Image(psf, scale=1.0),
                                       x_interpolant=X_INTERPOLANT)
    psf_inv = galsim.Deconvolve(psf_int)
    pixel = galsim.Pixel(1.0)
    if target_psf == "dilate":
        target = galsim.Convolve(galsim.Convolve(psf_int, galsim.Deconvolve(pixel)).dilate(
            reconvolution_dilation(step)), pixel)
    else:
        target = galsim.Convolve(galsim.Gaussian(sigma=round_target_sigma_pix(psf, step)),
                                 pixel)
    side = stamps.shape[1]
    out = {name: np.empty(stamps.shape) for name, _, _ in shears}
    for i, stamp in enumerate(stamps):
        image = galsim.InterpolatedImage(galsim.Image(stamp, scale=1.0),
                                         x_interpolant=X_INTERPOLANT)
        deconvolved = galsim.Convolve(image, psf_inv)
        for name, g1, g2 in shears:
            sheared = deconvolved.shear(g1=g1, g2=g2) if (g1 or g2) else deconvolved
            out[name][i] = galsim.Convolve(sheared, target).drawImage(
                nx=side, ny=side, scale=1.0, method="no_pixel", dtype=np.float64).array
    return out


def shear_matrix(g1, g2):
    """GalSim's shear matrix ``A`` (symmetric, det 1) of reduced shear (g1, g2): a sheared
    profile at ``x`` is the unsheared one at ``A^-1 x``
    (``galsim.Shear(g1=, g2=).getMatrix()``)."""
    c = 1.0 / np.sqrt(1.0 - g1 * g1 - g2 * g2)
    return c * np.array([[1.0 + g1, g2], [g2, 1.0 - g1]])


def _fast_odd_size(n):
    """The smallest odd ``3^a 5^b 7^c >= n`` (a fast FFT length with no Nyquist term)."""
    m = n + 1 - n % 2
    while True:
        r = m
        for f in (3, 5, 7):
            while r % f == 0:
                r //= f
        if r == 1:
            return m
        m += 2


@functools.lru_cache(maxsize=4)
def _lanczos_table(order=_LANCZOS_ORDER, n_u=2001):
    """Fourier transform of the Lanczos kernel ``sinc(x) sinc(x / order)`` (|x| < order) at
    ``u`` = 0 .. 1 cycles per pixel (Simpson's rule with 100 points per pixel), divided by its
    value at 0 so that interpolation keeps the flux (as GalSim's ``conserve_dc`` does; the
    kernel integrates to 1 - 2.4e-5)."""
    x = np.linspace(0.0, order, 100 * order + 1)
    w = np.ones_like(x)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    w *= (x[1] - x[0]) / 3.0
    kernel = np.sinc(x) * np.sinc(x / order) * w
    u = np.linspace(0.0, 1.0, n_u)
    ft = np.empty(n_u)
    for start in range(0, n_u, 500):  # cos(2 pi u x) in blocks, to bound memory
        ft[start:start + 500] = 2.0 * np.cos(2 * np.pi * np.outer(u[start:start + 500], x)) \
            @ kernel
    return u, ft / ft[0]


def _lanczos_ft(k):
    """Lanczos-15 transform at angular frequency ``k`` (rad / pixel); 0 beyond 1 cycle."""
    u, ft = _lanczos_table()
    return np.interp(np.abs(k) / (2 * np.pi), u, ft, right=0.0)


def _psf_ft(psf, kx, ky, matrix=None):
    """Fourier transform of the centred PSF image, exact (a sum over its pixels), at the
    angular frequencies ``matrix @ (kx, ky)`` for every ``kx`` (1-D, columns) and ``ky``
    (1-D, rows) of a grid; shape (len(ky), len(kx)). ``matrix`` (2x2, default identity): the
    phase of pixel (x, y) is a product of a factor of ``kx`` and one of ``ky``, so the sum is
    one matrix product (separable for a diagonal matrix); ``exp(-i k t)`` as powers of
    ``exp(-i k)`` (rounding ~1e-15)."""
    (a, b), (c, d) = np.eye(2) if matrix is None else matrix
    half = psf.shape[0] // 2

    def phases(k):  # exp(-i k t) for t = -half .. half, shape (len(k), 2 half + 1)
        base = np.exp(-1j * k)
        pos = np.cumprod(np.broadcast_to(base[:, None], (base.size, half)), axis=1)
        return np.concatenate([np.conj(pos[:, ::-1]), np.ones((base.size, 1)), pos], axis=1)

    if b == 0 and c == 0:
        return phases(d * ky) @ psf @ phases(a * kx).T
    # k'x x + k'y y = kx (a x + c y) + ky (b x + d y)
    u = (phases(c * kx)[:, :, None] * phases(a * kx)[:, None, :]).reshape(len(kx), -1)
    v = (phases(d * ky)[:, :, None] * phases(b * ky)[:, None, :]).reshape(len(ky), -1)
    return (v * psf.ravel()) @ u.T


def _pixel_ft(kx, ky):
    """Fourier transform of the unit square pixel."""
    return np.sinc(kx / (2 * np.pi)) * np.sinc(ky / (2 * np.pi))


def _mapped_grid(kx, ky, matrix):
    """``matrix @ (kx, ky)`` on the grid of 1-D ``kx`` (columns) and ``ky`` (rows): the two
    components, each of shape (len(ky), len(kx))."""
    kx2, ky2 = np.meshgrid(kx, ky)
    return (matrix[0, 0] * kx2 + matrix[0, 1] * ky2, matrix[1, 0] * kx2 + matrix[1, 1] * ky2)


def _target_ft(psf, kx, ky, matrix, dilation):
    """``T(k) = Pixel(k) * [P_int / Pixel]((1 + 2 step) k)``, the target PSF's transform, at
    ``k = matrix @ (kx, ky)`` on the grid of 1-D ``kx`` (columns) and ``ky`` (rows)."""
    kxs, kys = _mapped_grid(kx, ky, matrix)
    kxd, kyd = dilation * kxs, dilation * kys
    return (_psf_ft(psf, kx, ky, dilation * np.asarray(matrix)) * _lanczos_ft(kxd)
            * _lanczos_ft(kyd) * _pixel_ft(kxs, kys) / _pixel_ft(kxd, kyd))


def _round_target_ft(sigma_pix, kx, ky, matrix):
    """The round target's transform, ``Pixel(k) exp(-sigma^2 |k|^2 / 2)``, at ``k = matrix @
    (kx, ky)`` on the grid of 1-D ``kx`` (columns) and ``ky`` (rows)."""
    kxs, kys = _mapped_grid(kx, ky, matrix)
    return np.exp(-0.5 * sigma_pix ** 2 * (kxs ** 2 + kys ** 2)) * _pixel_ft(kxs, kys)


def _dirichlet(d, m):
    """Trigonometric interpolation weight of an m-periodic sample (m odd) at distance d."""
    den = m * np.sin(np.pi * d / m)
    small = np.abs(den) < 1e-12
    return np.where(small, 1.0, np.sin(np.pi * d) / np.where(small, 1.0, den))


def _phase(shift_pix, k, axis):
    """Fourier factor that resamples m-periodic images at ``t + shift`` along ``axis`` (-1
    x, -2 y), the shift varying along the other axis: (m, len(k)) for x, (len(k), m) for y."""
    return np.exp(1j * (np.outer(k, shift_pix) if axis == -2 else np.outer(shift_pix, k)))


def _shift(z, phase, axis):
    """Real images ``z`` (b, m, m) resampled along ``axis`` with a ``_phase`` factor."""
    return scipy.fft.irfft(scipy.fft.rfft(z, axis=axis) * phase, n=z.shape[axis], axis=axis)


@functools.lru_cache(maxsize=64)
def _fft_plans(psf_bytes, psf_side_pix, side, m, step, shears, dtype_char,
               target_psf="dilate"):
    """``_fft_route``'s filters and resampling factors, ``(name, filter, plan)`` for each
    shear: computed once per key (the PSF's float64 bytes and side, the stamp side, the
    padded side ``m``, the step, the shears, the precision), so a stage's batches share
    them, and a PSFEx model's cells met in one chunk of rows are met again in the next
    (catalogue rows in y order, as SExtractor writes them; a shuffled catalogue gets no hit
    with more than 64 cells, as before the cache), and the target PSF (the round one's size
    is measured here, once per PSF). Read-only arrays, ~0.6 MB a PSF for 65x65 stamps in
    float32."""
    psf = np.frombuffer(psf_bytes, np.float64).reshape(psf_side_pix, psf_side_pix)
    dtype = np.dtype(dtype_char)
    complex_dtype = np.result_type(dtype, np.complex64)
    coord = np.rint(np.fft.fftfreq(m) * m)             # pixel coordinate of each index
    out_grid = np.arange(side) - side // 2
    k_half, k_full = 2 * np.pi * np.fft.rfftfreq(m), 2 * np.pi * np.fft.fftfreq(m)
    psf_ft = _psf_ft(psf, k_half, k_full)
    round_sigma = None if target_psf == "dilate" else round_target_sigma_pix(psf, step)
    plans = []
    for name, g1, g2 in shears:
        b = np.linalg.inv(shear_matrix(g1, g2))       # output pixel x samples z at B x
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero of the PSF's transform
            target = (_target_ft(psf, k_half, k_full, b, reconvolution_dilation(step))
                      if round_sigma is None else _round_target_ft(round_sigma, k_half,
                                                                   k_full, b))
            filt = target / psf_ft
        filt[~np.isfinite(filt)] = 0.0
        if g1 == 0 and g2 == 0:
            plan = ()
        elif g2 == 0:  # diagonal B: resample each axis by trigonometric interpolation
            plan = (_dirichlet(b[1, 1] * out_grid[:, None] - coord, m).astype(dtype),
                    _dirichlet(b[0, 0] * out_grid[:, None] - coord, m).T.astype(dtype))
        else:  # B = U(p) L(q) U(r): shear along x by p y, along y by q x, along x by r y;
            q = b[1, 0]  # the last one only on the rows of the stamp
            wrap = (np.arange(side) - side // 2) % m
            plan = tuple(phase.astype(complex_dtype) for phase in (
                _phase((b[0, 0] - 1) / q * coord, k_half, -1), _phase(q * coord, k_half, -2),
                _phase((b[1, 1] - 1) / q * coord[wrap], k_half, -1)))
        filt = filt.astype(complex_dtype)
        for array in (filt,) + plan:
            array.flags.writeable = False
        plans.append((name, filt, plan))
    return tuple(plans)


def _fft_route(stamps, psf, step, shears, pad_pix=None, batch_size=32, dtype=np.float64,
               target_psf="dilate"):
    """Steps 1-5 with batched FFTs (``scipy.fft``) in ``dtype``; name -> (n, s, s).

    Arrays of side ``m`` hold pixel coordinate ``t`` at index ``t mod m`` (the stamp's centre
    at index 0), so no FFT needs a shift.
    """
    n, side = len(stamps), stamps.shape[1]
    dtype = np.dtype(dtype)
    pad = max(12, side // 4) if pad_pix is None else int(pad_pix)
    m = _fast_odd_size(side + 2 * pad)
    wrap = (np.arange(side) - side // 2) % m           # index of each stamp pixel
    plans = _fft_plans(psf.tobytes(), psf.shape[0], side, m, float(step), tuple(shears),
                       dtype.char, target_psf)
    out = {name: np.empty((n, side, side), dtype) for name, _, _ in shears}
    for start in range(0, n, batch_size):
        chunk = stamps[start:start + batch_size]
        padded = np.zeros((len(chunk), m, m), dtype)
        padded[:, wrap[:, None], wrap] = chunk
        spectrum = scipy.fft.rfft2(padded)
        for name, filt, plan in plans:
            if len(plan) < 3:
                z = scipy.fft.irfft2(spectrum * filt, s=(m, m))
                if not plan:
                    image = z[:, wrap[:, None], wrap]
                else:
                    image = plan[0] @ z @ plan[1]
            else:
                rows = scipy.fft.ifft(spectrum * filt, axis=-2) * plan[0]  # y real, x spectral
                z = _shift(scipy.fft.irfft(rows, n=m, axis=-1), plan[1], -2)
                image = _shift(z[:, wrap], plan[2], -1)[:, :, wrap]
            out[name][start:start + len(chunk)] = image
    return out


def adaptive_moments(images, guess_sigma_pix=5.0):
    """Measure the adaptive moments of images (GalSim HSM ``FindAdaptiveMom``).

    Parameters
    ----------
    images : array_like, shape (n, ny, nx)
        Images in ADU, each with its object near pixel ``[ny // 2, nx // 2]`` (the first
        guess of the centroid).
    guess_sigma_pix : float
        First guess of the weight's size, pixels. Default 5.0 (GalSim's).

    Returns
    -------
    ndarray, dtype ``MOMENTS_DTYPE``, shape (n,)
        ``E`` is the distortion ``((Ixx - Iyy), 2 Ixy) / (Ixx + Iyy)`` of the matched
        elliptical Gaussian weight (not the reduced shear ``g``; ``|e| = (a^2 - b^2) /
        (a^2 + b^2)``), with no PSF correction. An image whose moments fail, or with a
        non-finite pixel, gets NaN and a ``FLAGS`` bit; it never raises for one image.
    """
    galsim = require("galsim", "metacal")
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3:
        raise ValueError(f"images must be 3-D (n, ny, nx); got shape {images.shape}")
    out = np.zeros(len(images), dtype=MOMENTS_DTYPE)
    for name in ("E", "SIGMA_PIX", "X_PIX", "Y_PIX", "FLUX_ADU", "S2N"):
        out[name] = np.nan
    centre = galsim.PositionD(images.shape[2] // 2, images.shape[1] // 2)
    for i, image in enumerate(images):
        if not np.isfinite(image).all():
            out["FLAGS"][i] = MOM_NONFINITE
            continue
        try:
            res = galsim.hsm.FindAdaptiveMom(galsim.Image(image, xmin=0, ymin=0),
                                             guess_sig=guess_sigma_pix,
                                             guess_centroid=centre, strict=False)
        except galsim.GalSimError:  # e.g. a weight that runs off the image
            res = None
        if res is None or res.moments_status != 0:
            out["FLAGS"][i] = MOM_FAILED
            continue
        out["E"][i] = res.observed_shape.e1, res.observed_shape.e2
        out["SIGMA_PIX"][i] = res.moments_sigma
        out["X_PIX"][i], out["Y_PIX"][i] = res.moments_centroid.x, res.moments_centroid.y
        out["FLUX_ADU"][i] = res.moments_amp
    return out


def weighted_moments(images, sigma_pix, centre_offset_pix=None, noise_sigma_adu=None):
    """Measure moments under a fixed round Gaussian weight (ngmix ``GaussMom``, ``wmom``).

    Parameters
    ----------
    images : array_like, shape (n, ny, nx)
        Images in ADU, each with its object near pixel ``[ny // 2, nx // 2]``.
    sigma_pix : float
        The weight's sigma, pixels (metadetect's ``wmom``: FWHM 1.2 arcsec).
    centre_offset_pix : array_like, shape (n, 2), optional
        ``(dx, dy)`` of each weight's centre from pixel ``[ny // 2, nx // 2]``, pixels (the
        detection's sub-pixel offset in a stamp cut at its nearest pixel). Default 0.
    noise_sigma_adu : float, optional
        The images' white-noise rms, ADU: gives ``S2N = sum(w I) / (noise sqrt(sum(w^2)))``
        (ngmix's flux S/N). Default None: ``S2N`` NaN.

    Returns
    -------
    ndarray, dtype ``MOMENTS_DTYPE``, shape (n,)
        With ``w`` the weight (1 at its centre) and ``M_ij = sum(w I x_i x_j) / sum(w I)``
        about the weight's centre: ``E = ((Mxx - Myy), 2 Mxy) / (Mxx + Myy)``; ``SIGMA_PIX``
        ``sqrt((Mxx + Myy) / 2)`` (for a Gaussian of sigma ``s``, ``s w / sqrt(s^2 + w^2)``
        with ``w = sigma_pix``); ``X_PIX``, ``Y_PIX`` the weight's centre (0-based pixels
        of the image); ``FLUX_ADU`` ``sum(w I)`` (for an object much smaller than the
        weight, its flux); ``S2N``. ``FLAGS``: ``MOM_NONFINITE``, or ``MOM_FAILED`` where
        ``sum(w I)`` or the trace is not positive; every float is then NaN.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or sigma_pix is None or not float(sigma_pix) > 0:
        raise ValueError(f"images must be 3-D (n, ny, nx) and sigma_pix > 0; got shape "
                         f"{images.shape} and {sigma_pix}")
    n, ny, nx = images.shape
    offset = (np.zeros((n, 2)) if centre_offset_pix is None
              else np.asarray(centre_offset_pix, dtype=np.float64).reshape(n, 2))
    x0, y0 = nx // 2 + offset[:, 0], ny // 2 + offset[:, 1]
    dx = np.arange(nx)[None, None, :] - x0[:, None, None]
    dy = np.arange(ny)[None, :, None] - y0[:, None, None]
    weight = np.exp(-(dx ** 2 + dy ** 2) / (2.0 * float(sigma_pix) ** 2))
    finite = np.isfinite(images).all(axis=(1, 2))
    wi = weight * np.where(finite[:, None, None], images, 0.0)
    flux = wi.sum(axis=(1, 2))
    mxx, myy, mxy = ((wi * a * b).sum(axis=(1, 2)) for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    out = np.zeros(n, dtype=MOMENTS_DTYPE)
    with np.errstate(invalid="ignore", divide="ignore"):
        trace = (mxx + myy) / flux
        ok = finite & (flux > 0) & (trace > 0)
        out["E"] = np.where(ok[:, None], np.stack([(mxx - myy), 2 * mxy], axis=1)
                            / (mxx + myy)[:, None], np.nan)
        out["SIGMA_PIX"] = np.where(ok, np.sqrt(np.abs(trace) / 2), np.nan)
    out["X_PIX"], out["Y_PIX"] = np.where(ok, x0, np.nan), np.where(ok, y0, np.nan)
    out["FLUX_ADU"] = np.where(ok, flux, np.nan)
    noise = np.nan if noise_sigma_adu is None else float(noise_sigma_adu)
    out["S2N"] = np.where(ok, flux / (noise * np.sqrt((weight ** 2).sum(axis=(1, 2)))), np.nan)
    out["FLAGS"] = np.where(finite, np.where(ok, 0, MOM_FAILED), MOM_NONFINITE)
    return out


def metacal_moments(stamps, psf_image, step=DEFAULT_STEP, noise_sigma_adu=None, seed=0, *,
                    types=METACAL_TYPES, guess_sigma_pix=5.0, estimator="adaptive",
                    weight_sigma_pix=None, centre_offset_pix=None, **kwargs):
    """Return the shapes of each ``metacal_images`` type (same arguments; other keywords go
    to ``metacal_images``): a dict name -> ``MOMENTS_DTYPE`` array (n,). Default ``types``:
    all five, ``noshear`` included. ``estimator``: ``"adaptive"`` (``adaptive_moments``,
    first guess ``guess_sigma_pix``) or ``"weighted"`` (``weighted_moments`` with
    ``weight_sigma_pix`` and ``centre_offset_pix``; its ``S2N`` takes the images' noise as
    ``sqrt(2) noise_sigma_adu``, the variance the correlated-noise correction doubles, and
    ignores the correlation the reconvolution gives it: a nominal S/N, the same on every
    image)."""
    if estimator not in ESTIMATORS or (estimator == "weighted" and weight_sigma_pix is None):
        raise ValueError(f"estimator must be one of {ESTIMATORS} (weighted needs "
                         f"weight_sigma_pix); got {estimator!r}, {weight_sigma_pix}")
    images = metacal_images(stamps, psf_image, step, noise_sigma_adu, seed, types=types,
                            **kwargs)
    if estimator == "weighted":
        noise = None if noise_sigma_adu is None else np.sqrt(2.0) * noise_sigma_adu
        return {name: weighted_moments(images.pop(name), weight_sigma_pix, centre_offset_pix,
                                       noise) for name in types}
    return {name: adaptive_moments(images.pop(name), guess_sigma_pix) for name in types}


class ShearResponse(NamedTuple):
    """The shear response of ``shear_response``."""

    per_object: np.ndarray
    """(n, 2, 2): ``R[:, i, j]``; NaN where a shape is missing."""
    mean: np.ndarray
    """(2, 2): the mean over the objects with four finite shapes (NaN if none)."""
    n_used: int
    """Number of objects in ``mean``."""


def shear_response(e_1p, e_1m, e_2p, e_2m, step=DEFAULT_STEP):
    """Return the shear response ``R_ij = (e_i(j+) - e_i(j-)) / (2 step)``.

    Parameters
    ----------
    e_1p, e_1m, e_2p, e_2m : array_like, shape (n, 2)
        Ellipticities ``(e1, e2)`` measured on the ``1p``, ``1m``, ``2p``, ``2m`` images
        (``adaptive_moments(...)["E"]``); the response is that of this ellipticity, whichever
        its definition.
    step : float
        The images' shear step. Default 0.01.

    Returns
    -------
    ShearResponse
        ``per_object`` (n, 2, 2), ``mean`` (2, 2) over the objects whose four shapes are
        finite, ``n_used``. Restrict the inputs to a selection first; its ``mean`` then
        enters ``g = (mean + R_sel)^-1 <e>``.
    """
    e = [np.asarray(x, dtype=np.float64) for x in (e_1p, e_1m, e_2p, e_2m)]
    if any(x.ndim != 2 or x.shape[1] != 2 or x.shape != e[0].shape for x in e):
        raise ValueError("e_1p, e_1m, e_2p, e_2m must all have shape (n, 2); got "
                         f"{[x.shape for x in e]}")
    per_object = np.stack([(e[0] - e[1]) / (2 * step), (e[2] - e[3]) / (2 * step)], axis=-1)
    ok = np.isfinite(per_object).all(axis=(1, 2))
    mean = per_object[ok].mean(axis=0) if ok.any() else np.full((2, 2), np.nan)
    return ShearResponse(per_object, mean, int(ok.sum()))


def selection_response(e, sel_1p, sel_1m, sel_2p, sel_2m, step=DEFAULT_STEP):
    """Return the selection response ``R_sel_ij = (<e_i>_S(j+) - <e_i>_S(j-)) / (2 step)``.

    Parameters
    ----------
    e : array_like, shape (n, 2)
        Ellipticities measured on the ``noshear`` images.
    sel_1p, sel_1m, sel_2p, sel_2m : array_like of bool, shape (n,)
        The selection recomputed from the ``1p``, ``1m``, ``2p``, ``2m`` images (cut on the
        quantities measured there, e.g. their S/N or size). An object whose ``e`` is not
        finite counts as not selected.
    step : float
        The images' shear step. Default 0.01.

    Returns
    -------
    ndarray, shape (2, 2)
        ``R_sel[i, j]``: each mean of ``e_i`` is over the objects selected on the image
        sheared along ``j``.

    Raises
    ------
    ValueError
        Shapes that do not match, or a selection that keeps no object.
    """
    e = np.asarray(e, dtype=np.float64)
    sels = [np.asarray(s) for s in (sel_1p, sel_1m, sel_2p, sel_2m)]
    if e.ndim != 2 or e.shape[1] != 2 or any(s.shape != (len(e),) or s.dtype != bool
                                             for s in sels):
        raise ValueError(f"e must have shape (n, 2) and each selection be a boolean (n,); got "
                         f"{e.shape} and {[(s.shape, s.dtype.name) for s in sels]}")
    finite = np.isfinite(e).all(axis=1)
    means = []
    for name, sel in zip(("sel_1p", "sel_1m", "sel_2p", "sel_2m"), sels):
        keep = sel & finite
        if not keep.any():
            raise ValueError(f"{name} selects no object with a finite e")
        means.append(e[keep].mean(axis=0))
    return np.stack([(means[0] - means[1]) / (2 * step), (means[2] - means[3]) / (2 * step)],
                    axis=-1)
