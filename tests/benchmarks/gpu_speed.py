"""Issue 27, item 1: where the cifar10-gpu preset's training step spends its time, and what each speed lever
buys, measured in one process sized for one GPU session (``tests/benchmarks/gpu_speed.sh``) and tested on the
CPU at tiny sizes (``tests/test_gpu_speed_script.py``).

What it measures, in this order, writing the JSON again after each part (a kill keeps what was done):

1. the device's bf16 matrix rate: a square ``--matmul-size`` (8192) bf16 product, median of repeats (the MFU
   denominator; on a CPU without bf16 autocast, float32);
2. the FLOPs of one training step per image: ``FlopCounterMode`` over the model's forward pass (attention
   counted through the math backend, so it is counted on any device), times 3 (forward + backward); the
   counted forward + backward is recorded beside it as a check;
3. the step variants, each built and warmed up (compiled) once, one after another; a failure is recorded, never
   fatal; a variant that would not fit before the rounds' reserve of time is skipped, and recorded so.
   ``baseline`` is what ``fit`` does today for the preset: eager, the preset's autocast, ``build_optimizer``
   (AdamW, fused on CUDA), batch 512, data on the device augmented by the package's loader (crop, flip,
   batched TrivialAugment) and ``mixup_cutmix``, the finite-loss check (deferred: noted on the device, read
   every ``CHECK_EVERY`` steps), grad clipping, the scheduler and the epoch's running sums. The others change
   one or two things (``variants()`` says what);
4. ``torch.profiler`` over a few baseline steps (and the first compiled variant's): the top ops by device time
   (CPU time on a CPU), and the step's time split into its phases (loader, mixup, forward, finite check,
   backward, optimizer, sums) by the kernel time launched inside each and by the host's time in each;
5. alternating rounds: every variant times ``--steps`` steps (as many images at every batch size) once per
   round, each round starting at the next variant; the ratio to the baseline within each round, its median and
   range, ``median_interval`` and the chapter-8 ``speed_verdict``; images/s, TFLOP/s and MFU (achieved FLOP/s
   over the measured matrix rate).

Larger batches are measured for images/s only; their learning rate is scaled linearly for the record, and
accuracy at that rate is a separate question this script does not answer.

    python tests/benchmarks/gpu_speed.py --json speed.json --data-dir DATA --time-limit 400
    python tests/benchmarks/gpu_speed.py --json speed.json --data-dir DATA --device cpu --tiny --skip-compile
"""
import time

START = time.monotonic()  # the time limit counts from here, imports included

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from vit_from_scratch.data import channel_stats, find_image_folder, load_image_folder  # noqa: E402
from vit_from_scratch.efficiency import median_interval, speed_verdict  # noqa: E402
from vit_from_scratch.loaders import make_loader, mixup_cutmix  # noqa: E402
from vit_from_scratch.model import VisionTransformer  # noqa: E402
from vit_from_scratch.recipe import (autocast_dtype, build_optimizer, param_groups, preset,  # noqa: E402
                                     warmup_cosine)
from vit_from_scratch import loaders, policies  # noqa: E402
from vit_from_scratch.runtime import environment_report, pick_device, synchronize  # noqa: E402
from vit_from_scratch.loss_guard import CHECK_EVERY  # noqa: E402

PRESET = "cifar10-gpu"
SYNC_STEPS = 3  # steps under CUDA's sync debug mode, per variant, after its warm-up
PHASES = ("loader", "mixup", "forward", "finite check", "backward", "optimizer", "sums")
TINY_MODEL = {"dim": 32, "depth": 2, "num_heads": 2}


