"""Training across processes (``torchrun``, gloo on CPUs): InfoNCE over every process's embeddings
gives the first step's loss and gradients of one process on the whole batch; run_train.py under
torchrun trains, rank 0 writes the files, and a single process resumes the run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from test_train import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]

STEP = """
import sys, numpy as np, torch
from loss import InfoNCELoss
from model import RetrievalModel
from train import TrainConfig, distributed, make_optimizer, training_step

procs = distributed()
data = np.load(sys.argv[1])
mine, sizes = procs.share(np.arange(len(data["img"])))
torch.manual_seed(0)
model = RetrievalModel(24, 16, embed_dim=8, hidden_dim=32, dropout=0.0)
loss_fn = InfoNCELoss()
cfg = TrainConfig(lr=1e-3, input_dropout=0.0)
optim = make_optimizer(model, loss_fn, cfg)
loss = training_step(model, loss_fn, optim, torch.from_numpy(data["img"][mine]), torch.from_numpy(data["txt"][mine]),
                     torch.from_numpy(data["image_idx"]), cfg, False, procs, sizes)
grads = {n: p.grad.numpy() for n, p in [*model.named_parameters(), *loss_fn.named_parameters()]}
np.savez(sys.argv[2] + f".{procs.rank}.npz", loss=loss.numpy(), **grads)
"""


def torchrun(n: int, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def test_two_processes_take_the_first_step_of_one(tmp_path):
    g = np.random.default_rng(0)
    image_idx = np.array([0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9])  # odd: unequal shares; a repeated image
    data = tmp_path / "batch.npz"
    np.savez(data, img=g.normal(size=(len(image_idx), 24)).astype(np.float32),
             txt=g.normal(size=(len(image_idx), 16)).astype(np.float32), image_idx=image_idx)
    script = tmp_path / "step.py"
    script.write_text(STEP)
    one = subprocess.run([sys.executable, str(script), str(data), str(tmp_path / "one")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                          "PYTHONPATH": str(ROOT)})
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, str(script), str(data), str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    single = np.load(tmp_path / "one.0.npz")
    for rank in (0, 1):
        shared = np.load(tmp_path / f"two.{rank}.npz")
        assert np.allclose(shared["loss"], single["loss"], rtol=1e-6)
        for name in single.files:
            assert np.allclose(shared[name], single[name], rtol=1e-5, atol=1e-7), name


def test_run_train_under_torchrun_and_resumed_by_one_process(tmp_path):
    import run_train

    args = write_tiny_dataset(tmp_path) + ["--dropout", "0", "--input-dropout", "0", "--epochs", "2"]
    assert run_train.main(args + ["--out", str(tmp_path / "one")]) == 0
    two = torchrun(2, "run_train.py", *args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("best epoch") == 1  # rank 0 reports
    one_log = json.loads((tmp_path / "one" / "log.json").read_text())
    two_log = json.loads((tmp_path / "two" / "log.json").read_text())
    # the same global batches and steps: the same losses up to the order floats were summed in
    assert np.allclose([h["train_loss"] for h in two_log], [h["train_loss"] for h in one_log], rtol=1e-4)
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    # another process count continues the run
    assert run_train.main(args[:-2] + ["--epochs", "3", "--out", str(tmp_path / "two"), "--resume"]) == 0
    assert [h["epoch"] for h in json.loads((tmp_path / "two" / "log.json").read_text())] == [1, 2, 3]
