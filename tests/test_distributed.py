"""Chapter 11 (issue 19): the trainer on 2 processes (gloo, CPU) computes what one process computes.

Every test starts real processes (``spawn``: torch.multiprocessing, a free port on 127.0.0.1, one
thread each), so each takes seconds, not minutes.

Tolerances: one process at batch B and 2 at B/2 add the same per-image gradients in another order
(each rank's mean, then the all-reduce's mean of the two), so weights agree to float32 rounding
carried through a few AdamW steps: max |difference| < 1e-5 (weights are of order 0.1; a wrong shard,
batch or schedule moves them by 1e-3 or more). Resume is compared bit for bit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _distributed_runs import fit_reading_rank0s_half, loader_batches, sharded_evaluation
from _tiny_runs import TINY_MODEL, TRAIN, tiny_config, tiny_data, write_image_folder
from vit_from_scratch.checkpoints import load_checkpoint
from vit_from_scratch.data import ImageSet
from vit_from_scratch.distributed import fit_worker, free_port, spawn
from vit_from_scratch.loaders import BatchLoader, Augment
from vit_from_scratch.config import ViTConfig
from vit_from_scratch.model import VisionTransformer

TEST_ODD = tiny_data(31, 1)  # 31 test images: they do not divide between 2 processes
NO_AUGMENT = dict(padding=0, flip=False)
ATOL = 1e-5


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_process():
    """The reference: one process at the global batch of 16, augmentation off, 2 epochs = 12 steps."""
    config = tiny_config(**NO_AUGMENT).to_dict()
    return config, fit_worker(config, TRAIN, TEST_ODD)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_at_half_the_batch_give_the_weights_of_one_process(one_process, tmp_path, strategy):
    config, single = one_process
    ranks = spawn(fit_worker, 2, config, TRAIN, TEST_ODD, strategy, out_dir=str(tmp_path / "run"))
    torch.manual_seed(0)
    start = VisionTransformer(ViTConfig.from_dict(TINY_MODEL)).state_dict()  # the weights before training
    assert _max_difference(single["model"], start) > 1e-2  # training moved them far beyond ATOL
    for r in ranks:
        assert _max_difference(r["model"], single["model"]) < ATOL, strategy
    h1, h2 = single["history"], ranks[0]["history"]
    assert [h["step"] for h in h2] == [h["step"] for h in h1] == [6, 12]  # the schedule in global steps
    assert [h["lr"] for h in h2] == pytest.approx([h["lr"] for h in h1], rel=1e-12)
    assert [h["train_loss"] for h in h2] == pytest.approx([h["train_loss"] for h in h1], abs=1e-5)
    assert [h["test_accuracy"] for h in h2] == [h["test_accuracy"] for h in h1]  # all 31 test images, once
    # rank 0 wrote full weights: a plain VisionTransformer loads them and gives the same logits
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    plain = VisionTransformer(ViTConfig.from_dict(TINY_MODEL)).eval()
    plain.load_state_dict(state["model"])
    reference = VisionTransformer(ViTConfig.from_dict(TINY_MODEL)).eval()
    reference.load_state_dict(single["model"])
    images = TEST_ODD.images[:8].float() / 255
    with torch.no_grad():
        assert torch.allclose(plain(images), reference(images), atol=1e-4)
    assert len(state["ranks"]) == 2 and not torch.equal(state["ranks"][0]["rng"]["torch"],
                                                        state["ranks"][1]["rng"]["torch"])


@pytest.mark.parametrize("policy", [None, "trivialaugment"])
def test_with_augmentation_the_ranks_read_disjoint_halves_of_every_batch(policy):
    numbered = ImageSet(TRAIN.images, torch.arange(len(TRAIN)), TRAIN.classes)  # labels name the images
    single = loader_batches(numbered, 16, policy)
    ranks = spawn(loader_batches, 2, numbered, 16, policy)
    assert ranks[0]["steps"] == ranks[1]["steps"] == single["steps"] == 6
    for step, (a, b) in enumerate(zip(ranks[0]["labels"], ranks[1]["labels"])):
        assert len(a) == len(b) == 8 and not set(a.tolist()) & set(b.tolist())
        if step < 6 or policy:  # one process draws the crops from the order's generator: epoch 2 differs
            assert torch.equal(torch.cat([a, b]), single["labels"][step])
    seen = torch.cat([torch.cat(r["labels"][:6]) for r in ranks])
    assert len(set(seen.tolist())) == 96  # one epoch: every image once, on one rank
    if policy:  # per-image seeds: each image is augmented exactly as in one process
        assert torch.equal(torch.cat([ranks[0]["images"][0], ranks[1]["images"][0]]), single["images"][0])
    else:  # each rank draws its own crops and flips: not a copy of the other rank's draws
        assert not torch.equal(ranks[0]["images"][0], single["images"][0][:8])


def test_a_wrong_shard_or_a_wrong_seed_moves_the_weights_far_beyond_the_tolerance(one_process):
    """Negative controls for the test above: the comparison can fail. Every rank reading rank 0's half of
    each batch, or a run seeded 1 instead of 0, lands more than 100 x ATOL from one process."""
    config, single = one_process
    wrong_shard = spawn(fit_reading_rank0s_half, 2, config, TRAIN, TEST_ODD)
    wrong_seed = spawn(fit_worker, 2, {**config, "seed": config["seed"] + 1}, TRAIN, TEST_ODD)
    for name, ranks in (("wrong shard", wrong_shard), ("wrong seed", wrong_seed)):
        assert _max_difference(ranks[0]["model"], single["model"]) > 100 * ATOL, name


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_resume_on_two_ranks_continues_bit_exactly(tmp_path, strategy):
    config = tiny_config(mixup=0.8, cutmix=1.0, model={**TINY_MODEL, "drop_path": 0.1}).to_dict()
    run = dict(config=config, train_set=TRAIN, test_set=TEST_ODD, strategy=strategy)
    straight = spawn(fit_worker, 2, out_dir=str(tmp_path / "a"), **run)
    spawn(fit_worker, 2, out_dir=str(tmp_path / "b"), stop_after_epochs=1, **run)
    resumed = spawn(fit_worker, 2, out_dir=str(tmp_path / "b"), resume=True, **run)
    a, b = straight[0]["model"], resumed[0]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for r in (0, 1):  # every rank's weights (FSDP2: each rank's shards, gathered) continue exactly
        assert all(torch.equal(straight[r]["model"][k], resumed[r]["model"][k]) for k in a), (strategy, r)
    assert [h["train_loss"] for h in straight[0]["history"]] == [h["train_loss"] for h in resumed[0]["history"]]
    history = json.loads((tmp_path / "b" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_evaluation_counts_every_test_image_once():
    ranks = spawn(sharded_evaluation, 2, TEST_ODD, TINY_MODEL)
    r0, r1 = ranks
    assert (r0["shard"], r1["shard"]) == (16, 16) and (r0["local_count"], r1["local_count"]) == (16, 15)
    assert r0["batches"] == r1["batches"]  # the same number of forward passes on every rank
    assert r0["count"] == r1["count"] == 31
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.from_dict(TINY_MODEL))
    from _distributed_runs import MEAN, STD
    from vit_from_scratch.loaders import make_loader
    from vit_from_scratch.training import evaluate

    single = evaluate(model, make_loader(TEST_ODD, 4, train=False, mean=MEAN, std=STD), device="cpu")
    assert r0["correct"] == single["correct"]
    assert r0["loss_sum"] == pytest.approx(single["loss_sum"], rel=1e-6)
    assert len(r0["errors"]) == 1 and "multiple of 2" in r0["errors"][0]


def test_a_batch_that_does_not_divide_is_refused():
    half = (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        BatchLoader(TRAIN, 15, Augment(half, half, train=True), shuffle=True, drop_last=True, rank=0, world_size=2)


def test_the_command_line_runs_under_torchrun(tmp_path):
    data = write_image_folder(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "vit_from_scratch.distributed", "--data-dir", str(data), "--out",
           str(tmp_path / "run"), "--device", "cpu", "--model", json.dumps(TINY_MODEL), "--epochs", "1",
           "--batch-size", "16", "--low-res-epochs", "0", "--no-progress"]
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("epoch   1/1") == 1  # one log line: rank 0's
    assert (tmp_path / "run" / "last.pt").exists()
    # validation after every epoch, the test set once at the end, every rank evaluating its shard of it
    assert "| val loss" in done.stdout and json.loads((tmp_path / "run" / "test.json").read_text())["images"] == 30
    again = subprocess.run(run + ["--resume", "--max-steps", "0"], capture_output=True, text=True, env=env,
                           timeout=120)  # every rank learns from rank 0 that test.json holds the numbers
    assert again.returncode == 0 and "the test set is not read again" in again.stdout, again.stderr[-2000:]


def test_the_one_process_command_refuses_to_run_under_torchrun(monkeypatch, capsys):
    from vit_from_scratch import cli

    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in each of its processes
    assert cli.main(["--out", "unused"]) == 2
    assert "vit_from_scratch.distributed" in capsys.readouterr().err


def _torchrun_env(monkeypatch, rank: int, world_size: int = 2, gpus: int = 0) -> list:
    """Process ``rank`` of ``world_size`` as torchrun starts it, on a machine with ``gpus`` (simulated) GPUs;
    the process group is simulated too. Returns the calls made (set_device, init_process_group)."""
    import torch.distributed as dist

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    calls, started = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(started))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: (calls.append(("init", backend)),
                                                                           started.append(True)))
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: world_size)
    return calls


@pytest.mark.parametrize("requested", ["cuda", None])
def test_device_cuda_under_torchrun_takes_the_gpu_of_the_local_rank(monkeypatch, requested):
    """Issue 28.12: `--device cuda` on rank 1 of 2 is cuda:1 (not cuda:0 for every rank, nor an index-less
    device that set_device refuses), with NCCL."""
    from vit_from_scratch.distributed import Distributed

    calls = _torchrun_env(monkeypatch, rank=1, gpus=2)
    parallel = Distributed.start("ddp", requested)
    assert parallel.device == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]


@pytest.mark.parametrize("device, gpus, expected", [
    ("cuda", 0, "CUDA is not available"),
    ("cuda", 1, "only 1 GPU"),  # rank 1 of 2 on a machine with one GPU
    ("cuda:0", 2, "each process takes the GPU of its LOCAL_RANK"),
    ("mps", 0, "use cuda (one GPU per process"),
    ("gpu", 0, "use cuda (one GPU per process"),
])
def test_device_errors_under_torchrun_are_one_line(monkeypatch, capsys, tmp_path, device, gpus, expected):
    """Issue 28.12: starting the process group runs inside the command line's error handling."""
    from vit_from_scratch import distributed

    calls = _torchrun_env(monkeypatch, rank=1, gpus=gpus)
    args = ["--device", device, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "no data")]
    assert distributed.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and expected in err, err
    assert err.count("\n") == 2 and "--debug" in err  # the error, and where the traceback is
    assert ("init", "nccl") not in calls and ("init", "gloo") not in calls  # refused before any waiting


