#!/usr/bin/env python
"""Start app.py, type one query in headless Chromium, save a screenshot of the answer.

    python -m scripts.screenshot_app --out docs/app_flickr8k.png --query "a dog runs through the snow" \\
        -- --work-dir work/flickr8k_lite2 --images ../shared/data/flickr8k/flickr8k-images
    python -m scripts.screenshot_app --out docs/page_photos.png --query "a dog runs through the snow" \\
        --sort "Newest first" -- --photos ~/Pictures       # the photo page, once indexing is done

Everything after ``--`` goes to app.py. Needs Debian's chromium (/usr/bin/chromium) and the
playwright package (requirements-dev.txt), as the browser test does.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 300.0, poll: float = 0.5) -> None:
    """Return once the app started as ``proc`` answers ``url``; RuntimeError if it exits or times out.
    (The browser test waits for its app the same way.)"""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"app.py did not answer on {url} within {timeout:.0f} s")
        time.sleep(poll)


def stop(proc: subprocess.Popen) -> None:
    """Stop the app: terminate, then kill if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    app_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--query", default="a dog runs through the snow")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "app_screenshot.png")
    p.add_argument("--port", type=int, default=7871)
    p.add_argument("--after", default="", help="photo page: the 'taken on or after' filter")
    p.add_argument("--sort", default="", help="photo page: the order (e.g. 'Newest first')")
    args = p.parse_args(own)
    from playwright.sync_api import expect, sync_playwright

    url = f"http://127.0.0.1:{args.port}/"
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(args.port), *app_args],
                            cwd=ROOT, env=env)
    try:
        try:
            wait_until_up(url, proc)
        except RuntimeError as err:
            sys.exit(str(err))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url, wait_until="domcontentloaded")
                expect(page.locator("#index-info")).to_contain_text("photos", timeout=60_000)
                if "Indexing" in page.locator("#indexing").inner_text():  # own photos: wait for the indexing
                    expect(page.locator("#indexing")).to_contain_text("Index up to date", timeout=600_000)
                if args.after:
                    page.locator("#after textarea, #after input").first.fill(args.after)
                if args.sort:
                    page.locator("#sort").get_by_text(args.sort).click()
                box = page.locator("#query textarea")
                box.fill(args.query)
                box.press("Enter")
                results = page.locator("#results img")
                expect(results.nth(4)).to_be_visible(timeout=60_000)  # (at least 5: the page shows 10)
                for i in range(5):
                    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                           arg=results.nth(i).element_handle(), timeout=30_000)
                expect(page.locator("#status")).to_contain_text("Understood as", timeout=30_000)
                page.screenshot(path=str(args.out), full_page=True)
            finally:
                browser.close()
    finally:
        stop(proc)
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
