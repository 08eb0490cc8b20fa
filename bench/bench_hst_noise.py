"""The two simulation artefacts of issue 12, measured on the COSMOS samples.

1. HST noise of the real cut-outs on CFIS pixels: for every real galaxy, the pixel rms of
   its cut-out border (HST pixels, scaled to the 300 s CFHT flux like the galaxy), drawn as
   white noise through the CFIS PSF onto 0.187" pixels (a lower bound: the HST noise is
   correlated); then times 10**(0.4 * brightening) for the largest brightening of a stamp
   set at ``max_brightening_mag`` 3 (before 0.3) and 0.5 (0.3), against sigma = 14.5 ADU.
2. The size-magnitude relation: the slope dlog10(FLUX_RADIUS)/dm of each sample, which
   ``magnitude.size_slope_dex_per_mag`` applies when a galaxy is moved to its magnitude.

    python bench/bench_hst_noise.py [--cosmos-dir ../shared/cosmos]
"""

import json

import numpy as np

from bh_stage.config import SimulateConfig, config_from_dict
from bh_stage.study.simulate import cosmos_catalogue, psf_image, real_galaxy_split, sample_mags

import benchlib


def main():
    ap = benchlib.parser(__doc__, "hst_noise.json")
    ap.add_argument("--cosmos-dir", default="../shared/cosmos")
    args = ap.parse_args()
    import galsim

    cfg = config_from_dict(SimulateConfig, {"cosmos_dir": args.cosmos_dir})
    psf = galsim.InterpolatedImage(galsim.Image(psf_image(cfg, 0.0, 0.0, 65),
                                                scale=cfg.pixel_scale_arcsec))
    rcat = cosmos_catalogue(args.cosmos_dir, cfg.real_catalogue, True, cfg.exptime_s,
                            cfg.area_cm2)
    mags = sample_mags(rcat, True)
    rng = np.random.default_rng(0)
    rms = []
    for i in range(rcat.nobjects):
        gal = rcat.makeGalaxy(i, gal_type="real", noise_pad_size=0)
        hst = rcat.real_cat.getGalImage(int(rcat.orig_index[i])).array
        border = np.concatenate([hst[:3].ravel(), hst[-3:].ravel(), hst[:, :3].ravel(),
                                 hst[:, -3:].ravel()])
        flux_per_count = gal.flux / hst.sum()
        field = galsim.InterpolatedImage(galsim.Image(
            rng.normal(0, border.std() * flux_per_count, (96, 96)),
            scale=float(rcat.real_cat.cat["PIXEL_SCALE"][rcat.orig_index[i]])),
            x_interpolant="quintic")
        drawn = galsim.Convolve(field, psf).drawImage(nx=9, ny=9,
                                                      scale=cfg.pixel_scale_arcsec).array
        rms.append(drawn.std())
    rms = np.asarray(rms)
    sigma = 14.5
    out = {"sigma_adu": sigma, "rms_own_mag_adu_percentiles_10_50_90":
           np.percentile(rms, [10, 50, 90]).tolist()}
    mag_max = cfg.magnitude.mag_max
    for cap in (3.0, 0.5):
        usable = mags <= mag_max + cap
        scaled = rms * 10 ** (0.4 * cap)
        out[f"max_brightening_{cap:g}"] = {
            "galaxies_usable_at_mag_max": int(usable.sum()),
            "rms_at_max_brightening_adu_percentiles_10_50_90":
                np.percentile(scaled, [10, 50, 90]).tolist(),
            "fraction_of_sigma_median": float(np.median(scaled) / sigma)}
    train, test = real_galaxy_split(mags)
    out["usable_per_half_at_0.5"] = [int((mags[h] <= mag_max + 0.5).sum())
                                     for h in (train, test)]
    slopes = {}
    for name, real in (("parametric", False), ("real", True)):
        cat = cosmos_catalogue(args.cosmos_dir, cfg.real_catalogue if real else
                               cfg.parametric_catalogue, real, cfg.exptime_s, cfg.area_cm2)
        m = sample_mags(cat, real)
        r = np.asarray(cat.param_cat["flux_radius"], np.float64)[cat.orig_index]
        ok = r > 0
        slopes[name] = float(np.polyfit(m[ok], np.log10(r[ok]), 1)[0])
    out["size_slope_dex_per_mag"] = slopes
    print(json.dumps(out, indent=1))
    benchlib.write_result(args.output, out)


if __name__ == "__main__":
    main()
