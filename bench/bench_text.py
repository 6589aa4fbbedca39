#!/usr/bin/env python
"""Caption encoding: our ``TextBackbone.encode`` against two baselines, in one process.

On N real captions (default 5,000 from Flickr8k's caption file):

* ours         ``TextBackbone.encode``: one fast-tokenizer call, batches sorted by token length,
               dynamic padding (each batch padded to its own longest caption), mean pooling,
               results back in input order. Tokenisation is included.
* bare         the same batches, pre-tokenised and pre-padded as tensors (sorted, dynamic): the
               forward pass + pooling alone. ours/bare is the share of the model's speed that
               survives tokenisation and bookkeeping (target >= 0.9).
* fixed-32     captions in file order, every batch padded to 32 tokens, pre-tokenised too
               (tokenisation excluded, which favours the baseline): the usual recipe.
               ours/fixed-32 is the gain of sorting + dynamic padding (target >= 1.5).

Each is timed --rounds times, interleaved; the fastest counts. Ratios are throughput ratios.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.SHARED_DATA / "flickr8k" / "flickr8k.token",
                   help="caption file, lines 'name.jpg#n<TAB>caption' (default: %(default)s)")
    p.add_argument("-n", "--captions", type=int, default=5000, help="captions encoded (default: %(default)s)")
    p.add_argument("--backbone", default="minilm", help="text backbone (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="default: backbones.TEXT_BATCH_SIZE")
    p.add_argument("--fixed-length", type=int, default=32, help="padding of the fixed baseline")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds; the fastest counts")
    return p.parse_args(argv)


def read_captions(path: Path, n: int) -> list[str]:
    caps = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "\t" in line:
                caps.append(line.rstrip("\n").split("\t", 1)[1])
                if len(caps) == n:
                    break
    return caps


def forward_batches(backbone, batches: list[dict], device: torch.device) -> np.ndarray:
    """Forward + pooling of ready (padded) batches: what encode does minus tokenisation."""
    use_bf16 = device.type == "cuda"
    outs = []
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                hidden = backbone.model(**batch).last_hidden_state
            outs.append(backbone.pool(hidden.float(), batch["attention_mask"]).cpu().numpy())
    return np.concatenate(outs)


def main(argv=None) -> int:
    args = parse_args(argv)
    C.require(args.data, "the caption file")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("SKIP: --device cuda but no CUDA device is available")
        return 0
    from crossmodal import backbones

    try:
        backbone = backbones.create_text_backbone(args.backbone)
    except backbones.BackboneUnavailable as err:
        print(f"SKIP: {err}")
        return 0
    backbone.model.to(device).eval()
    batch = args.batch_size or backbones.TEXT_BATCH_SIZE
    texts = read_captions(args.data, args.captions)
    n = len(texts)
    tok = backbone.tokenizer
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    # baselines' inputs, prepared untimed
    ids = tok(texts, truncation=True, max_length=backbone.max_length)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(lengths, kind="stable")
    dynamic = [tok.pad({"input_ids": [ids[i] for i in order[s : s + batch]]}, return_tensors="pt")
               for s in range(0, n, batch)]
    fixed = [dict(tok(texts[s : s + batch], padding="max_length", truncation=True, max_length=args.fixed_length,
                      return_tensors="pt")) for s in range(0, n, batch)]
    fixed = [{k: v for k, v in b.items() if k in dynamic[0]} for b in fixed]
    tokens_dynamic = sum(int(b["input_ids"].numel()) for b in dynamic)
    tokens_fixed = sum(int(b["input_ids"].numel()) for b in fixed)

    C.print_machine("bench_text: captions -> features")
    print(f"- backbone {backbone.name} ({backbone.dim}-d, {backbone.pooling} pooling), device {device}, "
          f"batch {batch}, rounds {args.rounds} (fastest kept)")
    print(f"- {n} captions from {args.data}: tokens/caption mean {lengths.mean():.1f}, max {lengths.max()}, "
          f"{int((lengths > args.fixed_length).sum())} longer than {args.fixed_length} "
          f"(truncated by fixed-{args.fixed_length})")
    print(f"- padded tokens computed: dynamic+sorted {tokens_dynamic:,}, fixed-{args.fixed_length} {tokens_fixed:,} "
          f"({tokens_fixed / tokens_dynamic:.2f}x)")

    # warm-up, untimed
    forward_batches(backbone, dynamic[:1] + fixed[:1], device)
    backbone.encode(texts[: 2 * batch], batch, device)

    times = {"ours": float("inf"), "bare": float("inf"), "fixed": float("inf")}
    cpu = dict(times)
    result = {}
    for _ in range(args.rounds):
        for key, fn in (("bare", lambda: forward_batches(backbone, dynamic, device)),
                        ("ours", lambda: backbone.encode(texts, batch, device)),
                        ("fixed", lambda: forward_batches(backbone, fixed, device))):
            c0 = C.cpu_seconds()
            t, out = C.timed(fn, sync)
            cpu[key] = min(cpu[key], C.cpu_seconds() - c0)
            times[key] = min(times[key], t)
            result[key] = out
    # same vectors (up to padding numerics): ours in input order vs bare in sorted order
    bare_in_order = np.empty_like(result["bare"])
    bare_in_order[order] = result["bare"]
    max_diff = float(np.abs(result["ours"] - bare_in_order).max())

    rate = {k: n / v for k, v in times.items()}
    rows = [["bare forward (pre-tokenised, sorted, dynamic padding)", "bare"],
            ["ours: TextBackbone.encode (tokenises, sorts, pads)", "ours"],
            [f"fixed padding to {args.fixed_length}, file order (pre-tokenised)", "fixed"]]
    rows = [[label, n, round(times[k], 2), rate[k], round(cpu[k], 2), cpu["bare"] / cpu[k]] for label, k in rows]
    print()
    print(C.table(["run", "captions", "seconds", "captions/s", "CPU s", "CPU efficiency vs bare"], rows))
    print("\n(CPU s: this process's user+system time, steadier than wall time on a busy shared machine.)")
    print()
    print(C.table(["ratio (throughput)", "value", "target"], [
        ["ours / bare forward", rate["ours"] / rate["bare"], "≥ 0.9"],
        ["ours / bare forward, by CPU time", cpu["bare"] / cpu["ours"], "≥ 0.9"],
        [f"ours / fixed-{args.fixed_length} file order", rate["ours"] / rate["fixed"], "≥ 1.5"],
    ]))
    print(f"\nmax |ours - bare| over all vectors: {max_diff:.2e} (same batches, so ~0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
