#!/usr/bin/env python
"""Where the GPU-decode path spends its time, with the file bytes already in memory.

Times, on the same in-memory JPEG bytes (no file reads): nvJPEG batch decode alone; the batched
resize alone; both (``gpu_decode.decode_on_device``); the input pipeline ``gpu_decode.gpu_decoded_batches``
with 0 (inline), 1, 2 and 3 decode threads, without and with the model; the model alone on a ready
batch; then reading the files, by worker processes (as extract does) and by in-process threads.
First it checks that the threaded pipeline's batches equal each image decoded and resized
alone (exactly), so the streams and threads lose or reorder nothing.

Run on a CUDA machine (bench/gpu_extract.sh does): python -m bench.gpu_profile_decode --device cuda
On a CPU it runs the same code (decode on the CPU), as a dry run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import torch  # noqa: E402
from torchvision.io import ImageReadMode, decode_jpeg  # noqa: E402

from bench.bench_extract import make_backbone  # noqa: E402
from crossmodal.features import gpu_decode  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.default_images_dir())
    p.add_argument("--device", default="cuda")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--images", type=int, default=5120)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", default="0,1,2,3", help="decode threads tried")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    files = sorted(args.data.glob("*.jpg"))
    if not files:
        print(f"SKIP: no JPEGs in {args.data}")
        return 0
    data = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    data = (data * (args.images // len(data) + 1))[: args.images]
    batches = [(data[i : i + args.batch], [""] * len(data[i : i + args.batch]))
               for i in range(0, len(data), args.batch)]
    tmp = tempfile.TemporaryDirectory()
    backbone, _ = make_backbone(args.backbone, Path(tmp.name))
    model = backbone.model.to(device).eval().to(memory_format=torch.channels_last)
    resize = backbone.tensor_transform()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"## gpu_profile_decode: {len(data)} images in memory, batch {args.batch}, device {device}, "
          f"backbone {backbone.name}")

    # correctness first: the threaded pipeline == per-image decode + resize, in order
    threads_list = [int(t) for t in args.threads.split(",")]
    ok = True
    for t in sorted({max(threads_list), 0}):
        got = torch.cat([x for x, _ in gpu_decode.gpu_decoded_batches(iter(batches[:6]), backbone, device, t)])
        ref = torch.stack([resize(decode_jpeg(d, mode=ImageReadMode.RGB, device=device)) for d in data[: len(got)]])
        same = torch.equal(got, ref)
        ok &= same
        print(f"check: pipeline with {t} decode threads == per-image decode+resize over {len(got)} images: {same}"
              + ("" if same else f" (max abs diff {(got.int() - ref.int()).abs().max().item()})"))

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            model(x.contiguous(memory_format=torch.channels_last)).float()

    def timeit(name: str, fn, reps: int = 2) -> None:
        fn()
        sync()
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        print(f"| {name} | {len(data) / best:,.0f} |")

    decoded = decode_jpeg(batches[0][0], mode=ImageReadMode.RGB, device=device)
    out = torch.zeros(len(decoded), 3, backbone.image_size, backbone.image_size, dtype=torch.uint8, device=device)
    ready = out.clone()
    print("\n| step (bytes in memory) | images/s |\n|---|---|")
    timeit("nvJPEG batch decode alone",
           lambda: [decode_jpeg(b, mode=ImageReadMode.RGB, device=device) for b, _ in batches])
    timeit("batched resize alone", lambda: [gpu_decode._resize_batch(decoded, resize, out, list(range(len(decoded))))
                                            for _ in batches])
    timeit("decode + resize (decode_on_device)",
           lambda: [gpu_decode.decode_on_device(b, e, backbone, device) for b, e in batches])
    timeit("model alone (ready batch on the device)", lambda: [forward(ready) for _ in batches])
    for t in threads_list:
        timeit(f"pipeline, {t} decode threads, no model",
               lambda: [None for _ in gpu_decode.gpu_decoded_batches(iter(batches), backbone, device, t)])
    for t in threads_list:
        timeit(f"pipeline, {t} decode threads, + model",
               lambda: [forward(x) for x, _ in gpu_decode.gpu_decoded_batches(iter(batches), backbone, device, t)])
    # reading the files (page cache): worker processes packing a batch per tensor (what extract
    # does) against the earlier design, threads in this process reading a whole batch per task
    paths = (files * (args.images // len(files) + 1))[: args.images]
    path_batches = [list(range(i, min(i + args.batch, len(paths)))) for i in range(0, len(paths), args.batch)]

    def thread_reads(threads: int) -> None:
        def read(b):
            return [torch.frombuffer(bytearray(Path(paths[i]).read_bytes()), dtype=torch.uint8) for i in b]
        for _ in gpu_decode._map_ahead(read, path_batches, threads, max(4, threads)):
            pass

    print("\n| file reads (page cache) | images/s |\n|---|---|")
    timeit("threads in-process, a batch per task, 4 threads", lambda: thread_reads(4))
    for w in (4, 8, 16):
        timeit(f"worker processes, packed batches, {w} workers",
               lambda: [None for _ in gpu_decode.byte_batches(paths, path_batches, w)])
    for w in (8, 16):
        timeit(f"+ decode pipeline ({max(threads_list)} threads) + model, {w} workers",
               lambda: [forward(x) for x, _ in gpu_decode.gpu_decoded_batches(
                   gpu_decode.byte_batches(paths, path_batches, w), backbone, device, max(threads_list))])
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
