"""PSF images for metacalibration: the Moffat/Gaussian profile against its moments and FWHM,
the PSFEx reader against a hand-computed synthetic model and against a model made by the real
``psfex`` from stars of known FWHM."""

import subprocess

import numpy as np
import pytest

from bh_stage.errors import InputFileError
from bh_stage.psf import (GAUSSIAN_FWHM_PER_SIGMA, moffat_or_gaussian_psf, psfex_coefficients,
                          psfex_psf, read_psfex)

from conftest import REPO, write_psfex

PIXEL_SCALE = 0.187


def moments(image):
    """(sum, centroid x, centroid y, Mxx, Myy, Mxy) of an odd-sided image about its centre
    pixel, pixels."""
    c = np.arange(image.shape[0]) - image.shape[0] // 2
    total = image.sum()
    p = image / total
    return (total, (p.sum(axis=0) * c).sum(), (p.sum(axis=1) * c).sum(),
            (p.sum(axis=0) * c**2).sum(), (p.sum(axis=1) * c**2).sum(),
            (p * c[:, None] * c[None, :]).sum())


def half_max_fwhm(image):
    """FWHM (pixels) of a round image: twice the radius where its radial profile crosses half
    its peak (linear interpolation between the sorted pixels)."""
    c = np.arange(image.shape[0]) - image.shape[0] // 2
    r = np.hypot(c[None, :], c[:, None]).ravel()
    order = np.argsort(r)
    r, v = r[order], image.ravel()[order] / image.max()
    i = int(np.argmax(v < 0.5))
    return 2 * (r[i - 1] + (r[i] - r[i - 1]) * (v[i - 1] - 0.5) / (v[i - 1] - v[i]))


@pytest.mark.parametrize("fwhm_arcsec", [0.7, 1.2])
def test_gaussian_sums_to_one_with_sigma_of_its_fwhm(fwhm_arcsec):
    """Second moments = sigma^2 + 1/12 (the pixel's own variance, integrated over 9 x 9
    sub-pixels: 1/12 - 1/(12 * 81)), sigma = FWHM / 2.3548 in pixels; without the pixel term
    within 2 %."""
    image = moffat_or_gaussian_psf(fwhm_arcsec, PIXEL_SCALE, 25)
    total, x, y, mxx, myy, mxy = moments(image)
    sigma = fwhm_arcsec / PIXEL_SCALE / GAUSSIAN_FWHM_PER_SIGMA
    assert image.shape == (25, 25) and total == pytest.approx(1.0, abs=1e-12)
    assert abs(x) < 1e-12 and abs(y) < 1e-12 and abs(mxy) < 1e-12
    pixel_variance = 1 / 12 - 1 / (12 * 81)
    assert mxx == pytest.approx(sigma**2 + pixel_variance, rel=1e-3)
    assert myy == pytest.approx(mxx, rel=1e-12)
    assert np.sqrt(mxx) == pytest.approx(sigma, rel=0.02)
    assert image.argmax() == 12 * 25 + 12


def test_moffat_fwhm_and_wings():
    """A well-sampled Moffat (FWHM 10.7 px): half-maximum width within 2 %; for the same FWHM
    its wings hold more flux than a Gaussian's (beta 2.5)."""
    moffat = moffat_or_gaussian_psf(2.0, PIXEL_SCALE, 61, beta=2.5)
    gauss = moffat_or_gaussian_psf(2.0, PIXEL_SCALE, 61)
    assert moffat.sum() == pytest.approx(1.0, abs=1e-12)
    assert half_max_fwhm(moffat) == pytest.approx(2.0 / PIXEL_SCALE, rel=0.02)
    assert half_max_fwhm(gauss) == pytest.approx(2.0 / PIXEL_SCALE, rel=0.02)
    assert moffat[:5].sum() > 10 * gauss[:5].sum()


@pytest.mark.parametrize("kwargs, match", [
    ({"side_pix": 24}, "odd integer"), ({"beta": 1.0}, "beta must be > 1"),
    ({"fwhm_arcsec": 0.0}, "must be > 0")])
def test_profile_arguments_checked(kwargs, match):
    args = {"fwhm_arcsec": 0.7, "pixel_scale_arcsec": PIXEL_SCALE, "side_pix": 25, **kwargs}
    with pytest.raises(ValueError, match=match):
        moffat_or_gaussian_psf(**args)


