"""Extraction on a local Ray cluster (2 CPUs) into sharded caches (crossmodal.features.on_ray), read
as one by every stage; a killed driver resumes, a killed worker is replaced.

The set is img2dataset output as a webdataset ``.tar`` shard: generated JPEG photos with captions and
one damaged photo. Rows are compared with the in-process extraction of the same photos: the units
(batches) are the same, but a worker runs its backbone with its own thread count, so rows agree to
float16 rounding (one unit in the last place), not bit for bit.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data")

from helpers import random_photo  # noqa: E402

import batch_image_feature_extract  # noqa: E402
import batch_text_feature_extract  # noqa: E402
from crossmodal.backbones import create_image_backbone  # noqa: E402
from crossmodal.features import on_ray  # noqa: E402
from crossmodal.features.cache import MANIFEST_FILE, ShardedRows, load_cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = 160
SHARD = ["--batch-size", "4", "--shard-rows", "8"]  # 21 shards of up to 2 units


def close(a, b) -> bool:
    """Rows equal to float16 rounding: within 2 units in the last place of values below 1."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and float(np.abs(a - b).max()) <= 2e-3


@pytest.fixture(scope="module")
def web_set(tmp_path_factory) -> Path:
    """One webdataset shard: PHOTOS captioned JPEGs and a damaged one, as img2dataset writes them."""
    root = tmp_path_factory.mktemp("web")
    rng = np.random.default_rng(0)
    words = "a dog cat man woman child runs on the grass beach snow red blue ball".split()
    with tarfile.open(root / "00000.tar", "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(PHOTOS + 1):
            key = f"{i:09d}"
            buf = io.BytesIO()
            random_photo(rng, 160, 120).save(buf, format="JPEG", quality=90)
            add(f"{key}.jpg", buf.getvalue() if i != 5 else buf.getvalue()[:200])  # photo 5 is truncated
            add(f"{key}.txt", " ".join(rng.choice(words, 6)).encode())
    return root


def stage_args(web: Path, out: Path) -> list[str]:
    return ["--images", str(web), "--captions", str(web), "--work-dir", str(out.parent), "--image-backbone",
            "efficientnet_lite0", "--out", str(out)]


@pytest.fixture(scope="module")
def in_process(web_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("in_process") / "image_embeddings"
    assert batch_image_feature_extract.main(stage_args(web_set, out) + ["--batch-size", "4"]) == 0
    return out


def test_sharded_rows_index_like_one_matrix():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3)).astype(np.float16) for n in (4, 1, 6)]
    whole, rows = np.concatenate(parts), ShardedRows(parts)
    assert rows.shape == whole.shape and len(rows) == 11 and np.array_equal(np.asarray(rows), whole)
    for key in (slice(2, 9), slice(None, None, 3), slice(5, 5), 4, -1, np.array([10, 0, 4, 4, 5]),
                whole[:, 0] > 0, [3, 2]):
        assert np.array_equal(rows[key], whole[key]), key
    assert np.array_equal(rows[np.array([7, 1]), :2], whole[np.array([7, 1]), :2])
    with pytest.raises(IndexError):
        rows[np.array([11])]


def test_a_killed_driver_resumes_keeping_finished_shards(web_set, in_process, tmp_path):
    out = tmp_path / "image_embeddings"
    cmd = [sys.executable, "batch_image_feature_extract.py", *stage_args(web_set, out), "--ray", "local", *SHARD]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = on_ray.shard_dir(out, 0) / MANIFEST_FILE
    deadline = time.monotonic() + 240
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file(), proc.stderr.read()[-3000:]
    assert not (out / MANIFEST_FILE).is_file(), "the run ended before it was killed: nothing was tested"
    kept = sorted(p for p in out.glob("shard-*") if (p / MANIFEST_FILE).is_file())
    stamps = {p.name: (p / "features.npy").stat().st_mtime_ns for p in kept}

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming" in rerun.stderr and f"{len(kept)} of 21 shards" in rerun.stderr
    assert {p: (out / p / "features.npy").stat().st_mtime_ns for p in stamps} == stamps  # not recomputed
    ray_cache, ref = load_cache(out), load_cache(in_process)
    assert isinstance(ray_cache.features, ShardedRows) and len(ray_cache.manifest["shards"]) == 21
    assert ray_cache.ids == ref.ids and close(ray_cache.features, ref.features)
    assert ray_cache.manifest["failures"] == ref.manifest["failures"] and len(ref.manifest["failures"]) == 1


@pytest.fixture(scope="module")
def cluster():
    import ray

    from crossmodal.ray_cluster import connect

    connect("local", num_cpus=2)
    yield ray
    ray.shutdown()