@dataclass
class Variant:
    name: str
    description: str
    batch_mult: int = 1  # times --batch
    compile_mode: str | None = None  # None: eager; "default": torch.compile's default mode
    optimizer: str = "preset"  # preset (build_optimizer), foreach (AdamW, fused off), muon (build_optimizer's)
    source: str = "loader"  # loader: fit's path; fixed: one augmented batch again and again; loader-only: no model
    # fit's finite-loss check: "deferred" (noted on the device, read every training.CHECK_EVERY steps, as fit
    # does on a GPU), "every-step" (read on the host every step: a host sync, as fit did before) or "none"
    finite_check: str = "deferred"
    blocking_copies: bool = False  # the augmentation's host draws copied with a plain .to (as before): host syncs
    build_estimate_s: float = 5.0  # the least time it needs (compilation) before the rounds' reserve


def variants(batch: int) -> dict[str, Variant]:
    """The levers, cheap ones first, then the compile modes the issue names, then combinations: the time limit
    skips from the end (``build_estimate_s`` + ``--rounds-reserve`` must be left to start one)."""
    vs = [Variant("baseline", f"fit today: eager, autocast, build_optimizer, batch {batch}, loader + MixUp/CutMix"),
          Variant("loader-only", "the augmentation alone: the loader (crop, flip, TrivialAugment) + MixUp/CutMix",
                  source="loader-only"),
          Variant("model-only", "the model step alone: one augmented batch again and again (no loader, no mixup)",
                  source="fixed"),
          Variant("sync-every-step", "fit before: the finite-loss check read on the host every step",
                  finite_check="every-step"),
          Variant("blocking-copies", "fit before: the augmentation's host draws copied with a plain .to "
                  "(a host sync each, about six a step)", blocking_copies=True),
          Variant("foreach-optimizer", "baseline with AdamW fused=False, foreach=True", optimizer="foreach"),
          Variant("muon-optimizer", "baseline with optimizer='muon' (MuonAdamW)", optimizer="muon"),
          Variant(f"batch-{2 * batch}", "baseline at twice the batch (images/s only; lr scaled linearly)",
                  batch_mult=2),
          Variant(f"batch-{4 * batch}", "baseline at four times the batch (images/s only; lr scaled linearly)",
                  batch_mult=4),
          Variant("compile", "baseline with torch.compile(model) (default mode)", compile_mode="default",
                  build_estimate_s=60),
          Variant("compile-reduce-overhead", "torch.compile mode='reduce-overhead' (CUDA graphs)",
                  compile_mode="reduce-overhead", build_estimate_s=90),
          Variant("compile-max-autotune-no-cudagraphs", "torch.compile mode='max-autotune-no-cudagraphs'",
                  compile_mode="max-autotune-no-cudagraphs", build_estimate_s=150),
          Variant(f"compile-batch-{4 * batch}", "compile at four times the batch (lr scaled linearly)",
                  batch_mult=4, compile_mode="default", build_estimate_s=60),
          Variant("compile-max-autotune", "torch.compile mode='max-autotune' (autotuned kernels, CUDA graphs)",
                  compile_mode="max-autotune", build_estimate_s=150)]
    return {v.name: v for v in vs}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="write the results here (rewritten after every part)")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10's folder (default: VIT_DATA_DIR); train/ is read")
    ap.add_argument("--device", default=None, help="cuda, cpu, ... (default: pick_device)")
    ap.add_argument("--tiny", action="store_true",
                    help=f"CPU test sizes: model {TINY_MODEL}, batch 8, 2 steps, 2 rounds, matmul 128")
    ap.add_argument("--time-limit", type=float, default=400.0, help="seconds from this process's start")
    ap.add_argument("--variants", default=None, help="comma-separated names (default: all of VARIANTS; "
                    "compile-<mode> names any torch.compile mode)")
    ap.add_argument("--skip-compile", action="store_true", help="record the compile variants as skipped")
    ap.add_argument("--batch", type=int, default=None, help="the baseline's batch (default: the preset's, 512)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per window at --batch (default 25); "
                    "a larger batch takes as many images")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps after building a variant (default 5)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds at most (default 5)")
    ap.add_argument("--profile-steps", type=int, default=None, help="steps under torch.profiler (default 5)")
    ap.add_argument("--matmul-size", type=int, default=None, help="side of the square matrix product (8192)")
    ap.add_argument("--model-json", default=None, help="ViTConfig fields replacing the preset's, as JSON")
    ap.add_argument("--train-images", type=int, default=None, help="use only this many training images")
    ap.add_argument("--rounds-reserve", type=float, default=None,
                    help="seconds kept for profiling and the rounds when deciding to build a variant "
                         "(default: 25%% of --time-limit)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile's backend; another than inductor (aot_eager: a quick check of the tracing "
                         "on a CPU) ignores the mode")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    tiny = args.tiny
    for name, full, small in (("batch", None, 8), ("steps", 25, 2), ("warmup", 5, 1), ("rounds", 5, 2),
                              ("profile_steps", 5, 1), ("matmul_size", 8192, 128)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    args.model = json.loads(args.model_json) if args.model_json else (dict(TINY_MODEL) if tiny else {})
    args.batch = args.batch or preset(PRESET).batch_size
    if min(args.batch, args.steps, args.rounds, args.profile_steps, args.matmul_size) < 1 or args.warmup < 0:
        ap.error("--batch, --steps, --rounds, --profile-steps and --matmul-size must be at least 1, --warmup 0 or more")
    if args.rounds_reserve is None:
        args.rounds_reserve = 0.25 * args.time_limit
    return args


def elapsed() -> float:
    return time.monotonic() - START


def write_json(report: dict, path: str) -> None:
    report["elapsed_s"] = round(elapsed(), 2)
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def hardware(device: torch.device) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    cuda=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.split()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    return info


# --------------------------------------------------------------------------- the two denominators


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype, samples: int = 7, inner: int = 5) -> dict:
    """FLOP/s of an n x n x n product in ``dtype`` on random data: median of ``samples`` timings of ``inner``
    back-to-back products (after three warm-ups)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(samples):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        rates.append(2 * n**3 * inner / (time.perf_counter() - t0))
    return {"n": n, "dtype": str(dtype), "flop_per_s": statistics.median(rates), "samples_flop_per_s": rates,
            "tflop_per_s": statistics.median(rates) / 1e12}


def flops_per_image(config) -> dict:
    """FLOPs per image: the forward pass counted (attention through the math backend, so its two products are
    counted on every device), x3 for a training step; the counted forward + backward beside it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, x = VisionTransformer(config), torch.randn(2, config.in_channels, config.image_size, config.image_size)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
        model(x)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as both:
        model(x).float().sum().backward()
    fwd = forward.get_total_flops() / 2
    return {"forward_per_image": fwd, "train_step_per_image": 3 * fwd,
            "counted_forward_backward_per_image": both.get_total_flops() / 2,
            "params": sum(p.numel() for p in model.parameters()),
            "note": "train_step_per_image = 3 x forward (the MFU numerator); matrix products and convolutions only"}


