"""ProjectionHead / RetrievalModel: shapes, unit norm, dtype handling, rebuild from config."""
import torch

from model import ProjectionHead, RetrievalModel


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
    assert any(isinstance(m, torch.nn.Dropout) for m in head.mlp)


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
