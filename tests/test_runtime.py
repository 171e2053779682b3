"""runtime.py: device choice, seeding, the quick flag, the environment report, timing, the network check."""

import random
import socket
import time

import numpy as np
import pytest
import torch

from vit_from_scratch import (Timing, benchmark, budget, claim, environment_report, is_quick, network_available,
                              pick_device, run_side_by_side, seed_offset,
                              seed_everything, synchronize)


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("VIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device().type == "cpu"


def test_pick_device_honours_request_and_refuses_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("VIT_DEVICE", "cpu")
    assert pick_device().type == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device("cuda")


def test_seed_everything_makes_all_generators_repeat():
    seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(123)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.parametrize("value,quick", [("1", True), ("true", True), ("0", False), ("", False), ("off", False)])
def test_quick_flag_and_budget(monkeypatch, value, quick):
    monkeypatch.setenv("VIT_QUICK", value)
    assert is_quick() is quick
    assert budget(full=100, quick=2) == (2 if quick else 100)


def test_quick_flag_rejects_nonsense(monkeypatch):
    monkeypatch.setenv("VIT_QUICK", "maybe")
    with pytest.raises(ValueError, match="VIT_QUICK='maybe'"):
        is_quick()


def test_environment_report_names_device_torch_and_mode(monkeypatch):
    monkeypatch.setenv("VIT_QUICK", "1")
    line = environment_report(torch.device("cpu"))
    assert "CPU" in line and torch.__version__ in line and "quick" in line
    assert "\n" not in line
    monkeypatch.setenv("VIT_QUICK", "0")
    assert "mode: full" in environment_report(torch.device("cpu"))


def test_package_re_exports_do_not_shadow_submodules():
    import types

    import vit_from_scratch

    for name in ("patches", "positions", "attention", "encoder", "model", "runtime"):
        assert isinstance(getattr(vit_from_scratch, name), types.ModuleType), f"vit_from_scratch.{name} is shadowed"
    for name in vit_from_scratch.__all__:
        assert hasattr(vit_from_scratch, name), name


def test_to_numpy_image_scales_uint8_pixels_and_keeps_floats():
    import numpy as np
    import torch

    from vit_from_scratch.plotting import to_numpy_image

    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    np.testing.assert_allclose(to_numpy_image(pixels)[0, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(to_numpy_image(pixels.permute(1, 2, 0).numpy())[0, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    floats = torch.tensor([0.0, 0.5, 2.0]).view(3, 1, 1).expand(3, 2, 2)
    np.testing.assert_allclose(to_numpy_image(floats)[0, 0], [0.0, 0.5, 1.0])


def test_benchmark_calls_warmup_then_times_each_repeat():
    calls = []
    timing = benchmark(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(timing.seconds) == 4
    assert timing.best <= timing.median and all(s >= 0 for s in timing.seconds)


def test_timing_median_and_best():
    timing = Timing([0.3, 0.1, 0.2])
    assert timing.median == 0.2 and timing.best == 0.1
    assert "200.0 ms" in str(timing)


def test_benchmark_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats >= 1"):
        benchmark(lambda: None, repeats=0)


def test_synchronize_is_a_no_op_on_the_cpu_and_without_a_device():
    synchronize(None)
    synchronize("cpu")
    synchronize(torch.device("cpu"))


def test_network_available_returns_within_its_timeout_even_when_the_lookup_hangs(monkeypatch):
    def hanging_lookup(*args, **kwargs):
        time.sleep(5)
        raise OSError("never reached in time")

    monkeypatch.setattr(socket, "create_connection", hanging_lookup)
    t0 = time.perf_counter()
    assert network_available("example.invalid", 443, timeout=0.2) is False
    assert time.perf_counter() - t0 < 2


def test_network_available_true_for_a_listening_local_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        assert network_available("127.0.0.1", server.getsockname()[1], timeout=2.0)
    finally:
        server.close()


def test_environment_report_names_threads_and_the_libraries_a_chapter_compares_against():
    line = environment_report(torch.device("cpu"), libraries=("numpy", "no-such-library"))
    assert f"threads {torch.get_num_threads()}" in line
    assert f"numpy {np.__version__}" in line and "no-such-library not installed" in line
    assert line.index("python") < line.index("numpy") < line.index("mode:")


def test_vit_seed_shifts_seed_everything_and_is_reported(monkeypatch):
    monkeypatch.delenv("VIT_SEED", raising=False)
    seed_everything(3)
    base = torch.rand(3)
    monkeypatch.setenv("VIT_SEED", "2")
    assert seed_offset() == 2
    seed_everything(1)  # 1 + 2 = 3
    assert torch.equal(torch.rand(3), base)
    seed_everything(3)
    shifted = torch.rand(3)
    seed_everything(3)
    assert not torch.equal(shifted, base) and torch.equal(torch.rand(3), shifted)
    assert "VIT_SEED 2" in environment_report(torch.device("cpu"))
    monkeypatch.setenv("VIT_SEED", "two")
    with pytest.raises(ValueError, match="VIT_SEED='two' is not an integer"):
        seed_offset()


def test_claim_is_asserted_at_full_budget_and_only_sane_at_quick(monkeypatch, tmp_path):
    monkeypatch.setenv("VIT_CLAIMS_LOG", str(tmp_path / "claims.jsonl"))
    monkeypatch.setenv("VIT_QUICK", "0")
    claim("beats chance", 0.5, above=0.1, n=100)
    with pytest.raises(AssertionError, match="beats chance: 0.12 is not above 0.15"):
        claim("beats chance", 0.12, above=0.15, n=500)
    with pytest.raises(AssertionError, match="not below"):
        claim("fast", 3.0, below=2.0)
    monkeypatch.setenv("VIT_QUICK", "1")
    claim("beats chance", 0.12, above=0.15, n=500)  # not asserted at the quick budget ...
    with pytest.raises(AssertionError, match="beats chance: 0.12 is not above 0.15"):
        claim("beats chance", 0.12, above=0.15, n=500, at_quick=True)  # ... unless asked
    for bad in (float("nan"), 1.5):  # ... but a broken number fails at any budget
        with pytest.raises(AssertionError):
            claim("beats chance", bad, above=0.15, n=500)
    with pytest.raises(ValueError, match="exactly one"):
        claim("x", 1.0)
    import json
    records = [json.loads(line) for line in (tmp_path / "claims.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["budget"] == "full" and first["asserted"] and first["n"] == 100
    assert abs(first["margin_se"] - 0.4 / 0.05) < 1e-9  # se = sqrt(0.5 * 0.5 / 100) = 0.05
    assert records[3]["budget"] == "quick" and not records[3]["asserted"]
    assert records[3]["margin_se"] < 0 and records[2]["ratio"] == 1.5


def _tiny_training(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def job():
        for _ in range(20):
            x = torch.randn(64, 16, generator=generator)
            loss = model(x).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return torch.get_num_threads(), [p.detach().clone() for p in model.parameters()]

    return job


def test_run_side_by_side_matches_runs_one_after_another_on_one_thread():
    threads = torch.get_num_threads()
    together = run_side_by_side([_tiny_training(s) for s in range(3)], workers=2)
    torch.set_num_threads(1)
    try:
        alone = [_tiny_training(s)() for s in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads, "the thread count must be restored"
    for (job_threads, a), (_, b) in zip(together, alone):
        assert job_threads == 1, "each job runs on one torch thread"
        assert all(torch.equal(x, y) for x, y in zip(a, b)), "results in the order of the jobs"
    assert not all(torch.equal(x, y) for x, y in zip(together[0][1], together[1][1]))


def test_run_side_by_side_raises_the_job_error_and_restores_threads():
    threads = torch.get_num_threads()

    def broken():
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError, match="job failed"):
        run_side_by_side([lambda: 1, broken], workers=2)
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_side_by_side([lambda: 1], workers=0)
    with pytest.raises(TypeError, match="functions of no arguments"):
        run_side_by_side([1])
    assert run_side_by_side([]) == []


def test_results_file_finds_the_repository_results_from_below_and_none_elsewhere(tmp_path):
    from vit_from_scratch.runtime import results_file

    folder = tmp_path / "repo" / "tests" / "benchmarks" / "results"
    folder.mkdir(parents=True)
    (folder / "probe.jsonl").write_text("{}\n")
    book = tmp_path / "repo" / "book"
    book.mkdir()
    assert results_file("probe.jsonl", book) == folder / "probe.jsonl"
    assert results_file("missing.jsonl", book) is None
    assert results_file("probe.jsonl", tmp_path / "elsewhere") is None


def test_device_of_reads_the_device_from_an_environment_report():
    from vit_from_scratch.runtime import device_of

    line = environment_report(torch.device("cpu"))
    assert device_of(line).startswith("CPU (") and "threads" not in device_of(line)
    assert device_of("device: CPU (AMD EPYC, 2 cores) | threads 2 | torch 2.14.1 | mode: full") == \
        "CPU (AMD EPYC, 2 cores)"
    with pytest.raises(ValueError, match="not an environment_report line"):
        device_of("threads 2 | torch 2.14.1")