# --------------------------------------------------------------------------- one variant's training step


class Trainer:
    """One variant: its model, optimizer and loader, and ``step()``, which does what ``training._train_step``
    and the epoch loop of ``_train_one_epoch`` do for one batch (with the variant's one change)."""

    def __init__(self, v: Variant, data, mean, std, args, device: torch.device, dtype) -> None:
        self.v, self.device, self.dtype, self.profiling = v, device, dtype, False
        batch = args.batch * v.batch_mult
        base = preset(PRESET, model=args.model)
        optimizer = "muon" if v.optimizer == "muon" else base.optimizer
        self.config = c = preset(PRESET, model=args.model, batch_size=batch, lr=base.lr * v.batch_mult,
                                 optimizer=optimizer)  # lr scaled linearly with the batch, for the record
        self.batch = batch
        torch.manual_seed(0)
        self.model = VisionTransformer(c.model).to(device).train()
        mode = {} if v.compile_mode == "default" else {"mode": v.compile_mode}
        how = mode if args.compile_backend == "inductor" else {"backend": args.compile_backend}
        self.forward = self.model if v.compile_mode is None else torch.compile(self.model, dynamic=False, **how)
        self.loader = make_loader(data, batch, train=True, mean=mean, std=std, device=device, policy=c.policy,
                                  padding=c.padding, flip=c.flip, seed=c.seed, augment_on="device")
        if len(self.loader) == 0:
            raise ValueError(f"{len(data)} training images do not fill one batch of {batch}")
        self.optimizer, self.scheduler = self._optimizer(len(self.loader))
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.batches = self._forever()
        self.fixed = self._mixed(*next(self.batches)) if v.source == "fixed" else None
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.bad, self.steps = torch.zeros((), dtype=torch.bool, device=device), 0

    def _optimizer(self, steps_per_epoch: int):
        if self.v.optimizer != "foreach":
            return build_optimizer(self.model, self.config, steps_per_epoch)
        c, phase = self.config, self.config.phases()[0]  # build_optimizer's AdamW and schedule, fused off
        optimizer = torch.optim.AdamW(param_groups(self.model, c.weight_decay), lr=phase.lr, betas=c.betas,
                                      fused=False, foreach=True)
        total, warmup = phase.epochs * steps_per_epoch, max(1, round(phase.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(
            s, total_steps=total, warmup_steps=warmup, lr=phase.lr, min_lr=c.min_lr) / phase.lr)
        return optimizer, scheduler

    def describe_optimizer(self) -> str:
        parts = getattr(self.optimizer, "adamw", None), getattr(self.optimizer, "muon", None)
        opts = [o for o in parts if o is not None] or [self.optimizer]
        return " + ".join(f"{type(o).__name__}(fused={o.defaults.get('fused')}, foreach={o.defaults.get('foreach')})"
                          for o in opts)

    def _forever(self):
        while True:
            yield from self.loader

    def _mixed(self, images, labels):
        c = self.config
        return (*mixup_cutmix(images, labels, c.model.num_classes, mixup_alpha=c.mixup, cutmix_alpha=c.cutmix),
                labels)

    def _phase(self, name: str):
        return torch.profiler.record_function(name) if self.profiling else nullcontext()

    def step(self) -> None:
        c = self.config
        if self.fixed is not None:
            images_in, targets, labels = self.fixed
        else:
            with self._phase("loader"), self._copies():
                images, labels = next(self.batches)
            with self._phase("mixup"), self._copies():
                images_in, targets, labels = self._mixed(images, labels)
            if self.v.source == "loader-only":
                return
        with self._phase("forward"):
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.forward(images_in)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=c.label_smoothing)
        self.steps += 1
        if self.v.finite_check == "every-step":
            with self._phase("finite check"):
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.v.name}: the loss became {loss.item()}")
        elif self.v.finite_check == "deferred":
            with self._phase("finite check"):
                self.bad |= ~torch.isfinite(loss.detach())
                if self.steps % CHECK_EVERY == 0 and self.bad:
                    raise FloatingPointError(f"{self.v.name}: a loss in the last {CHECK_EVERY} steps was not finite")
        with self._phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with self._phase("optimizer"):
            if c.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        with self._phase("sums"):
            self.loss_sum += loss.detach() * labels.numel()
            self.correct += (logits.argmax(1) == labels).sum()

    @contextmanager
    def _copies(self):
        """For ``blocking_copies``: the package's host-to-device copies made with a plain ``.to``, as before."""
        if not self.v.blocking_copies:
            yield
            return
        saved = loaders.to_device, policies.to_device
        loaders.to_device = policies.to_device = lambda tensor, device: tensor.to(device)
        try:
            yield
        finally:
            loaders.to_device, policies.to_device = saved

    def host_syncs_per_step(self, steps: int) -> float | None:
        """Host waits per step, counted by CUDA's sync debug mode (a warning per synchronising call); None off
        CUDA."""
        if self.device.type != "cuda":
            return None
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    self.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught) / steps

    def images_per_s(self, steps: int) -> float:
        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return steps * self.batch / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- torch.profiler


