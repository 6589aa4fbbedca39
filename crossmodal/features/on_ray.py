"""Feature extraction on a Ray cluster, into a sharded feature cache (``features.cache``).

The rows (a caption file's images, or texts) are dealt into shards of ``shard_rows`` consecutive
rows. Within a shard, rows are computed in the units of the in-process extraction (one batch each:
consecutive images; texts sorted by length), and a Ray Data pipeline computes the units of every
shard not yet finished:

* images: each unit's photos are decoded with the project's own loader (``extract.ImageFileDataset``:
  the pixel budget, EXIF orientation, every format it reads, members of webdataset ``.tar`` shards)
  and embedded. On a cluster with GPUs, CPU tasks decode and an actor pool embeds, one actor (one
  backbone) per GPU. Without GPUs, CPU tasks decode and embed their units, one backbone per worker
  process, kept for the next task that process runs (Ray reuses a job's worker processes), so
  only a job's first run pays for the workers' start: importing torch and building the backbone;
* texts: the same stage tokenizes and encodes each unit (each distinct text once).

The driver gathers each shard's units and writes the shard as a cache of today's format, manifest
last; once every shard is there, the top ``ids.txt`` and manifest, which list the shards in order.
A restarted driver keeps the finished shards and computes the others; Ray retries the tasks of a
worker that dies and restarts a dead actor. Unreadable images are zero rows,
listed in the manifests as in-process.

Paths must be readable where the tasks run: local paths on one machine, or a filesystem that every
node mounts at the same path.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from crossmodal.atomic_io import atomic_write_json, atomic_write_text, check_free_space
from crossmodal.backbones import ONE_VIEW, TEXT_BATCH_SIZE, ImageBackbone, TextBackbone
from crossmodal.captions import list_hash
from crossmodal.features.cache import (
    FORMAT_VERSION,
    IDS_FILE,
    MANIFEST_FILE,
    SHARD_IDENTITY,
    FeatureCache,
    StaleCacheError,
    cache_bytes,
    full_identity,
    load_cache,
    read_manifest,
    reuse_finished,
    write_cache,
)
from crossmodal.features.extract import (
    IMAGE_BATCH_SIZE_CPU,
    IMAGE_BATCH_SIZE_GPU,
    ImageEmbedder,
    ImageFileDataset,
    image_identity,
)
from crossmodal.features.gpu_decode import PackedBytesBatches, decode_on_device
from crossmodal.ray_cluster import connect

log = logging.getLogger(__name__)

SHARD_ROWS = 65_536  # rows per shard (rounded up to whole units): what a killed driver can lose
PLAN_FILE = "shards.json"  # the settings the shards were made with: shards of other settings are discarded
EMBED_CPUS = 1.0  # CPUs a task embedding its units takes on a cluster without GPUs
DECODE_CPUS = 1.0  # CPUs a decoding task takes
TASK_ROWS = 32  # rows a task computes at least (whole units): a task costs tens of ms to schedule
ACTOR_RESTARTS = 3  # times a dead GPU actor is restarted before the run fails


class RayRunError(RuntimeError):
    """The cluster could not finish the run (an actor that cannot be built, a task failing every retry);
    the message is the cause's last line. Finished shards are kept."""


@dataclass(frozen=True)
class BackboneSpec:
    """How a worker builds the backbone the driver named (``backbones.create_*_backbone`` arguments)."""

    name: str
    weights: str | None = None
    models_dir: str | None = None

    @classmethod
    def of(cls, name: str, weights: Any = None, models_dir: Any = None) -> "BackboneSpec":
        """Local paths made absolute: a worker's working folder is not the driver's."""
        def path(p: Any) -> str | None:
            return None if p is None else str(Path(p).resolve()) if Path(p).exists() else str(p)

        return cls(name, path(weights), path(models_dir))


def shard_dir(out_dir: Path, shard: int) -> Path:
    return out_dir / f"shard-{shard:05d}"


