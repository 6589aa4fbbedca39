#!/usr/bin/env python
"""Resident memory of the search page while photos are uploaded to its "Search with a photo" tab.

Starts ``app.py`` (the demo run's checkpoint and photos by default) in a child process, then, for
each kind of photo, sends ``--clients`` uploads at once the way the page does (Gradio's upload
route, then the tab's event through the queue) and reads the server's memory from /proc: VmRSS
before, the peak (VmHWM, reset before each round), VmRSS after, and whether the uploaded files are
still in Gradio's upload folder. One small photo is searched first, so the image backbone is
loaded before the first "before".

    python -m bench.upload_memory [--work-dir work/demo] [--clients 4] [-- extra app.py flags]

``--app`` runs another app.py (another checkout) through the same requests, for a comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import _common as C  # noqa: E402  # isort: split
from crossmodal.demo_data import write_blank_png  # noqa: E402

HUGE = 10_000  # the tester's photo: 10000 x 10000 pixels


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the current VmRSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def photos(folder: Path, small: Path) -> list[tuple[str, Path]]:
    """(label, file) of each round: the tester's PNG, a JPEG as large, a PNG at the pixel budget."""
    from PIL import Image

    from crossmodal.images import MAX_DECODE_PIXELS

    side = int(MAX_DECODE_PIXELS ** 0.5)
    big_png = write_blank_png(folder / "huge.png", HUGE, HUGE)
    gradient = Image.linear_gradient("L").resize((HUGE, HUGE))
    Image.merge("RGB", [gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient]).save(
        folder / "huge.jpg", quality=85)
    del gradient
    Image.open(small).convert("RGB").resize((side, side)).save(folder / "budget.png", compress_level=1)
    return [(f"{HUGE}x{HUGE} PNG ({big_png.stat().st_size / 1e3:.0f} KB)", big_png),
            (f"{HUGE}x{HUGE} JPEG ({(folder / 'huge.jpg').stat().st_size / 1e6:.1f} MB)", folder / "huge.jpg"),
            (f"{side}x{side} PNG ({(folder / 'budget.png').stat().st_size / 1e6:.0f} MB)", folder / "budget.png")]


def search_with_photo(url: str, fn_index: int, path: Path, session: str) -> str:
    """What the page does for one photo: upload it, run the tab's event, wait for the answer.
    Returns "ok: N hits" or "refused: <message>"."""
    import httpx

    with httpx.Client(base_url=url, timeout=300) as http:
        with open(path, "rb") as f:
            uploaded = http.post("gradio_api/upload", files={"files": (path.name, f)})
        if uploaded.status_code != 200:
            return f"upload refused: {uploaded.status_code} {uploaded.text[:80]}"
        server_path = uploaded.json()[0]
        photo = {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
        joined = http.post("gradio_api/queue/join", json={"data": [photo, 5], "fn_index": fn_index,
                                                           "session_hash": session})
        joined.raise_for_status()
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    if msg.get("success"):
                        return f"ok: {len(msg['output']['data'][0])} hits"
                    return f"refused: {msg['output'].get('error')}"
    return "no answer"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    app_args = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=C.ROOT / "work" / "demo",
                   help="a finished pipeline run (quickstart.sh writes work/demo)")
    p.add_argument("--images", type=Path, help="its photos (default: WORK_DIR/data/images)")
    p.add_argument("--clients", type=int, default=4, help="uploads at once (default: %(default)s)")
    p.add_argument("--app", type=Path, default=C.ROOT / "app.py", help="the app.py to run (default: this one)")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.work_dir, args.app = args.work_dir.resolve(), args.app.resolve()
    images = (args.images or args.work_dir / "data" / "images").resolve()
    C.require(args.work_dir / "checkpoints" / "best.pt", "a trained demo run (bash quickstart.sh)")
    C.require(images, "its photos")
    small = sorted(images.glob("*.jpg"))[0]

    tmp = Path(tempfile.mkdtemp(prefix="upload_memory_"))
    uploads = tmp / "uploads"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(args.app), "--work-dir", str(args.work_dir), "--images", str(images),
                             "--port", str(port), *app_args], cwd=args.app.parent, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    rows = []
    try:
        from scripts.screenshot_app import wait_until_up

        wait_until_up(url, proc, timeout=300)
        import httpx

        config = httpx.get(url + "config", timeout=30).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "run_image")
        rounds = photos(tmp, small)
        warm = search_with_photo(url, fn_index, small, "warm")  # loads the image backbone
        time.sleep(1)
        rows.append(["1 small JPEG (warm-up)", warm, "", "", round(status_mb(proc.pid, "VmRSS")), "", "", ""])
        for label, path in rounds:
            before = status_mb(proc.pid, "VmRSS")
            reset_peak(proc.pid)
            answers: list[str] = [""] * args.clients
            t0 = time.perf_counter()

            def one(i: int) -> None:
                answers[i] = search_with_photo(url, fn_index, path, f"round{label[:12]}{i}")

            threads = [threading.Thread(target=one, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            peak = status_mb(proc.pid, "VmHWM")
            time.sleep(2)  # let the server finish what follows an answer
            after = status_mb(proc.pid, "VmRSS")
            left = sum(1 for f in uploads.rglob("*") if f.is_file() and f.suffix in (".png", ".jpg"))
            answer = "; ".join(sorted(set(a[:90] for a in answers)))
            rows.append([f"{args.clients} x {label}", answer, round(before), round(peak), round(after),
                         round(after - before), round(wall, 1), left])
    finally:
        from scripts.screenshot_app import stop

        stop(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    C.print_machine(f"App memory while photos are uploaded ({args.app}, {args.clients} at once)")
    print(C.table(["round", "answer", "RSS before MB", "peak (VmHWM) MB", "RSS after MB", "after - before MB",
                   "wall s", "uploads left on disk"], rows))
    print("\ntargets: peak <= 1536 MB with 4 uploads of the 10000x10000 PNG; after within 100 MB of before")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
