"""The page's own HTTP pieces (crossmodal.web) on a bare Starlette app: the photo route's
allow-list, uploads, and the refusal of malformed API requests. tests/test_app_browser.py checks
the same on the running app."""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from crossmodal.web import (
    LimitUploads,
    RefuseMalformedRequests,
    ServedPhotos,
    Uploads,
    discard_upload,
    uploaded_file,
)

PAGE = b"<html><script>alert('planted')</script></html>"


def served(names: list[str], root: Path) -> ServedPhotos:
    """The allow-list of a fixed collection: these names below ``root``."""
    collection = SimpleNamespace(names=names, root=root)
    return ServedPhotos(lambda: collection)


@pytest.fixture()
def folder(tmp_path) -> dict:
    """A photos folder with indexed photos (one in a subfolder, one a symlink to a photo outside,
    one whose symlink now points at a page) and files planted beside them."""
    root, outside = tmp_path / "photos", tmp_path / "outside"
    (root / "trip").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (16, 12), (200, 0, 0)).save(root / "a.jpg")
    Image.new("RGB", (16, 12), (0, 200, 0)).save(root / "trip" / "b c.png")
    Image.new("RGB", (16, 12), (0, 0, 200)).save(outside / "far.webp")
    (root / "link.webp").symlink_to(outside / "far.webp")
    (outside / "page.html").write_bytes(PAGE)
    (root / "retargeted.jpg").symlink_to(outside / "page.html")
    (root / "became_page.jpg").write_bytes(PAGE)  # indexed as a photo, since replaced
    for name, content in [("notes.txt", b"secret notes"), (".env", b"API_KEY=secret"), ("pic.svg", b"<svg/>"),
                          ("page.html", PAGE)]:
        (root / name).write_bytes(content)
    Image.new("RGB", (8, 8)).save(root / "planted.jpg")  # an image, but not in the index
    (root / "planted_link.jpg").symlink_to(outside / "far.webp")
    indexed = ["a.jpg", "trip/b c.png", "link.webp", "retargeted.jpg", "became_page.jpg", "../outside/far.webp",
               "/etc/hostname"]
    photos = served(indexed, root)
    client = TestClient(Starlette(routes=[photos.route()]))
    return dict(root=root, outside=outside, photos=photos, client=client)


def test_indexed_photos_are_served_as_images_with_nosniff(folder):
    photos, client = folder["photos"], folder["client"]
    for name, content_type in [("a.jpg", "image/jpeg"), ("trip/b c.png", "image/png"), ("link.webp", "image/webp")]:
        r = client.get(photos.url(name))
        assert r.status_code == 200, name
        assert r.headers["content-type"] == content_type
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in r.headers["content-security-policy"]
        assert r.content == (folder["root"] / name).read_bytes()
    assert photos.url("trip/b c.png", "http://host:1") == "http://host:1/photo/trip/b%20c.png"
    head = client.head(photos.url("a.jpg"))
    assert head.status_code == 200 and head.headers["content-type"] == "image/jpeg"


def test_nothing_else_is_served(folder):
    client = folder["client"]
    refused = ["notes.txt", ".env", "pic.svg", "page.html", "planted.jpg", "planted_link.jpg",
               "retargeted.jpg", "became_page.jpg",  # indexed, but no longer image files
               "../outside/far.webp", "%2e%2e/outside/far.webp", "..%2Foutside%2Ffar.webp", "trip/..%2Fa.jpg",
               "trip/..%2F..%2Foutside/far.webp", "%2Fetc%2Fhostname", "/etc/hostname", "//etc/hostname",
               "a.jpg%00.html", "A.JPG", "a.jpg/", "trip", ""]
    for name in refused:
        r = client.get(f"/photo/{name}")
        assert r.status_code == 404, (name, r.status_code)
        assert b"secret" not in r.content and b"planted" not in r.content and b"hostname" not in r.content
    assert len(folder["photos"]) == 5  # the two rows naming paths outside the folder are dropped


