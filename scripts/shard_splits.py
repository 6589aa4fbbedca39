#!/usr/bin/env python
"""Split lists for img2dataset output by shard: whole shards held out as test, a seeded dev sample
of one shard, and the rest for training.

    python -m scripts.shard_splits ~/webdata/data --test-shards 00004 --dev-shard 00003 --dev-size 1000 \\
        --out work/web/splits

Writes train.txt, dev.txt and test.txt (image names as the stages read them, ``00003/KEY.jpg``).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from crossmodal.atomic_io import atomic_write_text
from crossmodal.captions import DatasetError, read_captions


def shard_of(name: str) -> str:
    return name.split("/", 1)[0].removesuffix(".tar")


def shard_splits(images: list[str], test_shards: set[str], dev_shard: str, dev_size: int,
                 seed: int = 0) -> dict[str, list[str]]:
    """train / dev / test image lists: ``test_shards`` whole, ``dev_size`` images of ``dev_shard``
    drawn with ``seed``, and every other image for training."""
    shards = {shard_of(n) for n in images}
    unknown = sorted((test_shards | {dev_shard}) - shards)
    if unknown:
        raise DatasetError(f"no shard {', '.join(unknown)} in the data (it has {', '.join(sorted(shards))})")
    pool = sorted(n for n in images if shard_of(n) == dev_shard)
    if dev_size > len(pool):
        raise DatasetError(f"--dev-size {dev_size}: shard {dev_shard} has {len(pool)} captioned images")
    dev = set(random.Random(seed).sample(pool, dev_size))
    test = [n for n in images if shard_of(n) in test_shards]
    train = [n for n in images if n not in dev and shard_of(n) not in test_shards]
    return {"train": train, "dev": sorted(dev), "test": test}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="a folder of img2dataset output")
    p.add_argument("--test-shards", nargs="+", default=[], help="shards held out whole as the test split")
    p.add_argument("--dev-shard", required=True, help="the shard the dev sample is drawn from")
    p.add_argument("--dev-size", type=int, default=1000, help="images in the dev split (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev sample (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="folder the split lists are written to")
    args = p.parse_args(argv)
    try:
        splits = shard_splits(read_captions(args.root).images, set(args.test_shards), args.dev_shard,
                              args.dev_size, args.seed)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for split, names in splits.items():
        atomic_write_text(args.out / f"{split}.txt", "".join(f"{n}\n" for n in names))
    print(", ".join(f"{split} {len(names)}" for split, names in splits.items()) + f" images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
