"""tests/benchmarks/mae_pretrain.py and gpu_mae.sh (issue 31: chapter 12's MAE pretraining on a GPU), run end to
end on the CPU on a tiny fake image folder: the files and JSON fields each seed writes, the refusal to replace
them, the time limit stopping between epochs, and the GPU session's script with DEVICE=cpu."""

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _helpers import fake_cifar_tree, run_benchmark_script, script_env

from vit_from_scratch.checkpoints import load_trained_model
from vit_from_scratch.mae_training import scaled_lr

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "benchmarks" / "mae_pretrain.py"
SHELL = ROOT / "tests" / "benchmarks" / "gpu_mae.sh"
CLASSES, PER_CLASS, VAL = ("cat", "dog", "frog"), 12, 6  # 36 training images, 6 held out: a pool of 30
TINY = ["--val-size", str(VAL), "--batch-size", "8", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CIFAR-like image-folder tree of random 32-pixel JPEGs, and the same tree as cifar10-jpeg.tar.gz."""
    base = tmp_path_factory.mktemp("mae-data")
    root, archive = fake_cifar_tree(base, CLASSES, PER_CLASS)
    return root, archive


def run_script(*args, timeout=60):
    return run_benchmark_script(SCRIPT, *args, timeout=timeout)


def test_each_seed_writes_loadable_fp16_weights_and_a_json_record(data, tmp_path):
    root, _ = data
    out = tmp_path / "out"
    done = run_script("--data-dir", str(root), *TINY, "--epochs", "2", "--seeds", "0,1", "--time-limit", "120",
                      "--out", str(out), "--remark", "two seeds in one process")
    assert done.returncode == 0, done.stdout + done.stderr
    names = [f"cifar10_mae_32px_seed{k}.{e}" for k in (0, 1) for e in ("json", "pt")]
    assert sorted(p.name for p in out.iterdir()) == names
    encoders = []
    for k in (0, 1):
        name = f"cifar10_mae_32px_seed{k}"
        assert (out / f"{name}.pt").stat().st_size < 5 * 2**20
        info = json.loads((out / f"{name}.json").read_text())
        assert info["seed"] == k and info["image_size"] == 32 and info["dtype"] == "float16"
        assert info["epochs_planned"] == info["epochs_run"] == 2 and not info["stopped_by_time_limit"]
        assert [r["epoch"] for r in info["history"]] == [1, 2] and info["steps"] == info["history"][-1]["step"] == 6
        assert all(math.isfinite(r["loss"]) for r in info["history"])
        assert len(info["epoch_wall_s"]) == 2 and info["seconds"] > 0 and info["images_per_s"] > 0
        # the training part only: 36 - 6 validation images; no labels, no test set
        assert info["data"]["images"] == PER_CLASS * len(CLASSES) - VAL and info["data"]["validation_held_out"] == VAL
        assert "training part" in info["data"]["source"] and not info["data"]["labels_used"]
        # chapter 12's encoder and decoder, the paper's lr rule, warmup at least one epoch, float32 recorded
        chapter12 = {"image_size": 32, "patch_size": 4, "dim": 96, "depth": 6, "num_heads": 3, "mlp_ratio": 2.0,
                     "pos_embed_type": "sincos", "num_classes": len(CLASSES)}
        assert {key: info["model"][key] for key in chapter12} == chapter12
        assert info["decoder"] == {"decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 4, "mask_ratio": 0.75,
                                   "norm_pix": True}
        tc = info["train_config"]
        assert tc["lr"] == pytest.approx(scaled_lr(1.5e-4, 8)) and tc["batch_size"] == 8 and tc["seed"] == k
        assert tc["warmup_epochs"] == 1.0 and tc["betas"] == [0.9, 0.95] and tc["weight_decay"] == 0.05
        assert tc["padding"] == 4 and tc["amp"] == "off" and info["tf32"] is False
        assert info["hardware"]["torch"] == torch.__version__ and info["hardware"]["device"] == "cpu"
        assert "--seeds 0,1" in info["command"] and info["time_limit_s"] == 120
        assert info["remark"] == "two seeds in one process"
        saved = torch.load(out / f"{name}.pt", weights_only=True)
        assert all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
        model, loaded = load_trained_model(name, device="cpu", directory=out)  # SHA-256 checked
        assert loaded["classes"] == list(CLASSES) and not model.head.weight.any()
        encoders.append(model.state_dict())
    blocks = [key for key in encoders[0] if key.startswith("blocks.")]
    assert any(not torch.equal(encoders[0][key], encoders[1][key]) for key in blocks), "two seeds, two pretrainings"

    again = run_script("--data-dir", str(root), *TINY, "--epochs", "2", "--seeds", "1", "--out", str(out))
    assert again.returncode != 0 and "exists" in again.stderr and "overwrite" in again.stderr
    assert "pretraining epoch" not in again.stdout, "refused before any training"


def test_the_time_limit_stops_between_epochs_and_is_recorded(data, tmp_path):
    root, _ = data
    out, limit = tmp_path / "out", 8
    start = time.monotonic()
    done = run_script("--data-dir", str(root), *TINY, "--epochs", "100000", "--seeds", "0,1",
                      "--time-limit", str(limit), "--log-every", "100000", "--out", str(out))
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    info = json.loads((out / "cifar10_mae_32px_seed0.json").read_text())
    assert info["stopped_by_time_limit"] and info["epochs_planned"] == 100000
    assert 1 <= info["epochs_run"] == len(info["history"]) < 100000
    assert [r["epoch"] for r in info["history"]] == list(range(1, info["epochs_run"] + 1))
    assert "stopped after epoch" in done.stdout
    assert not (out / "cifar10_mae_32px_seed1.pt").exists() and "seed 1: not started" in done.stdout
    assert wall < limit + 8, f"the script ran {wall:.1f} s past a {limit} s limit"
    load_trained_model("cifar10_mae_32px_seed0", device="cpu", directory=out)  # a stopped seed still ships


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_gpu_mae_sh_sizes_and_runs_on_the_cpu(data, tmp_path):
    _, archive = data
    out = tmp_path / "session"
    settings = dict(DEVICE="cpu", ARCHIVE=str(archive), SIZE="16", BATCH="8", SEEDS="0,1", TRAIN_BUDGET_S="1",
                    LIMIT_S="120", MAX_EPOCHS="3", EXTRA="--val-size 6 --threads 1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(SHELL), str(out)], capture_output=True, text=True,
                          env={**script_env(), **settings}, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "mae.log").read_text()
    assert "== 1. smoke" in log and "smoke: 2 epochs" in log and "== done" in log
    assert "no nvidia-smi" in log or "compute_cap" in log
    assert "== 2. seeds 0,1, 3 epochs each at 16 px" in log  # a 1-second budget: the cap of 3 epochs
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["mae.log"] + [f"cifar10_mae_16px_seed{k}.{e}" for k in (0, 1) for e in ("json", "pt")])
    for k in (0, 1):
        info = json.loads((out / f"cifar10_mae_16px_seed{k}.json").read_text())
        assert info["epochs_run"] == 3 and info["model"]["image_size"] == 16 and info["train_config"]["padding"] == 2
