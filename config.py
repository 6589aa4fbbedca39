"""Every default path and hyperparameter, in one place.

Edit this file to point the stage scripts at your data; every value can also be overridden per run
with the scripts' flags (``--images``, ``--captions``, ``--splits``, ``--work-dir`` ...).
"""
from __future__ import annotations

import os
from pathlib import Path

# OpenMP worker threads that spin while waiting for each other collapse when the cores are shared
# (bench/: a training step took 20x longer with 2 torch threads than with 1 on a busy 2-core
# machine; with passive waiting 2 threads ran as fast as 1). Read when torch loads: the stage
# scripts import config (via cli) before torch. An OMP_WAIT_POLICY set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent

# --- inputs -------------------------------------------------------------------------------------
DATA_DIR = ROOT / "data"
IMAGES_DIR = DATA_DIR / "flickr30k-images"  # the photos
CAPTIONS_FILE = DATA_DIR / "flickr30k.token"  # lines "1000092795.jpg#0<TAB>caption"
SPLITS_DIR = DATA_DIR / "splits"  # train.txt / val.txt (or dev.txt) / test.txt; made if absent
MODELS_DIR = ROOT / "models"  # local weights: resnet18.pth, bert-base-uncased/ ...

# --- generated files ----------------------------------------------------------------------------
# With no --work-dir the original layout is kept: features under data/, checkpoints/ at the top.
# With --work-dir DIR every generated file goes under DIR (same sub-folder names).
WORK_DIR: Path | None = None
IMAGE_EMB_DIRNAME = "image_embeddings"
TEXT_EMB_DIRNAME = "text_embeddings"
AUG_TEXT_EMB_DIRNAME = "aug_text_embeddings"
KEYWORDS_FILENAME = "keywords_augmented.txt"  # sentence_augment.py output
CHECKPOINTS_DIRNAME = "checkpoints"
RESULTS_DIRNAME = "results"

# --- split made when no split lists are given (Karpathy Flickr30K proportions) --------------------
SPLIT_SEED = 0
ENSEMBLE = 1  # independently trained head pairs used as one (--ensemble; 2 = +5 Flickr8k dev rsum, 2x training time)
QUERYBANK_SIZE = 30_000  # training captions (and images) kept for querybank normalisation; 0 = off (querybank.py)
SPLIT_FRACTIONS = {"train": 29000 / 31014, "val": 1014 / 31014, "test": 1000 / 31014}

# --- backbones ----------------------------------------------------------------------------------
IMAGE_BACKBONE = "auto"  # auto | resnet18 | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2
TEXT_BACKBONE = "auto"  # auto | bert-base-uncased | minilm | bert-base-uncased-last3 | minilm-last3
RESNET18_WEIGHTS = MODELS_DIR / "resnet18.pth"  # optional local state dict
BERT_DIR = MODELS_DIR / "bert-base-uncased"  # local folder; else the hub id when online

# --- feature extraction -------------------------------------------------------------------------
IMAGE_VIEWS = 1  # views cached per image (--views, backbones.IMAGE_VIEWS): 7 = crops/flips/scale, +26 Flickr8k dev rsum, 7x the time
IMAGE_BATCH_SIZE_CPU = 8  # small batches stay in cache: measured faster on a 2-core CPU
IMAGE_BATCH_SIZE_GPU = 256
TEXT_BATCH_SIZE = 256
NUM_WORKERS = 2  # JPEG-decoding worker processes (--decode cpu)
GPU_READ_WORKERS = 8  # --decode gpu: file-reading worker processes, at most one per core (H200 profile:
# 8 read 13,402 img/s, 16 starved the decode threads of CPU)
GPU_DECODE_THREADS = 3  # --decode gpu: threads running nvJPEG + resize beside the model (0 = inline)
CHUNK_SIZE = 2048  # rows written (atomically) per resumable chunk
TEXT_MAX_LENGTH = 64  # tokens; captions are short, this only guards against runaway input

# --- keyword augmentation -----------------------------------------------------------------------
AUG_CAPTION_RATIO = 4  # caption samples per keyword sample in a batch (4:1, as the original)

# --- model and training -------------------------------------------------------------------------
EMBED_DIM = 256
HEAD_HIDDEN_DIM = 1024
HEAD_DROPOUT = 0.5  # heavy: heads on a few thousand photos overfit within 2-3 epochs
TRAIN_BF16 = "auto"  # bf16 autocast in training: auto (on where the CPU has AMX) | on | off
INPUT_DROPOUT = 0.2  # dropout on the frozen features themselves (Flickr8k dev rsum 290 -> 300)
INIT_TEMPERATURE = 0.07
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 1.0
BATCH_SIZE = 512  # half the optimiser steps and weight casts of 256 per epoch (0.7-1.0x the epoch time);
# with LEARNING_RATE 4.5e-4 (~sqrt 2 x 3e-4) Flickr8k dev rsum as batch 256 at 3e-4 (README)
EPOCHS = 20
LEARNING_RATE = 4.5e-4
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 1
EARLY_STOP_PATIENCE = 3  # epochs without a better validation rsum
SEED = 0

# --- search / app -------------------------------------------------------------------------------
TOP_K = 5
MAX_TOP_K = 50
EXACT_SEARCH_MAX = 200_000  # above this many images the FAISS index is used
APP_HOST = "127.0.0.1"
APP_PORT = 7860
