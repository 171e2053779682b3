"""Runtime helpers shared by every chapter: device, seeding, the quick flag, an environment report,
device synchronisation, a timing loop, a network check that cannot hang, and ``claim``: how a chapter
asserts a measured number so that the assertion holds on any machine at the quick budget."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything", "seed_offset", "is_quick", "budget", "environment_report",
           "synchronize", "to_device", "Timing", "benchmark", "run_side_by_side", "network_available", "claim",
           "results_file", "device_of", "durable_replace"]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def pick_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then CPU.

    Args:
        prefer: force a device ("cuda", "mps", "cpu"); the environment variable
            ``VIT_DEVICE`` does the same when this is ``None``.
    """
    prefer = prefer or os.environ.get("VIT_DEVICE") or None
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {prefer!r} was requested but CUDA is not available; "
                               "unset VIT_DEVICE or pass prefer=None to choose automatically.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {prefer!r} was requested but MPS is not available; "
                               "unset VIT_DEVICE or pass prefer=None to choose automatically.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_offset() -> int:
    """The offset ``VIT_SEED`` adds to every seed :func:`seed_everything` sets (0 when unset).

    A stress run (``tests/stress_chapters.py``) executes the chapters with ``VIT_SEED=1``, ``2``, ...
    to check that no assertion hangs on one lucky draw; readers leave it unset.
    """
    value = os.environ.get("VIT_SEED", "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"VIT_SEED={value!r} is not an integer; unset it or give a whole number "
                         "such as VIT_SEED=1.") from None


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices) with ``seed + seed_offset()``.

    ``VIT_SEED`` unset (the default), this is ``seed`` itself. The same call twice still gives the
    same draws under any ``VIT_SEED``, so "same seed, same weights" checks hold in a stress run.
    """
    seed = seed + seed_offset()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def is_quick() -> bool:
    """True when ``VIT_QUICK`` asks for the quick budget (pytest sets ``VIT_QUICK=1``)."""
    value = os.environ.get("VIT_QUICK", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"VIT_QUICK={value!r} is not understood; use 1 (quick budget) or 0 (full budget).")


def budget(full, quick):
    """Pick the full or the quick value of a size, by :func:`is_quick`. Same code path, other sizes."""
    return quick if is_quick() else full


def _cpu_model() -> str:
    """The CPU's model name (e.g. "AMD EPYC 7B13"), or its architecture when the name is unknown."""
    try:
        with open("/proc/cpuinfo") as f:  # Linux
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({_cpu_model()}, {os.cpu_count()} cores)"


def _library_version(name: str) -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment_report(device: torch.device | None = None,
                       libraries: tuple[str, ...] = ()) -> str:
    """One line saying what this ran on: device name, CPU threads, versions and budget mode.

    Args:
        device: the device the chapter computes on (default: :func:`pick_device`). A chapter that
            computes on the CPU although a GPU is present passes ``torch.device("cpu")``, and the
            line says so.
        libraries: further libraries whose versions matter to the chapter, e.g.
            ``("torchvision", "timm")`` where it compares against them.

    The line reads ``device: ... | threads T | torch X | python Y | <lib> Z ... | mode: full``.
    """
    device = torch.device(device) if device is not None else pick_device()
    mode = "quick (VIT_QUICK=1)" if is_quick() else "full"
    name = _device_name(device)
    if device.type == "cpu" and torch.cuda.is_available():
        name += f" (a GPU, {torch.cuda.get_device_name()}, is present; this chapter computes on the CPU)"
    parts = [f"device: {name}", f"threads {torch.get_num_threads()}", f"torch {torch.__version__}",
             f"python {platform.python_version()}"]
    parts += [f"{lib} {_library_version(lib)}" for lib in libraries]
    if seed_offset():
        parts.append(f"VIT_SEED {seed_offset()}")
    return " | ".join([*parts, f"mode: {mode}"])