def test_an_upload_is_opened_only_inside_the_upload_folder_and_deleted_after(tmp_path):
    uploads = tmp_path / "gradio"
    (uploads / "3f2a").mkdir(parents=True)
    (uploads / "3f2a" / "q.png").write_bytes(b"x")
    (uploads / "9b1c").mkdir()
    (uploads / "9b1c" / "r.png").write_bytes(b"y")
    (uploads / "9b1c" / "s.png").write_bytes(b"z")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"keep")
    (uploads / "link.png").symlink_to(secret)

    path = uploaded_file({"path": str(uploads / "3f2a" / "q.png"), "meta": {"_type": "gradio.FileData"}}, uploads)
    assert path == (uploads / "3f2a" / "q.png").resolve()
    discard_upload(path, uploads)
    assert not (uploads / "3f2a").exists() and uploads.is_dir()  # the file and its emptied folder
    discard_upload(uploads / "9b1c" / "r.png", uploads)
    assert (uploads / "9b1c" / "s.png").exists()  # a folder still holding another upload stays

    for payload, why in [(None, "no image"), ("/etc/hostname", "expected an uploaded file"),
                         ({"path": str(secret)}, "not an uploaded file"),
                         ({"path": str(uploads / ".." / "secret.png")}, "not an uploaded file"),
                         ({"path": str(uploads / "link.png")}, "not an uploaded file"),
                         ({"path": str(uploads)}, "not an uploaded file"),
                         ({"path": str(uploads / "3f2a" / "q.png")}, "no longer on the server")]:
        with pytest.raises(ValueError, match=why):
            uploaded_file(payload, uploads)
    assert secret.read_bytes() == b"keep"


def test_an_upload_is_deleted_a_grace_period_after_its_last_search(tmp_path):
    """Gradio names an upload by its content: two searches may hold the same file, and a newer upload
    of the same bytes may replace it meanwhile."""
    folder = tmp_path / "gradio"
    (folder / "5e").mkdir(parents=True)
    shared = folder / "5e" / "p.png"
    shared.write_bytes(b"x")
    value = {"path": str(shared), "meta": {"_type": "gradio.FileData"}}
    uploads = Uploads(folder, grace_s=30)
    with uploads.using(value) as first:
        with uploads.using(value) as second:
            assert first == second == shared.resolve()
        assert uploads.sweep(now=time.monotonic() + 60) == 0  # the first search still uses it
    assert uploads.sweep() == 0 and shared.exists()  # within the grace period: a search again finds it
    with uploads.using(value):
        pass
    assert uploads.sweep(now=time.monotonic() + 31) == 1
    assert not shared.exists() and not shared.parent.exists()

    (folder / "5e").mkdir()
    shared.write_bytes(b"x")
    with uploads.using(value):
        pass
    replacement = folder / "5e" / "new.tmp"
    replacement.write_bytes(b"x")
    replacement.rename(shared)  # what Gradio's upload route does when the same bytes are uploaded again
    assert uploads.sweep(now=time.monotonic() + 31) == 0 and shared.exists()  # left to the newer upload

    quick = Uploads(folder, grace_s=0.1)  # the sweeper thread deletes on its own
    with quick.using(value):
        pass
    deadline = time.monotonic() + 10
    while shared.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not shared.exists()
    with pytest.raises(ValueError, match="no image"):
        with quick.using(None):
            pass


def test_malformed_api_requests_are_refused_not_500():
    from gradio.route_utils import FnIndexInferError

    def unknown(request):
        return {}["/nope"]

    def unknown_name(request):
        raise FnIndexInferError("Could not infer function index for API name: nope")

    def bad_args(request):
        raise TypeError("No value provided for required argument: query")

    def direct_call_failed(request):  # what Gradio's /run/ route answers for any failed call
        return JSONResponse({"error": "An event handler didn't receive enough input values"}, status_code=500)

    def bug(request):
        raise RuntimeError("a server bug")

    app = Starlette(routes=[Route("/gradio_api/call/{name}", unknown, methods=["POST"]),
                            Route("/gradio_api/call/v2/{name}", bad_args, methods=["POST"]),
                            Route("/gradio_api/queue/join", unknown_name, methods=["POST"]),
                            Route("/gradio_api/run/{name}", direct_call_failed, methods=["POST"]),
                            Route("/gradio_api/bug", bug), Route("/gradio_api/answers500", direct_call_failed),
                            Route("/elsewhere", unknown)],
                    middleware=[Middleware(RefuseMalformedRequests)])
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/gradio_api/call/nope", json={})
    assert r.status_code == 404 and "no such endpoint" in r.json()["detail"] and "/nope" in r.json()["detail"]
    r = client.post("/gradio_api/queue/join", json={})
    assert r.status_code == 404 and "API name: nope" in r.json()["detail"]
    r = client.post("/gradio_api/call/v2/search", json={})
    assert r.status_code == 400 and "required argument: query" in r.json()["detail"]
    r = client.post("/gradio_api/run/predict", json={})
    assert r.status_code == 400 and "enough input values" in r.json()["error"]
    assert client.get("/gradio_api/bug").status_code == 500  # not a parse error: stays a server error
    assert client.get("/gradio_api/answers500").status_code == 500  # not a direct-call route
    assert client.get("/elsewhere").status_code == 500  # outside the API routes: untouched