def _avg_row(e, device_rows: bool) -> dict:
    self_dev = getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))
    dev = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0))
    return {"name": e.key, "calls": e.count, "self_device_us": round(self_dev, 1), "device_us": round(dev, 1),
            "self_cpu_us": round(e.self_cpu_time_total, 1), "cpu_us": round(e.cpu_time_total, 1),
            **({"kind": str(getattr(e, "device_type", "")).split(".")[-1]} if device_rows else {})}


def _top_ops(prof, cuda: bool, k: int = 15) -> dict:
    """The top ``k`` ops by self device time (self CPU time on a CPU); on a GPU also the top kernels."""
    from torch.autograd import DeviceType

    rows = [e for e in prof.key_averages() if e.key not in PHASES and not e.key.startswith("ProfilerStep")]
    if not cuda:
        rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        return {"sorted_by": "self_cpu_us", "ops": [_avg_row(e, False) for e in rows[:k]]}

    def self_dev(e):
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0))

    ops = sorted((e for e in rows if getattr(e, "device_type", DeviceType.CPU) == DeviceType.CPU), key=self_dev,
                 reverse=True)
    kernels = sorted((e for e in rows if getattr(e, "device_type", DeviceType.CPU) != DeviceType.CPU), key=self_dev,
                     reverse=True)
    return {"sorted_by": "self_device_us", "ops": [_avg_row(e, False) for e in ops[:k]],
            "kernels": [_avg_row(e, True) for e in kernels[:k]]}


