"""Arguments and logging shared by the stage scripts, so every script spells them the same way."""
from __future__ import annotations

import argparse
import logging
import shlex
from pathlib import Path

import config
from paths import Layout


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # transformers/httpx chatter would bury the one line per decision we log ourselves
    for noisy in ("httpx", "urllib3", "transformers", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_data_args(p: argparse.ArgumentParser, images: bool = True) -> None:
    if images:
        p.add_argument("--images", type=Path, default=config.IMAGES_DIR,
                       help="folder of photos (default: %(default)s)")
    p.add_argument("--captions", type=Path, default=config.CAPTIONS_FILE,
                   help="caption file, lines 'name.jpg#n<TAB>caption' (default: %(default)s)")
    p.add_argument("--splits", type=Path, default=None,
                   help="folder of split lists train.txt/val.txt|dev.txt/test.txt "
                        "(default: config.SPLITS_DIR, or WORK_DIR/splits; a seeded split is written if absent)")
    p.add_argument("--work-dir", type=Path, default=config.WORK_DIR,
                   help="where generated files go (default: the original layout, data/ and checkpoints/)")


def add_backbone_args(p: argparse.ArgumentParser, image: bool = True, text: bool = True) -> None:
    if image:
        p.add_argument("--image-backbone", default=config.IMAGE_BACKBONE,
                       help="auto | resnet18 | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2, or "
                            "several joined by + (their features concatenated, e.g. "
                            "efficientnet_lite0+efficientnet_lite2) (default: %(default)s)")
        p.add_argument("--image-weights", type=Path, default=None,
                       help="a local weights file for the image backbone")
    if text:
        p.add_argument("--text-backbone", default=config.TEXT_BACKBONE,
                       help="auto | bert-base-uncased | minilm | bert-base-uncased-last3 | minilm-last3 "
                            "(default: %(default)s)")
        p.add_argument("--text-weights", type=Path, default=None,
                       help="a local model folder for the text backbone")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")


def layout(args: argparse.Namespace) -> Layout:
    return Layout(args.work_dir)


def splits_dir(args: argparse.Namespace) -> Path:
    return args.splits if args.splits else layout(args).default_splits()


def data_flags(args: argparse.Namespace, images: bool = True) -> str:
    """The data flags of this run, to append to a suggested command."""
    parts = []
    if images and hasattr(args, "images"):
        parts += ["--images", str(args.images)]
    parts += ["--captions", str(args.captions)]
    if args.work_dir:
        parts += ["--work-dir", str(args.work_dir)]
    return " ".join(shlex.quote(p) for p in parts)