def test_ray_stages_equal_the_in_process_ones_and_every_stage_reads_them(cluster, web_set, in_process, tmp_path):
    out = tmp_path / "image_embeddings"
    assert batch_image_feature_extract.main(stage_args(web_set, out) + ["--ray", "local", *SHARD]) == 0
    ray_cache, ref = load_cache(out), load_cache(in_process)
    assert ray_cache.ids == ref.ids and close(ray_cache.features, ref.features)
    assert ray_cache.manifest["failures"] == ref.manifest["failures"]
    assert ray_cache.manifest["failures"][0]["id"] == "00000.tar/000000005.jpg"
    assert np.asarray(ray_cache.features[ray_cache.valid_mask()], np.float32).any(axis=1).all()  # read: not zero
    # a rerun reuses the finished cache; the in-process stage reuses it too (same identity)
    assert batch_image_feature_extract.main(stage_args(web_set, out) + ["--ray", "local", *SHARD]) == 0
    assert batch_image_feature_extract.main(stage_args(web_set, out) + ["--batch-size", "4"]) == 0
    assert load_cache(out).manifest == ray_cache.manifest

    # the photos of a dataset collection come from the shards as from one matrix
    from crossmodal.collection import DatasetCollection

    a, b = DatasetCollection.open(out, web_set), DatasetCollection.open(in_process, web_set)
    assert a.names == b.names and close(a.pooled(3, 150), b.pooled(3, 150))

    text = tmp_path / "text_embeddings"
    common = ["--captions", str(web_set), "--work-dir", str(tmp_path), "--text-backbone", "minilm",
              "--batch-size", "16"]
    assert batch_text_feature_extract.main(common + ["--ray", "local", "--shard-rows", "64", "--out", str(text)]) == 0
    assert batch_text_feature_extract.main(common + ["--out", str(tmp_path / "text_ref")]) == 0
    t, t_ref = load_cache(text), load_cache(tmp_path / "text_ref")
    assert len(t.manifest["shards"]) == 3 and t.ids == t_ref.ids and close(t.features, t_ref.features)
    assert t.manifest["image_ids_sha256"] == t_ref.manifest["image_ids_sha256"]


def test_files_read_for_nvjpeg_embed_like_the_cpu_decoded_ones(cluster, web_set, in_process, tmp_path, caplog,
                                                               monkeypatch):
    """``decode="gpu"``: tasks read a unit's files and the GPU actor decodes them (``decode_on_device``,
    nvJPEG on a GPU). Run here in this process, with torchvision's CPU JPEG decoder in nvJPEG's place."""
    from crossmodal.backbones import ONE_VIEW

    monkeypatch.setattr(on_ray, "_assigned_cpus", lambda: 1)  # (asks Ray, which answers only in a worker)
    ref = load_cache(in_process)
    names = ref.ids[:8]  # photo 5 is the damaged one
    read = on_ray._read_unit({"shard": 0, "unit": 0, "paths": [str(web_set / n) for n in names]})
    embedder = on_ray._ImageEmbedder(on_ray.BackboneSpec.of("efficientnet_lite0"), ONE_VIEW, False, "auto")
    out = embedder({k: [read[k]] for k in ("shard", "unit", "bytes", "lengths", "errors")})
    rows, errors = np.asarray(out["features"][0], np.float32), json.loads(out["errors"][0])
    assert [bool(e) for e in errors] == [n.endswith("000000005.jpg") for n in names]
    want = np.asarray(ref.features[:8], np.float32)
    assert not rows[5].any() and not want[5].any()
    good = [i for i in range(8) if i != 5]
    cos = (rows[good] * want[good]).sum(1) / np.linalg.norm(rows[good], axis=1) / np.linalg.norm(want[good], axis=1)
    assert cos.min() > 0.99, cos

    # without GPUs in the cluster, --decode gpu is refused with the reason
    args = stage_args(web_set, tmp_path / "image_embeddings") + ["--ray", "local", "--decode", "gpu"]
    assert batch_image_feature_extract.main(args) == 2
    assert "--decode gpu needs GPUs in the Ray cluster" in caplog.text


def test_a_backbone_the_workers_cannot_build_ends_the_run_naming_why(cluster, web_set, tmp_path):
    names = ["00000.tar/000000001.jpg", "00000.tar/000000002.jpg"]
    spec = on_ray.BackboneSpec("resnet18", str(tmp_path / "missing.pt"))
    with pytest.raises(on_ray.RayRunError, match="resnet18 weights file not found: .*missing.pt"):
        on_ray.extract_images_on_ray(create_image_backbone("efficientnet_lite0"), spec, web_set, names,
                                     tmp_path / "out")


def embedding_workers() -> list[int]:
    """PIDs of the workers embedding now: Ray names a worker's process after the task it runs."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::MapBatches(_embed_in_worker)"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_worker_killed_during_a_run_completes_with_the_same_rows(cluster, web_set, in_process, tmp_path):
    from crossmodal.captions import read_captions

    names = read_captions(web_set).images
    backbone = create_image_backbone("efficientnet_lite0")
    out = tmp_path / "image_embeddings"
    result: dict = {}

    def run() -> None:
        try:
            result["cache"] = on_ray.extract_images_on_ray(backbone, on_ray.BackboneSpec.of("efficientnet_lite0"),
                                                           web_set, names, out, batch_size=4, shard_rows=8)
        except Exception as err:  # noqa: BLE001 - reported by the test below
            result["error"] = err

    before = set(embedding_workers())  # workers of an earlier run, if any are still busy
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 240
    while not (on_ray.shard_dir(out, 0) / MANIFEST_FILE).is_file() and thread.is_alive() \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = None
    while killed is None and not (out / MANIFEST_FILE).is_file() and thread.is_alive():
        for pid in set(embedding_workers()) - before:  # busy embedding this run's units
            try:
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
            except ProcessLookupError:
                continue
    assert killed is not None, "the run ended before a worker was killed"
    thread.join(300)
    assert "error" not in result, result.get("error")
    ref = load_cache(in_process)
    assert result["cache"].ids == ref.ids and close(result["cache"].features, ref.features)
    assert killed not in embedding_workers()
