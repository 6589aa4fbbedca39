"""A text backbone exported for ONNX Runtime: what encodes a query's text where a served index keeps one.

A search query is one short text through the text encoder, on one CPU thread. PyTorch spends much
of that forward between operations; ONNX Runtime runs the same graph with fused kernels in well
under half the time (docs/scaling.md). ``export_text_encoder`` writes a ``TextBackbone`` (with its
trained top in place) as a self-describing ``.onnx`` graph of ``forward_unpadded``, holding the
tokenizer and the identity it was made for in its ``metadata_props``, with its weights in a file
beside it. ``open_text_encoder`` serves it as an ``OnnxTextEncoder``, which has the
``tokenize_one``/``forward_pooled`` pair the engine calls on a ``TextBackbone``, or says why not and
returns None: the caller then encodes with PyTorch, with the same results.

Exporting needs the ``onnx`` and ``onnxscript`` packages (torch's exporter); serving only onnxruntime.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from crossmodal.backbones.text import TextBackbone, query_tokenizer

log = logging.getLogger(__name__)

QUERY_ENCODER_FILE = "query_text.onnx"  # its name in an index folder (build_index.py writes it)
IDENTITY_KEY = "crossmodal.identity"  # metadata: what it was made for (JSON)
TOKENIZER_KEY = "crossmodal.tokenizer"  # metadata: the fast tokenizer (its tokenizers JSON)


class _Unpadded(nn.Module):
    """``TextBackbone.forward_unpadded`` as a module whose parameters are the encoder's."""

    def __init__(self, backbone: TextBackbone):
        super().__init__()
        self.model = backbone.model
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_unpadded(input_ids)


def export_text_encoder(backbone: TextBackbone, path: str | os.PathLike, identity: dict) -> Path:
    """Write ``backbone`` (on the CPU, with its top in place) to ``path`` for ONNX Runtime, with
    ``identity`` (what the file may serve: JSON-able) recorded in it. Atomic: a failed export leaves
    what was there. Raises ImportError without the exporter's packages, ValueError for a backbone
    without a fast tokenizer."""
    shared = getattr(backbone.tokenizer, "backend_tokenizer", None)
    if shared is None:
        raise ValueError(f"{backbone.name} has no fast tokenizer: its queries cannot be tokenized outside transformers")
    import onnxscript  # noqa: F401 - torch's exporter needs it; the ImportError names the package

    path = Path(path)
    device = next(backbone.model.parameters()).device
    module = _Unpadded(backbone).to("cpu").eval()  # what it serves on (moved back below)
    sample = backbone.tokenize_one("a photo of a dog")["input_ids"]
    tokens = torch.export.Dim("tokens", min=2, max=backbone.max_length)  # [CLS] ... [SEP]: two at least
    quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:  # the exporter logs each pass it runs
            logger.setLevel(logging.WARNING)
        with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(None):
            program = torch.onnx.export(module, (sample,), input_names=["input_ids"], output_names=["pooled"],
                                        dynamic_shapes=({1: tokens},), dynamo=True, optimize=True, verbose=False)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        backbone.model.to(device)
    meta = dict(identity, max_length=backbone.max_length, dim=backbone.dim)
    program.model.metadata_props[IDENTITY_KEY] = json.dumps(meta, sort_keys=True)
    program.model.metadata_props[TOKENIZER_KEY] = shared.to_str()
    _save(program.model, path)
    return path


def _save(model, path: Path) -> None:
    """The graph at ``path``, its weights beside it in ``<stem>.<token>.data``, which ONNX Runtime
    maps rather than copies (a query reads few rows of the token embeddings). The weights get a new
    name each time and the graph that names them replaces the old one last, so a reader never pairs
    a graph with other weights; the old weights are removed after."""
    import onnx_ir

    data = f"{path.stem}.{uuid.uuid4().hex[:12]}.data"
    tmp = path.with_name(f".{path.name}.{data}.tmp")
    try:
        onnx_ir.save(model, tmp, external_data=data)
        for written in (path.with_name(data), tmp):
            with open(written, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, path.with_name(data)):
            with contextlib.suppress(OSError):
                leftover.unlink()
        raise
    for old in path.parent.glob(f"{path.stem}.*.data"):
        if old.name != data:
            with contextlib.suppress(OSError):
                old.unlink()


