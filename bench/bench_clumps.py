"""Does the tile head take a clumpy galaxy for a blend? A probe on isolated simulated galaxies.

    python bench/bench_clumps.py --work-dir WORKDIR/clumps [--head default] [--seed 1]

One 4000x4000 tile (0.187"/px, sigma 14.5 ADU; a plain Moffat PSF of 0.65" FWHM, beta
4.765, where the study's tiles convolve a Moffat with a Kolmogorov of that FWHM) holds
isolated objects on a grid 80 px apart, no other neighbour, of five kinds drawn alike (the
same disc, magnitude and shape laws, the same random draws), a fifth each:

- ``smooth``: an exponential disc (half-light radius 0.3-0.6", |e| up to 0.5, 22-24 mag);
- ``clumps1``, ``clumps2``, ``clumps4``: the same disc with 1, 2 or 4 compact Gaussian knots
  (sigma 0.06") holding 30 % of the light between them, each 0.4-0.7" from the disc's
  centre whatever its size: one galaxy (as COSMOS index 36 and 8 look in their HST
  cut-outs; tile_study_v2.md);
- ``companion``: the same disc and, where ``clumps1`` puts its knot, a second galaxy with
  30 % of the light, an exponential of half-light radius 0.2": an unrecognised blend when
  SExtractor merges it. It differs from ``clumps1`` only in the second source's profile.

The tile is SExtracted (the study's config) and run through ``bh-stage run``; each
detection is matched to the nearest grid object within 3 px. Reports per kind: detections
per object (deblended or not), the fraction ``BLEND_FLAG`` flags and the median
``BLEND_PROB``, with 95 % bootstrap intervals over objects (each object a distinct draw).
Galaxies are simulated here, not taken from COSMOS: neither half of the real sample is read.
``--second-fraction`` and ``--radius-arcsec`` change the 30 % and 0.4-0.7" (name the
``--output`` for each). Writes bench/results/clumps.json.
"""

from pathlib import Path

import fitsio
import numpy as np

import benchlib

REPO = Path(__file__).resolve().parents[1]
KINDS = ("smooth", "clumps1", "clumps2", "clumps4", "companion")
PIXEL_SCALE_ARCSEC = 0.187
NOISE_SIGMA_ADU = 14.5
SPACING_PIX = 80


def draw_tile(path_image, path_weight, size_pix, seed, second_fraction=0.3,
              radius_arcsec=(0.4, 0.7)):
    """Simulate the probe tile; return the objects' 0-based positions (x, y) and kinds.
    ``second_fraction``: the knots' (or the companion's) share of the light; ``radius_arcsec``:
    the range of their distances from the disc's centre."""
    import galsim

    from bh_stage.study.simulate import magnitude_zeropoint

    rng = np.random.default_rng(seed)
    zero_point = magnitude_zeropoint(300.0, 80216.0)  # the study's tiles: 300 s on the CFHT
    psf = galsim.Moffat(beta=4.765, fwhm=0.65)
    image = galsim.ImageF(size_pix, size_pix, scale=PIXEL_SCALE_ARCSEC)
    half = SPACING_PIX // 2
    grid = np.arange(half, size_pix - half + 1, SPACING_PIX, dtype=np.float64)
    x0, y0 = (a.ravel() for a in np.meshgrid(grid, grid))
    kinds = np.array([KINDS[k % len(KINDS)] for k in rng.permutation(x0.size)])
    x0 = x0 + rng.uniform(-0.5, 0.5, x0.size)  # 0-based pixel centres, sub-pixel offsets
    y0 = y0 + rng.uniform(-0.5, 0.5, y0.size)
    for x, y, kind in zip(x0, y0, kinds):
        flux = 10.0 ** (-0.4 * (rng.uniform(22.0, 24.0) - zero_point))
        e = rng.uniform(0.0, 0.5)
        disc = galsim.Exponential(half_light_radius=rng.uniform(0.3, 0.6)).shear(
            e=e, beta=rng.uniform(0, np.pi) * galsim.radians)
        radius = rng.uniform(*radius_arcsec, 4)  # arcsec
        angle = rng.uniform(0, 2 * np.pi, 4)
        if kind == "smooth":
            gal = disc.withFlux(flux)
        elif kind.startswith("clumps"):
            n = int(kind[-1])
            knots = [galsim.Gaussian(sigma=0.06).withFlux(second_fraction * flux / n).shift(
                r * np.cos(a), r * np.sin(a)) for r, a in zip(radius[:n], angle[:n])]
            gal = galsim.Add([disc.withFlux((1 - second_fraction) * flux), *knots])
        else:
            other = galsim.Exponential(half_light_radius=0.2).withFlux(
                second_fraction * flux).shift(
                radius[0] * np.cos(angle[0]), radius[0] * np.sin(angle[0]))
            gal = galsim.Add([disc.withFlux((1 - second_fraction) * flux), other])
        # GalSim images are 1-based: 0-based pixel x is GalSim's x + 1
        ix, iy, h = int(round(x)) + 1, int(round(y)) + 1, SPACING_PIX // 2 - 4
        bounds = galsim.BoundsI(ix - h, ix + h, iy - h, iy + h) & image.bounds
        galsim.Convolve(gal, psf).drawImage(image=image[bounds], add_to_image=True,
                                            center=galsim.PositionD(x + 1, y + 1))
    image.addNoise(galsim.GaussianNoise(galsim.BaseDeviate(seed), sigma=NOISE_SIGMA_ADU))
    fitsio.write(str(path_image), image.array.astype(np.float32), clobber=True)
    fitsio.write(str(path_weight), np.full((size_pix, size_pix), NOISE_SIGMA_ADU ** -2.0,
                                           dtype=np.float32), clobber=True)
    return x0, y0, kinds


