"""The PSF of a tile as an image on its pixel grid, for the metacalibration step (``metacal``).

Input: either a PSF model of the tile, a PSFEx ``.psf`` file (``read_psfex``, evaluated at a
position by ``psfex_psf``), or, for simulations, a Moffat or Gaussian profile of known FWHM
(``moffat_or_gaussian_psf``). Output: a PSF image as ``metacal.metacal_images`` takes it:
float64 ``(side_pix, side_pix)``, odd side, centred on pixel ``[side_pix // 2, side_pix //
2]``, pixel response included, summing to 1. Arrays in, arrays out; the ``.psf`` file is
read by ``io.read_psfex``.

Pixel conventions: positions given to this module are 0-based (numpy's, an integer is a pixel
centre); PSFEx's polynomial is in SExtractor's 1-based X*_IMAGE, Y*_IMAGE, and
``io.read_psfex`` converts its zero points to 0-based once (``io.FITS_ORIGIN``).
"""

import dataclasses
import math
from pathlib import Path

import numpy as np

__all__ = ["GAUSSIAN_FWHM_PER_SIGMA", "SUPERSAMPLE", "PsfexModel", "moffat_or_gaussian_psf",
           "read_psfex", "psfex_coefficients", "psfex_psf"]

GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM / sigma of a Gaussian (2.3548)."""

SUPERSAMPLE = 9
"""``moffat_or_gaussian_psf`` integrates each pixel as the mean of the profile at 9 x 9
sub-pixel centres (odd, so that the centre pixel's centre is a sample)."""

_LANCZOS_ORDER = 3
"""PSFEx resamples its models with a Lanczos-3 kernel (``INTERPF`` in ``vignet_resample``,
astromatic/psfex @ 002d93f, src/vignet.c, whose centre is pixel ``width / 2``, integer
division); ``psfex_psf`` does the same."""


def moffat_or_gaussian_psf(fwhm_arcsec, pixel_scale_arcsec, side_pix, beta=None):
    """Return a round Moffat (``beta`` given) or Gaussian PSF image, pixel-integrated.

    Parameters
    ----------
    fwhm_arcsec : float
        FWHM of the profile before pixel integration, arcsec; > 0.
    pixel_scale_arcsec : float
        Pixel scale, arcsec per pixel; > 0.
    side_pix : int
        Side of the image, pixels; odd, >= 3.
    beta : float, optional
        Moffat index, > 1: ``I(r) ~ (1 + (r / alpha)^2)^-beta`` with ``alpha = FWHM / (2
        sqrt(2^(1/beta) - 1))``. Default None: a Gaussian, ``sigma = FWHM / 2.3548``.

    Returns
    -------
    ndarray, float64, shape (side_pix, side_pix)
        The profile centred on pixel ``[side_pix // 2, side_pix // 2]``, each pixel the mean
        of the profile over its area (``SUPERSAMPLE`` x ``SUPERSAMPLE`` sub-pixel samples),
        normalised to sum 1 over the image (the wings beyond it are dropped, not folded in).

    Raises
    ------
    ValueError
        A size, scale or ``beta`` out of range, or an even ``side_pix``.
    """
    if not (fwhm_arcsec > 0 and pixel_scale_arcsec > 0):
        raise ValueError(f"fwhm_arcsec and pixel_scale_arcsec must be > 0; got {fwhm_arcsec} "
                         f"and {pixel_scale_arcsec}")
    if int(side_pix) != side_pix or side_pix < 3 or side_pix % 2 != 1:
        raise ValueError(f"side_pix must be an odd integer >= 3; got {side_pix}")
    if beta is not None and not beta > 1:
        raise ValueError(f"beta must be > 1 (finite flux) or None (Gaussian); got {beta}")
    fwhm_pix = fwhm_arcsec / pixel_scale_arcsec
    side, n = int(side_pix), SUPERSAMPLE
    # sub-pixel centres, pixel units from the centre pixel's centre, pixel i covering
    # [i - 0.5, i + 0.5)
    t = (np.arange(side * n) - (side * n) // 2) / n
    r2 = t[:, None] ** 2 + t[None, :] ** 2
    if beta is None:
        sigma = fwhm_pix / GAUSSIAN_FWHM_PER_SIGMA
        fine = np.exp(-r2 / (2.0 * sigma**2))
    else:
        alpha = fwhm_pix / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        fine = (1.0 + r2 / alpha**2) ** -beta
    image = fine.reshape(side, n, side, n).mean(axis=(1, 3))
    return image / image.sum()


@dataclasses.dataclass(frozen=True)
class PsfexModel:
    """A PSFEx PSF model (``read_psfex``), to evaluate with ``psfex_psf``.

    Attributes
    ----------
    components : ndarray, float64, shape (n_terms, ny, nx)
        PSF_MASK: one image per polynomial term, in PSFEx's order (``psfex_coefficients``),
        sampled every ``sample_pix`` image pixels, centred on ``[ny // 2, nx // 2]``.
    degree : int
        Total degree of the polynomial in x and y (POLDEG1; 0: the same PSF everywhere).
    zero_pix : tuple of float
        (x0, y0), 0-based pixels: POLZERO1/2 less ``io.FITS_ORIGIN``.
    scale_pix : tuple of float
        (POLSCAL1, POLSCAL2), pixels.
    sample_pix : float
        PSF_SAMP: the model's sampling step, image pixels (< 1: super-sampled).
    context : tuple of str
        (POLNAME1, POLNAME2), e.g. ('X_IMAGE', 'Y_IMAGE'); () for a constant model.
    path : pathlib.Path
    """

    components: np.ndarray
    degree: int
    zero_pix: tuple
    scale_pix: tuple
    sample_pix: float
    context: tuple
    path: Path


def read_psfex(path):
    """Read a PSFEx ``.psf`` file (``io.read_psfex`` gives its checks and errors).

    Returns
    -------
    PsfexModel

    Raises
    ------
    InputFileError
        The file is missing, not a PSFEx model, or a model this reader does not evaluate.
    """
    from . import io

    return PsfexModel(**io.read_psfex(path))


def psfex_coefficients(model, x_pix, y_pix):
    """Return the weights of the model's components at a position: float64 (n_terms,).

    With ``u = (x - x0) / sx``, ``v = (y - y0) / sy`` (``zero_pix``, ``scale_pix``; the
    same as PSFEx's ``(X_IMAGE - POLZERO1) / POLSCAL1`` in 1-based pixels), the weights are
    ``u^i v^j`` for ``i + j <= degree``, ``j`` in the outer loop and ``i`` in the inner one:
    1, u, u^2, ..., v, u v, ..., v^degree (degree 2: 1, u, u^2, v, u v, v^2). This is the
    order of GalSim's reader, ``galsim.des.DES_PSFEx.getPSFArray`` (GalSim-developers/GalSim
    @ 010db1f, galsim/des/des_psfex.py: ``[xto[nx] * yto[ny] for ny in range(order+1) for
    nx in range(order+1-ny)]``), and of esheldon/psfex @ 022ebd9, src/psfex.c
    (``get_summed_eigen_pixel``: component ``k = pcol + prow (deg + 1) - prow (prow - 1) /
    2`` for ``col^pcol row^prow``), both from PSFEx's ``poly_func`` for one group.

    Parameters
    ----------
    model : PsfexModel
    x_pix, y_pix : float
        0-based position on the tile, pixels.
    """
    u = (x_pix - model.zero_pix[0]) / model.scale_pix[0]
    v = (y_pix - model.zero_pix[1]) / model.scale_pix[1]
    d = model.degree
    return np.array([u**i * v**j for j in range(d + 1) for i in range(d + 1 - j)],
                    dtype=np.float64)


def _lanczos_matrix(side_pix, n_in, step):
    """Weights (side_pix, n_in) that sample an image of ``n_in`` samples spaced ``step``
    image pixels, centred on index ``n_in // 2``, at the image pixels ``-side_pix // 2 ..
    side_pix // 2`` around it: Lanczos-3, each row normalised to sum 1 over the samples it
    reaches, and 0 for a pixel beyond the first or last sample (as PSFEx's
    ``vignet_resample``, which interpolates only the output pixels inside the input)."""
    at = n_in // 2 + (np.arange(side_pix) - side_pix // 2) / step
    t = at[:, None] - np.arange(n_in)[None, :]
    w = np.where(np.abs(t) < _LANCZOS_ORDER, np.sinc(t) * np.sinc(t / _LANCZOS_ORDER), 0.0)
    w[(at < 0) | (at > n_in - 1)] = 0.0
    norm = w.sum(axis=1, keepdims=True)
    return np.divide(w, norm, out=np.zeros_like(w), where=norm > 0)


def psfex_psf(model, x_pix, y_pix, side_pix):
    """Return the PSFEx model's PSF at a position of the tile, on the tile's pixel grid.

    ``sum_k c_k(x, y) PSF_MASK[k]`` (``psfex_coefficients``), resampled from the model's
    step (``sample_pix``) to image pixels by a Lanczos-3 kernel about the model's centre
    ``[ny // 2, nx // 2]`` (PSFEx's centre, ``vignet_resample``), cropped or zero-padded to
    ``side_pix``, and normalised to sum 1. PSFEx models the PSF as the pixels see it (the
    pixel response included; GalSim draws them with ``method='no_pixel'``), as
    ``metacal_images`` wants.

    Parameters
    ----------
    model : PsfexModel
    x_pix, y_pix : float
        0-based position on the tile, pixels.
    side_pix : int
        Side of the returned image; odd.

    Returns
    -------
    ndarray, float64, shape (side_pix, side_pix)
        Centred on pixel ``[side_pix // 2, side_pix // 2]``, summing to 1.

    Raises
    ------
    ValueError
        ``side_pix`` even or < 3, or a model whose PSF sums to 0 or less there.
    """
    if int(side_pix) != side_pix or side_pix < 3 or side_pix % 2 != 1:
        raise ValueError(f"side_pix must be an odd integer >= 3; got {side_pix}")
    coeffs = psfex_coefficients(model, x_pix, y_pix)
    local = np.tensordot(coeffs, model.components, axes=(0, 0))
    ny, nx = local.shape
    image = (_lanczos_matrix(int(side_pix), ny, model.sample_pix) @ local
             @ _lanczos_matrix(int(side_pix), nx, model.sample_pix).T)
    total = image.sum()
    if not total > 0:
        raise ValueError(f"{model.path}: the PSFEx PSF at (x, y) = ({x_pix:.1f}, "
                         f"{y_pix:.1f}) (0-based) sums to {total:.3g}; is the position on "
                         "the tile the model was made for?")
    return image / total
