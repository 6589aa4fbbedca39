"""The values the stage scripts start from: paths, backbones, model and training settings.

Edit this file to point the stage scripts at your data. Every value can also be overridden per
run with the scripts' flags (``--images``, ``--captions``, ``--splits``, ``--work-dir`` ...).
Engine settings (batch and chunk sizes, worker counts, the exact-search limit) live with their
code in ``crossmodal/`` and are flags of the scripts that use them.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# --- inputs -------------------------------------------------------------------------------------
DATA_DIR = ROOT / "data"  # without --work-dir, generated features go here too
IMAGES_DIR = DATA_DIR / "flickr30k-images"  # the photos
CAPTIONS_FILE = DATA_DIR / "flickr30k.token"  # lines "1000092795.jpg#0<TAB>caption"
SPLITS_DIR = DATA_DIR / "splits"  # train.txt / val.txt (or dev.txt) / test.txt; a seeded split if absent
MODELS_DIR = ROOT / "models"  # local weights: resnet18.pth, bert-base-uncased/ (models/README.md)

# --- generated files ----------------------------------------------------------------------------
WORK_DIR: Path | None = None  # None: features under data/, checkpoints/ at the top; else all under it

# --- backbones ----------------------------------------------------------------------------------
IMAGE_BACKBONE = "auto"  # auto (the original pair when its weights are here, else the offline pair) or a name
TEXT_BACKBONE = "auto"  # python batch_image_feature_extract.py --help lists the names
IMAGE_VIEWS = 1  # views cached per image: 7 = crops, flips and a larger scale (docs/results.md), 7x the time

# --- model and training -------------------------------------------------------------------------
EMBED_DIM = 256
HEAD_HIDDEN_DIM = 1024
HEAD_DROPOUT = 0.5  # heavy: heads on a few thousand photos overfit within 2-3 epochs
INPUT_DROPOUT = 0.2  # dropout on the frozen features themselves
INIT_TEMPERATURE = 0.07
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 1.0
AUG_CAPTION_RATIO = 4  # caption samples per keyword sample in a batch (4:1, as the original)
BATCH_SIZE = 512  # with LEARNING_RATE 4.5e-4 (about sqrt 2 x 3e-4 at batch 256; docs/results.md)
EPOCHS = 20
LEARNING_RATE = 4.5e-4
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 1.0
EARLY_STOP_PATIENCE = 3  # epochs without a better validation rsum
TRAIN_BF16 = "auto"  # bf16 autocast in training: auto (on where the CPU has AMX) | on | off
SEED = 0
ENSEMBLE = 1  # independently trained head pairs served as one (run_train.py --ensemble)
TEXT_TOP_LAYERS = 0  # the text encoder's last layers trained with the heads, from cached states; 0 = frozen
TOP_LR_SCALE = 0.1  # their learning rate, as a share of LEARNING_RATE
QUERYBANK_SIZE = 30_000  # training captions (and images) kept for querybank normalisation; 0 = off

# --- search page --------------------------------------------------------------------------------
APP_HOST = "127.0.0.1"
APP_PORT = 7860
