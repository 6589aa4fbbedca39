"""The search page's own HTTP pieces beside Gradio's: the one route that serves photos, refusals
of malformed API requests, and the life of an uploaded file.

Photos (``ServedPhotos``): ``GET /photo/<name>`` serves the photos of the searched collection and
nothing else. The allow-list is the collection's row names (unreadable photos are not among them),
asked of the engine at each request: a photo index that grows while the page runs serves each photo
once it is searchable, and no other file: a URL is looked up in it, never joined to a folder, so
``../``, percent-encoded or absolute forms and any file placed beside the photos match nothing. The
file must also have a photo's extension and an image's first bytes (``images.image_content_type``);
it is sent with the content type its bytes show, ``X-Content-Type-Options: nosniff`` and a sandboxing
Content-Security-Policy, so nothing served here can run as a page on the app's address. A row
that is a symlink is served whatever its target: the index owner put it in the index (indexing
keeps only files that decode as images), and the target must still pass the image check when it
is sent. Gradio's own file route is given no folder of photos at all.

Uploads (``Uploads``, ``LimitUploads``): a photo query names a file that Gradio's upload route wrote
to its upload folder; only such files are opened, and each is deleted soon after its last search (a
grace period, as Gradio stores identical uploads as one file, which another search may be about to
use); a file no search uses is deleted a bounded time after it arrives, and the bytes held at once
have a limit.

Malformed requests (``RefuseMalformedRequests``): some of Gradio's API routes raise on requests
they cannot parse (an unknown endpoint or function index, missing or unknown arguments), or
answer 500 for wrong inputs; they answer 404 or 400 with the reason instead.
"""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crossmodal import webdataset
from crossmodal.images import image_content_type, sniff_content_type
from crossmodal.photos.files import content_hash

log = logging.getLogger(__name__)

PHOTO_ROUTE = "/photo"
PHOTO_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # the browser keeps the image type, never sniffs a page
    "Content-Security-Policy": "default-src 'none'; sandbox",  # opened directly: nothing runs
    "Cache-Control": "private, max-age=600",
}
API_PREFIX = "/gradio_api/"
UPLOAD_GRACE_S = 60  # an uploaded photo is deleted this long after its last search
UPLOAD_MAX_AGE_S = 120  # and any upload no search uses, this long after it arrived
MAX_HELD_UPLOAD_BYTES = 256 << 20  # uploads held at once, all together
UPLOAD_ROUTES = ("/gradio_api/upload", "/upload")


def _stays_inside(name: str) -> bool:
    """A row name that names a file under the images folder (relative, no ``..`` step out). A
    backslash is a separator only where the system says so (elsewhere it is a file name's character)."""
    if not name or name.startswith("/") or "\x00" in name or (os.sep == "\\" and "\\" in name):
        return False
    norm = posixpath.normpath(name)
    return norm != ".." and not norm.startswith("../")


class _AnyPath(Convertor):
    """A path parameter holding any character a file name may: Starlette's "path" stops at a newline."""
    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())