def _phase_split(prof, steps: int, wall_us: float, cuda: bool) -> dict:
    """Each phase's host time (its range on the main thread) and the kernel time launched while it ran
    (by any thread: the backward's kernels are launched by autograd's device thread), per step."""
    from torch.autograd import DeviceType

    events = prof.events()
    ranges = [(e.name, e.time_range.start, e.time_range.end) for e in events
              if e.name in PHASES and e.device_type == DeviceType.CPU]
    device_ends = [e.time_range.end for e in events if e.device_type != DeviceType.CPU]
    if ranges:  # the steps' span on the profiler's clock: the profiler's own start and stop left out
        wall_us = max([end for _, _, end in ranges] + device_ends) - min(start for _, start, _ in ranges)
    split = {name: {"host_us": 0.0, "device_us": 0.0} for name in PHASES}
    for name, start, end in ranges:
        split[name]["host_us"] += end - start
    busy = unattributed = 0.0
    for e in events:
        kernels = getattr(e, "kernels", None) if e.device_type == DeviceType.CPU else None
        if not kernels:
            continue
        t = sum(k.duration for k in kernels)
        busy += t
        where = next((name for name, start, end in ranges if start <= e.time_range.start <= end), None)
        if where is None:
            unattributed += t
        else:
            split[where]["device_us"] += t
    basis = "device" if cuda and busy > 0 else "host"
    total = sum(p[f"{basis}_us"] for p in split.values()) or 1.0
    for p in split.values():
        p["share"] = p[f"{basis}_us"] / total
        p["host_share_of_wall"] = p["host_us"] / wall_us
        p["host_us"] = round(p["host_us"] / steps, 1)
        p["device_us"] = round(p["device_us"] / steps, 1)
    groups = {"augmentation (loader + mixup)": ("loader", "mixup"),
              "model (forward + backward)": ("forward", "backward"),
              "optimizer (clip, step, schedule)": ("optimizer",),
              "other (finite check, sums)": ("finite check", "sums")}
    return {"per_step_us": split, "share_basis": f"{basis} time of the phases",
            "shares": {g: sum(split[n]["share"] for n in names) for g, names in groups.items()},
            "wall_us_per_step": round(wall_us / steps, 1),
            "device_busy_us_per_step": round(busy / steps, 1) if cuda else None,
            "device_busy_fraction": busy / wall_us if cuda else None,
            "device_unattributed_us_per_step": round(unattributed / steps, 1) if cuda else None}


