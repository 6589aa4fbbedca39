"""The search page end to end: app.py in a subprocess, driven by headless Chromium (Playwright).

A 60-image demo set (demo_data), features from a randomly initialised local ResNet18, a tiny local
BERT and a checkpoint built directly; the app is started on a free localhost port, a query is typed
and submitted, and the five result images must appear. The screenshot goes to
artifacts/app_screenshot.png. The programmatic endpoints, the file-serving limits, hostile requests
and uploads are checked on the same running app.
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
import torch
from helpers import random_photo, save_random_models, save_random_resnet18, save_tiny_bert
from PIL import Image

from crossmodal import demo_data
from crossmodal.backbones import create_image_backbone, create_text_backbone
from crossmodal.demo_data import write_blank_png
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


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")


@contextlib.contextmanager
def browser_page(url: str, height: int = 900) -> Iterator[Any]:
    """A headless Chromium page (Playwright) opened on ``url``, closed after the block."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A demo set, its features, a checkpoint and app.py serving them; yields (url, paths), paths
    holding the app's process id ("pid") and its upload folder ("uploads")."""
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
    uploads = base / "uploads"  # Gradio's upload folder, this app's own
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost", "GRADIO_TEMP_DIR": str(uploads)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--checkpoint", str(checkpoint), "--image-features",
         str(base / "image_embeddings"), "--images", str(images), "--captions", str(captions), "--port", str(port),
         "--text-weights", str(bert_dir), "--image-weights", str(resnet_file), "--threads", "1",
         "--upload-grace", "0.5"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_up(url, proc, timeout=90, poll=0.3)
        except RuntimeError as err:
            pytest.fail(f"{err}:\n{(base / 'app.log').read_text()[-3000:]}")
        yield url, dict(base=base, images=images, checkpoint=checkpoint, captions=captions, pid=proc.pid,
                        uploads=uploads)
    finally:
        stop(proc)
        log.close()


@needs_chromium
def fill_until_it_holds(page: Any, box: Any, value: str, tries: int = 5) -> None:
    """Type ``value`` into ``box`` until it stays there. Right after a tab opens Gradio may hand its
    components their props once more, undoing what was typed in that instant (a person types later);
    the test is about what the button does with the value, so it types again rather than racing."""
    from playwright.sync_api import expect

    for _ in range(tries):
        box.fill(value)
        page.wait_for_timeout(500)
        if box.input_value() == value:
            return
    expect(box).to_have_value(value)


def test_query_in_the_browser_shows_a_page_of_results(served):
    from playwright.sync_api import expect

    url, _ = served
    shot = ROOT / "artifacts" / "app_screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    with browser_page(url) as page:
        expect(page.locator("#index-info")).to_contain_text(f"{N_IMAGES} photos", timeout=20_000)
        box = page.locator("#query textarea")
        box.fill("a large red circle on a striped background")
        box.press("Enter")
        results = page.locator("#results img")
        expect(results).to_have_count(10, timeout=20_000)  # the page's 10 results per page
        for i in range(10):  # every thumbnail actually loaded, from the app's photo route
            assert results.nth(i).get_attribute("src").startswith(f"{url}photo/demo_")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                   arg=results.nth(i).element_handle(),
                                   timeout=10_000)
        expect(page.locator("#status")).to_contain_text(f"{N_IMAGES} photos searched; showing 10", timeout=10_000)
        expect(page.locator("#results")).to_contain_text("#1 ·")
        # the first line is for a person; the index and the models are under Details
        expect(page.locator("#index-info")).not_to_contain_text("exact")
        page.locator("#details").get_by_text("Details").click()
        expect(page.locator("#details")).to_contain_text("resnet18 + bert-base-uncased")
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