class ServedPhotos:
    """The allow-list of files served over HTTP: the rows of the searched collection, by name.

    ``collection()`` gives the collection searched now (``SearchEngine.current().collection``, or
    anything with ``root`` and ``names``); the list is checked again only when that object changed."""

    def __init__(self, collection: Callable[[], Any]):
        self._collection = collection
        self._seen: object | None = None  # the collection last checked
        self._root: Path = Path(".")
        self._served: dict[str, tuple[int, int, str] | None] = {}  # name -> (size, mtime_ns, hash) as indexed

    def _current(self) -> tuple[Path, dict[str, tuple[int, int, str] | None]]:
        collection = self._collection()
        if collection is not self._seen:
            names = collection.names
            files = getattr(collection, "files", None) or [None] * len(names)
            served = {n: f for n, f in zip(names, files) if _stays_inside(n)}
            if len(served) < len(names):
                log.warning("%d rows name a path outside %s and are not served", len(names) - len(served),
                            collection.root)
            self._root, self._served, self._seen = Path(collection.root).resolve(), served, collection
        return self._root, self._served

    @property
    def root(self) -> Path:
        return self._current()[0]

    def __len__(self) -> int:
        return len(self._current()[1])

    def __contains__(self, name: object) -> bool:
        return name in self._current()[1]

    def url(self, name: str, root_url: str = "") -> str:
        """The URL of an indexed photo (``root_url``: the app's address, without a trailing slash)."""
        return f"{root_url}{PHOTO_ROUTE}/{quote(name, safe='/')}"

    def file_of(self, name: str) -> tuple[Path, str, os.stat_result] | None:
        """(path, content type, stat) of a served photo; None when ``name`` is not an indexed row, its
        file is gone, is no image by extension and content, or is no longer what was indexed (its size
        and mtime, else its content hash, differ from the record: a file replaced, a symlink
        re-pointed)."""
        root, served = self._current()
        if name not in served:
            return None
        path = root / name
        content_type = image_content_type(path)
        if content_type is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        indexed = served[name]
        if indexed is not None and (st.st_size, st.st_mtime_ns) != indexed[:2]:
            try:
                if content_hash(path)[0] != indexed[2]:
                    return None
            except OSError:
                return None
        return path, content_type, st

    def member_bytes(self, name: str) -> tuple[bytes, str] | None:
        """(bytes, content type) of a served photo inside a tar shard (``crossmodal.webdataset``); None
        for any other name, or when the shard no longer holds it as an image."""
        root, served = self._current()
        if name not in served or webdataset.split_member(root / name) is None:
            return None
        try:
            data = webdataset.read_bytes(root / name)
        except OSError:
            return None
        content_type = sniff_content_type(data[:16])
        return None if content_type is None else (data, content_type)

    def response(self, name: str) -> Response:
        member = self.member_bytes(name)
        if member is not None:
            return Response(member[0], media_type=member[1], headers=PHOTO_HEADERS)
        found = self.file_of(name)
        if found is None:
            return PlainTextResponse("not found", status_code=404, headers={"X-Content-Type-Options": "nosniff"})
        path, content_type, st = found
        return FileResponse(path, media_type=content_type, headers=PHOTO_HEADERS, stat_result=st,
                            filename=path.name, content_disposition_type="inline")

    def route(self) -> Route:
        """The route serving these photos, ``GET/HEAD /photo/<name>``."""

        def photo(request: Request) -> Response:  # sync: the file checks run in a worker thread
            return self.response(request.path_params["name"])

        return Route(PHOTO_ROUTE + "/{name:anypath}", photo, methods=["GET", "HEAD"])


def uploaded_file(payload: Any, upload_dir: str | os.PathLike) -> Path:
    """The file an uploaded-file value refers to (Gradio's file data: a dict with "path"), refused
    (ValueError) unless it is a regular file inside ``upload_dir``, where Gradio's upload route
    writes: a request naming any other file on the server opens nothing."""
    if payload is None:
        raise ValueError("no image: upload a photo to search with")
    path = payload.get("path") if isinstance(payload, dict) else None
    if not isinstance(path, str) or not path:
        raise ValueError("expected an uploaded file (gradio_client.handle_file), got "
                         f"{type(payload).__name__}")
    real, folder = Path(os.path.realpath(path)), Path(os.path.realpath(upload_dir))
    if not real.is_relative_to(folder) or real == folder:
        raise ValueError("not an uploaded file: upload the photo (gradio_client.handle_file) and pass what it returns")
    if not real.is_file():
        raise ValueError("the uploaded photo is no longer on the server (each upload serves one search); "
                         "upload it again")
    return real


def discard_upload(path: str | os.PathLike, upload_dir: str | os.PathLike) -> None:
    """Delete an uploaded file, and its folder when that is left empty (never ``upload_dir`` itself)."""
    path, folder = Path(path), Path(os.path.realpath(upload_dir))
    try:
        path.unlink(missing_ok=True)
        if path.parent != folder and path.parent.is_relative_to(folder):
            path.parent.rmdir()
    except OSError:  # the folder holds another upload, or is already gone
        pass


