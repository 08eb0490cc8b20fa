#!/usr/bin/env bash
# Remake the shipped example: a 1024x1024 CFIS-like tile (tile-compressed) of test-half real
# HST galaxies (never seen in training) and stars, its weight map,
# truth table, and its FITS_LDAC catalogue from the real source-extractor 2.25.
# Run from the repository root: bash data/make_example.sh
set -euo pipefail
out=data
bh-stage simulate example_config/simulate_tile.yml --set overwrite=true \
    --set tile.nx_pix=1024 --set tile.ny_pix=1024 --set seed=11 \
    --set tile.galaxy_kind=real --set real_half=test --set tile.star_density_per_arcmin2=1.0 \
    --set tile.image=$out/example_tile.fits.fz --set tile.weight=$out/example_tile.weight.fits.fz \
    --set tile.truth=$out/example_tile_truth.fits \
    --set magnitude.max_brightening_mag=3 --set magnitude.size_slope_dex_per_mag=0
# (the shipped example predates 0.3's realism defaults: HST noise brightened by up to 3 mag,
# sizes kept when a galaxy is moved to its magnitude)
# source-extractor 2.25 cannot read tile-compressed images: give it the decompressed pixels,
# which are exactly what bh-stage reads from the .fz.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python - "$out" "$tmp" <<'PY'
import sys, fitsio
out, tmp = sys.argv[1:]
for name in ("example_tile", "example_tile.weight"):
    with fitsio.FITS(f"{out}/{name}.fits.fz") as f:
        fitsio.write(f"{tmp}/{name}.fits", f[1].read(), header=f[1].read_header(), clobber=True)
PY
source-extractor "$tmp/example_tile.fits" -c example_config/sextractor/bh.sex \
    -WEIGHT_TYPE MAP_WEIGHT -WEIGHT_IMAGE "$tmp/example_tile.weight.fits" \
    -CATALOG_NAME $out/example_tile.cat
python -c "import fitsio; print(fitsio.FITS('$out/example_tile.cat')['LDAC_OBJECTS'].get_nrows(), 'objects in $out/example_tile.cat')"