@needs_chromium
def test_photo_search_in_the_browser_finds_the_photo(served):
    from playwright.sync_api import expect

    url, paths = served
    photo = sorted(paths["images"].glob("demo_*.jpg"))[7]
    with browser_page(url) as page:
        page.get_by_role("tab", name="Search with a photo").click()
        page.locator("#photo input[type=file]").set_input_files(str(photo))  # the upload runs the search
        results = page.locator("#photo-results img")
        expect(results).to_have_count(10, timeout=30_000)  # the page's 10 results per page
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=results.nth(0).element_handle(), timeout=10_000)
        expect(page.locator("#photo-results")).to_contain_text("#1 · ")
        expect(page.locator("#photo-results")).to_contain_text(photo.name)
        expect(page.locator("#photo-status")).to_contain_text(f"{N_IMAGES} photos searched", timeout=10_000)


def test_api_endpoint_returns_json_hits(served):
    from gradio_client import Client

    url, paths = served
    client = Client(url, verbose=False)
    hits = client.predict(query="a small blue square", k=3, api_name="/search")
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(set(h) == {"rank", "image_path", "name", "score", "captions", "confidence", "confident", "folder",
                          "taken_at", "camera", "matched"} for h in hits)
    assert all(h["taken_at"] is None and h["folder"] == "" for h in hits)  # a dataset: no dates, no folders
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert all(Path(h["image_path"]).parent == paths["images"].resolve() and h["captions"] for h in hits)
    with pytest.raises(Exception, match="empty query"):
        client.predict(query="   ", k=3, api_name="/search")


def raw_get(url: str, path: str) -> tuple[int, dict, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..`` or escapes)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_indexed_photos_are_served_as_images_with_nosniff(served):
    from gradio_client import Client

    url, paths = served
    hit = Client(url, verbose=False).predict(query="a red circle", k=1, api_name="/search")[0]
    status, headers, body = raw_get(url, f"/photo/{quote(hit['name'])}")
    assert status == 200 and body == (paths["images"] / hit["name"]).read_bytes()
    assert headers["content-type"] == "image/jpeg" and headers["x-content-type-options"] == "nosniff"
    # Gradio's own file route serves no photo: the photo route is the one way in
    assert raw_get(url, f"/gradio_api/file={paths['images'].resolve() / hit['name']}")[0] == 403


def test_nothing_but_indexed_photos_is_served(served):
    """Files placed beside the photos after indexing, files outside the folder, and every ``../``,
    percent-encoded or absolute form of them: no route serves any of it."""
    url, paths = served
    images, base = paths["images"].resolve(), paths["base"].resolve()
    planted = {"notes.txt": b"SECRET notes", ".env": b"API_KEY=SECRET",
               "evil.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert('SECRET')</script></svg>",
               "page.html": b"<html><script>alert('SECRET')</script></html>"}
    for name, content in planted.items():
        (images / name).write_bytes(content)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(images / "planted.jpg", comment=b"SECRET planted")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(base / "outside.jpg", comment=b"SECRET outside")
    (images / "link_out.jpg").symlink_to(base / "outside.jpg")
    (images / "link_captions.jpg").symlink_to(paths["captions"])
    caption_text = paths["captions"].read_bytes()[:40]

    requests = []
    for name in [*planted, "planted.jpg", "link_out.jpg", "link_captions.jpg"]:
        requests += [f"/photo/{name}", f"/photo/{quote(name, safe='')}", f"/gradio_api/file={images / name}",
                     f"/gradio_api/file={quote(str(images / name))}", f"/gradio_api/file/{images / name}"]
    for outside in (paths["captions"], paths["checkpoint"], base / "outside.jpg", ROOT / "config.py"):
        rel = os.path.relpath(outside, images)
        requests += [f"/photo/{rel}", f"/photo/{quote(rel, safe='')}", f"/photo/{rel.replace('.', '%2e')}",
                     f"/photo/{quote(str(outside), safe='')}", f"/photo//{outside}", f"/photo/demo_00000.jpg/../{rel}",
                     f"/gradio_api/file={outside}", f"/gradio_api/file={images}/{rel}",
                     f"/gradio_api/file={images}/{quote(rel, safe='')}", f"/static/{rel}", f"/assets/{quote(rel)}",
                     f"/svelte/{quote(rel, safe='')}"]
    for path in requests:
        status, _, body = raw_get(url, path)
        assert 400 <= status < 500, (path, status)
        assert b"SECRET" not in body and caption_text not in body, path