def profile(trainer: Trainer, steps: int) -> dict:
    """``steps`` steps of ``trainer`` under torch.profiler: the top ops, the phase split and the profiler's table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    trainer.profiling = True
    try:
        synchronize(trainer.device)
        t0 = time.perf_counter()
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                trainer.step()
            synchronize(trainer.device)
        wall_us = (time.perf_counter() - t0) * 1e6
    finally:
        trainer.profiling = False
    result = {"variant": trainer.v.name, "steps": steps, "batch": trainer.batch}
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    for key, make in (("top", lambda: _top_ops(prof, cuda)),
                      ("split", lambda: _phase_split(prof, steps, wall_us, cuda)),
                      ("table", lambda: prof.key_averages().table(sort_by=sort_by, row_limit=15))):
        try:
            result[key] = make()
        except Exception as error:  # one part's failure (an API change) keeps the others
            result[f"{key}_error"] = f"{type(error).__name__}: {error}"
    return result


# --------------------------------------------------------------------------- the run


def load_train(args, device: torch.device):
    root = Path(args.data_dir or os.environ.get("VIT_DATA_DIR") or ".")
    folder = find_image_folder(root)
    if folder is None:
        raise SystemExit(f"no CIFAR-10 image folder (train/<class>/*) under {root}: pass --data-dir")
    data = load_image_folder(folder / "train")
    data = data.subset(args.train_images, seed=0)
    return data, channel_stats(data.images)


def select(args) -> list[Variant]:
    known = variants(args.batch)
    names = [n.strip() for n in (args.variants or ",".join(known)).split(",") if n.strip()]
    names = ["baseline"] + [n for n in names if n != "baseline"]
    chosen = []
    for name in dict.fromkeys(names):
        if name in known:
            chosen.append(known[name])
        elif name.startswith("compile-"):
            mode = name[len("compile-"):]
            chosen.append(Variant(name, f"torch.compile mode={mode!r}", compile_mode=mode, build_estimate_s=60))
        else:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(known)} (or compile-<mode>)")
    return chosen


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_all(chosen, data, stats, args, device, dtype, report, left) -> dict[str, Trainer]:
    trainers = {}
    for v in chosen:
        entry = report["variants"][v.name]
        need = 0.0 if v.name == "baseline" else (0.0 if args.tiny else v.build_estimate_s) + args.rounds_reserve
        if v.compile_mode is not None and args.skip_compile:
            entry.update(status="skipped", reason="--skip-compile")
        elif left() < need:
            entry.update(status="skipped", reason=f"time limit: {left():.0f} s left, {need:.0f} s needed (its "
                                                  f"build estimate + {args.rounds_reserve:.0f} s kept for the rounds)")
        else:
            t0, trainer = time.perf_counter(), None
            try:
                trainer = Trainer(v, data, *stats, args, device, dtype)
                for _ in range(args.warmup):
                    trainer.step()
                synchronize(device)
                trainers[v.name] = trainer
                entry.update(status="ok", batch=trainer.batch, lr=trainer.config.lr,
                             optimizer_impl=trainer.describe_optimizer(),
                             host_syncs_per_step=trainer.host_syncs_per_step(SYNC_STEPS))
            except Exception as error:
                entry.update(status="failed", error=f"{type(error).__name__}: {error}"[:2000],
                             traceback=traceback.format_exc()[-3000:])
                del trainer
                free(device)
            entry["build_and_warmup_s"] = round(time.perf_counter() - t0, 2)
        print(f"build {v.name}: {entry['status']} {entry.get('reason', entry.get('error', ''))[:200]} "
              f"({entry.get('build_and_warmup_s', 0):.1f} s; {left():.0f} s left)", flush=True)
        write_json(report, args.json)
    return trainers


def run_rounds(trainers: dict[str, Trainer], args, device, report, left) -> dict[str, list]:
    samples = {name: [] for name in trainers}
    alive, round_s = list(trainers), None
    info = report["rounds"]
    for r in range(args.rounds):
        # the first round runs if any time is left; a later one if it fits
        if left() < 1 or (round_s is not None and left() < 1.2 * round_s + 2):
            info["stopped_by_time_limit"] = True
            break
        t0 = time.perf_counter()
        shift = r % len(alive)  # each round starts at another variant: no variant always runs first
        for name in alive[shift:] + alive[:shift]:
            trainer = trainers[name]
            steps = max(1, round(args.steps / trainer.v.batch_mult))
            try:
                samples[name].append(trainer.images_per_s(steps))
            except Exception as error:
                report["variants"][name].update(status="failed", error=f"round {r + 1}: {type(error).__name__}: "
                                                                       f"{error}"[:2000])
                alive.remove(name)
                samples[name].append(None)
        for name in set(trainers) - set(alive):
            samples[name] += [None] * (r + 1 - len(samples[name]))
        round_s = time.perf_counter() - t0
        info["done"], info["seconds"] = r + 1, info["seconds"] + [round(round_s, 2)]
        print(f"round {r + 1}: {round_s:.1f} s; {left():.0f} s left", flush=True)
        summarise(samples, trainers, report)
        write_json(report, args.json)
        if "baseline" not in alive:
            break
    return samples


def summarise(samples: dict[str, list], trainers: dict[str, Trainer], report: dict) -> None:
    flops, rate = report["flops"]["train_step_per_image"], report["matmul"]["flop_per_s"]
    base = samples.get("baseline", [])
    base_median = statistics.median([s for s in base if s]) if any(base) else None
    for name, values in samples.items():
        entry, good = report["variants"][name], [s for s in values if s]
        if not good:
            continue
        ratios = [s / b for s, b in zip(values, base) if s and b]
        median = statistics.median(good)
        entry.update(images_per_s=values, median_images_per_s=median, range_images_per_s=[min(good), max(good)],
                     ratio_to_baseline=ratios)
        if ratios:
            interval = median_interval(ratios)
            entry.update(ratio_median=interval.median, ratio_interval=asdict(interval),
                         verdict=f"{speed_verdict(interval)} the baseline")
        if trainers[name].v.source == "loader-only":
            entry.update(tflop_per_s=None, mfu=None)
        else:
            entry.update(tflop_per_s=median * flops / 1e12, mfu=median * flops / rate)
        if trainers[name].v.source in ("loader-only", "fixed") and base_median:
            entry["time_share_of_baseline_step"] = base_median / median  # seconds per image, this over baseline's


def print_summary(report: dict) -> None:
    mm = report["matmul"]
    print(f"\nmatrix rate {mm['tflop_per_s']:.1f} TFLOP/s ({mm['dtype']}, {mm['n']}^3); "
          f"{report['flops']['train_step_per_image'] / 1e9:.3f} GFLOP per image per training step; "
          f"{report['rounds']['done']} rounds")
    print(f"{'variant':>36} | {'batch':>5} | {'img/s':>9} | {'range':>19} | {'ratio':>5} | {'TFLOP/s':>7} | "
          f"{'MFU':>6} | verdict / status")
    for name, e in report["variants"].items():
        if "median_images_per_s" not in e:
            print(f"{name:>36} | {e.get('status', '?')}: {e.get('reason', e.get('error', ''))[:90]}")
            continue
        lo, hi = e["range_images_per_s"]
        tf = "-" if e["tflop_per_s"] is None else f"{e['tflop_per_s']:.1f}"
        mfu = "-" if e["mfu"] is None else f"{e['mfu']:.1%}"
        print(f"{name:>36} | {e['batch']:>5} | {e['median_images_per_s']:9.0f} | {lo:8.0f}-{hi:<10.0f} | "
              f"{e.get('ratio_median', float('nan')):5.2f} | {tf:>7} | {mfu:>6} | {e.get('verdict', '')}"
              + ("" if e["status"] == "ok" else f" ({e['status']})"))
    syncs = {n: e["host_syncs_per_step"] for n, e in report["variants"].items()
             if e.get("host_syncs_per_step") is not None}
    if syncs:
        print("host syncs per step (CUDA sync debug mode): " + ", ".join(f"{n} {k:.1f}" for n, k in syncs.items()))
    for name, p in report["profiles"].items():
        split = p.get("split")
        if split:
            busy = split["device_busy_fraction"]
            print(f"profile {name}: {split['wall_us_per_step'] / 1e3:.2f} ms a step"
                  + ("" if busy is None else f", device busy {busy:.0%}") + "; "
                  + ", ".join(f"{g} {s:.0%}" for g, s in split["shares"].items()) + f" ({split['share_basis']})")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = autocast_dtype(preset(PRESET).amp, device)
    deadline = START + args.time_limit

    def left() -> float:
        return deadline - time.monotonic()

    # one graph per (variant, batch): allow more than the default few recompilations
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    chosen = select(args)
    config = preset(PRESET, model=args.model)
    report = {"script": "tests/benchmarks/gpu_speed.py", "command": shlex.join([sys.executable, *sys.argv]),
              "hardware": hardware(device), "environment": environment_report(device),
              "settings": {"preset": PRESET, "model": config.model.to_dict(), "batch": args.batch,
                           "steps_per_window_at_batch": args.steps, "warmup_steps": args.warmup,
                           "rounds_planned": args.rounds, "profile_steps": args.profile_steps, "tiny": args.tiny,
                           "time_limit_s": args.time_limit, "autocast": str(dtype),
                           "compile_backend": args.compile_backend, "augment_on": "device",
                           "augmentation": {k: getattr(config, k) for k in ("policy", "mixup", "cutmix", "padding",
                                                                            "flip")}},
              "variants": {v.name: {"description": v.description, "compile_mode": v.compile_mode,
                                    "optimizer": v.optimizer, "input": v.source, "finite_check": v.finite_check,
                                    "blocking_copies": v.blocking_copies,
                                    "batch": args.batch * v.batch_mult, "status": "not reached"} for v in chosen},
              "profiles": {}, "rounds": {"done": 0, "seconds": [], "stopped_by_time_limit": False},
              "notes": ["batch-N variants: images/s only; their lr is scaled linearly for the record, and accuracy "
                        "at that rate is not measured here",
                        "ratio: a variant's images/s over the baseline's in the same round; verdict: "
                        "efficiency.speed_verdict on median_interval of those ratios",
                        "mfu: images/s x train_step_per_image FLOPs / the measured matrix rate"]}
    write_json(report, args.json)
    mm_dtype = torch.bfloat16 if device.type == "cuda" else (dtype or torch.float32)
    report["matmul"] = matmul_rate(device, args.matmul_size, mm_dtype)
    report["flops"] = flops_per_image(config.model)
    print(f"{report['environment']}\nmatrix rate {report['matmul']['tflop_per_s']:.1f} TFLOP/s; "
          f"{report['flops']['train_step_per_image'] / 1e9:.3f} GFLOP/image/step; {left():.0f} s left", flush=True)
    t0 = time.perf_counter()
    data, stats = load_train(args, device)
    data = data.to(device)
    report["data"] = {"images": len(data), "source": data.source, "on": str(device),
                      "load_s": round(time.perf_counter() - t0, 2)}
    write_json(report, args.json)

    trainers = build_all(chosen, data, stats, args, device, dtype, report, left)
    compiled = next((n for n in trainers if trainers[n].v.compile_mode is not None), None)
    for name in [n for n in ("baseline", compiled) if n in trainers]:
        if left() > 5:
            try:
                report["profiles"][name] = profile(trainers[name], args.profile_steps)
            except Exception as error:
                report["profiles"][name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            write_json(report, args.json)
    run_rounds(trainers, args, device, report, left)
    report["skipped"] = [{"variant": n, "reason": e["reason"]} for n, e in report["variants"].items()
                         if e["status"] == "skipped"]
    report["failed"] = [{"variant": n, "error": e["error"]} for n, e in report["variants"].items()
                        if e["status"] == "failed"]
    write_json(report, args.json)
    print_summary(report)
    print(f"wrote {args.json} after {elapsed():.0f} s", flush=True)


if __name__ == "__main__":
    main()