def shard_bounds(rows: int, shard_rows: int, unit_size: int) -> list[tuple[int, int]]:
    """Row ranges of the shards: ``shard_rows`` rounded up to whole units of ``unit_size``."""
    size = max(1, -(-shard_rows // unit_size)) * unit_size
    return [(a, min(a + size, rows)) for a in range(0, rows, size)]


# --------------------------------------------------------------------------------------------------
# the work done on the cluster

def _decode_paths(paths: Sequence[str], transform: Callable, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """One unit's photos -> (B, 3, S, S) uint8 pixels and one error string per photo ("" if read)."""
    dataset = ImageFileDataset(list(paths), transform, image_size)
    pixels, errors = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(pixels), list(errors)


def _decode_unit(item: dict, transform: Callable, image_size: int) -> dict:
    """``_decode_paths`` of a unit, as the row a decoding task hands to the GPU actors."""
    pixels, errors = _decode_paths(item["paths"], transform, image_size)
    return {"shard": item["shard"], "unit": item["unit"], "pixels": pixels.numpy(), "errors": json.dumps(errors)}


def _read_unit(item: dict) -> dict:
    """One unit's files -> their bytes packed in one uint8 array, each file's length, and one error
    string per file: what nvJPEG decodes on the GPU actor (``decode="gpu"``)."""
    data, lengths, errors = PackedBytesBatches(list(item["paths"]), [range(len(item["paths"]))])[0]
    return {"shard": item["shard"], "unit": item["unit"], "bytes": data.numpy(), "lengths": json.dumps(lengths),
            "errors": json.dumps(errors)}


def _assigned_cpus() -> int:
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


class _ImageEmbedder:
    """One image backbone, on the GPU of the actor holding it, or in a CPU worker. Embeds units that
    tasks before it decoded (``pixels``) or read (``bytes``: nvJPEG decodes them here), or (on a
    cluster without GPUs) decodes them itself (``paths``)."""

    def __init__(self, spec: BackboneSpec, views: tuple[str, ...], stack_views: bool, precision: str):
        from crossmodal.backbones import create_image_backbone

        torch.set_num_threads(_assigned_cpus())
        self.backbone = create_image_backbone(spec.name, spec.weights, spec.models_dir)
        self.backbone.set_views(views, stack=stack_views)
        self.embed = ImageEmbedder(self.backbone, "auto", precision)
        self.decode = functools.partial(_decode_paths, transform=self.backbone.pil_transform(),
                                        image_size=self.backbone.image_size)

    def _units(self, batch: dict) -> list[tuple[torch.Tensor, list[str]]]:
        """(uint8 pixels, errors) of each unit of ``batch``."""
        if "bytes" in batch:
            return [decode_on_device(list(torch.split(torch.from_numpy(np.ascontiguousarray(data)), json.loads(sizes))),
                                   json.loads(errors), self.backbone, self.embed.device)
                    for data, sizes, errors in zip(batch["bytes"], batch["lengths"], batch["errors"])]
        if "paths" in batch:
            return [self.decode(paths) for paths in batch["paths"]]
        return [(torch.from_numpy(np.ascontiguousarray(pixels)), json.loads(errors))
                for pixels, errors in zip(batch["pixels"], batch["errors"])]

    def __call__(self, batch: dict) -> dict:
        features, errors = [], []
        for pixels, unit_errors in self._units(batch):
            f = self.embed(pixels, zero_rows=[j for j, e in enumerate(unit_errors) if e])
            features.append(f.cpu().numpy().astype(np.float16))
            errors.append(json.dumps(unit_errors))
        return {"shard": batch["shard"], "unit": batch["unit"], "features": features, "errors": errors}


class _TextEmbedder:
    """One text backbone: each unit's distinct texts encoded once, as in-process."""

    def __init__(self, spec: BackboneSpec, batch_size: int):
        from crossmodal.backbones import create_text_backbone, resolve_device

        torch.set_num_threads(_assigned_cpus())
        self.backbone = create_text_backbone(spec.name, spec.weights, spec.models_dir)
        self.batch_size = batch_size
        self.device = resolve_device("auto")

    def __call__(self, batch: dict) -> dict:
        features = []
        for texts in batch["texts"]:
            unique, inverse = np.unique(np.asarray(json.loads(texts), dtype=object), return_inverse=True)
            encoded = self.backbone.encode(unique.tolist(), self.batch_size, self.device)
            features.append(np.asarray(encoded, dtype=np.float32)[inverse].astype(np.float16))
        return {"shard": batch["shard"], "unit": batch["unit"], "features": features,
                "errors": [json.dumps([""] * len(f)) for f in features]}


@functools.lru_cache(maxsize=2)
def _worker_embedder(embedder: type, args: tuple) -> Callable[[dict], dict]:
    """This worker process's ``embedder(*args)``, built by its first task and kept for the next."""
    return embedder(*args)


def _embed_in_worker(batch: dict, embedder: type, args: tuple) -> dict:
    return _worker_embedder(embedder, args)(batch)


def _embed_stage(ds: Any, embedder: type, args: tuple, embedders: int | None) -> Any:
    """``ds`` through ``embedder(*args)``: in an actor pool of one actor per GPU of the cluster; without
    GPUs in tasks of ``EMBED_CPUS`` CPUs each (at most ``embedders`` at once), one ``embedder`` per
    worker process (module docstring)."""
    import ray
    from ray.data import ActorPoolStrategy

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if not gpus:
        return ds.map_batches(_embed_in_worker, fn_kwargs={"embedder": embedder, "args": args}, batch_size=1,
                              num_cpus=EMBED_CPUS, concurrency=embedders)
    # A dead actor is restarted and its units retried, but not forever: an actor that cannot even be
    # built (a weights file missing on that node) must end the run, not hang it. The whole pool starts
    # at once: a pool grown one actor at a time leaves GPUs idle through most of a short run.
    size = gpus if embedders is None else min(embedders, gpus)
    return ds.map_batches(embedder, fn_constructor_args=args, batch_size=1, compute=ActorPoolStrategy(size=size),
                          max_restarts=ACTOR_RESTARTS, num_gpus=1, num_cpus=1)


def _wait_for_release(cpus: float, timeout: float = 10.0) -> None:
    """Return once the cluster has ``cpus`` free CPUs again (at most ``timeout`` seconds): a finished
    run's actors go when the last reference to them does, a moment later, and the next run in this
    process would otherwise start with part of its pool."""
    import gc
    import time

    import ray

    gc.collect()
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# the driver

def _sharded(out_dir: str | os.PathLike, ids: Sequence[str], identity: dict, shard_units: list[list[np.ndarray]],
             bounds: list[tuple[int, int]], payload: Callable[[np.ndarray], dict], pipeline: Callable[[Any], Any],
             *, unit_size: int, force: bool, extra: dict | None, desc: str, unit: str) -> FeatureCache:
    """Compute the shards not finished yet through ``pipeline`` (a Ray Dataset of one item per unit:
    shard, unit and ``payload(rows)``) and write the sharded cache (module docstring)."""
    import ray

    out_dir = Path(out_dir)
    ids = list(ids)
    full = full_identity(identity, ids)
    finished = reuse_finished(out_dir, full, force)
    if finished is not None:
        return finished
    plan = json.loads(json.dumps({**full, "unit_size": unit_size, "shards": bounds}))  # as read back
    try:
        old_plan = json.loads((out_dir / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old_plan = None
    old_shards = sorted(out_dir.glob("shard-*")) if out_dir.is_dir() else []
    if old_shards and (force or old_plan != plan):
        log.info("discarding %d shard(s) in %s (%s)", len(old_shards), out_dir,
                 "--force" if force else "made with other settings")
        for d in old_shards:
            shutil.rmtree(d)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / PLAN_FILE, plan)
    shard_identity = {k: full[k] for k in SHARD_IDENTITY}
    shards = [{"dir": shard_dir(out_dir, s).name, "rows": b - a, "ids_sha256": list_hash(ids[a:b])}
              for s, (a, b) in enumerate(bounds)]  # what the top manifest lists

    def finished(s: int) -> bool:
        try:
            load_cache(out_dir / shards[s]["dir"],
                       {**shard_identity, "rows": shards[s]["rows"], "ids_sha256": shards[s]["ids_sha256"]})
            return True
        except (StaleCacheError, OSError, ValueError):
            return False

    pending = [s for s in range(len(bounds)) if not finished(s)]
    done_rows = len(ids) - sum(bounds[s][1] - bounds[s][0] for s in pending)
    if done_rows and pending:
        log.info("resuming %s: %d of %d shards (%d of %d rows) already done", out_dir, len(bounds) - len(pending),
                 len(bounds), done_rows, len(ids))
    check_free_space(out_dir, (len(ids) - done_rows) * full["dim"] * 2 + cache_bytes(0, 0, ids), f"the {desc} cache")
    if pending:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # one bar, ours
        ctx.print_on_execution_start = False
        items = [{"shard": s, "unit": j, **payload(rows)} for s in pending for j, rows in enumerate(shard_units[s])]
        free_cpus = ray.available_resources().get("CPU", 0)
        per_task = max(1, TASK_ROWS // unit_size)
        ds = pipeline(ray.data.from_items(items, override_num_blocks=-(-len(items) // per_task)))
        waiting: dict[int, dict[int, tuple[np.ndarray, list[str]]]] = {s: {} for s in pending}
        with tqdm(total=len(ids), initial=done_rows, desc=desc, unit=unit, dynamic_ncols=True) as bar:
            for row in _rows_of(ds):
                s, j = int(row["shard"]), int(row["unit"])
                feats = np.asarray(row["features"], dtype=np.float16)
                waiting[s][j] = (feats, json.loads(row["errors"]))
                bar.update(len(feats))
                if len(waiting[s]) == len(shard_units[s]):
                    _write_shard(out_dir, s, bounds[s], ids, shard_units[s], waiting.pop(s), identity)
        del ds
        _wait_for_release(free_cpus)
        if waiting:
            raise RuntimeError(f"{out_dir}: shards {sorted(waiting)} were not computed")
    failures = [f for s in range(len(bounds)) for f in read_manifest(shard_dir(out_dir, s))["failures"]]
    atomic_write_text(out_dir / IDS_FILE, "".join(f"{i}\n" for i in ids))
    manifest = {**full, "failures": sorted(failures, key=lambda x: x["id"]), "format": FORMAT_VERSION, "shards": shards,
                "files": {"ids": IDS_FILE}, **(extra or {})}
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)  # last: the cache is finished
    (out_dir / PLAN_FILE).unlink(missing_ok=True)
    return load_cache(out_dir, full)


def _rows_of(ds: Any) -> Any:
    """``ds.iter_rows()``, a failed run raised as ``RayRunError`` naming its cause."""
    import ray

    try:
        yield from ds.iter_rows()
    except ray.exceptions.RayError as err:
        raise RayRunError(f"the Ray run failed: {_cause_line(str(err)) or type(err).__name__} (finished shards "
                          "are kept; rerun to go on)") from err


def _cause_line(text: str) -> str:
    """The innermost exception of a Ray error's text: the line before Python's "The above exception was
    the direct cause" (Ray Data wraps a task's error in its own), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for before, line in zip(lines, lines[1:]):
        if line.startswith("The above exception was the direct cause"):
            return before
    return lines[-1] if lines else ""


def _write_shard(out_dir: Path, s: int, bound: tuple[int, int], ids: list[str], units: list[np.ndarray],
                 results: dict[int, tuple[np.ndarray, list[str]]], identity: dict) -> None:
    a, b = bound
    rows = np.zeros((b - a, identity["dim"]), dtype=np.float16)
    failures = []
    for j, unit_rows in enumerate(units):
        feats, errors = results[j]
        if feats.shape != (len(unit_rows), identity["dim"]):
            raise RuntimeError(f"shard {s} unit {j}: got shape {feats.shape}, "
                               f"expected {(len(unit_rows), identity['dim'])}")
        rows[unit_rows - a] = feats
        failures += [{"id": ids[r], "reason": e} for r, e in zip(unit_rows, errors) if e]
    write_cache(shard_dir(out_dir, s), ids[a:b], rows, identity, failures)


def extract_images_on_ray(
    backbone: ImageBackbone,
    spec: BackboneSpec,
    images_dir: str | os.PathLike,
    names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    address: str = "local",
    batch_size: int | None = None,
    shard_rows: int = SHARD_ROWS,
    embedders: int | None = None,
    views: tuple[str, ...] = ONE_VIEW,
    stack_views: bool = True,
    precision: str = "auto",
    decode: str = "cpu",
    force: bool = False,
    extra: dict | None = None,
) -> FeatureCache:
    """``extract.extract_image_features`` on the Ray cluster at ``address`` (``ray_cluster.connect``),
    into a sharded cache that every stage reads like the in-process one. ``backbone`` is the driver's
    copy (its identity and preprocessing); ``spec`` builds it on the workers. ``decode="gpu"``: CPU
    tasks read the files and nvJPEG decodes them on the GPU actors (a cluster with GPUs only)."""
    if decode not in ("cpu", "gpu"):
        raise ValueError(f"decode: cpu or gpu, not {decode!r}")
    connect(address)
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if decode == "gpu" and not gpus:
        raise ValueError("--decode gpu needs GPUs in the Ray cluster (nvJPEG decodes on them); it has none")
    if batch_size is None:
        batch_size = IMAGE_BATCH_SIZE_GPU if gpus else IMAGE_BATCH_SIZE_CPU
    stack_views = stack_views and views != ONE_VIEW
    backbone.set_views(views, stack=stack_views)
    identity = image_identity(backbone, views, stack_views, decode, precision == "bf16" and not gpus)
    images_dir = Path(images_dir)
    bounds = shard_bounds(len(names), shard_rows, batch_size)
    units = [[np.arange(u, min(u + batch_size, b)) for u in range(a, b, batch_size)] for a, b in bounds]
    prepare = _read_unit if decode == "gpu" else functools.partial(
        _decode_unit, transform=backbone.pil_transform(), image_size=backbone.image_size)

    def pipeline(ds: Any) -> Any:
        # With GPUs, the CPUs decode (or only read) in tasks while the GPU actors embed; without, each
        # task decodes and embeds its own units (a decoding task would find no free CPU beside them).
        if gpus:
            ds = ds.map(prepare, num_cpus=DECODE_CPUS)
        return _embed_stage(ds, _ImageEmbedder, (spec, views, stack_views, precision), embedders)

    return _sharded(out_dir, names, identity, units, bounds,
                    lambda rows: {"paths": [str(images_dir / names[r]) for r in rows]}, pipeline,
                    unit_size=batch_size, force=force, extra=extra, desc=f"images ({backbone.name}, Ray)", unit="img")


def extract_texts_on_ray(
    backbone: TextBackbone,
    spec: BackboneSpec,
    texts: Sequence[str],
    ids: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    kind: str = "text",
    address: str = "local",
    batch_size: int = TEXT_BATCH_SIZE,
    shard_rows: int = SHARD_ROWS,
    embedders: int | None = None,
    force: bool = False,
    extra: dict | None = None,
) -> FeatureCache:
    """``extract.extract_text_features`` on the Ray cluster at ``address``, into a sharded cache. A
    shard's texts are computed sorted by length within the shard (in-process: within all texts), so
    batches differ and rows agree with the in-process ones to float16 rounding, not bit for bit."""
    if len(texts) != len(ids):
        raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
    connect(address)
    lengths = backbone.token_lengths(texts)
    bounds = shard_bounds(len(ids), shard_rows, batch_size)
    units = []
    for a, b in bounds:
        order = np.array(sorted(range(a, b), key=lambda i: (lengths[i], texts[i])), dtype=np.int64)
        units.append([order[u:u + batch_size] for u in range(0, len(order), batch_size)])
    identity = {"kind": kind, "backbone": backbone.name, "weights": backbone.weights,
                "preprocess": backbone.preprocess, "dim": backbone.dim}

    def pipeline(ds: Any) -> Any:
        return _embed_stage(ds, _TextEmbedder, (spec, batch_size), embedders)

    return _sharded(out_dir, ids, identity, units, bounds,
                    lambda rows: {"texts": json.dumps([texts[r] for r in rows])}, pipeline,
                    unit_size=batch_size, force=force, extra=extra, desc=f"{kind} ({backbone.name}, Ray)", unit="text")
