"""tests/benchmarks/gpu_recipe.py and gpu_recipe.sh (issue 27, item 2: the GPU recipe's levers, chosen on the
validation split), run end to end on the CPU at tiny sizes on a tiny image folder: one record per variant and
seed, appended as it finishes; a second call continues rather than repeats; runs that would pass the time limit
are skipped and recorded; the verdict against the baseline by the book's rule; the test set never read."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import fake_cifar_tree, run_benchmark_script, script_env

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "benchmarks" / "gpu_recipe.py"
SHELL = ROOT / "tests" / "benchmarks" / "gpu_recipe.sh"
TINY = ["--device", "cpu", "--tiny", "--epochs", "1"]
LEVERS = ["--variant", "baseline={}", "--variant", 'erasing={"erasing": 0.5}', "--variant",
          'repeats={"repeats": 3}']


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("recipe-data")
    _, archive = fake_cifar_tree(base, ("cat", "dog", "frog"), 12)
    return base, archive


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_variant_and_seed_is_recorded_once_and_compared_with_the_baseline(data, tmp_path):
    base, _ = data
    out = tmp_path / "recipe.jsonl"
    done = run_benchmark_script(SCRIPT, "--json", str(out), "--data-dir", str(base), *TINY, *LEVERS, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = records(out)
    assert [(r["variant"], r["seed"]) for r in runs] == [(v, s) for v in ("baseline", "erasing", "repeats")
                                                         for s in (0, 1)]
    for r in runs:
        assert 0 <= r["validation_accuracy"] <= 1 and r["validation_images"] == 9 and r["train_images"] == 27
        assert r["epochs"] == 1 and r["seconds"] > 0 and r["device"] == "cpu" and "clean_train_accuracy" in r
        assert not [k for k in json.dumps(r["history"]).split('"') if k.startswith("test_")], "no test numbers"
    assert runs[2]["config"]["erasing"] == 0.5 and runs[4]["config"]["repeats"] == 3
    assert runs[0]["config"]["erasing"] == 0.0 and runs[0]["config"]["policy"] == "trivialaugment"
    assert done.stdout.count(" the baseline (") == 2 and "validation accuracy after 1 epochs" in done.stdout

    again = run_benchmark_script(SCRIPT, "--json", str(out), "--data-dir", str(base), *TINY, *LEVERS,
                                 "--variant", 'no-mix={"mixup": 0, "cutmix": 0}', "--time-limit", "0.5",
                                 timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already in recipe.jsonl") == 6
    skipped = records(out)[6:]
    assert [(r["variant"], r["seed"]) for r in skipped] == [("no-mix", 0), ("no-mix", 1)]
    assert all(r["skipped"].startswith("time limit") for r in skipped)


def test_a_malformed_variant_is_refused_with_the_form_it_needs(data, tmp_path):
    base, _ = data
    done = run_benchmark_script(SCRIPT, "--json", str(tmp_path / "r.jsonl"), "--data-dir", str(base), *TINY,
                                "--variant", "erasing", timeout=60)
    assert done.returncode == 2 and "NAME=JSON" in done.stderr
    done = run_benchmark_script(SCRIPT, "--json", str(tmp_path / "r.jsonl"), "--data-dir", str(base), *TINY,
                                "--variant", "x={oops", timeout=60)
    assert done.returncode == 2 and "not JSON" in done.stderr


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_gpu_recipe_sh_runs_on_the_cpu_and_continues_a_results_file(data, tmp_path):
    _, archive = data
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text(json.dumps({"variant": "baseline", "seed": 0, "epochs": 1, "validation_accuracy": 0.5,
                                   "device": "cpu", "epoch_s": 0.1}) + "\n")
    out = tmp_path / "session"
    settings = dict(DEVICE="cpu", ARCHIVE=str(archive), LIMIT_S="150", PYTHON=sys.executable,
                    RESULTS=str(earlier), EXTRA="--tiny --epochs 1 --seeds 0 --variant baseline={}")
    done = subprocess.run(["bash", str(SHELL), str(out)], capture_output=True, text=True,
                          env={**script_env(), **settings}, timeout=150, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["recipe-cpu.jsonl", "recipe.log"]
    log = (out / "recipe.log").read_text()
    assert "baseline seed 0: already in recipe-cpu.jsonl" in log and "gpu_recipe.py exited with 0" in log
    assert len(records(out / "recipe-cpu.jsonl")) == 1