def test_photo_urls_round_trip_through_the_route(folder):
    """Names with characters that URLs escape come back as the same row."""
    root = folder["root"]
    odd = ["100% #1?.jpg", "ünï cødé.jpg", "semi;colon&amp.jpg"]
    for name in odd:
        Image.new("RGB", (4, 4)).save(root / name)
    photos = served(odd, root)
    client = TestClient(Starlette(routes=[photos.route()]))
    for name in odd:
        r = client.get(photos.url(name))
        assert r.status_code == 200 and r.content == Path(root / name).read_bytes(), name


def test_what_is_served_is_what_was_indexed(tmp_path):
    """A file whose size and mtime differ from its record is served only when its content hash is still
    the indexed one: a symlink re-pointed at another photo, or a photo replaced, is not served."""
    from crossmodal.photos.files import content_hash

    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (16, 12), (200, 0, 0)).save(root / "a.jpg")
    Image.new("RGB", (16, 12), (0, 200, 0)).save(tmp_path / "b.jpg")
    Image.new("RGB", (40, 30), (0, 0, 200)).save(tmp_path / "other.jpg")
    (root / "link.jpg").symlink_to(tmp_path / "b.jpg")

    def record(path: Path) -> tuple[int, int, str]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns, content_hash(path)[0]

    collection = SimpleNamespace(names=["a.jpg", "link.jpg"], root=root,
                                 files=[record(root / "a.jpg"), record(root / "link.jpg")])
    photos = ServedPhotos(lambda: collection)
    client = TestClient(Starlette(routes=[photos.route()]))
    assert [client.get(photos.url(n)).status_code for n in collection.names] == [200, 200]
    st = (root / "a.jpg").stat()
    os.utime(root / "a.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: the same content
    assert client.get(photos.url("a.jpg")).status_code == 200
    Image.new("RGB", (16, 12), (0, 0, 0)).save(root / "a.jpg")  # replaced
    (root / "link.jpg").unlink()
    (root / "link.jpg").symlink_to(tmp_path / "other.jpg")  # re-pointed
    assert [client.get(photos.url(n)).status_code for n in collection.names] == [404, 404]


def test_an_upload_no_search_uses_is_deleted_a_bounded_time_after_it_arrives(tmp_path):
    folder = tmp_path / "uploads"
    (folder / "a1").mkdir(parents=True)
    (folder / "a1" / "never_searched.png").write_bytes(b"\x89PNG" + b"\0" * 100)
    uploads = Uploads(folder, grace_s=60, max_age_s=0.2)
    assert uploads.sweep() == 0 and (folder / "a1" / "never_searched.png").is_file()  # too young
    time.sleep(0.3)
    in_use = folder / "b2" / "searching.png"
    in_use.parent.mkdir()
    in_use.write_bytes(b"x")
    os.utime(in_use, (time.time() - 60, time.time() - 60))
    with uploads.using({"path": str(in_use)}):
        time.sleep(0.3)
        assert uploads.sweep() == 1  # the old unused one; not the one a search uses
        assert not (folder / "a1").exists() and in_use.is_file()


def test_the_bytes_of_uploads_held_at_once_have_a_limit(tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    uploads = Uploads(folder)

    async def upload(request):
        body = await request.body()
        (folder / f"{len(list(folder.iterdir()))}.bin").write_bytes(body)
        return JSONResponse(["ok"])

    app = Starlette(routes=[Route("/gradio_api/upload", upload, methods=["POST"])],
                    middleware=[Middleware(LimitUploads, uploads=uploads, max_bytes=1000)])
    client = TestClient(app)
    assert client.post("/gradio_api/upload", content=b"x" * 600).status_code == 200
    refused = client.post("/gradio_api/upload", content=b"x" * 600)
    assert refused.status_code == 413 and "too many uploads held at once" in refused.json()["detail"]
    assert uploads.held_bytes() == 600
    assert client.post("/gradio_api/upload", content=b"x" * 300).status_code == 200


def test_a_page_process_keeps_its_uploads_in_a_folder_it_removes(tmp_path):
    """cli.prepare_process(serving=True): a private upload folder, gone when the process ends, and the
    folders of killed pages before it removed."""
    import subprocess
    import sys

    from conftest import ROOT

    stale = tmp_path / "crossmodal-uploads-999999999-x"
    stale.mkdir()
    (stale / "left.png").write_bytes(b"x")
    code = ("import os\nfrom crossmodal import cli\ncli.prepare_process(serving=True)\n"
            "folder = os.environ['GRADIO_TEMP_DIR']\nopen(os.path.join(folder, 'u.png'), 'wb').write(b'x')\n"
            "print(folder)\n")
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**env, "TMPDIR": str(tmp_path)})
    folder = Path(out.stdout.strip())
    assert out.returncode == 0 and folder.parent == tmp_path and folder.name.startswith("crossmodal-uploads-")
    assert not folder.exists() and not stale.exists()
