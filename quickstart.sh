#!/usr/bin/env bash
# The whole pipeline on the built-in demo dataset (nothing to download), ending with the search page.
# WORK=dir to choose where generated files go; NO_APP=1 to stop before starting the page.
set -euo pipefail
cd "$(dirname "$0")"
W=${WORK:-work/demo}
DATA=(--images "$W/data/images" --captions "$W/data/captions.token" --splits "$W/data/splits" --work-dir "$W")
python make_demo_data.py --out "$W/data"
python batch_image_feature_extract.py "${DATA[@]}"
python batch_text_feature_extract.py --captions "$W/data/captions.token" --work-dir "$W"
python sentence_augment.py --captions "$W/data/captions.token" --work-dir "$W"
python extract_aug_text_features.py --captions "$W/data/captions.token" --work-dir "$W"
python run_train.py "${DATA[@]}" --epochs 15
python evaluate.py "${DATA[@]}" --split test
if [ -z "${NO_APP:-}" ]; then
  python app.py --images "$W/data/images" --captions "$W/data/captions.token" --work-dir "$W"
fi
