"""Runtime helpers shared by every chapter: device, seeding, the quick flag, an environment report,
device synchronisation, a timing loop and a network check that cannot hang."""

from __future__ import annotations

import os
import platform
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything", "is_quick", "budget", "environment_report", "synchronize",
           "Timing", "benchmark", "network_available"]

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


def seed_everything(seed: int = 0) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices) with ``seed``."""
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
    return " | ".join([*parts, f"mode: {mode}"])


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
