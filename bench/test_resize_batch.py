"""The GPU-decode path's batched resize gives exactly the per-image results (checked on CPU).

Run: python -m pytest -q bench/test_resize_batch.py
"""

import torch
from torchvision.transforms import v2 as T  # noqa: E402

from crossmodal.features import gpu_decode  # noqa: E402


def _images(dtype):
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 375, 500), (3, 500, 375), (3, 375, 500), (3, 333, 500), (3, 375, 500), (3, 500, 375), (3, 240, 320)]
    imgs = [torch.randint(0, 256, s, generator=g, dtype=torch.uint8) for s in shapes]
    return imgs if dtype == torch.uint8 else [i.float() for i in imgs]


def test_resize_batch_matches_per_image():
    resize = T.Compose([T.Resize(224, antialias=True), T.CenterCrop(224)])
    for dtype in (torch.uint8, torch.float32):
        imgs = _images(dtype)
        rows = [6, 0, 3, 1, 5, 2, 4]  # scattered destination rows
        out = torch.zeros(len(imgs), 3, 224, 224, dtype=dtype)
        gpu_decode._resize_batch(imgs, resize, out, rows)
        for k, img in enumerate(imgs):
            assert torch.equal(out[rows[k]], resize(img)), (dtype, k)
