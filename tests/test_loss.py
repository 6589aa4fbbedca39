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
    # the trainer's pattern: model and loss parameters in one optimiser
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=1e-2)
    assert any(p is loss_fn.log_temperature for g in opt.param_groups for p in g["params"])
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
    a = _unit(4, 8, 0).requires_grad_()
    opt = torch.optim.AdamW([a] + list(loss_fn.parameters()), lr=1e-1)
    loss_fn(a, _unit(4, 8, 1)).backward()
    opt.step()
    assert loss_fn.temperature == pytest.approx(0.07)


def test_temperature_survives_state_dict():
    # the trainer checkpoints loss.state_dict(); resuming must restore the learnt temperature
    src = InfoNCELoss(init_temperature=0.07)
    with torch.no_grad():
        src.log_temperature.fill_(math.log(0.2))
    dst = InfoNCELoss(init_temperature=0.07)
    dst.load_state_dict(src.state_dict())
    assert dst.temperature == pytest.approx(0.2)


def test_bad_temperature_range():
    with pytest.raises(ValueError):
        InfoNCELoss(min_temperature=0.5, max_temperature=0.1)
    with pytest.raises(ValueError):
        InfoNCELoss(min_temperature=0.0)
    with pytest.raises(ValueError):
        InfoNCELoss()(_unit(3, 4), _unit(4, 4))  # rows must pair up


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
    # all-distinct ids change nothing; numpy ids work too
    torch.testing.assert_close(loss_fn(a, b, torch.arange(4)), loss_fn(a, b))
    torch.testing.assert_close(loss_fn(a, b, ids.numpy()), masked)


def test_masking_makes_duplicate_captions_harmless():
    # two identical captions of one image: unmasked, each is a hard negative for the other
    img = _unit(3, 8, 11)
    txt = img.clone()
    img = torch.cat([img[:1], img])  # image 0 appears twice (rows 0 and 1)
    txt = torch.cat([txt[:1], txt])
    ids = torch.tensor([0, 0, 1, 2])
    loss_fn = InfoNCELoss(init_temperature=0.01, min_temperature=0.01)
    assert loss_fn(img, txt, ids) < 0.01 < loss_fn(img, txt)


def _temperature_grad(log_t, a, b, lo=0.05, hi=0.5):
    loss_fn = InfoNCELoss(min_temperature=lo, max_temperature=hi)
    with torch.no_grad():
        loss_fn.log_temperature.fill_(log_t)
    loss_fn(a, b).backward()
    return float(loss_fn.log_temperature.grad)


def test_clamped_temperature_can_come_back_but_not_drift_out():
    # random (unmatched) pairs: the loss wants a HIGHER temperature (flatter softmax), grad < 0;
    # matched pairs: it wants a LOWER one, grad > 0
    rand_a, rand_b = _unit(32, 16, 12), _unit(32, 16, 13)
    match_a = _unit(32, 16, 14)
    match_b = F.normalize(match_a + 0.05 * _unit(32, 16, 15), dim=-1)
    inside = math.log(0.1)
    assert _temperature_grad(inside, rand_a, rand_b) < 0 < _temperature_grad(inside, match_a, match_b)
    for below in (math.log(0.05), math.log(0.01)):  # on the floor, and past it
        assert _temperature_grad(below, rand_a, rand_b) < 0  # a descent step raises it back: kept
        assert _temperature_grad(below, match_a, match_b) == 0  # would push further below: dropped
    for above in (math.log(0.5), math.log(2.0)):
        assert _temperature_grad(above, match_a, match_b) > 0
        assert _temperature_grad(above, rand_a, rand_b) == 0


def test_temperature_leaves_the_floor_with_adamw():
    loss_fn = InfoNCELoss(init_temperature=0.07, min_temperature=0.05, max_temperature=0.5)
    with torch.no_grad():
        loss_fn.log_temperature.fill_(math.log(0.03))  # pushed past the floor by earlier steps
    opt = torch.optim.AdamW(loss_fn.parameters(), lr=0.05, weight_decay=0.0)
    a, b = _unit(32, 16, 16), _unit(32, 16, 17)  # unmatched: the loss wants a higher temperature
    for _ in range(20):
        opt.zero_grad()
        loss_fn(a, b).backward()
        opt.step()
    assert loss_fn.temperature > 0.06
