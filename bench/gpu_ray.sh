#!/usr/bin/env bash
# The Ray GPU target, as one short run on a lent GPU machine (under 5 minutes): Ray with one GPU actor
# and the other cores decoding, against the in-process GPU path, on 5,000 full-size JPEGs (the 200
# photos of the full-size sample, 25 times); then both with nvJPEG decoding (--decode gpu) on 2,000.
# Writes bench/results/ray_gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/flickr8k-fullres-sample/images}
CPUS=$(nproc)
{
  timeout 170 python -m bench.bench_ray --data "$DATA" --cpus "$CPUS" --repeat 25 --workers $((CPUS - 1)) --rounds 1 \
    || echo "(exit $?)"
  timeout 110 python -m bench.bench_ray --data "$DATA" --cpus "$CPUS" --repeat 10 --workers $((CPUS - 1)) --rounds 1 \
    --decode gpu || echo "(exit $?)"
} 2>&1 | tee bench/results/ray_gpu.log
