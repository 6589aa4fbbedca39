"""Small local stand-ins for the real backbones' weights, shared by the tests.

The tests exercise the ResNet18 and BERT code paths with randomly initialised weights saved to a
local file or folder, as a user's downloaded weights would be.
"""
from __future__ import annotations

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