def test_psfex_coefficients_in_psfex_order(tmp_path):
    """Degree 2: 1, u, u^2, v, u v, v^2 with u, v from 1-based POLZERO (GalSim's
    DES_PSFEx order), here computed by hand."""
    path = write_psfex(tmp_path / "m.psf", np.ones((6, 5, 5)), 2, (100.0, 200.0), (50.0, 40.0))
    model = read_psfex(path)
    # 0-based (124, 219) is 1-based (125, 220): u = 25 / 50 = 0.5, v = 20 / 40 = 0.5
    np.testing.assert_allclose(psfex_coefficients(model, 124.0, 219.0),
                               [1, 0.5, 0.25, 0.5, 0.25, 0.25], rtol=1e-12)
    # 0-based (99, 159): u = 0, v = -1
    np.testing.assert_allclose(psfex_coefficients(model, 99.0, 159.0), [1, 0, 0, -1, 0, 1],
                               atol=1e-12)


def test_synthetic_degree_one_model_by_hand(tmp_path):
    """POLDEG 1, PSF_SAMP 1: the PSF at a position is c0 M0 + c1 M1 + c2 M2 (sampled on the
    same grid, so no interpolation), normalised to sum 1, with c = (1, u, v) computed by
    hand from 1-based positions."""
    t = np.arange(15) - 7.0
    m0 = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 2.0**2))
    m0 /= m0.sum()
    m1 = 0.02 * np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 8.0) * (t[None, :] ** 2 - 4)
    m2 = 0.01 * np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / 8.0) * (t[:, None] ** 2 - 4)
    path = write_psfex(tmp_path / "tile.psf", [m0, m1, m2], 1, (1000.5, 2000.0), (400.0, 800.0))
    model = read_psfex(path)
    assert model.degree == 1 and model.zero_pix == (999.5, 1999.0)  # 0-based
    assert model.context == ("X_IMAGE", "Y_IMAGE") and model.sample_pix == 1.0
    # 0-based (1199.5, 1599.0) -> 1-based (1200.5, 1600): u = 200 / 400, v = -400 / 800
    u, v = 0.5, -0.5
    m0, m1, m2 = (m.astype(np.float32).astype(np.float64) for m in (m0, m1, m2))  # file: f4
    expected = m0 + u * m1 + v * m2
    image = psfex_psf(model, 1199.5, 1599.0, 15)
    np.testing.assert_allclose(image, expected / expected.sum(), rtol=1e-6, atol=1e-12)
    assert image.sum() == pytest.approx(1.0, abs=1e-12)
    # cropped to 9 and padded to 21, both centred on the model's centre
    np.testing.assert_allclose(psfex_psf(model, 1199.5, 1599.0, 9),
                               expected[3:12, 3:12] / expected[3:12, 3:12].sum(), rtol=1e-6)
    padded = psfex_psf(model, 1199.5, 1599.0, 21)
    assert padded[:3].sum() == 0 and np.allclose(padded[3:18, 3:18], image)


def test_supersampled_model_is_resampled_to_image_pixels(tmp_path):
    """PSF_SAMP 0.5 (2 model samples per image pixel): a Gaussian of sigma 4 model samples is
    sigma 2 image pixels (a reader that multiplied by the step would give 8)."""
    t = np.arange(41) - 20.0
    g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 4.0**2))
    path = write_psfex(tmp_path / "tile.psf", [g], None, sample_pix=0.5)
    model = read_psfex(path)
    assert model.degree == 0 and model.context == ()
    _, x, y, mxx, myy, _ = moments(psfex_psf(model, 10.0, 10.0, 25))
    assert abs(x) < 1e-9 and abs(y) < 1e-9
    assert mxx == pytest.approx(4.0, rel=0.01) and myy == pytest.approx(4.0, rel=0.01)


def test_psfex_reader_refuses_what_it_cannot_evaluate(tmp_path):
    m = np.zeros((3, 5, 5))
    path = write_psfex(tmp_path / "mag.psf", m, 1, context=("X_IMAGE", "MAG_AUTO"))
    with pytest.raises(InputFileError, match="PSFVAR_KEYS X_IMAGE,Y_IMAGE"):
        read_psfex(path)
    path = write_psfex(tmp_path / "short.psf", m[:2], 1)
    with pytest.raises(InputFileError, match="POLDEG1 1 needs 3 components"):
        read_psfex(path)
    with pytest.raises(InputFileError, match="no such file"):
        read_psfex(tmp_path / "missing.psf")


