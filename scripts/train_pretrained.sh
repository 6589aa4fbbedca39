#!/usr/bin/env bash
# Reproduces the shipped model (models/pretrained/MODEL_CARD.md): the project's own stages on the
# Flickr8k train split and the web photo set's shards 00000-00003 (shard 00004 is never read),
# selected on both dev splits, with the offline backbones, then the search-only export.
#   bash scripts/train_pretrained.sh [FLICKR8K_DIR] [WEB_DIR] [WORK_DIR]
# WEB_DIR: the img2dataset folder of the web set (docs/results.md#broader-training-data-web-photos).
set -euo pipefail
D=${1:-../shared/data/flickr8k}
WEB=${2:-$HOME/webdata/data}
W=${3:-work/pretrained}
IMAGE_BACKBONE=${IMAGE_BACKBONE:-efficientnet_lite0}
QUERYBANK_SIZE=${QUERYBANK_SIZE:-8000}  # keeps the shipped file well under 25 MB (crossmodal/pretrained.py)
TOP=${TEXT_TOP_LAYERS:-2}  # MiniLM's last two layers are trained with the heads (docs/results.md)

# the web shards that may be trained and tuned on, and no other
mkdir -p "$W/web_shards"
for shard in 00000 00001 00002 00003; do ln -sfn "$(realpath "$WEB/$shard")" "$W/web_shards/$shard"; done
python -m scripts.shard_splits "$W/web_shards" --dev-shard 00003 --dev-size 1000 --out "$W/web/splits"

FLICKR=(--images "$D/flickr8k-images" --captions "$D/flickr8k.token" --splits "$D/splits" --work-dir "$W/flickr8k")
python batch_image_feature_extract.py "${FLICKR[@]}" --image-backbone "$IMAGE_BACKBONE"
python batch_image_feature_extract.py --captions "$W/web_shards" --work-dir "$W/web" --image-backbone "$IMAGE_BACKBONE"
for source in "$D/flickr8k.token $W/flickr8k" "$W/web_shards $W/web"; do
    read -r captions work <<< "$source"
    python batch_text_feature_extract.py --captions "$captions" --work-dir "$work" --text-backbone minilm \
        --text-top-layers "$TOP"
    python sentence_augment.py --captions "$captions" --work-dir "$work"
    python extract_aug_text_features.py --captions "$captions" --work-dir "$work" --text-top-layers "$TOP"
done
python run_train.py "${FLICKR[@]}" --add-source "$W/web" --querybank-size "$QUERYBANK_SIZE" \
    --text-top-layers "$TOP" --epochs 12 --out "$W/checkpoints"
python -m scripts.export_pretrained "$W/checkpoints/best.pt" --out "$W/model.pt"
python evaluate.py "${FLICKR[@]}" --checkpoint "$W/model.pt" --split dev --out "$W/results/flickr8k"
python evaluate.py --captions "$W/web_shards" --work-dir "$W/web" --splits "$W/web/splits" \
    --checkpoint "$W/model.pt" --split dev --out "$W/results/web"
cp "$W/model.pt" models/pretrained/model.pt
