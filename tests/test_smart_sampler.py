"""UniqueImageBatchSampler: unique images per batch, full caption coverage, ratio, determinism, speed."""
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smart_sampler import UniqueImageBatchSampler


def _data(n_images=300, caps=5, kw_per_image=2):
    cap_img = np.repeat(np.arange(n_images), caps)
    kw_img = np.repeat(np.arange(n_images), kw_per_image)
    return cap_img, kw_img


def _images_of(batch, cap_img, kw_img):
    n = len(cap_img)
    return [cap_img[i] if i < n else kw_img[i - n] for i in batch]


def _check(sampler, cap_img, kw_img):
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for b in batches:
        imgs = _images_of(b, cap_img, kw_img)
        assert len(set(imgs)) == len(imgs), "an image appears twice in a batch"
        assert len(b) <= sampler.batch_size
    flat = [i for b in batches for i in b]
    caps = Counter(i for i in flat if i < len(cap_img))
    if not sampler.drop_last:
        assert sorted(caps) == list(range(len(cap_img))) and set(caps.values()) == {1}
    return batches


def test_unique_images_and_every_caption_once():
    cap_img, kw_img = _data()
    s = UniqueImageBatchSampler(cap_img, kw_img, batch_size=64, caption_ratio=4, seed=0)
    for epoch in range(3):
        s.set_epoch(epoch)
        _check(s, cap_img, kw_img)


@settings(max_examples=40, deadline=None)
@given(n_images=st.integers(1, 40), caps=st.lists(st.integers(1, 7), min_size=1, max_size=40),
       n_kw=st.integers(0, 60), batch_size=st.integers(1, 33), ratio=st.integers(0, 5),
       seed=st.integers(0, 2**16), epoch=st.integers(0, 5), drop_last=st.booleans())
def test_property_no_duplicate_image(n_images, caps, n_kw, batch_size, ratio, seed, epoch, drop_last):
    rng = np.random.default_rng(seed)
    cap_img = np.repeat(np.arange(len(caps)), caps)
    rng.shuffle(cap_img)
    kw_img = rng.integers(0, len(caps), n_kw) if n_kw else None
    s = UniqueImageBatchSampler(cap_img, kw_img, batch_size=batch_size, caption_ratio=ratio, seed=seed,
                                drop_last=drop_last)
    s.set_epoch(epoch)
    batches = _check(s, cap_img, kw_img if kw_img is not None else np.zeros(0, dtype=int))
    if drop_last:
        assert all(len(b) == batch_size for b in batches)
    if kw_img is None or ratio == 0:
        assert all(i < len(cap_img) for b in batches for i in b)


def test_ratio_per_batch():
    cap_img, kw_img = _data(n_images=3000, caps=5, kw_per_image=3)
    s = UniqueImageBatchSampler(cap_img, kw_img, batch_size=256, caption_ratio=4, seed=1)
    batches = list(s)
    full = [b for b in batches if len(b) == 256]
    n_kw = np.array([sum(i >= len(cap_img) for i in b) for b in full])
    assert abs(n_kw.mean() - 51.2) < 1.0
    assert n_kw.min() >= 45 and n_kw.max() <= 57  # every batch near 205 + 51, not just on average
    total_kw = sum(i >= len(cap_img) for b in batches for i in b)
    assert total_kw == round(len(cap_img) / 4)


def test_keywords_cycle_without_replacement_across_epochs():
    cap_img = np.repeat(np.arange(200), 5)  # 1000 captions, ratio 4 -> 250 keywords per epoch
    kw_img = np.arange(200).repeat(3)  # 600 keywords -> each used once before any repeats
    s = UniqueImageBatchSampler(cap_img, kw_img, batch_size=50, caption_ratio=4, seed=3)
    used = []
    for epoch in range(3):  # 750 draws: first 600 are a permutation
        s.set_epoch(epoch)
        used += [i - len(cap_img) for b in s for i in b if i >= len(cap_img)]
    assert len(used) == 750
    assert sorted(used[:600]) == list(range(600))


def test_captions_only_modes():
    cap_img, kw_img = _data(n_images=50)
    for s in (UniqueImageBatchSampler(cap_img, kw_img, batch_size=32, caption_ratio=0),
              UniqueImageBatchSampler(cap_img, None, batch_size=32, caption_ratio=4)):
        batches = _check(s, cap_img, kw_img)
        assert sum(len(b) for b in batches) == len(cap_img)
        assert all(i < len(cap_img) for b in batches for i in b)


def test_deterministic_and_reshuffled_by_epoch():
    cap_img, kw_img = _data(n_images=100)
    a = UniqueImageBatchSampler(cap_img, kw_img, batch_size=32, seed=7)
    b = UniqueImageBatchSampler(cap_img, kw_img, batch_size=32, seed=7)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(3)
    assert list(a) != first
    a.set_epoch(2)
    assert list(a) == first
    c = UniqueImageBatchSampler(cap_img, kw_img, batch_size=32, seed=8)
    c.set_epoch(2)
    assert list(c) != first


def test_len_matches_iteration_and_drop_last():
    cap_img, kw_img = _data(n_images=101)
    s = UniqueImageBatchSampler(cap_img, kw_img, batch_size=40, drop_last=True)
    batches = list(s)
    assert len(batches) == len(s) and all(len(b) == 40 for b in batches)
    s.set_epoch(5)
    assert len(list(s)) == len(s)


def test_one_image_many_captions_still_terminates():
    cap_img = np.zeros(10, dtype=int)  # every caption of the same image: one per batch
    s = UniqueImageBatchSampler(cap_img, None, batch_size=4)
    assert [len(b) for b in s] == [1] * 10


def test_bad_arguments():
    with pytest.raises(ValueError):
        UniqueImageBatchSampler(np.arange(4), None, batch_size=0)
    with pytest.raises(ValueError):
        UniqueImageBatchSampler(np.arange(4), None, batch_size=2, caption_ratio=-1)


def test_speed_flickr_scale():
    rng = np.random.default_rng(0)
    cap_img = rng.permutation(np.repeat(np.arange(30_000), 5))  # 150,000 captions
    kw_img = rng.integers(0, 30_000, 60_000)
    s = UniqueImageBatchSampler(cap_img, kw_img, batch_size=256, caption_ratio=4, seed=0)
    t0 = time.perf_counter()
    n = len(s)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"epoch took {elapsed:.2f} s"
    assert n == pytest.approx((150_000 + 37_500) / 256, abs=2)


def test_works_as_a_dataloader_batch_sampler():
    import torch
    from torch.utils.data import DataLoader

    cap_img, kw_img = _data(n_images=20)
    s = UniqueImageBatchSampler(cap_img, kw_img, batch_size=8, seed=2)
    n_samples = len(cap_img) + len(kw_img)
    got = [b.tolist() for b in DataLoader(torch.arange(n_samples), batch_sampler=s)]
    assert got == list(s)
    with pytest.raises(ValueError):
        s.set_epoch(-1)