class Uploads:
    """The uploaded files that photo searches use, each deleted ``grace_s`` seconds after its last
    search ends (by a sweeper thread): a search of the same photo again (another k, or another client
    that uploaded the same bytes, which Gradio stores as the same file) finds it meanwhile. A file
    replaced by a newer upload since is left to that upload's searches. Any file in the upload folder
    that no search uses is deleted ``max_age_s`` seconds after it arrived, searched or not: a client
    cannot fill the disk with uploads it never searches (``LimitUploads`` bounds what is held at once)."""

    def __init__(self, folder: str | os.PathLike, grace_s: float = UPLOAD_GRACE_S,
                 max_age_s: float = UPLOAD_MAX_AGE_S):
        self.folder = Path(os.path.realpath(folder))
        self.grace_s = grace_s
        self.max_age_s = max_age_s
        self._uses: dict[Path, int] = {}  # file -> searches using it now
        self._expiring: dict[Path, tuple[float, int]] = {}  # file -> (when to delete, its inode then)
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    def start(self) -> "Uploads":
        """Start the sweeper (a page's uploads are swept from the start, searched or not)."""
        with self._lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep_forever, name="upload-sweeper", daemon=True)
                self._sweeper.start()
        return self

    def held_bytes(self) -> int:
        """The bytes of the files in the upload folder now."""
        total = 0
        for dirpath, _, files in os.walk(self.folder):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:  # deleted meanwhile
                    pass
        return total

    @contextlib.contextmanager
    def using(self, payload: Any) -> Iterator[Path]:
        """The uploaded file that ``payload`` names (``uploaded_file``: ValueError for anything
        else), kept while the block runs, then due for deletion."""
        path = uploaded_file(payload, self.folder)
        with self._lock:
            self._uses[path] = self._uses.get(path, 0) + 1
            self._expiring.pop(path, None)
        try:
            yield path
        finally:
            with self._lock:
                self._uses[path] -= 1
                if not self._uses[path]:
                    del self._uses[path]
                    try:
                        self._expiring[path] = (time.monotonic() + self.grace_s, path.stat().st_ino)
                    except OSError:  # already gone
                        pass
            self.start()

    def sweep(self, now: float | None = None) -> int:
        """Delete the files whose time has come (unless a newer upload replaced them), and every file no
        search uses that arrived ``max_age_s`` seconds ago or more; how many."""
        now = time.monotonic() if now is None else now
        deleted = 0
        with self._lock:
            for path, (deadline, inode) in list(self._expiring.items()):
                if deadline > now:
                    continue
                del self._expiring[path]
                try:
                    if path.stat().st_ino != inode:
                        continue
                except OSError:
                    continue
                discard_upload(path, self.folder)
                deleted += 1
            oldest = time.time() - self.max_age_s
            for dirpath, _, files in os.walk(self.folder):
                for name in files:
                    path = Path(dirpath) / name
                    try:
                        arrived = path.stat().st_ctime
                    except OSError:
                        continue
                    if arrived <= oldest and path not in self._uses:
                        self._expiring.pop(path, None)
                        discard_upload(path, self.folder)
                        deleted += 1
        return deleted

    def _sweep_forever(self) -> None:
        while True:
            time.sleep(min(1.0, max(min(self.grace_s, self.max_age_s), 0.05)))
            try:
                self.sweep()
            except OSError as err:  # the folder gone (the server stopping): nothing left to sweep
                log.debug("upload sweep: %s", err)


class LimitUploads:
    """ASGI middleware over Gradio's upload route: an upload that would bring the files held in the
    upload folder over ``max_bytes`` is refused (HTTP 413, with the reason) before it is read."""

    def __init__(self, app: ASGIApp, uploads: Uploads, max_bytes: int = MAX_HELD_UPLOAD_BYTES):
        self.app = app
        self.uploads = uploads
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upload = scope["type"] == "http" and scope.get("method") == "POST" \
            and scope.get("path", "").rstrip("/") in UPLOAD_ROUTES
        if upload:
            try:
                length = int(dict(scope.get("headers") or []).get(b"content-length", b"0") or 0)
            except ValueError:
                length = 0
            held = self.uploads.held_bytes()
            if held + length > self.max_bytes:
                log.info("upload refused: %d bytes held, %d more asked, at most %d", held, length, self.max_bytes)
                message = (f"too many uploads held at once (at most {self.max_bytes // (1 << 20)} MB, each kept "
                           f"{self.uploads.max_age_s:g} s at most); try again in a minute")
                await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RefuseMalformedRequests:
    """ASGI middleware over Gradio's API routes: requests they cannot parse get 404 or 400 with the
    reason, not 500.

    - An exception that escapes a route before it answers comes from reading the request: an
      unknown endpoint or function index (404), missing, extra or mistyped arguments (400). Only
      the kinds that parsing raises are refused; any other stays a 500, a server error.
    - The direct-call routes (``/run/``, ``/api/``) answer 500 for every failure of the call. With
      the queue's ``api_open=False`` (app.serve) they run only Gradio's unqueued helpers (the
      examples' loader), whose failures are the request's (wrong inputs): those become 400.
    """

    DIRECT_ROUTES = (API_PREFIX + "run/", API_PREFIX + "api/")

    def __init__(self, app: ASGIApp, prefix: str = API_PREFIX):
        from gradio.route_utils import FnIndexInferError  # an API name that names no endpoint

        self.app = app
        self.prefix = prefix
        self.not_found = (LookupError, FnIndexInferError)  # LookupError: KeyError, IndexError
        self.bad_request = (TypeError, ValueError, AttributeError)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        direct = path.startswith(self.DIRECT_ROUTES)
        started = False

        async def send_checked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if direct and message["status"] == 500:
                    message = {**message, "status": 400}
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        except (*self.not_found, *self.bad_request) as err:
            if started:
                raise
            status = 404 if isinstance(err, self.not_found) else 400
            what = "no such endpoint or function" if status == 404 else "malformed request"
            log.info("%s %s refused (%d): %s: %s", scope.get("method"), path, status, type(err).__name__, err)
            await JSONResponse({"detail": f"{what}: {err}"}, status_code=status)(scope, receive, send)
