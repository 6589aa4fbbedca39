#!/usr/bin/env python
"""The model table's speed and memory: the offline default against open_clip models, on this CPU.

Per model, in one process, the towers built through the project's registry
(``create_image_backbone`` / ``create_text_backbone``) from random weights saved to a local file
(speed and memory do not depend on the weights' values):

* photos/s   full-size photos indexed per second: decode (JPEG draft mode), resize, the image
             tower, through stage 1's extraction code, on the 200 full-resolution Flickr8k photos
             (``--photos N`` of them for the large models); the models run in interleaved rounds
             so that load from other jobs slows them alike; the median round, and its ratio to the
             offline default's;
* query ms   one text query as search encodes it: tokenisation and the text tower's forward on one
             torch thread (the page's setting), the median over real captions used as queries;
             where a tower's tokenizer must come from the Hugging Face hub (SigLIP) and cannot here,
             its forward on a full context of token ids (such a tower pads every query to it);
             for CLIP's text towers also open_clip's ``encode_text`` on the query padded to the full
             context, the baseline of cutting the padding after the end token;
* weights    both towers' parameters in float32, MB;
* resident   the resident memory of a fresh process that loaded both towers, MB.

    python -m bench.bench_models                                       # ViT-B-32 against Lite0 (~2 min)
    python -m bench.bench_models --models default,ViT-B-32,ViT-B-16,ViT-L-14,ViT-B-16-SigLIP --photos 40
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import _common as C  # first: it sets what torch reads when it loads

# isort: split
import torch  # noqa: E402

from crossmodal.backbones import OFFLINE_PAIR, BackboneUnavailable, create_image_backbone, create_text_backbone  # noqa: E402,E501
from crossmodal.features.extract import extract_image_features  # noqa: E402

DEFAULT = "default"  # the offline pair, EfficientNet-Lite0 + MiniLM
QUERIES = ["a dog running through the snow", "two children playing on the beach", "a red car",
           "a man riding a bicycle down a city street", "a group of people standing in front of a building",
           "sunset", "a black and white dog jumps over a log", "a woman in a red dress walks past a shop window",
           "a boy in a blue shirt kicks a soccer ball on a grassy field", "climber on a rock face"]


def random_weights(arch: str, folder: Path) -> str:
    """``open_clip:ARCH:FILE`` with random weights saved to FILE (float16: half the disk, loaded into float32)."""
    import open_clip

    path = folder / f"{arch}-random.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model = open_clip.create_model(arch)
        torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
        del model
    return f"open_clip:{arch}:{path}"


def names_of(model: str, folder: Path) -> tuple[str, str]:
    return OFFLINE_PAIR if model == DEFAULT else (random_weights(model, folder),) * 2


def query_ms(text_name: str) -> tuple[float, str, float | None]:
    """Median milliseconds of one query through the text tower, how it was timed, and for a CLIP text
    tower the same queries on the full padded context (open_clip's ``encode_text``) as a baseline."""
    from crossmodal.backbones.openclip import _trims_padding

    baseline = None
    try:
        backbone = create_text_backbone(text_name)
        how = "queries"

        def one(q: str) -> None:
            backbone.forward_pooled(backbone.tokenize_one(q))
        if _trims_padding(backbone.model):
            def baseline(q: str) -> None:
                backbone.model.encode_text(backbone.tokenizer([q]))
    except BackboneUnavailable:  # a hub tokenizer, offline: a full context of token ids
        import open_clip

        model = open_clip.create_model(text_name.split(":")[1]).eval()
        ids = torch.randint(1, 1000, (1, model.text.context_length))
        how = f"{ids.shape[1]} token ids (tokenizer offline)"

        def one(q: str) -> None:
            model.encode_text(ids)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict = {one: [], baseline: []}
    with torch.inference_mode():
        for q in QUERIES * 3:  # interleaved, query by query
            for fn in (one, baseline):
                if fn is not None:
                    t0 = time.perf_counter()
                    fn(q)
                    times[fn].append(time.perf_counter() - t0)
    torch.set_num_threads(threads)

    def median_ms(values: list[float]) -> float:
        return statistics.median(values[len(QUERIES):]) * 1000  # the first round warms up
    return median_ms(times[one]), how, median_ms(times[baseline]) if baseline else None


RESIDENT = """
import json, sys, torch
from crossmodal.backbones import BackboneUnavailable, create_image_backbone, create_text_backbone
from crossmodal.backbones.openclip import load_model
image = create_image_backbone(sys.argv[1])
try:
    text = create_text_backbone(sys.argv[2]).model
except BackboneUnavailable:  # a hub tokenizer, offline: the text tower without it
    text = load_model(sys.argv[2])[1]
    text.visual = None
weights = sum(p.numel() for p in list(image.model.parameters()) + list(text.parameters())) * 4 / 2**20
rss = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) / 1024
print(json.dumps({"weights": weights, "resident": rss}))
"""


def memory(image_name: str, text_name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", RESIDENT, image_name, text_name], capture_output=True, text=True,
                         cwd=C.ROOT, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=C.default_images_dir())
    p.add_argument("--models", default=f"{DEFAULT},ViT-B-32", help="comma-separated: default, open_clip architectures")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--photos", type=int, default=0, help="photos per round for models other than the first two "
                                                         "(0: all)")
    args = p.parse_args()
    C.require(args.data, "the full-resolution sample")
    names = sorted(f.name for f in args.data.glob("*.jpg"))
    models = args.models.split(",")
    C.print_machine(f"Models on this CPU: indexing {len(names)} full-size photos, one query at a time")
    folder = Path(tempfile.mkdtemp(prefix="bench_models_"))
    try:
        pairs = {m: names_of(m, folder) for m in models}
        images = {m: create_image_backbone(pairs[m][0]) for m in models}
        subset = {m: names if i < 2 or not args.photos else names[: args.photos] for i, m in enumerate(models)}
        rates: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(args.rounds):
            for m in models:
                out = folder / "features"
                try:
                    seconds, _ = C.timed(lambda: extract_image_features(images[m], args.data, subset[m], out,
                                                                        device="cpu"))
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                rates[m].append(len(subset[m]) / seconds)
        images.clear()
        rows = []
        base = statistics.median(rates[models[0]])
        for m in models:
            ms, how, full = query_ms(pairs[m][1])
            mem = memory(*pairs[m])
            rate = statistics.median(rates[m])
            rows.append((m if m != DEFAULT else "+".join(OFFLINE_PAIR), len(subset[m]), rate, rate / base,
                         " ".join(f"{x:.2f}" for x in rates[m]), ms, how,
                         "-" if full is None else f"{full:.1f} ({full / ms:.2f}x)", mem["weights"], mem["resident"]))
        print(C.table(["model", "photos", "photos/s (median)", f"vs {models[0]}", "each round", "query ms (p50)",
                       "query timed on", "full 77-token context ms (/ query)", "weights MB", "resident MB"], rows))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
