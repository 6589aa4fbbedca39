"""Batches in which no image appears twice, with keyword samples mixed in at a fixed ratio.

Why: InfoNCE treats every other row of a batch as a negative. Two captions of the same image in
one batch would be a false negative (the loss can also mask those, but a unique-image batch wastes
no slots on them). Flickr30K has 5 captions per image, so a plain shuffle puts a duplicate in
nearly every batch of 256.

Sample indices follow ``data_loader.SplitData.gather``: ``i < n_captions`` is caption row ``i``,
``i >= n_captions`` is keyword sample ``i - n_captions``.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

import config

_CAPTION_STREAM, _KEYWORD_STREAM = 1, 2  # sub-stream tags of the seeded generators


class UniqueImageBatchSampler(Sampler[list[int]]):
    """Yields lists of sample indices; every caption exactly once per epoch, no image twice per batch.

    Each epoch: captions in a fresh seeded order, keyword samples spread evenly among them
    (``caption_ratio`` captions per keyword), then a greedy fill: a sample whose image is already
    in the current batch is carried over to the next batch instead of being dropped. Keywords are
    drawn without replacement from a seeded permutation that continues (and re-shuffles when
    exhausted) across epochs, so all keywords get used before any repeats.
    """

    def __init__(
        self,
        caption_images: np.ndarray,  # (n_captions,) image id of each caption row
        keyword_images: np.ndarray | None,  # (n_keywords,) image id of each keyword sample; None = no keywords
        batch_size: int,  # samples per batch
        caption_ratio: int = config.AUG_CAPTION_RATIO,  # caption samples per keyword sample; 0 = captions only
        seed: int = config.SEED,  # base seed; the epoch is mixed in by set_epoch
        drop_last: bool = False,  # drop the trailing batch(es) smaller than batch_size (then not every caption is seen)
    ) -> None:
        self.caption_images = np.asarray(caption_images, dtype=np.int64).reshape(-1)
        self.keyword_images = None if keyword_images is None else np.asarray(keyword_images, dtype=np.int64).reshape(-1)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if caption_ratio < 0:
            raise ValueError(f"caption_ratio must be >= 0, got {caption_ratio}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.batch_size = int(batch_size)
        self.caption_ratio = int(caption_ratio)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.n_captions = len(self.caption_images)
        use_kw = self.caption_ratio > 0 and self.keyword_images is not None and len(self.keyword_images) > 0
        self.n_keywords = len(self.keyword_images) if use_kw else 0
        # keyword samples per epoch: fixed, so epoch e's slice of the keyword stream is known without
        # building epochs 0..e-1 (resume jumps straight to an epoch)
        self.keywords_per_epoch = round(self.n_captions / self.caption_ratio) if use_kw else 0
        self.epoch = 0
        self._built: tuple[int, list[list[int]]] | None = None  # (epoch, batches) cache

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's deterministic shuffle (same seed + epoch -> same batches)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _keyword_slice(self) -> np.ndarray:
        """Keyword sample indices for this epoch: the next ``keywords_per_epoch`` of the cycling stream."""
        start = self.epoch * self.keywords_per_epoch
        stop = start + self.keywords_per_epoch
        parts = []
        for cycle in range(start // self.n_keywords, (stop - 1) // self.n_keywords + 1):
            perm = np.random.default_rng([self.seed, _KEYWORD_STREAM, cycle]).permutation(self.n_keywords)
            lo = max(start - cycle * self.n_keywords, 0)
            hi = min(stop - cycle * self.n_keywords, self.n_keywords)
            parts.append(perm[lo:hi])
        return np.concatenate(parts)

    def _build(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, _CAPTION_STREAM, self.epoch])
        captions = rng.permutation(self.n_captions)
        if self.keywords_per_epoch:
            keywords = self._keyword_slice()
            # even interleave: caption i at (i+.5)/n_cap, keyword j at (j+.5)/K, so every stretch of
            # the stream (hence every batch) holds captions and keywords at the ratio
            pos = np.concatenate([(np.arange(len(captions)) + 0.5) / len(captions),
                                  (np.arange(len(keywords)) + 0.5) / len(keywords)])
            order = np.argsort(pos, kind="stable")
            samples = np.concatenate([captions, keywords + self.n_captions])[order]
            images = np.concatenate([self.caption_images[captions], self.keyword_images[keywords]])[order]
        else:
            samples, images = captions, self.caption_images[captions]

        B = self.batch_size
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_imgs: set[int] = set()
        carry: deque[tuple[int, int]] = deque()  # samples whose image was already in the batch

        def close() -> None:
            nonlocal cur, cur_imgs
            batches.append(cur)
            cur, cur_imgs = [], set()

        def drain() -> None:
            # place carried samples first (oldest first), each batch at most one pass over the carry
            while carry:
                for _ in range(len(carry)):
                    s, im = carry.popleft()
                    if im in cur_imgs:
                        carry.append((s, im))
                    else:
                        cur.append(s)
                        cur_imgs.add(im)
                        if len(cur) == B:
                            break
                if len(cur) < B:
                    return
                close()

        for s, im in zip(samples.tolist(), images.tolist()):
            if im in cur_imgs:
                carry.append((s, im))
                continue
            cur.append(s)
            cur_imgs.add(im)
            if len(cur) == B:
                close()
                drain()
        while carry:  # stream exhausted: the rest of the carry, in as few batches as it allows
            drain()
            if carry:
                close()
        if cur:
            close()
        if self.drop_last:
            batches = [b for b in batches if len(b) == B]
        return batches

    def _batches(self) -> list[list[int]]:
        if self._built is None or self._built[0] != self.epoch:
            self._built = (self.epoch, self._build())
        return self._built[1]

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self._batches()])

    def __len__(self) -> int:
        """Batches in the current epoch (exactly what ``__iter__`` yields; may vary by one or so per epoch)."""
        return len(self._batches())
