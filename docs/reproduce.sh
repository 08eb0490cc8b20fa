#!/usr/bin/env bash
# The commands that made the shipped heads and docs/results.md, in order (about 1 h on 2 cores).
# Run from the repository root: bash docs/reproduce.sh [WORKDIR]
# WORKDIR (default ./simulated) receives the data sets and the feature cache; nothing there is
# committed. Heads are written to data/heads/, evaluation outputs to docs/results/.
set -euo pipefail
work=${1:-simulated}
sim="bh-stage simulate example_config/simulate.yml --set set_kind=mixed --set n_stamps=24000"

# Training sets: parametric + real-image stamps of the training half of the real galaxies,
# magnitudes from dN/dm ~ 10^(0.3 m), 20 < m < 24.5; one with the paper's uniform companion
# placement (12 % close pairs), one with half of the blends closer than 10 px.
$sim --set seed=1 --set output=$work/mixed24k.h5
$sim --set seed=3 --set separation.close_fraction=0.5 --set output=$work/mixed24k_close50.h5
# Realistic test set: real HST images of the other half of the real galaxies.
bh-stage simulate example_config/simulate.yml --set set_kind=real --set real_half=test \
    --set n_stamps=4000 --set seed=2 --set output=$work/realistic4k.h5

# The default head (sigma 15 ADU, close to CFIS's 14.5).
bh-stage train example_config/train.yml --set cache_dir=$work/cache --set overwrite=true \
    --set "datasets=[$work/mixed24k.h5, $work/mixed24k_close50.h5]" --set head_name=cfis_sigma15

# BlendHunter vs SEP vs the hybrid on the realistic set.
bh-stage evaluate example_config/evaluate.yml --set dataset=$work/realistic4k.h5 \
    --set max_stamps=null --set output_dir=docs/results --set overwrite=true
