"""InfoNCELoss: learnable clamped temperature, symmetry, sanity, same-image masking."""
import math

import pytest
import torch
import torch.nn.functional as F

from loss import InfoNCELoss
from model import RetrievalModel


def _unit(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_optimizer_step_changes_temperature():
    torch.manual_seed(0)
    model = RetrievalModel(image_dim=16, text_dim=12, embed_dim=8, hidden_dim=32)
    loss_fn = InfoNCELoss(init_temperature=0.07)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-2)
    before = loss_fn.temperature
    assert before == pytest.approx(0.07)
    loss = loss_fn(model.encode_image(torch.randn(8, 16)), model.encode_text(torch.randn(8, 12)))
    opt.zero_grad()
    loss.backward()
    assert loss_fn.log_temperature.grad is not None and loss_fn.log_temperature.grad != 0
    opt.step()
    assert loss_fn.temperature != pytest.approx(before, abs=1e-6)


def test_fixed_temperature_is_not_learnt():
    loss_fn = InfoNCELoss(learn_temperature=False)
    assert not loss_fn.log_temperature.requires_grad
    assert list(p for p in loss_fn.parameters() if p.requires_grad) == []


def test_symmetric():
    a, b = _unit(6, 8, 1), _unit(6, 8, 2)
    loss_fn = InfoNCELoss()
    torch.testing.assert_close(loss_fn(a, b), loss_fn(b, a))


def test_matches_reference_formula():
    a, b = _unit(5, 4, 3), _unit(5, 4, 4)
    loss_fn = InfoNCELoss(init_temperature=0.5)
    logits = a @ b.T / 0.5
    t = torch.arange(5)
    ref = (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
    torch.testing.assert_close(loss_fn(a, b), ref)


def test_matched_pairs_beat_shuffled():
    a = _unit(16, 32, 5)
    b = F.normalize(a + 0.1 * _unit(16, 32, 6), dim=-1)
    loss_fn = InfoNCELoss()
    assert loss_fn(a, b) < loss_fn(a, b[torch.roll(torch.arange(16), 1)])


def test_temperature_is_clamped():
    loss_fn = InfoNCELoss(init_temperature=0.07, min_temperature=0.05, max_temperature=0.5)
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(1e-4))
    assert loss_fn.temperature == pytest.approx(0.05)
    a, b = _unit(4, 4, 7), _unit(4, 4, 8)
    logits = a @ b.T / 0.05
    t = torch.arange(4)
    torch.testing.assert_close(loss_fn(a, b), (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2)
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(100.0))
    assert loss_fn.temperature == pytest.approx(0.5)


def test_same_image_rows_are_not_negatives():
    a, b = _unit(4, 8, 9), _unit(4, 8, 10)
    ids = torch.tensor([0, 0, 1, 2])  # rows 0 and 1 show the same image
    loss_fn = InfoNCELoss(init_temperature=0.1)
    masked = loss_fn(a, b, ids)
    # reference: remove the (0,1) and (1,0) logits from both softmaxes
    logits = a @ b.T / 0.1
    logits[0, 1] = logits[1, 0] = float("-inf")
    t = torch.arange(4)
    ref = (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
    torch.testing.assert_close(masked, ref)
    assert masked < loss_fn(a, b)  # fewer negatives -> lower loss
    # all-distinct ids change nothing
    torch.testing.assert_close(loss_fn(a, b, torch.arange(4)), loss_fn(a, b))


def test_masking_makes_duplicate_captions_harmless():
    # two identical captions of one image: unmasked, each is a hard negative for the other
    img = _unit(3, 8, 11)
    txt = img.clone()
    img = torch.cat([img[:1], img])  # image 0 appears twice (rows 0 and 1)
    txt = torch.cat([txt[:1], txt])
    ids = torch.tensor([0, 0, 1, 2])
    loss_fn = InfoNCELoss(init_temperature=0.01, min_temperature=0.01)
    assert loss_fn(img, txt, ids) < 0.01 < loss_fn(img, txt)
