#!/usr/bin/env python
"""Image feature extraction, JPEG file -> cached feature row, against two baselines in one process.

Measured (each the fastest of --rounds interleaved runs, all on the same images):

* ours        ``extract.extract_image_features`` end to end (DataLoader workers, decoding, resize,
              forward, float16 cache written atomically into a temp dir, ``force=True``).
* bare        the same backbone's forward pass alone on ready uint8 (3,S,S) tensors: same batch
              size, threads, dtype, channels_last and inference_mode (on a GPU the tensors are
              already on the device). The ceiling ours can approach: ours/bare is the share of
              the model's speed that survives decoding and caching.
* decode only ours' GPU input pipeline without the model (worker file reads, nvJPEG, resize).
* original    the original design's loop: PIL open + torchvision Resize/CenterCrop/ToTensor,
              forward one image at a time (batch 1), one .npy file saved per image.

With ``--device cuda`` ours is run with CPU decoding (``--workers`` PIL processes) and with GPU
decoding (nvJPEG) unless ``--decode`` picks one. ``--repeat`` repeats the 200-image set so a GPU
has enough work (``--repeat 25`` -> 5,000 images). ``--sweep`` (CPU) also times ours over a grid
of workers x torch threads x batch size, to choose the defaults.

Ratios are throughput ratios (images/s over images/s); seconds are printed for context only.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import sys
import tempfile
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import numpy as np  # noqa: E402
import torch  # noqa: E402

from crossmodal.features import extract, gpu_decode  # noqa: E402
from crossmodal.features.extract import default_num_workers  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.default_images_dir(),
                   help="folder of JPEGs (default: bench_data/fullres if present, else %(default)s)")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="efficientnet_lite0 (offline weights) | resnet18 (random weights if none local)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--decode", choices=("cpu", "gpu", "both"), default=None,
                   help="where ours decodes JPEGs (default: cpu on CPU, both on CUDA)")
    p.add_argument("--decode-threads", default=None,
                   help="comma list: GPU decode runs with these numbers of decode threads "
                        "(extract_image_features(decode_threads=...); 0 = inline; default: config's)")
    p.add_argument("--repeat", type=int, default=1, help="repeat the image set this many times")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images of the folder (0 = all)")
    p.add_argument("--batch-size", type=int, default=None, help="default: config's CPU or GPU batch size")
    p.add_argument("--workers", type=int, default=None,
                   help="PIL decode workers for ours with CPU decoding (default: extract.NUM_WORKERS on CPU, "
                        "16 on CUDA, as a plain GPU DataLoader would use)")
    p.add_argument("--gpu-workers", type=int, default=None,
                   help="file-reading workers for ours with GPU decoding (default: what "
                        "batch_image_feature_extract.py uses, extract.default_num_workers)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds; the fastest counts")
    p.add_argument("--original-images", type=int, default=None,
                   help="images timed through the original loop (default: all on CPU, 1000 on CUDA)")
    p.add_argument("--skip-original", action="store_true", help="do not time the original loop")
    p.add_argument("--sweep", action="store_true",
                   help="also time ours over workers x threads x batch size (CPU; slow)")
    p.add_argument("--sweep-workers", default="0,1,2", help="workers tried by --sweep")
    p.add_argument("--sweep-threads", default="1,2", help="torch threads tried by --sweep")
    p.add_argument("--sweep-batch", default="8,32", help="batch sizes tried by --sweep")
    return p.parse_args(argv)


def make_backbone(name: str, tmp: Path):
    """The backbone; resnet18 gets random weights saved to a temp file when none are local."""
    from crossmodal import backbones
    if name == "resnet18" and not backbones.image._resnet18_present(C.ROOT / "models"):
        from torchvision.models import resnet18
        path = tmp / "resnet18_random.pth"
        torch.manual_seed(0)
        torch.save(resnet18(weights=None).state_dict(), path)
        return (backbones.create_image_backbone("resnet18", path),
                "random weights (no local ImageNet weights; speed is the same)")
    return backbones.create_image_backbone(name), "real weights"


def load_ready(backbone, paths: list[Path]) -> torch.Tensor:
    """The images as the model sees them: decoded, resized, cropped uint8 (N,3,S,S), untimed."""
    from crossmodal.features.extract import ImageFileDataset
    ds = ImageFileDataset(paths, backbone.pil_transform(), backbone.image_size)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def bare_forward(model, ready: torch.Tensor, n: int, batch: int, device: torch.device) -> None:
    """Forward n images from ready uint8 tensors, batch by batch, as extract does (minus I/O)."""
    use_bf16 = device.type == "cuda"
    if device.type == "cuda":  # ready data on the device: the model-only ceiling
        x = ready[torch.arange(batch) % len(ready)].to(device).contiguous(memory_format=torch.channels_last)
        batches = [x] * (n // batch) + ([x[: n % batch]] if n % batch else [])
    else:
        idx = torch.arange(n) % len(ready)
        batches = [ready[idx[i : i + batch]].contiguous(memory_format=torch.channels_last) for i in range(0, n, batch)]
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        for x in batches:
            model(x).float()  # on a GPU: queued, synchronised by the caller's timer


def original_loop(backbone, paths: list[Path], out_dir: Path, device: torch.device) -> None:
    """The original design: per image PIL open, v1 transforms, batch-1 forward, one .npy each."""
    from PIL import Image
    from torchvision import transforms as T1
    # ToTensor gives [0,1] floats; the model's own Normalize scales those as T.Normalize would.
    tf = T1.Compose([T1.Resize(backbone.image_size), T1.CenterCrop(backbone.image_size), T1.ToTensor()])
    model = backbone.model
    with torch.no_grad():
        for i, p in enumerate(paths):
            img = Image.open(p).convert("RGB")
            x = tf(img).unsqueeze(0).to(device)
            f = model(x).squeeze(0).cpu().numpy()
            np.save(out_dir / f"{i:06d}.npy", f)


def run_ours(backbone, images_dir: Path, names: list[str], out_dir: Path, *, batch: int, workers: int,
             device: str, decode: str, decode_threads: int | None = None) -> None:
    from crossmodal.features.extract import extract_image_features

    threads = gpu_decode.GPU_DECODE_THREADS if decode_threads is None else decode_threads
    cache = extract_image_features(backbone, images_dir, names, out_dir, batch_size=batch, num_workers=workers,
                                   device=device, decode=decode, decode_threads=threads, force=True)
    bad = cache.manifest["failures"]
    if bad:
        raise RuntimeError(f"{len(bad)} images failed to decode, e.g. {bad[:2]}")


def gpu_decode_only(backbone, images_dir: Path, names: list[str], batch: int, workers: int,
                    device: torch.device) -> None:
    """ours' GPU-decode input pipeline without the model: worker file reads, nvJPEG, batched resize."""
    from crossmodal.features.gpu_decode import byte_batches, gpu_decoded_batches
    paths = [images_dir / nm for nm in names]
    batches = [list(range(i, min(i + batch, len(paths)))) for i in range(0, len(paths), batch)]
    for _ in gpu_decoded_batches(byte_batches(paths, batches, workers), backbone, device):
        pass


