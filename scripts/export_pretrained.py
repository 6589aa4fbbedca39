#!/usr/bin/env python
"""Export a trained checkpoint as the project's shipped model (crossmodal/pretrained.py).

    python -m scripts.export_pretrained WORK_DIR/checkpoints/best.pt [--out models/pretrained/model.pt]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crossmodal import cli

cli.prepare_process()

from crossmodal.pretrained import CHECKPOINT_NAME, PRETRAINED_SUBDIR, export_checkpoint  # noqa: E402

import config  # noqa: E402
from model import read_checkpoint  # noqa: E402

BANK_SIZE = 8000  # text and keyword querybank rows kept: the file stays well under the size limit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by run_train.py")
    p.add_argument("--out", type=Path, default=config.MODELS_DIR / PRETRAINED_SUBDIR / CHECKPOINT_NAME,
                   help="where the shipped model goes (default: %(default)s)")
    p.add_argument("--bank-size", type=int, default=BANK_SIZE, help="querybank rows kept per text bank")
    args = p.parse_args(argv)
    try:
        size = export_checkpoint(read_checkpoint(args.checkpoint), args.out, args.bank_size)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
