#!/usr/bin/env bash
# Reproduces the shipped model (models/pretrained/MODEL_CARD.md): the project's own stages on the
# Flickr8k train split, selected on dev, with the offline backbones, then the search-only export.
#   bash scripts/train_pretrained.sh [FLICKR8K_DIR] [WORK_DIR]
set -euo pipefail
D=${1:-../shared/data/flickr8k}
W=${2:-work/pretrained}
IMAGE_BACKBONE=${IMAGE_BACKBONE:-efficientnet_lite0}
ARGS=(--images "$D/flickr8k-images" --captions "$D/flickr8k.token" --splits "$D/splits" --work-dir "$W")
python batch_image_feature_extract.py "${ARGS[@]}" --image-backbone "$IMAGE_BACKBONE"
python batch_text_feature_extract.py --captions "$D/flickr8k.token" --work-dir "$W" --text-backbone minilm
python sentence_augment.py --captions "$D/flickr8k.token" --work-dir "$W"
python extract_aug_text_features.py --captions "$D/flickr8k.token" --work-dir "$W"
python run_train.py "${ARGS[@]}"
python evaluate.py "${ARGS[@]}" --split dev
python -m scripts.export_pretrained "$W/checkpoints/best.pt"