@contextlib.contextmanager
def quiet():
    """Info logs off while timing (tqdm bars are off for all benches: see _common)."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)
    try:
        yield
    finally:
        logging.getLogger().setLevel(level)


def main(argv=None) -> int:
    args = parse_args(argv)
    C.require(args.data, "the image folder")
    files = sorted(p.name for p in args.data.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"})
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"SKIP: no JPEGs in {args.data}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("SKIP: --device cuda but no CUDA device is available")
        return 0
    batch = args.batch_size or (extract.IMAGE_BATCH_SIZE_GPU if cuda else extract.IMAGE_BATCH_SIZE_CPU)
    workers = args.workers if args.workers is not None else (16 if cuda else extract.NUM_WORKERS)
    gpu_workers = args.gpu_workers if args.gpu_workers is not None else default_num_workers("gpu")
    decodes = {"cpu": ["cpu"], "gpu": ["gpu"], "both": ["cpu", "gpu"],
               None: ["cpu", "gpu"] if cuda else ["cpu"]}[args.decode]
    if not cuda and "gpu" in decodes:
        print("SKIP: --decode gpu needs --device cuda")
        return 0
    extra_threads = [] if args.decode_threads is None or "gpu" not in decodes else \
        [int(t) for t in args.decode_threads.split(",") if int(t) != gpu_decode.GPU_DECODE_THREADS]
    names = files * args.repeat
    n = len(names)
    sync = torch.cuda.synchronize if cuda else None

    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench_extract_")
    tmp = Path(tmp_ctx.name)
    backbone, weights_note = make_backbone(args.backbone, tmp)
    model = backbone.model.to(device).eval().to(memory_format=torch.channels_last)
    ready = load_ready(backbone, [args.data / f for f in files])
    if cuda:
        ready = ready.pin_memory()

    C.print_machine("bench_extract: JPEG -> features")
    print(f"- backbone {backbone.name} ({weights_note}), input {backbone.image_size}px, device {device}, "
          f"dtype {'bf16 autocast' if cuda else 'float32'}, channels_last")
    print(f"- images: {len(files)} JPEGs from {args.data} x repeat {args.repeat} = {n}; batch {batch}; "
          f"decode workers {workers} (CPU decode), {gpu_workers} (GPU decode, file reading); "
          f"torch threads {torch.get_num_threads()}; rounds {args.rounds} (fastest kept)")

    # warm-up (allocator, cuDNN autotune, nvJPEG init, page cache), untimed
    with quiet():
        bare_forward(model, ready, min(n, 2 * batch), batch, device)
        for dec in decodes:
            run_ours(backbone, args.data, names[: min(n, 2 * batch)], tmp / f"warm_{dec}", batch=batch,
                     workers=min(workers, 2), device=args.device, decode=dec)

    times: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def record(key: str, fn) -> None:
        c0 = C.cpu_seconds()
        seconds = C.timed(fn, sync)[0]
        used = C.cpu_seconds() - c0
        times[key] = min(times.get(key, float("inf")), seconds)
        cpu[key] = min(cpu.get(key, float("inf")), used)

    with quiet():
        for r in range(args.rounds):
            record("bare", lambda: bare_forward(model, ready, n, batch, device))
            for dec in decodes:
                record(f"ours_{dec}", lambda: run_ours(backbone, args.data, names, tmp / f"ours_{dec}", batch=batch,
                                                       workers=workers if dec == "cpu" else gpu_workers,
                                                       device=args.device, decode=dec))
            for t in extra_threads:
                record(f"ours_gpu_t{t}", lambda: run_ours(backbone, args.data, names, tmp / "ours_gpu_t", batch=batch,
                                                          workers=gpu_workers, device=args.device, decode="gpu",
                                                          decode_threads=t))
        if cuda and "gpu" in decodes:
            for _ in range(args.rounds):
                record("decode_gpu", lambda: gpu_decode_only(backbone, args.data, names, batch, gpu_workers, device))
        n_orig = 0
        if not args.skip_original:
            n_orig = args.original_images or (min(n, 1000) if cuda else n)
            orig_paths = [args.data / f for f in names[:n_orig]]
            (tmp / "orig").mkdir()
            original_loop(backbone, orig_paths[: min(8, n_orig)], tmp / "orig", device)  # warm-up
            record("original", lambda: original_loop(backbone, orig_paths, tmp / "orig", device))

    rate = {k: (n_orig if k == "original" else n) / v for k, v in times.items()}
    label = {"bare": "bare forward (ready uint8 tensors" + (", on GPU)" if cuda else ")"),
             "ours_cpu": f"ours, CPU decode ({workers} workers)",
             "ours_gpu": f"ours, GPU decode (nvJPEG, {gpu_decode.GPU_DECODE_THREADS} decode threads, "
                         f"{gpu_workers} readers: the defaults)",
             **{f"ours_gpu_t{t}": f"ours, GPU decode, {t} decode threads" + (" (inline)" if t == 0 else "")
                for t in extra_threads},
             "original": "original loop (PIL + transforms, batch 1)",
             "decode_gpu": "GPU decode + resize only, no model (worker file reads + nvJPEG)"}
    rows = []
    extra = [k for k in ("decode_gpu", "original") if k in times]
    for k in ["bare"] + [f"ours_{d}" for d in decodes] + [f"ours_gpu_t{t}" for t in extra_threads] + extra:
        n_k = n_orig if k == "original" else n
        rows.append([label[k], n_k, round(times[k], 2), rate[k], rate[k] / rate["bare"], 1e3 * cpu[k] / n_k,
                     (cpu["bare"] / n) / (cpu[k] / n_k)])
    print()
    print(C.table(["run", "images", "seconds", "images/s", "÷ bare", "CPU ms/image (all processes)",
                   "CPU efficiency vs bare"], rows))
    print("\n(CPU ms/image counts this process and its DataLoader workers; on a shared, busy machine it is\n"
          " steadier than wall time. Efficiency = bare CPU ms/image ÷ this run's.)")
    print()
    ratio_rows = []
    for d in decodes:
        ratio_rows.append([f"ours ({d} decode) / bare forward", rate[f"ours_{d}"] / rate["bare"],
                           "≥ 0.9 (CPU)" if not cuda else "-"])
        if d == "gpu":
            ratio_rows.append(["ours (gpu decode), images/s", rate["ours_gpu"], "≥ 5,000 (H100/H200)"])
        if "original" in rate:
            ratio_rows.append([f"ours ({d} decode) / original loop", rate[f"ours_{d}"] / rate["original"], "> 1"])
    if cuda and len(decodes) == 2:
        ratio_rows.append(["GPU decode / CPU decode", rate["ours_gpu"] / rate["ours_cpu"], "> 1"])
    print(C.table(["ratio (throughput)", "value", "target"], ratio_rows))

    if args.sweep and not cuda:
        sweep(args, backbone, model, ready, names, tmp)
    tmp_ctx.cleanup()
    return 0


def sweep(args, backbone, model, ready, names, tmp: Path) -> None:
    """ours over workers x threads x batch, each against bare at the same threads and batch."""
    n = len(names)
    grid = list(itertools.product([int(x) for x in args.sweep_workers.split(",")],
                                  [int(x) for x in args.sweep_threads.split(",")],
                                  [int(x) for x in args.sweep_batch.split(",")]))
    base_threads = torch.get_num_threads()
    rows = []
    bare_cache: dict[tuple[int, int], float] = {}
    with quiet():
        for workers, threads, batch in grid:
            torch.set_num_threads(threads)
            key = (threads, batch)
            t_bare = bare_cache.get(key)
            t_ours = float("inf")
            for _ in range(args.rounds):
                tb = C.timed(lambda: bare_forward(model, ready, n, batch, torch.device("cpu")))[0]
                t_bare = tb if t_bare is None else min(t_bare, tb)
                t_ours = min(t_ours, C.timed(lambda: run_ours(backbone, args.data, names, tmp / "sweep", batch=batch,
                                                              workers=workers, device="cpu", decode="cpu"))[0])
            bare_cache[key] = t_bare
            rows.append([workers, threads, batch, n / t_ours, n / t_bare, t_bare / t_ours])
    torch.set_num_threads(base_threads)
    best = max(rows, key=lambda r: r[3])
    print(f"\n### sweep: ours over decode workers x torch threads x batch ({n} images, CPU)\n")
    print(C.table(["workers", "torch threads", "batch", "ours img/s", "bare img/s (same threads, batch)",
                   "ours / bare"], rows))
    print(f"\nfastest ours: workers {best[0]}, threads {best[1]}, batch {best[2]} "
          f"({best[3] / max(r[4] for r in rows):.2f} of the fastest bare forward in the grid)")


if __name__ == "__main__":
    sys.exit(main())
