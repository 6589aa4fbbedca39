"""ProjectionHead / RetrievalModel: shapes, unit norm, dtype handling, rebuild from config."""
import pytest
import torch

from model import Dropout, ProjectionHead, RetrievalModel, dropout


def test_head_output_is_unit_norm_and_shaped():
    torch.manual_seed(0)
    head = ProjectionHead(32, out_dim=16, hidden_dim=64, dropout=0.1)
    out = head(torch.randn(10, 32))
    assert out.shape == (10, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(10))


def test_head_has_residual_skip_and_mlp():
    head = ProjectionHead(8, out_dim=4, hidden_dim=16)
    assert isinstance(head.norm, torch.nn.LayerNorm)
    assert head.skip.in_features == 8 and head.skip.out_features == 4
    assert any(isinstance(m, Dropout) for m in head.mlp)


def test_encoders_accept_float16_and_float32():
    torch.manual_seed(0)
    model = RetrievalModel(image_dim=24, text_dim=12, embed_dim=8, hidden_dim=32).eval()
    x_img = torch.randn(5, 24)
    x_txt = torch.randn(5, 12)
    a = model.encode_image(x_img.half())
    b = model.encode_image(x_img.half().float())
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    t = model.encode_text(x_txt.half())
    assert t.shape == (5, 8)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(5))


def test_config_dict_rebuilds_the_model():
    model = RetrievalModel(image_dim=24, text_dim=12, embed_dim=8, hidden_dim=32, dropout=0.2)
    cfg = model.config_dict()
    assert cfg == {"image_dim": 24, "text_dim": 12, "embed_dim": 8, "hidden_dim": 32, "dropout": 0.2}
    clone = RetrievalModel(**cfg)
    clone.load_state_dict(model.state_dict())  # same architecture: strict load succeeds
    model.eval(), clone.eval()
    x = torch.randn(3, 24)
    torch.testing.assert_close(model.encode_image(x), clone.encode_image(x))


def test_no_temperature_in_model():
    model = RetrievalModel(image_dim=4, text_dim=4, embed_dim=4, hidden_dim=8)
    assert not any("temp" in name for name, _ in model.named_parameters())


def test_gradients_reach_both_heads():
    model = RetrievalModel(image_dim=6, text_dim=5, embed_dim=4, hidden_dim=8)
    img, txt = model(torch.randn(3, 6), torch.randn(3, 5))
    (img * txt).sum().backward()
    assert model.image_head.skip.weight.grad is not None
    assert model.text_head.mlp[0].weight.grad is not None


def test_checkpoint_config_with_the_removed_pool_key_still_loads():
    # checkpoints written while the ``pool`` option existed record "pool": None (run_train never set it)
    from model import EnsembleModel, build_model

    cfg = {"image_dim": 6, "text_dim": 5, "embed_dim": 4, "hidden_dim": 8, "dropout": 0.1}
    state = RetrievalModel(**cfg).state_dict()
    build_model({**cfg, "pool": None}).load_state_dict(state)
    assert isinstance(build_model({"members": [{**cfg, "pool": None}] * 2}), EnsembleModel)
    with pytest.raises(ValueError, match="pool='attention'"):
        build_model({**cfg, "pool": "attention"})


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_fast_dropout_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    x = torch.ones(400, 1000, requires_grad=True)
    y = dropout(x, p)
    dropped = (y == 0).float().mean().item()
    kept_value = y[y != 0].unique()
    assert abs(dropped - p) < 0.005  # p is rounded to a multiple of 1/256
    assert len(kept_value) == 1 and abs(kept_value.item() * (1 - dropped) - 1) < 0.01  # expectation kept
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * kept_value.item())
    torch.manual_seed(1)
    again = dropout(torch.ones(400, 1000), p)
    assert not torch.equal(again != 0, y != 0)  # a fresh mask per call


def test_fast_dropout_is_identity_when_off_and_seeded():
    x = torch.randn(64, 32)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.count_nonzero(dropout(x, 1.0)) == 0
    torch.manual_seed(3)
    a = dropout(x, 0.3)
    torch.manual_seed(3)
    torch.testing.assert_close(dropout(x, 0.3), a)  # reproducible from torch's seed (resume relies on it)
    head = Dropout(0.3).eval()
    assert head(x) is x


def test_ensemble_is_the_mean_cosine_of_its_members_and_rebuilds():
    from model import EnsembleModel, build_model

    torch.manual_seed(0)
    cfg = dict(image_dim=12, text_dim=10, embed_dim=8, hidden_dim=16)
    ens = EnsembleModel([cfg, cfg]).eval()
    img, txt = torch.randn(5, 12), torch.randn(7, 10)
    ie, te = ens(img, txt)
    assert ie.shape == (5, 16) and te.shape == (7, 16)
    torch.testing.assert_close(ie.norm(dim=1), torch.ones(5))
    members = [(m.encode_image(img) @ m.encode_text(txt).T) for m in ens.members]
    torch.testing.assert_close(ie @ te.T, (members[0] + members[1]) / 2)
    assert not torch.allclose(members[0], members[1])  # independently initialised members
    again = build_model(ens.config_dict())
    again.load_state_dict(ens.state_dict())
    torch.testing.assert_close(again.eval().encode_text(txt), te)
    assert ens.config_dict()["embed_dim"] == 16 and ens.config_dict()["image_dim"] == 12
    assert isinstance(build_model(RetrievalModel(**cfg).config_dict()), RetrievalModel)
    with pytest.raises(ValueError, match="at least one"):
        EnsembleModel([])


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter moved off its initial value (LayerNorm scale 1 and shifts 0 would hide a fold bug)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_folded_text_encoder_matches_encode_text(dtype):
    """Serving's FoldedHead (LayerNorm folded into one input matrix) gives the head's vectors to
    float32 rounding, for one model and for an ensemble, and does not follow later weight changes."""
    from model import EnsembleModel, FoldedHead, folded_text_encoder

    torch.manual_seed(0)
    cfg = dict(image_dim=12, text_dim=40, embed_dim=16, hidden_dim=64)
    x = (torch.randn(9, 40) * 3 + 1).to(dtype)
    for model in (_trained_looking(RetrievalModel(**cfg)), _trained_looking(EnsembleModel([cfg, cfg]))):
        folded = folded_text_encoder(model)
        with torch.inference_mode():
            want, got = model.encode_text(x), folded(x)
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    head = _trained_looking(RetrievalModel(**cfg)).text_head
    folded = FoldedHead(head)
    before = folded(x.float())
    with torch.no_grad():
        head.skip.weight.mul_(2)
    torch.testing.assert_close(folded(x.float()), before)  # a snapshot
    assert not torch.allclose(head(x.float()), before)
