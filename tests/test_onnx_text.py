"""The text encoder exported for ONNX Runtime (crossmodal.backbones.onnx_text): the same vectors as
PyTorch's forward, a trained top included; refused for another model; a damaged file set aside."""
import dataclasses
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")

from crossmodal.backbones import (
    QUERY_ENCODER_FILE,
    OnnxTextEncoder,
    TextTop,
    create_text_backbone,
    ensure_exported,
    open_text_encoder,
)
from crossmodal.backbones.onnx_text import export_text_encoder

TEXTS = ["a dog running through the snow", "Two children play on a beach, near the water!", "dog",
         "ünïcode café 東京 🙂", "", "word " * 100]  # the last one longer than the 64 tokens kept


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """MiniLM with a trained top (its last layer, perturbed) exported once for the module."""
    backbone = create_text_backbone("minilm")
    plain = backbone.forward_unpadded(backbone.tokenize_one(TEXTS[0])["input_ids"]).detach()
    top = TextTop.from_backbone(backbone, 1)
    with torch.no_grad():
        for p in top.parameters():
            p.add_(0.02 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    backbone.set_top(top)
    path = tmp_path_factory.mktemp("onnx") / QUERY_ENCODER_FILE
    identity = {"checkpoint": "abc", "backbone": backbone.name, "weights": backbone.weights}
    export_text_encoder(backbone, path, identity)
    return backbone, path, identity, plain


@torch.inference_mode()
def test_exported_encoder_gives_pytorchs_vectors_with_the_trained_top(exported):
    backbone, path, identity, plain = exported
    encoder = open_text_encoder(path, identity)
    assert isinstance(encoder, OnnxTextEncoder) and encoder.dim == backbone.dim == 384
    for text in TEXTS:
        ids = encoder.tokenize_one(text)["input_ids"]
        assert torch.equal(ids, backbone.tokenize_one(text)["input_ids"])  # the tokenizer travels in the file
        assert ids.shape[1] <= backbone.max_length
        got, want = encoder.forward_pooled({"input_ids": ids}), backbone.forward_pooled(backbone.tokenize_one(text))
        assert got.shape == (1, 384) and got.dtype == torch.float32
        assert (got - want).abs().max() < 1e-5
    # the top is in the graph: the encoder without it gives other vectors
    top_vector = encoder.forward_pooled(encoder.tokenize_one(TEXTS[0]))
    assert (top_vector - plain).abs().max() > 1e-3


def test_an_export_for_another_model_is_refused_and_replaced(exported, tmp_path, caplog):
    backbone, path, identity, _ = exported
    other = dict(identity, checkpoint="another")
    with caplog.at_level(logging.WARNING):
        assert open_text_encoder(path, other) is None
    assert "exported for another model (checkpoint 'abc', not 'another')" in caplog.text
    # ensure_exported keeps a matching file and replaces another model's, its weights file with it
    copy = tmp_path / QUERY_ENCODER_FILE
    export_text_encoder(backbone, copy, identity)
    before = copy.stat().st_mtime_ns
    assert "kept" in ensure_exported(backbone, copy, identity) and copy.stat().st_mtime_ns == before
    first_weights = sorted(p.name for p in tmp_path.glob("*.data"))
    assert "exported" in ensure_exported(backbone, copy, other)
    assert open_text_encoder(copy, other) is not None
    weights = sorted(p.name for p in tmp_path.glob("*.data"))
    assert len(weights) == 1 and weights != first_weights  # the old weights removed


def test_a_damaged_export_is_set_aside_and_pytorch_serves(exported, tmp_path, caplog):
    backbone, _, identity, _ = exported
    path = tmp_path / QUERY_ENCODER_FILE
    export_text_encoder(backbone, path, identity)
    (weights,) = tmp_path.glob("*.data")
    with open(weights, "r+b") as f:  # a weights file cut short
        f.truncate(weights.stat().st_size // 2)
    with caplog.at_level(logging.WARNING):
        assert open_text_encoder(path, identity) is None
    assert "could not be loaded" in caplog.text and not path.exists()
    assert (tmp_path / (QUERY_ENCODER_FILE + ".damaged")).is_file()
    assert "exported" in ensure_exported(backbone, path, identity)  # made again
    encoder = open_text_encoder(path, identity)
    np.testing.assert_allclose(encoder.forward_pooled(encoder.tokenize_one("a dog")).numpy(),
                               backbone.forward_pooled(backbone.tokenize_one("a dog")).detach().numpy(), atol=1e-5)


def test_no_file_means_pytorch_and_a_backbone_without_a_fast_tokenizer_is_not_exported(exported, tmp_path):
    backbone, _, identity, _ = exported
    assert open_text_encoder(tmp_path / "absent.onnx", identity) is None
    slow = dataclasses.replace(backbone, tokenizer=object())  # a slow tokenizer has no Rust backend
    line = ensure_exported(slow, tmp_path / QUERY_ENCODER_FILE, identity)
    assert "not exported" in line and "no fast tokenizer" in line and not (tmp_path / QUERY_ENCODER_FILE).exists()