FWHM_ARCSEC = 0.8


@pytest.fixture(scope="module")
def psfex_models(tmp_path_factory, sextractor, psfex):
    """An 800x800 image of 120 pixel-integrated Gaussian stars of FWHM 0.8" (4.28 px), noise
    5 ADU; source-extractor with the columns PSFEx needs, then psfex with its defaults
    (PSF_SAMPLING auto) and with PSF_SAMPLING 0.5. About 4 s."""
    import fitsio

    folder = tmp_path_factory.mktemp("psfex")
    rng = np.random.default_rng(3)
    side, n = 800, 120
    xs, ys = rng.uniform(30, side - 30, n), rng.uniform(30, side - 30, n)
    fluxes = 10 ** rng.uniform(4.3, 5.3, n)
    sigma = FWHM_ARCSEC / PIXEL_SCALE / GAUSSIAN_FWHM_PER_SIGMA
    image = rng.normal(0.0, 5.0, (side, side))
    sub = (np.arange(5) - 2) / 5  # 5 x 5 sub-pixels
    for x, y, flux in zip(xs, ys, fluxes):
        yy, xx = np.mgrid[int(y) - 15:int(y) + 16, int(x) - 15:int(x) + 16]
        dx = xx[..., None, None] + sub[None, None, None, :] - x
        dy = yy[..., None, None] + sub[None, None, :, None] - y
        profile = np.exp(-(dx**2 + dy**2) / (2 * sigma**2)).mean(axis=(2, 3))
        image[yy, xx] += flux * profile / (2 * np.pi * sigma**2)
    fitsio.write(str(folder / "stars.fits"), image.astype(np.float32),
                 header={"GAIN": 1.0, "SATURATE": 1e9}, clobber=True)
    sex = REPO / "example_config" / "sextractor"
    subprocess.run([sextractor, str(folder / "stars.fits"), "-c", str(sex / "bh.sex"),
                    "-PARAMETERS_NAME", str(sex / "psfex.param"), "-FILTER_NAME",
                    str(sex / "default.conv"), "-WEIGHT_TYPE", "NONE", "-CATALOG_NAME",
                    str(folder / "stars.cat")], check=True)
    config = folder / "default.psfex"
    config.write_text(subprocess.run([psfex, "-dd"], capture_output=True, text=True,
                                     check=True).stdout)
    models = {}
    for sampling in ("0.0", "0.5"):
        subprocess.run([psfex, str(folder / "stars.cat"), "-c", str(config), "-PSF_DIR",
                        str(folder), "-PSF_SUFFIX", f"_{sampling}.psf", "-PSF_SAMPLING",
                        sampling, "-CHECKPLOT_TYPE", "NONE", "-CHECKIMAGE_TYPE", "NONE",
                        "-WRITE_XML", "N", "-NTHREADS", "1", "-VERBOSE_TYPE", "QUIET"],
                       cwd=folder, check=True)
        models[sampling] = read_psfex(folder / f"stars_{sampling}.psf")
    return models


@pytest.mark.integration
@pytest.mark.parametrize("sampling", ["0.0", "0.5"])
def test_real_psfex_model_has_the_stars_fwhm(psfex_models, sampling):
    """The model psfex made from the stars, evaluated at the centre and in two corners: sums
    to 1, centred, and its FWHM is the stars' within 20 % (measured: 4.34 px for the
    automatic sampling, PSF_SAMP 0.93, and 4.24 px for PSF_SAMP 0.5, against 4.28)."""
    model = psfex_models[sampling]
    assert model.degree == 2 and model.components.shape == (6, 25, 25)
    assert model.context == ("X_IMAGE", "Y_IMAGE")
    if sampling == "0.5":
        assert model.sample_pix == 0.5
    for x, y in ((400.0, 400.0), (40.0, 40.0), (760.0, 760.0)):
        image = psfex_psf(model, x, y, 25)
        total, cx, cy, *_ = moments(image)
        assert total == pytest.approx(1.0, abs=1e-12)
        assert abs(cx) < 0.1 and abs(cy) < 0.1
        assert half_max_fwhm(image) == pytest.approx(FWHM_ARCSEC / PIXEL_SCALE, rel=0.2)