def device_of(report: str) -> str:
    """The device named in an :func:`environment_report` line, e.g. ``"CPU (AMD EPYC, 2 cores)"``.

    Results files keep the report of the machine that made them; this reads which machine that was, so that
    minutes measured on different machines are never shown as if they came from one."""
    first = report.split(" | ", 1)[0]
    if not first.startswith("device: "):
        raise ValueError(f"not an environment_report line (it starts 'device: ...'): {report[:80]!r}")
    return first[len("device: "):]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` over ``dst`` atomically (a reader sees the old file or the new one), with the bytes
    flushed to the disk before the rename and the rename after it, so a power cut never leaves an empty
    file. Windows cannot open a folder: there the folder's flush is left to the file system."""
    src, dst = Path(src), Path(dst)
    _fsync(src)
    os.replace(src, dst)
    if os.name != "nt":
        _fsync(dst.parent)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until the work queued on ``device`` (CUDA or MPS) is done; nothing to wait for on a CPU.

    GPUs run kernels asynchronously: read a clock only after synchronising, or it measures the queueing.
    """
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor.to(device)`` for a host tensor, without making the host wait on a CUDA GPU.

    A plain copy from ordinary host memory to a GPU waits until every kernel already queued has run, so
    the host stops feeding the GPU: a few such copies per training step (the random draws of a batch's
    augmentation) leave the GPU idle while Python prepares the next kernels. Copied from page-locked
    memory, the transfer joins the queue instead. Elsewhere (CPU, MPS) this is ``tensor.to(device)``.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls; ``median`` is the number to report, ``best`` the least noisy."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def __str__(self) -> str:
        return f"{1e3 * self.median:.1f} ms (median of {len(self.seconds)}, best {1e3 * self.best:.1f} ms)"


def benchmark(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time ``repeats`` calls one by one.

    The first calls pay for allocations, kernel selection and compilation, so they are left out. On a
    GPU, work is queued asynchronously: pass ``device`` and the clock is read only after
    :func:`synchronize`.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return Timing(seconds)


def run_side_by_side(jobs: Sequence[Callable[[], T]], *, workers: int | None = None) -> list[T]:
    """Run independent jobs ``workers`` at a time (default: torch's CPU thread count), each in its own
    Python thread on one torch thread; return their results in the order of ``jobs``.

    A small model uses a CPU's cores badly inside one operation (its matrices are too small to split
    well), so two training runs side by side, one core each, finish sooner than the same runs one after
    another on two cores each; torch's operations release the GIL, so the threads run at once. The
    torch thread count is restored afterwards, also after an error. Each job must own its model and
    draw its random numbers from its own generators: the global generator is shared, so build models
    (and call ``seed_everything``) before. A job that raises stops the call with its error.
    """
    jobs = list(jobs)
    if workers is None:
        workers = torch.get_num_threads()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if not all(callable(job) for job in jobs):
        raise TypeError("run_side_by_side takes a list of functions of no arguments (e.g. lambdas)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, max(1, len(jobs)))) as pool:
            return list(pool.map(lambda job: job(), jobs))
    finally:
        torch.set_num_threads(threads)


def results_file(name: str, start: str | os.PathLike | None = None) -> Path | None:
    """A measurement kept in the repository, ``tests/benchmarks/results/<name>``, found from ``start``
    (default: the working directory) or a folder above it; ``None`` outside a clone of the repository
    (in Colab, say), where a chapter says so instead of reading it."""
    here = Path(start) if start is not None else Path.cwd()
    for folder in [here, *here.resolve().parents]:
        path = folder / "tests" / "benchmarks" / "results" / name
        if path.exists():
            return path
    return None


def network_available(host: str = "download.pytorch.org", port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    The attempt runs in a daemon thread that is given up after ``timeout``: even a DNS lookup that
    hangs (which ``socket``'s own timeout does not cover) cannot stall the caller.
    """
    opened = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    return opened.wait(timeout)


def claim(name: str, value: float, *, above: float | None = None, below: float | None = None,
          n: int | None = None, at_quick: bool = False) -> None:
    """Assert that a measured ``value`` lies above (or below) a threshold, where the budget can carry it.

    At the full budget the inequality is asserted. At the quick budget a model trains for seconds,
    and its numbers move with the CPU, the thread count, the torch version and the seed: there the
    inequality is asserted only when ``at_quick`` says the chapter checked that it holds with a
    margin (for an accuracy on ``n`` images: at least four binomial standard errors, on every
    perturbation of ``tests/stress_chapters.py``). Otherwise the quick run asserts what it can
    whatever the machine: that ``value`` is finite, and within [0, 1] when it is a fraction of
    ``n`` images.

    Args:
        name: what the claim says, e.g. ``"the probe beats chance"``; the assertion's message.
        value: the measured number.
        above, below: the threshold ``value`` must exceed (or stay under); exactly one of them.
        n: the number of images an accuracy was measured on (for its binomial standard error).
        at_quick: assert the inequality at the quick budget too.

    With ``VIT_CLAIMS_LOG`` set to a file, one JSON line per call is appended to it: the name,
    value, threshold, margin (in standard errors when ``n`` is given, else as value / threshold)
    and whether the inequality was asserted. The stress run reads these into its table.
    """
    if (above is None) == (below is None):
        raise ValueError(f"claim {name!r}: give exactly one of above= or below=")
    value = float(value)
    threshold = float(above if above is not None else below)
    quick = is_quick()
    asserted = at_quick or not quick
    se = margin_se = None
    if n is not None:
        if n < 1:
            raise ValueError(f"claim {name!r}: n={n} images; an accuracy needs n >= 1")
        # the larger of the two binomial errors: at the measured value and at the threshold
        se = max(math.sqrt(max(p * (1 - p), 0.0) / n) for p in (min(max(value, 0.0), 1.0),
                                                              min(max(threshold, 0.0), 1.0)))
        distance = value - threshold if above is not None else threshold - value
        margin_se = distance / se if se > 0 else math.copysign(math.inf, distance)
    log = os.environ.get("VIT_CLAIMS_LOG")
    if log:
        record = {"name": name, "value": value, "direction": "above" if above is not None else "below",
                  "threshold": threshold, "n": n, "se": se, "margin_se": margin_se,
                  "ratio": value / threshold if threshold else None,
                  "budget": "quick" if quick else "full", "asserted": asserted}
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    assert math.isfinite(value), f"{name}: the measured value is {value}, not a finite number"
    if n is not None:
        assert 0.0 <= value <= 1.0, f"{name}: {value} is not a fraction of {n} images"
    if asserted:
        if above is not None:
            assert value > threshold, f"{name}: {value:.4g} is not above {threshold:.4g}"
        else:
            assert value < threshold, f"{name}: {value:.4g} is not below {threshold:.4g}"
