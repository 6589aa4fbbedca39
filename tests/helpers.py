"""Small local stand-ins shared by the tests: the real backbones' weights and random checkpoints.

The tests exercise the ResNet18 and BERT code paths with randomly initialised weights saved to a
local file or folder, as a user's downloaded weights would be; checkpoints hold random heads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision
from PIL import Image

WORDS = ("a an the two one dog dogs cat man men woman women child children girl boy is are runs running "
         "plays playing sits sitting jumps on in with of and at near red blue green white black ball grass "
         "water street park beach snow bike shirt hat . , ##s ##ing").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_random_resnet18(path: Path, seed: int = 0) -> Path:
    """A randomly initialised ResNet18 state dict, where models/resnet18.pth would be."""
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def save_tiny_bert(folder: Path, seed: int = 0, words: Sequence[str] = WORDS) -> Path:
    """A random 2-layer, 32-wide BERT with a small lowercase vocabulary, in save_pretrained layout."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + [w for w in words if w not in SPECIAL]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     vocab_size=len(vocab), max_position_embeddings=128)
    BertModel(cfg).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def save_checkpoint(path: Path, seed: int, image_backbone, text_backbone, image_weights=None,
                    embed_dim: int = 16) -> None:
    """A checkpoint of random heads for these backbones, as run_train.py would save it."""
    from model import RetrievalModel

    torch.manual_seed(seed)
    model = RetrievalModel(image_dim=image_backbone.dim, text_dim=text_backbone.dim, embed_dim=embed_dim,
                           hidden_dim=32)
    state = {
        "model_config": model.config_dict(), "model": model.state_dict(),
        "backbones": {
            "image": {"backbone": image_backbone.name, "weights": image_weights or image_backbone.weights,
                      "dim": image_backbone.dim, "preprocess": image_backbone.preprocess},
            "text": {"backbone": text_backbone.name, "weights": text_backbone.weights, "dim": text_backbone.dim,
                     "preprocess": text_backbone.preprocess},
        },
    }
    torch.save(state, path)


def random_photo(rng: np.random.Generator, w: int = 96, h: int = 72) -> Image.Image:
    """A distinct picture: a random colour gradient, a random rectangle and noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = (xx / w)[..., None]
    arr = c0 * (1 - t) + c1 * t
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    arr = np.clip(arr + rng.normal(0, 12, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def save_random_models(base: Path, words: Sequence[str]) -> dict:
    """Random local ResNet18 weights and a tiny BERT (over ``words``) under ``base``, their backbones,
    and ``base/best.pt``: random heads for them (``save_checkpoint`` with seed 1)."""
    from crossmodal.backbones import create_image_backbone, create_text_backbone

    resnet = save_random_resnet18(base / "resnet18.pth")
    bert = save_tiny_bert(base / "bert-base-uncased", words=words)
    image_bb = create_image_backbone("resnet18", resnet)
    text_bb = create_text_backbone("bert-base-uncased", bert)
    checkpoint = base / "best.pt"
    save_checkpoint(checkpoint, 1, image_bb, text_bb)
    return dict(resnet=resnet, bert=bert, image_bb=image_bb, text_bb=text_bb, checkpoint=checkpoint)


def write_captioned_photos(root: Path, n: int, dev: int, words_per_caption: int) -> tuple[list[str], list[str], Path]:
    """``n`` random photos in ``root``/images, two captions of random words each, and split lists (the
    last ``dev`` photos the dev split): the stage scripts' data flags (with ``--work-dir root/work``),
    the photo names and the caption file."""
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    names = [f"{i:02d}.jpg" for i in range(n)]
    for name in names:
        random_photo(rng).save(images / name)
    words = [w for w in " ".join(WORDS).split() if w.isalpha()]
    captions = root / "captions.token"
    captions.write_text("".join(f"{name}#{k}\t{' '.join(rng.choice(words, words_per_caption))}\n"
                                for name in names for k in range(2)))
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(names[:-dev]) + "\n")
    (root / "splits" / "dev.txt").write_text("\n".join(names[-dev:]) + "\n")
    data = ["--images", str(images), "--captions", str(captions), "--splits", str(root / "splits"),
            "--work-dir", str(root / "work")]
    return data, names, captions
