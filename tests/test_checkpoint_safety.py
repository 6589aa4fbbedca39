"""A checkpoint is loaded without running code, through every path that loads one.

A pickle can run any callable when it is loaded. Checkpoints hold only tensors and plain data
and are loaded with ``weights_only=True``, so a planted file (a photo index records its checkpoint's
path, which can be any path) is refused with a message naming it, and its payload never runs.
"""
from __future__ import annotations

import pathlib

import pytest
import torch
from test_train import BACKBONES, make_split, small_cfg

from model import CheckpointError, load_checkpoint, read_checkpoint


class Payload:
    """Unpickling this touches ``marker``: proof that loading ran code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def planted(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model_config": {}, "model": {}, "epoch": 1, "rng": Payload(marker)}, path)
    return path, marker


def test_load_checkpoint_refuses_code(planted):
    path, marker = planted
    for load in (load_checkpoint, read_checkpoint):
        with pytest.raises(CheckpointError, match="evil.pt"):
            load(path)
    assert not marker.exists()


def test_trained_checkpoints_load_with_weights_only(tmp_path):
    """What training writes (model, optimiser, scheduler, random states, metrics) loads safely,
    and a resumed run restores the random states from it."""
    from train import LAST, train

    train(small_cfg(epochs=1), make_split(40, 0), make_split(20, 1), tmp_path, BACKBONES)
    state = torch.load(tmp_path / LAST, map_location="cpu", weights_only=True)
    assert set(state["rng"]) == {"torch", "numpy", "python"}
    model, best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 and isinstance(best["metrics"]["rsum"], float)


def test_resume_refuses_a_planted_last_checkpoint(tmp_path, planted):
    from train import LAST, train

    path, marker = planted
    (tmp_path / LAST).write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match=LAST):
        train(small_cfg(epochs=1), make_split(40, 0), make_split(20, 1), tmp_path, BACKBONES, resume=True)
    assert not marker.exists()


def test_scripts_refuse_a_planted_checkpoint(tmp_path, planted, capsys, caplog):
    """search.py (with --checkpoint, and with a photo index that records the file as its checkpoint),
    evaluate.py and index_folder.py exit with an error naming the file."""
    import evaluate
    import index_folder
    import search
    from crossmodal.photos import PhotoStore

    path, marker = planted
    photos = tmp_path / "photos"
    photos.mkdir()
    collection = tmp_path / "collection"  # a photo index that records the planted file as its checkpoint
    identity = {"backbone": "resnet18", "weights": "w", "preprocess": {}, "dim": 4}
    with PhotoStore(collection) as store, store.writing(identity, checkpoint=str(path)):
        store.add_roots([str(photos)])
    runs = [
        lambda: search.main(["a dog", "--checkpoint", str(path), "--work-dir", str(tmp_path)]),
        lambda: search.main(["a dog", "--collection", str(collection)]),
        lambda: evaluate.main(["--checkpoint", str(path), "--work-dir", str(tmp_path)]),
        lambda: index_folder.main([str(photos), "--checkpoint", str(path), "--out", str(tmp_path / "idx")]),
    ]
    for run in runs:
        caplog.clear()
        assert run() == 2
        printed = capsys.readouterr()
        assert "evil.pt is not a checkpoint" in printed.err + printed.out + caplog.text
    assert not marker.exists()
