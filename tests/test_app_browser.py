"""The search page end to end: app.py in a subprocess, driven by headless Chromium (Playwright).

A 60-image demo set (demo_data), features from a randomly initialised local ResNet18, a tiny local
BERT and a checkpoint built directly; the app is started on a free localhost port, a query is typed
and submitted, and the five result images must appear. The screenshot goes to
artifacts/app_screenshot.png. The programmatic endpoint and the file-serving limits are checked on
the same running app.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from helpers import save_random_resnet18, save_tiny_bert

from crossmodal import demo_data
from crossmodal.backbones import create_image_backbone, create_text_backbone
from crossmodal.features import extract
from scripts.screenshot_app import stop, wait_until_up

from model import RetrievalModel

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
N_IMAGES = 60
VOCAB = ("a an the large small big tiny red green blue yellow orange purple pink white black grey circle square "
         "triangle star ring cross diamond hexagon on in of and with left right top bottom corner middle centre "
         "center background striped plain dotted . ,").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A demo set, its features, a checkpoint and app.py serving them; yields (url, paths)."""
    base = tmp_path_factory.mktemp("app")
    demo_data.generate(base / "demo", num_images=N_IMAGES, progress=False)
    images, captions = base / "demo" / "images", base / "demo" / "captions.token"

    resnet_file = save_random_resnet18(base / "resnet18.pth")
    bert_dir = save_tiny_bert(base / "bert-base-uncased", words=VOCAB)

    # 112 px instead of 224 for the cached features: 4x less compute, and text search never runs
    # the image backbone (the app builds its own, at 224 px, only for photo queries)
    image_bb = dataclasses.replace(create_image_backbone("resnet18", resnet_file), image_size=112)
    text_bb = create_text_backbone("bert-base-uncased", bert_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        names = sorted(p.name for p in images.iterdir())
        extract.extract_image_features(image_bb, images, names, base / "image_embeddings", num_workers=0,
                                       batch_size=16, device="cpu", extra={"images_dir": str(images)})
    finally:
        torch.set_num_threads(threads)
    model = RetrievalModel(image_dim=image_bb.dim, text_dim=text_bb.dim, embed_dim=32, hidden_dim=64)
    checkpoint = base / "best.pt"
    torch.save({"model_config": model.config_dict(), "model": model.state_dict(),
                "backbones": {"image": {"backbone": image_bb.name, "weights": image_bb.weights, "dim": image_bb.dim,
                                        "preprocess": image_bb.preprocess},
                              "text": {"backbone": text_bb.name, "weights": text_bb.weights, "dim": text_bb.dim,
                                       "preprocess": text_bb.preprocess}},
                "captions_file": str(captions)}, checkpoint)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(base / "app.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--checkpoint", str(checkpoint), "--image-features",
         str(base / "image_embeddings"), "--images", str(images), "--captions", str(captions), "--port", str(port),
         "--text-weights", str(bert_dir), "--image-weights", str(resnet_file), "--threads", "1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_up(url, proc, timeout=90, poll=0.3)
        except RuntimeError as err:
            pytest.fail(f"{err}:\n{(base / 'app.log').read_text()[-3000:]}")
        yield url, dict(base=base, images=images, checkpoint=checkpoint, captions=captions)
    finally:
        stop(proc)
        log.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_query_in_the_browser_shows_five_results(served):
    from playwright.sync_api import expect, sync_playwright

    url, _ = served
    shot = ROOT / "artifacts" / "app_screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded")
            expect(page.locator("#index-info")).to_contain_text(f"{N_IMAGES} photos", timeout=20_000)
            box = page.locator("#query textarea")
            box.fill("a large red circle on a striped background")
            box.press("Enter")
            results = page.locator("#results img")
            expect(results).to_have_count(5, timeout=20_000)
            for i in range(5):  # every thumbnail actually loaded (served from the images folder)
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=results.nth(i).element_handle(),
                                       timeout=10_000)
            expect(page.locator("#timing")).to_contain_text("results in", timeout=10_000)
            expect(page.locator("#results")).to_contain_text("#1 ·")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_api_endpoint_returns_json_hits(served):
    from gradio_client import Client

    url, paths = served
    client = Client(url, verbose=False)
    hits = client.predict(query="a small blue square", k=3, api_name="/search")
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(set(h) == {"rank", "image_path", "name", "score", "captions"} for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert all(Path(h["image_path"]).parent == paths["images"].resolve() and h["captions"] for h in hits)
    with pytest.raises(Exception, match="empty query"):
        client.predict(query="   ", k=3, api_name="/search")


def test_only_the_collection_is_served(served):
    url, paths = served
    name = sorted(p.name for p in paths["images"].iterdir())[0]

    def status(path: Path) -> int:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    assert status(paths["images"].resolve() / name) == 200
    assert status(paths["checkpoint"]) == 403
    assert status(paths["captions"]) == 403
    assert status(ROOT / "config.py") == 403


def test_missing_checkpoint_exits_2_with_the_command_to_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--work-dir", str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "python run_train.py" in proc.stderr and str(tmp_path / "w") in proc.stderr


def test_lean_process_keeps_triton_out_and_text_search_working(tmp_path):
    """app.lean_process hides Triton (loaded by transformers' BERT code through torch._dynamo,
    never used by the page); a BERT still loads and encodes, and torch reports no Triton."""

    folder = save_tiny_bert(tmp_path / "bert-base-uncased")
    code = (
        "import sys, app; app.lean_process()\n"
        "import torch, torch.utils._triton as t\nfrom crossmodal import backbones\n"
        f"bb = backbones.create_text_backbone('bert-base-uncased', {str(folder)!r})\n"
        "v = bb.encode(['a dog runs'])\n"
        "assert v.shape == (1, 32), v.shape\n"
        "assert sys.modules['triton'] is None and not t.has_triton_package()\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
