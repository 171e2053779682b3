"""tests/benchmarks/gpu_speed.py and gpu_speed.sh (issue 27, item 1: the GPU step's profile and speed levers), run
end to end on the CPU at tiny sizes on a tiny image folder: the JSON's fields (variants with images/s per round,
ratios, verdicts, MFU; the profiler's tables and phase split), failures and skips recorded rather than fatal, the
time limit, and the device command with DEVICE=cpu. The numbers themselves are CPU timings: only their shape
is checked."""

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import fake_cifar_tree, run_benchmark_script, script_env

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "benchmarks" / "gpu_speed.py"
SHELL = ROOT / "tests" / "benchmarks" / "gpu_speed.sh"
CLASSES, PER_CLASS = ("cat", "dog", "frog"), 12  # 36 training images
TINY = ["--device", "cpu", "--tiny", "--threads", "1"]
PHASES = ("loader", "mixup", "forward", "finite check", "backward", "optimizer", "sums")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CIFAR-like image-folder tree of random 32-pixel JPEGs, and the same tree as cifar10-jpeg.tar.gz."""
    base = tmp_path_factory.mktemp("speed-data")
    root, archive = fake_cifar_tree(base, CLASSES, PER_CLASS)
    return base, archive


def run_script(*args, timeout=90):
    return run_benchmark_script(SCRIPT, *args, timeout=timeout)


def test_variants_profiles_and_mfu_land_in_the_json(data, tmp_path):
    base, _ = data
    out = tmp_path / "speed.json"
    names = ("baseline,loader-only,model-only,sync-every-step,blocking-copies,foreach-optimizer,muon-optimizer,"
             "batch-20,batch-40,compile")
    # batch 10: batch-40 cannot fill one batch from 36 images and must fail, recorded; compile through aot_eager
    # (dynamo and AOTAutograd, no code generation) checks the compiled path in seconds
    done = run_script("--json", str(out), "--data-dir", str(base), *TINY, "--batch", "10", "--variants", names,
                      "--compile-backend", "aot_eager", "--profile-steps", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out.read_text())
    assert r["hardware"]["device"] == "cpu" and r["settings"]["tiny"] and r["settings"]["batch"] == 10
    assert r["settings"]["augmentation"] == {"policy": "trivialaugment", "mixup": 0.8, "cutmix": 1.0, "padding": 4,
                                             "flip": True}
    assert r["matmul"]["n"] == 128 and r["matmul"]["flop_per_s"] > 0 and len(r["matmul"]["samples_flop_per_s"]) == 7
    f = r["flops"]
    assert f["train_step_per_image"] == pytest.approx(3 * f["forward_per_image"]) and f["forward_per_image"] > 0
    assert f["counted_forward_backward_per_image"] == pytest.approx(f["train_step_per_image"], rel=0.1)
    assert r["data"]["images"] == PER_CLASS * len(CLASSES) and r["rounds"]["done"] == 2
    assert list(r["variants"]) == names.split(",")
    failed = r["variants"]["batch-40"]
    assert failed["status"] == "failed" and "do not fill one batch of 40" in failed["error"]
    assert r["failed"] == [{"variant": "batch-40", "error": failed["error"]}] and r["skipped"] == []
    for name, v in r["variants"].items():
        if name == "batch-40":
            continue
        assert v["status"] == "ok", (name, v)
        assert len(v["images_per_s"]) == len(v["ratio_to_baseline"]) == 2 and min(v["images_per_s"]) > 0
        assert v["range_images_per_s"][0] <= v["median_images_per_s"] <= v["range_images_per_s"][1]
        assert v["ratio_interval"]["n"] == 2 and v["verdict"].endswith("the baseline")
        assert v["build_and_warmup_s"] >= 0 and "optimizer_impl" in v
        if name == "loader-only":
            assert v["mfu"] is None and v["time_share_of_baseline_step"] > 0
        else:
            assert v["mfu"] == pytest.approx(v["median_images_per_s"] * f["train_step_per_image"]
                                             / r["matmul"]["flop_per_s"])
            assert v["tflop_per_s"] == pytest.approx(v["median_images_per_s"] * f["train_step_per_image"] / 1e12)
    assert r["variants"]["baseline"]["ratio_to_baseline"] == [1.0, 1.0]
    assert r["variants"]["batch-20"]["batch"] == 20 and r["variants"]["batch-20"]["lr"] == pytest.approx(2e-3)
    assert r["variants"]["compile"]["compile_mode"] == "default"
    assert "Muon" in r["variants"]["muon-optimizer"]["optimizer_impl"]
    assert "foreach=True" in r["variants"]["foreach-optimizer"]["optimizer_impl"]
    assert r["variants"]["baseline"]["finite_check"] == "deferred" and not r["variants"]["baseline"]["blocking_copies"]
    assert r["variants"]["sync-every-step"]["finite_check"] == "every-step"
    assert r["variants"]["blocking-copies"]["blocking_copies"]
    assert all(v["host_syncs_per_step"] is None for n, v in r["variants"].items() if n != "batch-40")  # CUDA only
    assert set(r["profiles"]) == {"baseline", "compile"}  # the baseline and the first compiled variant
    for p in r["profiles"].values():
        assert p["steps"] == 2 and "split_error" not in p and "top_error" not in p
        assert 1 <= len(p["top"]["ops"]) <= 15 and p["top"]["sorted_by"] == "self_cpu_us"
        assert all({"name", "calls", "self_cpu_us", "self_device_us"} <= set(row) for row in p["top"]["ops"])
        assert "Self CPU" in p["table"]
        split = p["split"]
        assert set(split["per_step_us"]) == set(PHASES) and split["wall_us_per_step"] > 0
        assert all(split["per_step_us"][n]["host_us"] > 0 for n in PHASES)
        assert math.isclose(sum(split["shares"].values()), 1.0, rel_tol=1e-6)
        assert split["device_busy_fraction"] is None  # no device on a CPU
    assert "| verdict / status" in done.stdout and "profile baseline:" in done.stdout


def test_compile_failures_skips_and_the_time_limit_are_recorded(data, tmp_path):
    base, _ = data
    out, limit = tmp_path / "speed.json", 7
    start = time.monotonic()
    # compile-bogus: an unknown torch.compile mode fails, recorded; a reserve larger than the limit skips the rest
    done = run_script("--json", str(out), "--data-dir", str(base), *TINY, "--variants",
                      "baseline,compile-bogus,model-only", "--rounds", "100000", "--time-limit", str(limit),
                      "--rounds-reserve", "1")
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(out.read_text())
    assert r["variants"]["compile-bogus"]["status"] == "failed" and "bogus" in r["variants"]["compile-bogus"]["error"]
    assert r["variants"]["model-only"]["status"] == "ok"
    assert r["rounds"]["stopped_by_time_limit"] and 1 <= r["rounds"]["done"] < 100000
    assert len(r["variants"]["baseline"]["images_per_s"]) == r["rounds"]["done"]
    assert wall < limit + 5, f"the script ran {wall:.1f} s past a {limit} s limit"

    skipped = run_script("--json", str(out), "--data-dir", str(base), *TINY, "--variants",
                         "baseline,model-only,compile", "--skip-compile", "--rounds-reserve", "1000")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    r = json.loads(out.read_text())
    reasons = {s["variant"]: s["reason"] for s in r["skipped"]}
    assert reasons["compile"] == "--skip-compile" and reasons["model-only"].startswith("time limit")
    assert r["variants"]["baseline"]["status"] == "ok" and list(r["profiles"]) == ["baseline"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_gpu_speed_sh_runs_on_the_cpu(data, tmp_path):
    _, archive = data
    out = tmp_path / "session"
    settings = dict(DEVICE="cpu", ARCHIVE=str(archive), LIMIT_S="120", PYTHON=sys.executable,
                    EXTRA="--tiny --threads 1 --skip-compile --variants baseline,loader-only,compile")
    done = subprocess.run(["bash", str(SHELL), str(out)], capture_output=True, text=True,
                          env={**script_env(), **settings}, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["speed-cpu.json", "speed.log"]
    log = (out / "speed.log").read_text()
    assert "no nvidia-smi" in log or "compute_cap" in log
    assert "== gpu_speed.py" in log and "gpu_speed.py exited with 0" in log and "== done" in log
    r = json.loads((out / "speed-cpu.json").read_text())
    assert r["variants"]["loader-only"]["status"] == "ok" and r["variants"]["compile"]["status"] == "skipped"
    assert r["settings"]["time_limit_s"] < 120