class OnnxTextEncoder:
    """An exported text encoder on ONNX Runtime's CPU provider: ``tokenize_one`` then
    ``forward_pooled``, as on the ``TextBackbone`` it was made from (one unpadded text at a time)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the process's, as PyTorch's forward
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.path = Path(path)
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self._session.get_modelmeta().custom_metadata_map
        if IDENTITY_KEY not in meta or TOKENIZER_KEY not in meta:
            raise ValueError(f"{path} was not written by export_text_encoder (no {IDENTITY_KEY} in its metadata)")
        self.identity = json.loads(meta[IDENTITY_KEY])
        self.name = self.identity.get("backbone", "?")
        self.dim = int(self.identity["dim"])
        self._tokenizer = query_tokenizer(meta[TOKENIZER_KEY], int(self.identity["max_length"]))

    def tokenize_one(self, text: str) -> dict[str, torch.Tensor]:
        ids = torch.tensor([self._tokenizer.encode(text).ids])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def forward_pooled(self, batch: dict) -> torch.Tensor:
        """(1, T) unpadded ``input_ids`` -> (1, dim) float32 pooled features."""
        ids = batch["input_ids"].numpy().astype(np.int64, copy=False)
        return torch.from_numpy(self._session.run(None, {"input_ids": ids})[0])


def open_text_encoder(path: str | os.PathLike, expected: dict) -> OnnxTextEncoder | None:
    """The exported encoder at ``path`` if it was made for ``expected`` (every key equal), else None
    with one log line saying why, the caller then encoding with PyTorch. A file ONNX Runtime cannot
    load is set aside (``.damaged``) so that the next export replaces it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        encoder = OnnxTextEncoder(path)
    except ImportError as err:
        log.info("query text encoded with PyTorch: onnxruntime is not installed (%s)", err)
        return None
    except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own types for a damaged file
        aside = path.with_name(path.name + ".damaged")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        log.warning("query text encoded with PyTorch: %s could not be loaded (%s: %s); set aside as %s, "
                    "build_index.py exports it again", path, type(err).__name__, str(err).splitlines()[0][:200],
                    aside.name)
        return None
    differ = {k: (encoder.identity.get(k), v) for k, v in expected.items() if encoder.identity.get(k) != v}
    if differ:
        log.warning("query text encoded with PyTorch: %s was exported for another model (%s); build_index.py "
                    "exports this one's", path, ", ".join(f"{k} {a!r}, not {b!r}" for k, (a, b) in differ.items()))
        return None
    return encoder


def ensure_exported(backbone: TextBackbone, path: str | os.PathLike, identity: dict) -> str:
    """Export ``backbone`` to ``path`` unless a file made for ``identity`` is there: a line saying what
    happened. Never raises for a backbone or an installation that cannot export: queries then run
    on PyTorch, which the line says."""
    path = Path(path)
    if open_text_encoder(path, identity) is not None:
        return f"query text encoder for ONNX Runtime: kept {path}"
    if not isinstance(backbone, TextBackbone):
        return f"query text encoder: {backbone.name} is not exported for ONNX Runtime; queries run on PyTorch"
    try:
        export_text_encoder(backbone, path, identity)
    except (ImportError, ValueError, RuntimeError) as err:
        return (f"query text encoder not exported for ONNX Runtime ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); queries run on PyTorch")
    size = sum(f.stat().st_size for f in (path, *path.parent.glob(f"{path.stem}.*.data")))
    return f"query text encoder exported for ONNX Runtime: {path} (with its weights, {size / 2**20:.0f} MB)"
