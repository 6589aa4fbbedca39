"""The shipped-model export: float16, search-only, weights-only loadable, size-bounded."""
from __future__ import annotations

import pytest
import torch

from crossmodal.pretrained import export_checkpoint, shipped_checkpoint

from model import RetrievalModel, load_checkpoint


def trained_state() -> dict:
    torch.manual_seed(0)
    model = RetrievalModel(image_dim=64, text_dim=32, embed_dim=16, hidden_dim=48)
    opt = torch.optim.AdamW(model.parameters())
    bank = torch.nn.functional.normalize(torch.randn(500, 16), dim=1).half()
    return {"model_config": model.config_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
            "temperature": 0.05, "epoch": 3, "rng": {"torch": torch.get_rng_state()},
            "backbones": {"image": {"backbone": "x"}, "text": {"backbone": "y"}},
            "querybank": {"text": bank, "keywords": bank[:300], "image": bank[:200], "beta": 20.0},
            "calibration": {"sentence": {"method": "platt", "slope": 10.0, "intercept": -2.0}}}


def test_export_keeps_what_search_needs_in_float16(tmp_path):
    state = trained_state()
    out = tmp_path / "pretrained" / "model.pt"
    size = export_checkpoint(state, out, bank_size=100)
    assert size == out.stat().st_size
    model, shipped = load_checkpoint(out)  # weights_only loading
    assert "optimizer" not in shipped and "rng" not in shipped and "image" not in shipped["querybank"]
    assert all(t.dtype == torch.float16 for t in shipped["model"].values())
    assert shipped["querybank"]["text"].shape == (100, 16) and shipped["querybank"]["beta"] == 20.0
    assert shipped["calibration"] == state["calibration"] and shipped["backbones"] == state["backbones"]
    original = RetrievalModel(**state["model_config"])
    original.load_state_dict(state["model"])
    original.eval()
    x = torch.randn(8, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_image(x), original.encode_image(x), atol=2e-3, rtol=0)
    assert shipped_checkpoint(tmp_path) == out
    assert shipped_checkpoint(tmp_path / "elsewhere") is None


def test_export_refuses_a_file_over_the_limit(tmp_path):
    with pytest.raises(ValueError, match="over the"):
        export_checkpoint(trained_state(), tmp_path / "model.pt", max_bytes=10_000)
    assert not (tmp_path / "model.pt").exists()


def test_scripts_use_the_shipped_model_when_none_was_trained(tmp_path, caplog):
    from types import SimpleNamespace

    from crossmodal import cli

    trained = tmp_path / "work" / "checkpoints" / "best.pt"
    args = SimpleNamespace(checkpoint=None, layout=SimpleNamespace(best_checkpoint=trained),
                           models_dir=tmp_path / "models")
    assert cli.resolve_checkpoint(args) == trained  # nothing shipped: the error will name what to train
    shipped = tmp_path / "models" / "pretrained" / "model.pt"
    export_checkpoint(trained_state(), shipped)
    with caplog.at_level("INFO"):
        assert cli.resolve_checkpoint(args) == shipped
    assert [r.getMessage() for r in caplog.records if "shipped model" in r.getMessage()] == [
        f"no trained checkpoint at {trained}: using the shipped model {shipped} ({shipped.parent / 'MODEL_CARD.md'})"]
    trained.parent.mkdir(parents=True)
    trained.write_bytes(b"")
    assert cli.resolve_checkpoint(args) == trained
    args.checkpoint = tmp_path / "mine.pt"
    assert cli.resolve_checkpoint(args) == tmp_path / "mine.pt"