def test_k_is_validated_not_clamped(served):
    from gradio_client import Client

    url, _ = served
    client = Client(url, verbose=False)
    for bad_k, message in [(2.5, "k must be a whole number of results, got 2.5"),
                           (0, "k must be from 1 to 50, got 0"), (51, "k must be from 1 to 50, got 51"),
                           ("3", "k must be a whole number of results, got '3'")]:
        with pytest.raises(Exception, match=message.replace("(", r"\(")):
            client.predict(query="a red circle", k=bad_k, api_name="/search")
    assert len(client.predict(query="a red circle", k=50, api_name="/search")) == 50


def post_status(url: str, body: bytes) -> int:
    """The HTTP status of a JSON POST of ``body`` to ``url``."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def page_event(url: str, fn_index: int, data: list) -> dict:
    """Run one of the page's own events as the browser does (queue/join, then the event stream);
    returns its completion message."""
    session = f"test{fn_index}"
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session}).encode()
    req = urllib.request.Request(f"{url}gradio_api/queue/join", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=30) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event stream ended without a completion")


def test_malformed_requests_get_4xx_or_an_error_event_never_500(served):
    from gradio_client import Client

    url, _ = served
    config = json.loads(urllib.request.urlopen(f"{url}config", timeout=10).read())
    fns = {d["api_name"]: d["id"] for d in config["dependencies"]}
    bodies = [b"{}", b"[]", b"null", b"not json", b'{"data": []}', b'{"data": null}', b'{"data": [{}]}',
              b'{"data": ["a dog", 3, 4]}', b'{"query": "a dog", "k": 3, "extra": 1}',
              b'{"data": [], "fn_index": 999, "session_hash": "x"}',
              b'{"data": [], "fn_index": 0, "session_hash": "x"}']
    endpoints = ["call/search", "call/v2/search", "run/search", "api/search", "call/search_photo",
                 "call/v2/search_photo", "call/nope", "call/v2/nope", "run/nope", "run/predict", "queue/join"]
    for endpoint in endpoints:
        for body in bodies:
            status = post_status(f"{url}gradio_api/{endpoint}", body)
            assert status < 500, (endpoint, body, status)
    # the page's own events: a refused value comes back as an error event with the reason
    failed = page_event(url, fns["search_text"], ["a red circle", "", "", "", "Best match first", 2.5])
    assert failed["success"] is False and "k must be a whole number" in failed["output"]["error"]
    failed = page_event(url, fns["search_with_photo"], [None, "", 3])
    assert failed["success"] is False and "no image" in failed["output"]["error"]
    assert len(Client(url, verbose=False).predict(query="a red circle", k=2, api_name="/search")) == 2  # still up


def api_call(url: str, api_name: str, data: list) -> tuple[str, str]:
    """POST /gradio_api/call/<api_name>, then read its result: (event, data) of the last event."""
    req = urllib.request.Request(f"{url}gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        event_id = json.loads(r.read())["event_id"]
    event = payload = ""
    with urllib.request.urlopen(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=30) as stream:
        for line in stream.read().decode().splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event != "heartbeat":
                payload = line[5:].strip()
    return event, payload


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def test_oversized_upload_is_refused_within_a_memory_bound_and_uploads_are_deleted(served, tmp_path):
    from gradio_client import Client, handle_file

    url, paths = served
    pid, uploads = paths["pid"], paths["uploads"]
    client = Client(url, verbose=False)
    photo = sorted(paths["images"].glob("demo_*.jpg"))[3]
    hits = client.predict(photo=handle_file(photo), k=3, api_name="/search_photo")  # loads the image backbone
    assert hits[0]["name"] == photo.name

    big = write_blank_png(tmp_path / "big.png", 10_000, 10_000)  # 0.3 MB; 300 MB as decoded RGB
    try:  # the peak from here on (Linux resets VmHWM to the current VmRSS on writing 5 to clear_refs)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass
    before = memory_mb(pid, "VmHWM")
    with pytest.raises(Exception, match=r"10,000 x 10,000 pixels \(100 megapixels\).* up to 25 megapixels"):
        client.predict(photo=handle_file(big), k=3, api_name="/search_photo")
    assert memory_mb(pid, "VmHWM") - before < 300

    deadline = time.monotonic() + 10  # both uploads are deleted once used (0.5 s after, in this app)
    while any(p.is_file() for p in uploads.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in uploads.rglob("*") if p.is_file()] == []
    # a file on the server that was not uploaded is neither opened nor deleted
    kept = paths["images"] / photo.name
    for value in ({"path": str(kept)}, {"path": str(kept), "meta": {"_type": "gradio.FileData"}}):
        event, data = api_call(url, "search_photo", [value, 3, ""])
        assert event == "error" and ("not an uploaded file" in data or "not uploaded by a user" in data), data
    assert kept.is_file()


def test_missing_checkpoint_exits_2_with_the_command_to_run(tmp_path):
    def app(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "app.py"), "--work-dir", str(tmp_path / "w"), *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})

    proc = app("--models-dir", str(tmp_path / "no-models"))  # nothing trained, nothing shipped
    assert proc.returncode == 2
    assert "python run_train.py" in proc.stderr and str(tmp_path / "w") in proc.stderr
    if (ROOT / "models" / "pretrained" / "model.pt").is_file():  # the shipped model, but no photos indexed
        proc = app()
        assert proc.returncode == 2
        assert "using the shipped model" in proc.stderr and "batch_image_feature_extract.py" in proc.stderr


def test_photos_that_are_not_a_folder_exit_2_at_once(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--photos", str(tmp_path / "nowhere"),
                           "--work-dir", str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"no such folder: {tmp_path / 'nowhere'}" in proc.stderr


def test_a_serving_process_keeps_triton_out_and_text_search_working(tmp_path):
    """cli.prepare_process(serving=True) hides Triton (loaded by transformers' BERT code through
    torch._dynamo, never used by the page); a BERT still loads and encodes, and torch reports no Triton."""

    folder = save_tiny_bert(tmp_path / "bert-base-uncased")
    code = (
        "import sys; from crossmodal import cli; cli.prepare_process(serving=True)\n"
        "import torch, torch.utils._triton as t\nfrom crossmodal import backbones\n"
        f"bb = backbones.create_text_backbone('bert-base-uncased', {str(folder)!r})\n"
        "v = bb.encode(['a dog runs'])\n"
        "assert v.shape == (1, 32), v.shape\n"
        "assert sys.modules['triton'] is None and not t.has_triton_package()\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# python app.py --photos: own photos indexed in the background, the page's filters, more like this

PHOTO_WORDS = ("a an the two dog dogs cat man woman child girl boy is are runs running plays sits jumps on in "
               "with of and at near red blue green white black ball grass water street park beach snow bike").split()
# (folder, file, EXIF date) of the synthetic photos: two dated folders and undated top-level files
PHOTO_LAYOUT = ([("Holidays 2019", f"beach_{i}.jpg", f"2019:07:{10 + i:02d} 12:00:00") for i in range(5)]
                + [("Garden", f"garden_{i}.jpg", f"2021:05:{10 + i:02d} 09:00:00") for i in range(5)]
                + [("", f"misc_{i}.jpg", None) for i in range(4)]
                + [("", "misc_0 copy.jpg", None)])  # a byte-identical copy: the one near-duplicate group
PAGE = 10  # the page's results per page
PHOTO_QUERIES = ["a dog on the grass", "a red ball", "a man on a bike", "two children in the water",
                 "a black cat sits", "a woman in the snow", "a boy runs in the park", "the street"]


@pytest.fixture(scope="module")
def photos_served(tmp_path_factory):
    """app.py --photos over synthetic photos, indexing them in its background thread; a checkpoint
    with a calibration curve placed between two queries' best scores, so one query has confident
    hits and the other none. Yields (url, info)."""
    from crossmodal.engine import SearchEngine, load_image_backbone
    from crossmodal.photos import PhotoCollection, index_photos
    from crossmodal.search import search

    from model import load_checkpoint

    base = tmp_path_factory.mktemp("photos_app")
    folder = base / "Photos"
    rng = np.random.default_rng(3)
    for sub, name, taken in PHOTO_LAYOUT:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        if name.endswith(" copy.jpg"):
            (folder / sub / name).write_bytes((folder / sub / name.replace(" copy", "")).read_bytes())
            os.utime(folder / sub / name, (1_430_000_000, 1_430_000_000))
            continue
        exif = Image.Exif()
        if taken:
            exif.get_ifd(0x8769)[36867] = taken
        random_photo(rng).save(folder / sub / name, exif=exif, quality=90)
        if not taken:  # dated by the file's time: 2015
            os.utime(folder / sub / name, (1_430_000_000, 1_430_000_000))
    m = save_random_models(base, PHOTO_WORDS)
    resnet, bert, checkpoint = m["resnet"], m["bert"], m["checkpoint"]

    # The best score of each query, as the page's search computes it, over a scratch index; the
    # calibration's 0.5 point goes midway between the highest and the lowest best score.
    model, state = load_checkpoint(checkpoint)
    index_photos(base / "scratch_index", [folder], load_image_backbone(state["backbones"]["image"], resnet),
                 device="cpu", workers=0, progress=False)
    engine = SearchEngine(PhotoCollection.open(base / "scratch_index", [folder]), model, state, checkpoint,
                          device="cpu", text_weights=bert, image_weights=resnet)
    best = {q: search(engine, q, k=1).hits[0].score for q in PHOTO_QUERIES}
    good, weak = max(best, key=best.get), min(best, key=best.get)
    assert best[good] - best[weak] > 1e-3, best
    middle = (best[good] + best[weak]) / 2
    # the photos the good query will match (confidence over 0.5), as the page names them
    matching_good = {"/photo/" + quote(h.name) for h in search(engine, good, k=len(PHOTO_LAYOUT)).hits
                     if h.score > middle}
    engine.close()
    slope = 40.0 / (best[good] - best[weak])  # confidence ~1 at the good query's best, ~0 at the weak one's
    curve = {"method": "platt", "slope": slope, "intercept": -slope * middle}
    state = torch.load(checkpoint, weights_only=True)
    state["calibration"] = {"top_k": 10, "threshold": 0.5, "sentence": curve, "short": curve}
    torch.save(state, checkpoint)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(base / "app.log", "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost", "GRADIO_TEMP_DIR": str(base / "uploads")}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--photos", str(folder), "--work-dir", str(base / "work"),
         "--checkpoint", str(checkpoint), "--port", str(port), "--text-weights", str(bert), "--image-weights",
         str(resnet), "--threads", "1", "--device", "cpu"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_up(url, proc, timeout=90, poll=0.3)
        except RuntimeError as err:
            pytest.fail(f"{err}:\n{(base / 'app.log').read_text()[-3000:]}")
        yield url, dict(base=base, folder=folder, good=good, weak=weak, matching_good=matching_good)
    finally:
        stop(proc)
        log.close()


def gallery_state(page, gallery: str = "#results") -> list[tuple[str, str]]:
    """(photo URL path, caption) of each thumbnail shown."""
    return page.eval_on_selector_all(
        f"{gallery} button.thumbnail-item, {gallery} .thumbnail-item",
        "els => els.map(e => [new URL(e.querySelector('img').src).pathname, e.innerText.trim()])")


@needs_chromium
def test_photos_page_filters_more_like_this_and_weak_matches(photos_served):
    from playwright.sync_api import expect

    url, info = photos_served
    n = len(PHOTO_LAYOUT)
    with browser_page(url, height=1000) as page:
        # the timer shows the background indexing until it is done
        expect(page.locator("#indexing")).to_contain_text(f"Index up to date: {n} photos", timeout=60_000)
        page.locator("#grammar").get_by_text("Query language").click()
        expect(page.locator("#grammar")).to_contain_text("sort:date")

        def search(query: str, expected: int, understood: str = "", **filters: str) -> list[tuple[str, str]]:
            """Search from the controls; the hits shown once the status says the query as understood
            (each search here is understood differently from the one before)."""
            for control, value in {"after": "", "before": "", "folder": "", **filters}.items():
                page.locator(f"#{control} input, #{control} textarea").first.fill(value)
            box = page.locator("#query textarea")
            box.fill(query)
            page.locator("#search-button").click()
            expect(page.locator("#status code")).to_have_text(understood or query, timeout=20_000)
            filtered = "pass the filters" if any(filters.values()) or " -" in f" {query}" else "searched"
            expect(page.locator("#status")).to_contain_text(f"{expected} photos {filtered}; showing")
            expect(page.locator("#results img")).to_have_count(min(PAGE, expected), timeout=20_000)
            return gallery_state(page)

        # a query with confident hits: every caption has score, confidence, date and folder
        shown = search(info["good"], n)
        expect(page.locator("#status")).not_to_contain_text("No good match")
        assert "match" in shown[0][1] and "(weak)" not in shown[0][1], shown
        assert all(path.startswith("/photo/") for path, _ in shown)
        for path, caption in shown:
            folder = path.split("/")[2] if path.count("/") > 2 else ""
            taken = {"Holidays%202019": "2019-07-", "Garden": "2021-05-"}.get(folder, "2015-")
            assert taken in caption and (folder.replace("%20", " ") or "top folder") in caption, caption
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=page.locator("#results img").first.element_handle(), timeout=10_000)
        # load more: the next page is added below the first
        page.locator("#load-more").click()
        expect(page.locator("#results img")).to_have_count(n, timeout=20_000)
        assert gallery_state(page)[:PAGE] == shown
        expect(page.locator("#load-more")).to_be_hidden()

        # a date filter, through the query language: only the 2021 photos, said as understood
        shown = search(info["good"], 5, f"{info['good']} after:2021-01-01", after="2021-01")
        assert all("/photo/Garden/" in path and "2021-05-" in caption for path, caption in shown), shown
        # a folder filter, and an exclusion typed in the query: the photos that match it leave
        shown = search(info["good"], 5, f'{info["good"]} in:"Holidays 2019"', folder="Holidays 2019")
        assert all(path.startswith("/photo/Holidays%202019/") for path, _ in shown), shown
        excluded = info["matching_good"]
        shown = search(f'{info["weak"]} -"{info["good"]}"', n - len(excluded))
        assert not {path for path, _ in shown} & excluded, shown
        # more like this: select a hit, ask for the photos most like it
        shown = search(info["good"], n)
        page.locator("#results .thumbnail-item").nth(2).click()  # selects it (and opens its preview)
        expect(page.locator("#more-like")).to_be_enabled(timeout=10_000)
        page.keyboard.press("Escape")  # back to the grid
        expect(page.locator("#results img")).to_have_count(PAGE, timeout=10_000)
        liked = shown[2][0]
        page.locator("#more-like").click()
        expect(page.locator("#status")).to_contain_text(f"Photos like {liked.rsplit('/', 1)[1]}", timeout=20_000)
        expect(page.locator("#status")).to_contain_text(f"{n - 1} photos searched; showing")  # all but itself
        expect(page.locator("#more-like")).to_be_disabled()
        expect(page.locator("#results img")).to_have_count(PAGE)
        assert liked not in [path for path, _ in gallery_state(page)]

        # a query without a confident hit: said, and every hit marked weak
        shown = search(info["weak"], n)
        expect(page.locator("#status")).to_contain_text("No good match — nearest photos shown, marked weak")
        assert all("(weak)" in caption for _, caption in shown), shown

        # the duplicates tab shows the groups the API gives (the copy and its original among them:
        # test_photos_api_pages_filters_and_refuses_bad_input), numbered, each after the first with
        # its similarity to the closest before it
        from gradio_client import Client

        groups = Client(url, verbose=False).predict(threshold=0.99, api_name="/duplicates")
        expected = [(f"/photo/{quote(name)}", f"Group {g} · {i}. {name}" + (
            f" · {group['closest'][i - 2][1]:.2f} to {group['closest'][i - 2][0] + 1}." if i > 1 else ""))
            for g, group in enumerate(groups, start=1) for i, name in enumerate(group["names"], start=1)]
        page.get_by_role("tab", name="Duplicates").click()
        expect(page.locator("#duplicates-button")).to_be_visible()
        fill_until_it_holds(page, page.locator("#threshold input[type=number]"), "0.99")
        page.locator("#duplicates-button").click()
        expect(page.locator("#duplicates-status")).to_contain_text(
            f"{len(groups)} group(s) of near-duplicate photos, {len(expected)} photos, above a similarity of 0.99",
            timeout=20_000)
        expect(page.locator("#duplicates img")).to_have_count(len(expected), timeout=10_000)
        assert [tuple(item) for item in gallery_state(page, "#duplicates")] == expected


def test_photos_api_pages_filters_and_refuses_bad_input(photos_served):
    """/search keeps its hits' keys; /search_photos pages, filters and finds photos like one;
    /search_photo takes words with the photo; bad values are refused with the reason, never a 500."""
    from gradio_client import Client, handle_file

    url, info = photos_served
    client = Client(url, verbose=False)
    hits = client.predict(query=info["good"], k=3, api_name="/search")
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert {"rank", "image_path", "name", "score", "captions", "taken_at", "folder", "confidence"} <= set(hits[0])
    first = client.predict(query=info["good"], k=4, offset=0, like="", api_name="/search_photos")
    second = client.predict(query=info["good"], k=4, offset=4.0, like="", api_name="/search_photos")
    assert first["total"] == second["total"] == len(PHOTO_LAYOUT) and first["good_match"] is True
    assert [h["rank"] for h in second["hits"]] == [5, 6, 7, 8]
    assert not {h["name"] for h in first["hits"]} & {h["name"] for h in second["hits"]}
    dated = client.predict(query="sort:-date date:2019", k=10, offset=0, like="", api_name="/search_photos")
    assert dated["understood"] == "after:2019-01-01 before:2020-01-01 sort:-date"
    assert [h["taken_at"][:10] for h in dated["hits"]] == [f"2019-07-{d}" for d in (14, 13, 12, 11, 10)]
    like = client.predict(query="in:Garden", k=10, offset=0, like=hits[0]["image_path"], api_name="/search_photos")
    assert like["hits"] and all(h["folder"] == "Garden" and h["image_path"] != hits[0]["image_path"]
                                for h in like["hits"])
    photo = info["folder"] / "Garden" / "garden_2.jpg"
    with_words = client.predict(photo=handle_file(photo), k=3, query="in:Garden", api_name="/search_photo")
    assert with_words[0]["name"] == "Garden/garden_2.jpg" and all(h["folder"] == "Garden" for h in with_words)
    for kwargs, message in [({"k": 0}, "k must be from 1 to 50"), ({"offset": -1}, "offset must be a whole number"),
                            ({"offset": 2.5}, "offset must be a whole number"),
                            ({"like": "nowhere.jpg"}, "not an indexed photo"),
                            ({"query": "after:2020-13"}, "not a valid date")]:
        args = {"query": info["good"], "k": 3, "offset": 0, "like": "", **kwargs}
        with pytest.raises(Exception, match=message):
            client.predict(**args, api_name="/search_photos")
    # (the random test backbone puts different photos close together too: only the copy is checked)
    groups = client.predict(threshold=0.99, api_name="/duplicates")
    group = next(g for g in groups if "misc_0.jpg" in g["names"])
    copy, original = group["names"].index("misc_0 copy.jpg"), group["names"].index("misc_0.jpg")
    assert group["closest"][max(copy, original) - 1] == [min(copy, original), pytest.approx(1.0, abs=1e-3)]
    assert all(g["names"] == sorted(g["names"]) and len(g["closest"]) == len(g["names"]) - 1 for g in groups)
    for threshold in (0.2, 1.0):
        with pytest.raises(Exception, match="threshold must be a number from 0.5"):
            client.predict(threshold=threshold, api_name="/duplicates")
    for body in (b"{}", b'{"data": ["a dog", 3, "x", ""]}', b'{"data": [1, 2, 3, 4, 5]}', b"not json"):
        status = post_status(f"{url}gradio_api/call/search_photos", body)
        assert status < 500, (body, status)
