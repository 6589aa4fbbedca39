"""Small local stand-ins shared by the tests: the real backbones' weights, and huge images.

The tests exercise the ResNet18 and BERT code paths with randomly initialised weights saved to a
local file or folder, as a user's downloaded weights would be; checkpoints hold random heads.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import torch
import torchvision

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


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """An RGB PNG of width x height black pixels (a 10000 x 10000 one is ~0.3 MB), written without
    ever holding its pixels: the rows are compressed in identical blocks, each ending in a full
    flush (the compressor starts afresh, so every block compresses to the same bytes)."""
    row = b"\x00" * (1 + 3 * width)  # filter byte + pixels
    per_block = max(1, min(height, (4 << 20) // len(row)))
    blocks, rest = divmod(height, per_block)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the zlib header and checksum are added here
    block = comp.compress(row * per_block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.compress(row * rest) + comp.flush()
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(row * per_block, adler)
    adler = zlib.adler32(row * rest, adler)
    idat = b"\x78\xda" + block * blocks + tail + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