def main():
    parser = benchlib.parser(__doc__, output="clumps.json")
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--head", default="default", help="tile head (.json or shipped name)")
    parser.add_argument("--size-pix", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--second-fraction", type=float, default=0.3,
                        help="the knots' (or the companion's) share of the light")
    parser.add_argument("--radius-arcsec", type=float, nargs=2, default=(0.4, 0.7),
                        metavar=("MIN", "MAX"), help="their distance from the disc's centre")
    args = parser.parse_args()

    from bh_stage import io
    from bh_stage.config import RunConfig, config_from_dict
    from bh_stage.study import metrics, tileset
    from bh_stage.study.sextractor import run_sextractor

    args.work_dir.mkdir(parents=True, exist_ok=True)  # laid out as a tile folder
    files = {k: args.work_dir / v for k, v in tileset.TILE_FILES.items()}
    x0, y0, kinds = draw_tile(files["image"], files["weight"], args.size_pix, args.seed,
                              args.second_fraction, tuple(args.radius_arcsec))
    run_sextractor(files["image"], files["weight"], files["catalogue"],
                   REPO / "example_config/sextractor/bh.sex")
    run_cfg = config_from_dict(RunConfig, {"tile_head": args.head, "overwrite": True})
    out = tileset.run_stage_on_tile(args.work_dir, run_cfg, "tile_bh.cat")
    det = io.read_catalogue(out, "XWIN_IMAGE", "YWIN_IMAGE")  # 0-based (io converts)
    cols = fitsio.read(str(out), ext="LDAC_OBJECTS", columns=["BLEND_PROB", "BLEND_FLAG"])
    # nearest grid object of each detection (the grid is regular: round to its cell)
    col = np.rint((np.asarray(det.x_pix) - SPACING_PIX // 2) / SPACING_PIX).astype(int)
    row = np.rint((np.asarray(det.y_pix) - SPACING_PIX // 2) / SPACING_PIX).astype(int)
    n_side = int(round(np.sqrt(x0.size)))
    inside = (col >= 0) & (col < n_side) & (row >= 0) & (row < n_side)
    obj = np.where(inside, row * n_side + col, -1)
    near = inside & (np.hypot(np.asarray(det.x_pix) - x0[np.clip(obj, 0, None)],
                              np.asarray(det.y_pix) - y0[np.clip(obj, 0, None)]) < 3.0)
    # (row-major grid: object k sits at grid[k % n_side], grid[k // n_side], as meshgrid)
    n_det = np.bincount(obj[near], minlength=x0.size)
    # each object's detection nearest its centre carries its score
    dist = np.hypot(np.asarray(det.x_pix) - x0[np.clip(obj, 0, None)],
                    np.asarray(det.y_pix) - y0[np.clip(obj, 0, None)])
    rows = np.flatnonzero(near)
    rows = rows[np.lexsort((dist[rows], obj[rows]))]  # by object, nearest first
    _, first = np.unique(obj[rows], return_index=True)
    rows = rows[first]
    prob = np.full(x0.size, np.nan)
    flag = np.zeros(x0.size, bool)
    prob[obj[rows]] = cols["BLEND_PROB"][rows]
    flag[obj[rows]] = cols["BLEND_FLAG"][rows] == 1
    found = n_det > 0

    result = {"head": args.head, "seed": args.seed, "size_pix": args.size_pix,
              "second_fraction": args.second_fraction,
              "radius_arcsec": list(args.radius_arcsec),
              "n_detections": int(len(cols)), "kinds": {}}
    print(f"{len(cols)} detections; {x0.size} objects on the grid")
    for kind in KINDS:
        idx = np.flatnonzero((kinds == kind) & found)
        def stats(rows, idx=idx):
            i = idx[rows]
            return np.array([flag[i].mean(), np.median(prob[i]), (n_det[i] > 1).mean()])

        point = stats(np.arange(idx.size))
        boot = metrics.group_bootstrap(np.arange(idx.size), stats, args.n_bootstrap)
        lo, hi = np.array([metrics.interval(boot[:, k], 0.95) for k in range(3)]).T
        result["kinds"][kind] = {
            "objects": int((kinds == kind).sum()), "detected": int(idx.size),
            "flagged": float(point[0]), "flagged_95": [float(lo[0]), float(hi[0])],
            "median_prob": float(point[1]), "median_prob_95": [float(lo[1]), float(hi[1])],
            "deblended": float(point[2]), "deblended_95": [float(lo[2]), float(hi[2])]}
        print(f"  {kind:10s} {idx.size:4d} detected: BLEND_FLAG {point[0]:.3f} "
              f"[{lo[0]:.3f}, {hi[0]:.3f}], median BLEND_PROB {point[1]:.3f}, "
              f"more than one detection {point[2]:.3f}")
    benchlib.write_result(args.output, result)


if __name__ == "__main__":
    main()