def _wrap_calls(monkeypatch, parallel, model):
    """``parallel.wrap(model)`` with FSDP2's ``fully_shard`` and ``init_device_mesh`` replaced by recorders."""
    import torch.distributed.device_mesh as device_mesh
    import torch.distributed.fsdp as fsdp

    calls = []
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda kind, shape, **kw: ("mesh", kind, shape, kw))
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kw: calls.append(kw))
    parallel.wrap(model)
    return calls


@pytest.mark.parametrize("gpus, amp, bf16_units, expected", [
    (2, "auto", True, torch.bfloat16),  # an A100/H100: bf16 all-gathers, fp32 reduction
    (2, "bf16", True, torch.bfloat16),
    (2, "auto", False, None),  # a T4/V100: fp16 autocast with the gradient scaler, fp32 all-gathers
    (2, "off", True, None),
    (0, "auto", False, None),  # the CPU (gloo): nothing is cast
    (0, "bf16", False, None),
])
def test_fsdp2_gets_a_bf16_mixed_precision_policy_only_on_gpus_with_bf16(monkeypatch, gpus, amp, bf16_units,
                                                                         expected):
    """Simulated GPUs: FSDP2's MixedPrecisionPolicy reaches every fully_shard call (each block and the root)."""
    from vit_from_scratch.distributed import Distributed

    _torchrun_env(monkeypatch, rank=1, gpus=gpus)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_units)
    parallel = Distributed.start("fsdp", "cuda" if gpus else "cpu")
    parallel.check(tiny_config(amp=amp))
    calls = _wrap_calls(monkeypatch, parallel, VisionTransformer(ViTConfig.from_dict(TINY_MODEL)))
    assert len(calls) == TINY_MODEL["depth"] + 1
    for kw in calls:
        assert kw["mp_policy"].param_dtype == expected
        assert kw["mp_policy"].reduce_dtype == (torch.float32 if expected else None)
        assert kw["mesh"] == ("mesh", "cuda" if gpus else "cpu", (2,), {"mesh_dim_names": None})


def test_fsdp2_over_several_machines_is_hsdp_on_a_2d_mesh(monkeypatch):
    """Simulated 4 machines x 8 GPUs: shard inside a machine, replicate across machines."""
    from vit_from_scratch.distributed import Distributed, fsdp_mesh_shape

    assert fsdp_mesh_shape(8, 8) == (8,) and fsdp_mesh_shape(2, 2) == (2,)
    assert fsdp_mesh_shape(32, 8) == (4, 8) and fsdp_mesh_shape(12, 8) == (12,)  # 12 = 8 + 4: not a grid
    _torchrun_env(monkeypatch, rank=1, world_size=32, gpus=8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    parallel = Distributed.start("fsdp", "cuda")
    calls = _wrap_calls(monkeypatch, parallel, VisionTransformer(ViTConfig.from_dict(TINY_MODEL)))
    assert calls[-1]["mesh"] == ("mesh", "cuda", (4, 8), {"mesh_dim_names": ("replicate", "shard")})
