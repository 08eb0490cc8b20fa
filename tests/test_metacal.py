"""Metacalibration (bh_stage.metacal): the sheared images against profiles GalSim draws
directly, the response of a Gaussian against its analytic value, the two routes against each
other, the correlated-noise correction, the estimators by hand, input errors, and the shear
recovered from simulated galaxies (ring pairs, +g and -g)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from bh_stage import metacal
from bh_stage.metacal import (METACAL_TYPES, MOM_FAILED, MOM_NONFINITE, SHEAR_TYPES,
                              adaptive_moments, metacal_images, metacal_moments,
                              selection_response, shear_response, weighted_moments)

from bh_stage.study.ringtest import (G_TRUE, PIXEL_ARCSEC, SIDE_PIX, STEP, draw,
                                     measure_ring_pairs, moffat_psf, paired_bias, psf_image,
                                     simulate_ring_pairs)


@pytest.fixture(scope="module")
def galsim():
    """GalSim (the ``metacal`` extra), or a skip; under CI (CI=true) a missing GalSim is a
    failure, as for the other optional inputs (conftest._missing)."""
    if os.environ.get("CI") == "true":
        try:
            import galsim
        except ImportError:
            pytest.fail("galsim not installed (required under CI): pip install "
                        "'bh-stage[metacal]'")
        return galsim
    return pytest.importorskip("galsim", reason="galsim not installed: pip install "
                                                "'bh-stage[metacal]'")


# ---- (a) a round Gaussian through a round Gaussian PSF: the analytic response -----------------

def gaussian_distortion(g, sigma_gal_pix, sigma_target2_pix2):
    """e1 of a round Gaussian of sigma ``sigma_gal_pix`` sheared by (g, 0) and convolved with a
    round Gaussian of variance ``sigma_target2_pix2``: its covariance is ``sigma_gal^2 A^2 +
    sigma_target^2 I`` with ``A = diag(1 + g, 1 - g) / sqrt(1 - g^2)``, so
    ``e1 = (Cxx - Cyy) / (Cxx + Cyy) = 2 g s^2 / (s^2 (1 + g^2) + t^2 (1 - g^2))``."""
    s2, t2 = sigma_gal_pix**2, sigma_target2_pix2
    return 2 * g * s2 / (s2 * (1 + g * g) + t2 * (1 - g * g))


@pytest.mark.parametrize("method", metacal.METHODS)
def test_round_gaussian_response_is_analytic(galsim, method):
    """Round Gaussian galaxy (sigma 2.5 px) through a round Gaussian PSF (sigma 2 px), no
    noise. The target PSF is the PSF without its pixel, dilated by 1.02, with the pixel again:
    a Gaussian of variance (2 * 1.02)^2 + 1/12 (the unit pixel's variance, treated as
    Gaussian: the approximation behind the stated rtol 5e-4). e1(1p) > 0, R11 = R22 = the
    analytic dE1/dg, R12 = R21 = 0 and the noshear image is round."""
    sigma_gal, sigma_psf = 2.5, 2.0
    psf = psf_image(galsim, galsim.Gaussian(sigma=sigma_psf), scale=1.0)
    stamp = draw(galsim, galsim.Convolve(galsim.Gaussian(sigma=sigma_gal, flux=1e4),
                                         galsim.Gaussian(sigma=sigma_psf)), scale=1.0)
    moments = metacal_moments(stamp[None], psf, STEP, method=method)
    assert all((m["FLAGS"] == 0).all() for m in moments.values())

    target2 = (sigma_psf * (1 + 2 * STEP))**2 + 1 / 12
    e1_1p = gaussian_distortion(STEP, sigma_gal, target2)
    r_analytic = e1_1p / STEP  # e1 is odd in g: (e1(+s) - e1(-s)) / 2s = e1(s) / s
    assert moments["1p"]["E"][0, 0] > 0
    np.testing.assert_allclose(moments["1p"]["E"][0, 0], e1_1p, rtol=5e-4)
    response = shear_response(*(moments[t]["E"] for t in SHEAR_TYPES), step=STEP)
    assert response.n_used == 1
    np.testing.assert_allclose(np.diag(response.mean), [r_analytic] * 2, rtol=5e-4)
    np.testing.assert_allclose([response.mean[0, 1], response.mean[1, 0]], 0, atol=1e-6)
    np.testing.assert_allclose(moments["noshear"]["E"], 0, atol=1e-6)
    np.testing.assert_allclose(moments["noshear"]["SIGMA_PIX"],
                               np.sqrt(sigma_gal**2 + target2), rtol=5e-4)


def test_psf_gauss_covariance_pix2_of_an_elliptical_gaussian():
    """A point-sampled elliptical Gaussian of covariance C (sigma 2.4 and 1.6 px, axes at 30
    degrees): its adaptive moments are C (to 1e-6, the sampling of a smooth profile), and the
    round target's sigma is the major axis times 1 + 2 step."""
    angle = np.radians(30.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cov = rot @ np.diag([2.4**2, 1.6**2]) @ rot.T
    c = np.arange(41) - 20
    x, y = np.meshgrid(c, c)
    pos = np.stack([x, y], axis=-1)
    image = np.exp(-0.5 * np.einsum("...i,ij,...j->...", pos, np.linalg.inv(cov), pos))
    np.testing.assert_allclose(metacal.psf_gauss_covariance_pix2(image / image.sum()), cov, rtol=1e-6)
    assert metacal.round_target_sigma_pix(image / image.sum(), 0.01) == pytest.approx(
        2.4 * 1.02, rel=1e-6)


@pytest.mark.parametrize("method", metacal.METHODS)
def test_round_target_psf_makes_round_images_under_an_elliptical_psf(galsim, method):
    """A round Gaussian galaxy (sigma 2.5 px) through a Gaussian PSF elongated along x (g1 =
    0.1, sigma 2 px, drawn with the pixel). ``target_psf="gauss"`` reconvolves with a round
    Gaussian of sigma ``round_target_sigma_pix`` and the pixel, so the noshear image is round
    and 1p has the analytic distortion of the round galaxy sheared by +step through a round
    Gaussian of variance sigma_T^2 + 1/12; the dilated target keeps the PSF's elongation."""
    sigma_gal = 2.5
    psf_profile = galsim.Gaussian(sigma=2.0).shear(g1=0.1)
    psf = psf_image(galsim, psf_profile, scale=1.0)
    stamp = draw(galsim, galsim.Convolve(galsim.Gaussian(sigma=sigma_gal, flux=1e4),
                                         psf_profile), scale=1.0)
    gauss = metacal_moments(stamp[None], psf, STEP, method=method, target_psf="gauss")
    dilate = metacal_moments(stamp[None], psf, STEP, method=method)
    target2 = metacal.round_target_sigma_pix(psf, STEP)**2 + 1 / 12
    np.testing.assert_allclose(gauss["noshear"]["E"], 0, atol=1e-5)
    np.testing.assert_allclose(gauss["1p"]["E"][0, 0],
                               gaussian_distortion(STEP, sigma_gal, target2), rtol=5e-4)
    assert dilate["noshear"]["E"][0, 0] > 0.05  # the PSF's elongation, kept


def test_target_psf_is_checked():
    with pytest.raises(ValueError, match="target_psf"):
        metacal_images(np.zeros((1, 21, 21)), _psf_ok(), target_psf="round")


# ---- (b) the images against profiles GalSim draws directly ------------------------------------

@pytest.mark.parametrize("method, dtype", [("fft", np.float64), ("galsim", np.float64),
                                           ("fft", np.float32)])
def test_images_equal_the_galaxy_through_the_dilated_psf(galsim, method, dtype):
    """Noise-free sheared exponential galaxy through a Moffat PSF: deconvolving the PSF gives
    back the galaxy, so each image is the galaxy, sheared by that type's shear, convolved
    with the PSF dilated by 1 + 2 step and drawn with the pixel (GalSim draws it directly);
    equal to 1e-4 of the peak pixel, with the flux kept to 1e-5, in single precision too."""
    psf_profile = moffat_psf(galsim)
    galaxy = galsim.Exponential(half_light_radius=0.5, flux=1e4).shear(g1=0.2, g2=-0.1)
    stamp = draw(galsim, galsim.Convolve(galaxy, psf_profile))
    images = metacal_images(stamp[None], psf_image(galsim, psf_profile), STEP,
                            types=METACAL_TYPES, method=method, dtype=dtype)
    shears = {"noshear": (0, 0), "1p": (STEP, 0), "1m": (-STEP, 0), "2p": (0, STEP),
              "2m": (0, -STEP)}
    for name, (g1, g2) in shears.items():
        want = draw(galsim, galsim.Convolve(galaxy.shear(g1=g1, g2=g2),
                                            psf_profile.dilate(1 + 2 * STEP)))
        got = images[name][0]
        assert got.shape == (SIDE_PIX, SIDE_PIX) and got.dtype == dtype
        assert np.abs(got - want).max() < 1e-4 * want.max(), name
        assert got.sum() == pytest.approx(want.sum(), rel=1e-5), name


def test_routes_agree_on_noisy_galaxies(galsim):
    """Validation of the FFT route against the GalSim one: 8 noisy exponential galaxies with
    random shapes, sizes and sub-pixel offsets, with the correlated-noise correction; the
    adaptive-moment shapes of all five images agree to 1e-5 and the responses to 1e-3."""
    rng = np.random.default_rng(4)
    psf_profile = moffat_psf(galsim)
    stamps = []
    for _ in range(8):
        galaxy = galsim.Exponential(half_light_radius=rng.uniform(0.3, 0.7), flux=1500.0)
        galaxy = galaxy.shear(g1=rng.uniform(-0.3, 0.3), g2=rng.uniform(-0.3, 0.3))
        stamps.append(draw(galsim, galsim.Convolve(galaxy, psf_profile),
                           offset=rng.uniform(-0.5, 0.5, 2))
                      + rng.normal(0.0, 1.0, (SIDE_PIX, SIDE_PIX)))
    psf = psf_image(galsim, psf_profile)
    shapes = {method: metacal_moments(np.array(stamps), psf, STEP, noise_sigma_adu=1.0,
                                      seed=3, method=method)
              for method in metacal.METHODS}
    for name in METACAL_TYPES:
        fft, ref = shapes["fft"][name], shapes["galsim"][name]
        assert (fft["FLAGS"] == 0).all() and (ref["FLAGS"] == 0).all()
        np.testing.assert_allclose(fft["E"], ref["E"], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(fft["SIGMA_PIX"], ref["SIGMA_PIX"], rtol=1e-5)
    responses = [shear_response(*(shapes[m][t]["E"] for t in SHEAR_TYPES)).per_object
                 for m in metacal.METHODS]
    np.testing.assert_allclose(responses[0], responses[1], atol=1e-3)


def test_single_precision_shapes_equal_double_precision_ones(galsim):
    """The stage's float32 images (noisy galaxies, noise correction): adaptive-moment shapes
    within 1e-5 of the float64 route's, responses within 1e-4."""
    rng = np.random.default_rng(8)
    psf_profile = moffat_psf(galsim)
    stamps = np.array([draw(galsim, galsim.Convolve(galsim.Exponential(
        half_light_radius=rng.uniform(0.3, 0.7), flux=1500.0).shear(
            g1=rng.uniform(-0.3, 0.3), g2=rng.uniform(-0.3, 0.3)), psf_profile))
        + rng.normal(0.0, 1.0, (SIDE_PIX, SIDE_PIX)) for _ in range(8)])
    psf = psf_image(galsim, psf_profile)
    images = {dtype: metacal_images(stamps, psf, STEP, 1.0, seed=3, types=METACAL_TYPES,
                                    dtype=dtype) for dtype in (np.float64, np.float32)}
    shapes = {dtype: {t: adaptive_moments(im[t].astype(np.float64)) for t in METACAL_TYPES}
              for dtype, im in images.items()}
    for name in METACAL_TYPES:
        assert images[np.float32][name].dtype == np.float32
        np.testing.assert_allclose(shapes[np.float32][name]["E"],
                                   shapes[np.float64][name]["E"], atol=1e-5, err_msg=name)
    responses = [shear_response(*(shapes[d][t]["E"] for t in SHEAR_TYPES)).per_object
                 for d in (np.float64, np.float32)]
    np.testing.assert_allclose(responses[0], responses[1], atol=1e-4)


def test_filters_of_one_psf_are_not_reused_for_another():
    """The FFT route keeps the filters of recent PSFs: images of PSF B, then A, then B
    again; the second B equals the first bit for bit and A's differ."""
    stamps = np.random.default_rng(2).normal(0.0, 1.0, (3, 31, 31))
    wide = np.exp(-(np.mgrid[-12:13, -12:13] ** 2).sum(axis=0) / (2 * 2.2**2))
    first = metacal_images(stamps, _psf_ok())
    other = metacal_images(stamps, wide / wide.sum())
    again = metacal_images(stamps, _psf_ok())
    for name in SHEAR_TYPES:
        np.testing.assert_array_equal(again[name], first[name])
        assert np.abs(other[name] - first[name]).max() > 0.1


# ---- the correlated-noise correction ----------------------------------------------------------

def test_noise_correction_adds_the_rotated_sheared_noise(galsim):
    """With noise_sigma_adu, each image gains rot(-90) of the metacal image of rot(+90) of the
    object's own noise, drawn from default_rng([seed, first_index + i, 22]); a batch gets the
    noise of its objects' indices in the whole catalogue. Regression: the noise was drawn
    from the stream that fills the stage's padding (stamps.object_rng), so it was not
    independent of the stamp's own fill noise."""
    psf = psf_image(galsim, moffat_psf(galsim))
    stamps = np.random.default_rng(0).normal(0.0, 2.0, (4, SIDE_PIX, SIDE_PIX))
    plain = metacal_images(stamps, psf, types=METACAL_TYPES)
    fixed = metacal_images(stamps, psf, noise_sigma_adu=2.0, seed=7, types=METACAL_TYPES)
    noise = np.stack([np.random.default_rng([7, i, 22]).normal(0.0, 2.0, (SIDE_PIX, SIDE_PIX))
                      for i in range(4)])
    fill = np.random.default_rng([7, 0]).normal(0.0, 2.0, (SIDE_PIX, SIDE_PIX))  # object_rng
    assert not np.allclose(noise[0], fill)
    noise_images = metacal_images(np.rot90(noise, 1, axes=(1, 2)), psf, types=METACAL_TYPES)
    for name in METACAL_TYPES:
        np.testing.assert_allclose(fixed[name] - plain[name],
                                   np.rot90(noise_images[name], -1, axes=(1, 2)), atol=1e-9)
    batch = metacal_images(stamps[2:], psf, noise_sigma_adu=2.0, seed=7, first_index=2)
    np.testing.assert_allclose(batch["1p"], fixed["1p"][2:], atol=1e-9)


def _lag_anisotropy(images):
    """(corr(x lag) - corr(y lag), corr(+diagonal) - corr(-diagonal)) of the images' pixels
    at one-pixel lags, away from the edges: the noise anisotropy along e1 and along e2."""
    a = images[:, 10:-10, 10:-10]
    var = (a * a).mean()
    x = (a[:, :, 1:] * a[:, :, :-1]).mean()
    y = (a[:, 1:, :] * a[:, :-1, :]).mean()
    d1 = (a[:, 1:, 1:] * a[:, :-1, :-1]).mean()
    d2 = (a[:, 1:, :-1] * a[:, :-1, 1:]).mean()
    return (x - y) / var, (d1 - d2) / var


def test_noise_correction_cancels_the_sheared_noise_anisotropy(galsim):
    """Pure white noise (800 stamps): the shear makes its correlations anisotropic (lag-1
    correlation along x minus along y is -0.08 on 1p, the diagonals differ by -0.10 on 2p);
    the correction brings both within 0.005 (the statistical error is ~0.001 with 800
    stamps; with 200 it was ~0.002, too close to the bound) and doubles the variance."""
    psf = psf_image(galsim, moffat_psf(galsim))
    noise = np.random.default_rng(3).normal(0.0, 1.0, (800, SIDE_PIX, SIDE_PIX))
    plain = metacal_images(noise, psf, types=("1p", "2p"))
    fixed = metacal_images(noise, psf, noise_sigma_adu=1.0, seed=9, types=("1p", "2p"))
    assert _lag_anisotropy(plain["1p"])[0] < -0.05
    assert _lag_anisotropy(plain["2p"])[1] < -0.05
    for name in ("1p", "2p"):
        np.testing.assert_allclose(_lag_anisotropy(fixed[name]), 0, atol=0.005)
        assert fixed[name].var() / plain[name].var() == pytest.approx(2.0, rel=0.03)


# ---- the estimators by hand -------------------------------------------------------------------

def test_shear_response_by_hand():
    """R_ij = (e_i(j+) - e_i(j-)) / (2 step), per object; the mean skips an object with a
    missing shape."""
    e_1p = [[0.03, 0.01], [0.02, 0.00], [np.nan, 0.0]]
    e_1m = [[0.01, 0.01], [0.00, 0.00], [0.0, 0.0]]
    e_2p = [[0.02, 0.02], [0.01, 0.03], [0.0, 0.0]]
    e_2m = [[0.02, 0.00], [0.01, -0.01], [0.0, 0.0]]
    r = shear_response(e_1p, e_1m, e_2p, e_2m, step=0.01)
    np.testing.assert_allclose(r.per_object[0], [[1.0, 0.0], [0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(r.per_object[1], [[1.0, 0.0], [0.0, 2.0]], atol=1e-12)
    assert np.isnan(r.per_object[2, 0, 0])
    np.testing.assert_allclose(r.mean, [[1.0, 0.0], [0.0, 1.5]], atol=1e-12)
    assert r.n_used == 2
    with pytest.raises(ValueError, match=r"must all have shape \(n, 2\)"):
        shear_response([0.1, 0.2], e_1m, e_2p, e_2m)


def test_selection_response_by_hand():
    """R_sel_ij = (<e_i> over S(j+) - <e_i> over S(j-)) / (2 step), e from noshear; a NaN
    shape counts as not selected; an empty selection is an error naming it."""
    e = np.array([[0.1, -0.2], [0.3, 0.4], [-0.1, 0.0], [np.nan, np.nan]])
    every = np.ones(4, bool)
    sel_1p = np.array([True, True, False, True])   # <e> = (0.2, 0.1)
    sel_1m = np.array([True, False, True, False])  # <e> = (0.0, -0.1)
    r = selection_response(e, sel_1p, sel_1m, every, every, step=0.01)
    np.testing.assert_allclose(r, [[10.0, 0.0], [10.0, 0.0]], atol=1e-9)
    with pytest.raises(ValueError, match="sel_2m selects no object"):
        selection_response(e, every, every, every, np.array([0, 0, 0, 1], bool))
    with pytest.raises(ValueError, match="boolean"):
        selection_response(e, every, every, every, np.ones(4))


# ---- adaptive moments -------------------------------------------------------------------------

def test_adaptive_moments_of_a_known_gaussian_and_failures(galsim):
    """An elliptical Gaussian (e1 = 0.3, e2 = -0.2, sigma det^(1/4) = 2.2 px) drawn without
    pixel, offset by (1.5, -0.5) px: its distortion, size and 0-based centroid; an empty
    image and a pure-noise one are flagged MOM_FAILED, a NaN one MOM_NONFINITE, all NaN and
    none raises."""
    gaussian = galsim.Gaussian(sigma=2.2, flux=500.0).shear(e1=0.3, e2=-0.2)
    image = draw(galsim, gaussian, scale=1.0, method="no_pixel", offset=(1.5, -0.5))
    nan_image = image.copy()
    nan_image[3, 3] = np.nan
    noise = np.random.default_rng(1).normal(0.0, 1.0, image.shape)
    m = adaptive_moments(np.stack([image, np.zeros_like(image), nan_image, noise]))
    np.testing.assert_allclose(m["E"][0], [0.3, -0.2], atol=1e-6)
    assert m["SIGMA_PIX"][0] == pytest.approx(2.2, rel=1e-5)
    assert (m["X_PIX"][0], m["Y_PIX"][0]) == pytest.approx((26.5, 24.5), abs=1e-5)
    assert m["FLUX_ADU"][0] == pytest.approx(500.0, rel=1e-5)  # a Gaussian's: its flux
    assert m["FLAGS"].tolist() == [0, MOM_FAILED, MOM_NONFINITE, MOM_FAILED]
    assert np.isnan(m["E"][1:]).all() and np.isnan(m["SIGMA_PIX"][1:]).all()


def test_weighted_moments_of_a_known_gaussian_and_failures():
    """An elliptical Gaussian of covariance C at a sub-pixel offset, under a round weight of
    sigma w centred on it: the moments are those of the product Gaussian, covariance
    M = (C^-1 + I / w^2)^-1, and sum(w I) = 2 pi sqrt(det M) (pixel sums of a Gaussian
    this wide equal the integrals to 1e-12). An empty image is MOM_FAILED, a NaN one
    MOM_NONFINITE."""
    side, w, offset = 51, 2.7, np.array([0.3, -0.4])
    cov = np.array([[9.0, 2.0], [2.0, 5.0]])
    y, x = np.mgrid[0:side, 0:side].astype(float)
    r = np.stack([x - side // 2 - offset[0], y - side // 2 - offset[1]])
    image = np.exp(-0.5 * np.einsum("i...,ij,j...->...", r, np.linalg.inv(cov), r))
    m_cov = np.linalg.inv(np.linalg.inv(cov) + np.eye(2) / w**2)
    nan_image = image.copy()
    nan_image[0, 0] = np.nan
    m = weighted_moments(np.stack([image, np.zeros_like(image), nan_image]), w,
                         centre_offset_pix=[offset, offset, offset], noise_sigma_adu=2.0)
    trace = m_cov[0, 0] + m_cov[1, 1]
    np.testing.assert_allclose(m["E"][0], [(m_cov[0, 0] - m_cov[1, 1]) / trace,
                                           2 * m_cov[0, 1] / trace], rtol=1e-9)
    assert m["SIGMA_PIX"][0] == pytest.approx(np.sqrt(trace / 2), rel=1e-9)
    assert m["FLUX_ADU"][0] == pytest.approx(2 * np.pi * np.sqrt(np.linalg.det(m_cov)),
                                             rel=1e-9)
    assert (m["X_PIX"][0], m["Y_PIX"][0]) == pytest.approx((25.3, 24.6))
    # S/N: sum(w I) over noise * sqrt(sum(w^2)), sum(w^2) = pi w^2 for a weight this wide
    assert m["S2N"][0] == pytest.approx(m["FLUX_ADU"][0] / (2.0 * np.sqrt(np.pi) * w),
                                        rel=1e-9)
    assert m["FLAGS"].tolist() == [0, MOM_FAILED, MOM_NONFINITE]
    assert np.isnan(m["E"][1:]).all() and np.isnan(m["SIGMA_PIX"][1:]).all()
    # centred on the wrong pixel, the moments include the offset: not the same shape
    shifted = weighted_moments(image[None], w)
    assert abs(shifted["E"][0, 0] - m["E"][0, 0]) > 1e-3


def test_weighted_s2n_of_pure_noise_has_unit_scatter():
    """On white noise of rms 1, sum(w I) has variance sum(w^2): the S/N scatters with standard
    deviation 1 (2000 images: its sampling error is 1.6 %). Through metacal_moments with the
    correlated-noise correction (noise variance doubled, taken as sqrt(2) noise), again about
    1 (the reconvolution's correlation adds a few percent)."""
    rng = np.random.default_rng(3)
    noise = rng.normal(0.0, 1.0, (2000, 31, 31))
    s2n = weighted_moments(noise, 2.7, noise_sigma_adu=1.0)["S2N"]
    # sum(w I) <= 0 is flagged MOM_FAILED (NaN): recompute it from FLUX where defined...
    y, x = np.mgrid[0:31, 0:31] - 15
    w = np.exp(-(x**2 + y**2) / (2 * 2.7**2))
    flux = (noise * w).sum(axis=(1, 2))
    assert np.std(flux) / np.sqrt((w**2).sum()) == pytest.approx(1.0, abs=0.05)
    ok = np.isfinite(s2n)  # ...and where defined, S2N is that flux over sqrt(sum(w^2))
    np.testing.assert_allclose(s2n[ok], flux[ok] / np.sqrt((w**2).sum()), rtol=1e-9)
    psf = np.exp(-((np.mgrid[0:25, 0:25] - 12) ** 2).sum(axis=0) / (2 * 1.5**2))
    psf /= psf.sum()
    stamps = rng.normal(0.0, 1.0, (400, 31, 31))
    flux_mc = metacal_moments(stamps, psf, STEP, noise_sigma_adu=1.0, types=["noshear"],
                              estimator="weighted", weight_sigma_pix=2.7)["noshear"]["FLUX_ADU"]
    # FLUX is NaN where not positive: the scatter from the positive half (mean 0, symmetric)
    positive = flux_mc[np.isfinite(flux_mc)]
    sigma_hat = np.sqrt(np.mean(positive**2)) / (np.sqrt(2.0) * np.sqrt((w**2).sum()))
    assert sigma_hat == pytest.approx(1.0, abs=0.15)


def test_metacal_moments_estimators_share_the_images(galsim):
    """``estimator='weighted'`` measures the same metacal images as ``'adaptive'``: on a
    Gaussian stamp its noshear shape equals weighted_moments of metacal_images' noshear
    image; an unknown estimator, or weighted without a weight, is refused."""
    psf = psf_image(galsim, moffat_psf(galsim))
    stamp = draw(galsim, galsim.Convolve(galsim.Gaussian(sigma=2.5, flux=800.0)
                                         .shear(e1=0.2, e2=0.1), moffat_psf(galsim)),
                 scale=1.0)
    ours = metacal_moments(stamp[None], psf, STEP, estimator="weighted", weight_sigma_pix=2.7)
    image = metacal_images(stamp[None], psf, STEP, types=["noshear"])["noshear"]
    np.testing.assert_array_equal(ours["noshear"]["E"], weighted_moments(image, 2.7)["E"])
    assert ours["1p"]["E"][0, 0] > ours["1m"]["E"][0, 0]
    for bad in ({"estimator": "hsm"}, {"estimator": "weighted"}):
        with pytest.raises(ValueError, match="estimator"):
            metacal_moments(stamp[None], psf, STEP, **bad)


def test_a_stamp_with_a_nan_pixel_gives_nan_images_only_for_itself(galsim):
    """A non-finite stamp is a per-object problem: NaN images, the others unchanged."""
    psf = psf_image(galsim, moffat_psf(galsim))
    stamps = np.random.default_rng(2).normal(0.0, 1.0, (3, SIDE_PIX, SIDE_PIX))
    whole = metacal_images(stamps, psf, noise_sigma_adu=1.0)
    stamps[1, 0, 0] = np.inf
    broken = metacal_images(stamps, psf, noise_sigma_adu=1.0)
    for name in SHEAR_TYPES:
        assert np.isnan(broken[name][1]).all()
        np.testing.assert_array_equal(broken[name][[0, 2]], whole[name][[0, 2]])


# ---- (d) bad inputs ---------------------------------------------------------------------------

def _psf_ok():
    """A centred, normalised Gaussian PSF image (numpy only)."""
    yy, xx = np.mgrid[-12:13, -12:13]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.6**2))
    return psf / psf.sum()


@pytest.mark.parametrize("stamps, psf, kwargs, message", [
    (np.zeros((2, 51, 49)), _psf_ok(), {}, r"stamps must be square; got ny, nx = \(51, 49\)"),
    (np.zeros((2, 50, 50)), _psf_ok(), {}, "the stamp side must be odd"),
    (np.zeros((51, 51)), _psf_ok(), {}, r"stamps must be 3-D \(n, ny, nx\)"),
    (np.zeros((1, 51, 51)), _psf_ok()[:-1, :-1] / _psf_ok()[:-1, :-1].sum(), {},
     "the PSF side must be odd"),
    (np.zeros((1, 51, 51)), _psf_ok()[:, :-2], {}, "psf_image must be a square 2-D image"),
    (np.zeros((1, 51, 51)), 0.9 * _psf_ok(), {}, r"must sum to 1 .*it sums to 0\.9"),
    (np.zeros((1, 51, 51)), np.roll(_psf_ok(), 3, axis=1), {},
     r"centroid is off by \(dx, dy\) = \(3\.000, 0\.000\)"),
    (np.zeros((1, 51, 51)), _psf_ok(), {"step": 0.0}, r"step must be in \(0, 0\.1\]"),
    (np.zeros((1, 51, 51)), _psf_ok(), {"noise_sigma_adu": -1.0},
     "noise_sigma_adu must be a positive number"),
    (np.zeros((1, 51, 51)), _psf_ok(), {"types": ("1p", "3p")}, "types must be distinct"),
    (np.zeros((1, 51, 51)), _psf_ok(), {"method": "ngmix"}, "method must be one of"),
    (np.zeros((1, 51, 51)), _psf_ok(), {"dtype": np.float16},
     "dtype must be float64 or float32; got float16"),
])
def test_bad_inputs_raise_value_error_naming_the_problem(stamps, psf, kwargs, message):
    """Checked before any pixel is transformed (no GalSim needed)."""
    with pytest.raises(ValueError, match=message):
        metacal_images(stamps, psf, **kwargs)


def test_fft_route_needs_no_galsim_and_galsim_route_names_the_extra():
    """Without GalSim the FFT route runs (numpy only) and the GalSim route stops with a
    MissingExtraError naming the extra."""
    code = ("import sys; sys.modules['galsim'] = None\n"
            "import numpy as np\n"
            "from bh_stage import metacal\n"
            "from bh_stage.errors import MissingExtraError\n"
            "y, x = np.mgrid[-12:13, -12:13]\n"
            "psf = np.exp(-(x**2 + y**2) / 5.0); psf /= psf.sum()\n"
            "out = metacal.metacal_images(np.ones((1, 25, 25)), psf)\n"
            "assert np.isfinite(out['1p']).all()\n"
            "try:\n"
            "    metacal.metacal_images(np.ones((1, 25, 25)), psf, method='galsim')\n"
            "except MissingExtraError as err:\n"
            "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], text=True, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("galsim is not installed; it comes with the extra [metacal]: "
                                  "pip install 'bh-stage[metacal]'")


# ---- (c) the shear recovered from simulated galaxies (bh_stage.study.ringtest) ---------------

N_PAIRS = 400
"""Ring pairs per shear component in the test; 3200 stamps in all."""


@pytest.mark.parametrize("component", [0, 1])
def test_noise_free_shear_is_recovered_but_for_the_second_order(galsim, component):
    """Without noise, 40 ring pairs: the calibrated estimator misses g = 0.02 only by the
    response's second order (m = +4.2e-4 here, ~g^2: 2.7e-5 at g = 0.005, 1.6e-3 at 0.04),
    within 1e-3, and the additive and cross terms vanish (< 1e-5, < 1e-4)."""
    g = (G_TRUE, 0.0) if component == 0 else (0.0, G_TRUE)
    stamps = simulate_ring_pairs(galsim, 40, g, seed=50 + component, noise_sigma_adu=0.0)
    e, r, ok = measure_ring_pairs(stamps, psf_image(galsim, moffat_psf(galsim)),
                                  noise_sigma_adu=None)
    assert ok.all()
    bias = paired_bias(e, r, component, n_boot=10)
    assert 0.0 < bias["m"][0] < 1e-3, bias
    assert abs(bias["c"][0]) < 1e-5 and abs(bias["c_cross"][0]) < 1e-5, bias
    assert abs(bias["m_cross"][0]) < 1e-4, bias


WEIGHT_SIGMA_PIX = 1.2 / PIXEL_ARCSEC / 2.3548
"""metadetect's wmom weight, FWHM 1.2 arcsec, in pixels."""


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["adaptive", "weighted"])
@pytest.mark.parametrize("component", [0, 1])
def test_calibrated_shear_is_unbiased(galsim, component, estimator):
    """400 ring pairs of noisy exponential galaxies (optimal S/N of the stamp 50-260, median
    130), Moffat PSF 0.65 arcsec at 0.187 arcsec/px, shear 0.02 on g1 (then g2), +g and -g
    with the same noise; metacal with the correlated-noise correction. ``<R>^-1 <e>`` gives
    m and c consistent with 0 (95 % bootstrap interval over pairs) with the interval on m
    within +-0.01, and the other component's response to the shear (m_cross) and its mean
    (c_cross) below 0.01 and 0.005 in absolute value (the seeds give m = -0.0027 [-0.0077,
    +0.0028], c = -0.0017 [-0.0035, +0.0002] on g1; m = +0.0010 [-0.0044, +0.0065],
    c = -0.0005 [-0.0022, +0.0014] on g2, adaptive moments). The same for moments under a
    fixed weight (``weighted``, FWHM 1.2 arcsec) centred on each galaxy: m = -0.0026
    [-0.0079, +0.0029] on g1, -0.0019 [-0.0079, +0.0038] on g2. (Centred on the stamp's
    centre pixel instead, m = -0.027 [-0.032, -0.022]: the weight must sit on the object,
    as metadetect's does.)"""
    g = (G_TRUE, 0.0) if component == 0 else (0.0, G_TRUE)
    stamps, offsets = simulate_ring_pairs(galsim, N_PAIRS, g, seed=10 + component,
                                          with_offsets=True)
    psf = psf_image(galsim, moffat_psf(galsim))
    e, r, ok = measure_ring_pairs(stamps, psf, estimator=estimator,
                                  weight_sigma_pix=WEIGHT_SIGMA_PIX, offsets_pix=offsets)
    assert ok.mean() > 0.99
    bias = paired_bias(e[ok], r[ok], component)
    m, c, m_cross, c_cross = (bias[k] for k in ("m", "c", "m_cross", "c_cross"))
    assert m[1] <= 0.0 <= m[2], bias
    assert (m[2] - m[1]) / 2 < 0.01, bias
    assert c[1] <= 0.0 <= c[2], bias
    assert abs(m_cross[0]) < 0.01 and abs(c_cross[0]) < 0.005, bias
