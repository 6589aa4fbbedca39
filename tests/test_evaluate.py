"""evaluate.py against feature caches made by other backbones than the checkpoint's."""
from __future__ import annotations

import json
import shlex

import numpy as np
import torch
from helpers import save_random_resnet18, save_tiny_bert
from PIL import Image

from crossmodal.backbones import create_image_backbone, create_text_backbone
from crossmodal.features.cache import read_manifest, write_cache

from model import RetrievalModel


def test_feature_mismatch_names_a_command_that_works(tmp_path, caplog):
    """The caches in the work folder were made by efficientnet_lite0; the checkpoint was trained on
    resnet18 + BERT features. The refusal's command evaluates it (without --force) and leaves the
    other model's caches as they are."""
    import evaluate

    models = tmp_path / "models"
    models.mkdir()
    save_random_resnet18(models / "resnet18.pth")
    save_tiny_bert(models / "bert-base-uncased")
    images = tmp_path / "images"
    images.mkdir()
    g = np.random.default_rng(0)
    names = [f"{i}.jpg" for i in range(6)]
    for n in names:
        Image.fromarray(g.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / n)
    captions = tmp_path / "captions.token"
    captions.write_text("".join(f"{n}#{k}\ta dog runs on the grass\n" for n in names for k in range(2)))
    image_bb = create_image_backbone("resnet18", models_dir=models)
    text_bb = create_text_backbone("bert-base-uncased", models_dir=models)
    work = tmp_path / "work"
    write_cache(work / "image_embeddings", names, g.normal(size=(6, 1280)).astype(np.float16),
                {"backbone": "efficientnet_lite0", "weights": "lite0:aaaa", "dim": 1280,
                 "preprocess": image_bb.preprocess})
    model = RetrievalModel(image_dim=image_bb.dim, text_dim=text_bb.dim, embed_dim=8, hidden_dim=16)
    backbones = {kind: {"backbone": bb.name, "weights": bb.weights, "dim": bb.dim, "preprocess": bb.preprocess}
                 for kind, bb in (("image", image_bb), ("text", text_bb))}
    checkpoint = tmp_path / "other.pt"
    torch.save({"model_config": model.config_dict(), "model": model.state_dict(), "backbones": backbones,
                "epoch": 1}, checkpoint)

    assert evaluate.main(["--checkpoint", str(checkpoint), "--work-dir", str(work), "--images", str(images),
                          "--captions", str(captions), "--models-dir", str(models), "--word-queries", "0",
                          "--split", "test"]) == 2
    error = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "efficientnet_lite0" in error and "resnet18" in error
    command = shlex.split(error.split("rebuild it with: ", 1)[1].split("  (", 1)[0])
    assert command[:2] == ["python", "evaluate.py"] and "--force" not in command
    assert evaluate.main(command[2:]) == 0
    other_work = tmp_path / "work-resnet18-bert-base-uncased"
    report = json.loads((other_work / "results" / "eval_test.json").read_text())
    assert report["checkpoint"] == str(checkpoint) and report["backbones"] == backbones
    assert read_manifest(work / "image_embeddings")["backbone"] == "efficientnet_lite0"  # left as it was
