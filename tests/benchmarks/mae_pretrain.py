"""Chapter 12 (issue 31): MAE pretraining of chapter 12's encoder on CIFAR-10's 45,000-image training part,
several seeds one after another in one process, sized for a GPU session (``tests/benchmarks/gpu_mae.sh``)
and tested on the CPU at tiny sizes (``tests/test_mae_pretrain_script.py``).

The images are the package's ``validation_split(train, 5000, seed=0)`` training part: never the 5,000
validation images, never the test set, and never a label (``pretrain`` does not read them; the class names
are written only so that the weights load as a classifier). The recipe is chapter 12's (book/12_mae.ipynb):
ViT width 96, 6 blocks, 3 heads, patch 4, MLP ratio 2, fixed sin-cos positions; decoder width 64, 2 blocks,
4 heads; 75% masking, per-patch normalised targets; AdamW (0.9, 0.95), weight decay 0.05, the paper's
learning rate ``scaled_lr(1.5e-4, batch)``, warmup 5% of the epochs (at least 1), cosine to 0; crops padded
by size/8 pixels and flips.

Precision: ``vit_from_scratch.mae.pretrain`` runs in float32 (it has no autocast), and so does this script;
on a GPU TF32 matrix products are allowed (``--tf32 off`` turns them off). The data sits on the device
(``pretrain``'s loader puts it there and augments in batches).

For each seed k it writes into ``--out``, atomically, with ``export_weights`` (so that
``load_trained_model(name, directory=OUT)`` loads it, its SHA-256 checked):

* ``cifar10_mae_<size>px_seed<k>.pt``: ``vit_from_mae(mae).state_dict()`` in float16 (the encoder and a zero head);
* ``cifar10_mae_<size>px_seed<k>.json``: config, per-epoch loss history, epochs planned and run, whether the
  time limit stopped it, seconds, images/s, hardware (GPU name, torch version), the command line.

``--time-limit S`` counts seconds from this process's start (imports and data loading included): a seed
stops between epochs when the next epoch would not fit (its epoch time taken as the slowest of its last
three), and a seed whose first epoch would not fit is not started. A stopped seed's weights are still
written, with ``stopped_by_time_limit: true`` and the epochs it ran (its cosine schedule then did not end).

    VIT_DATA_DIR=/path/to/data python tests/benchmarks/mae_pretrain.py --size 32 --epochs 400 \\
        --batch-size 2048 --seeds 0,1,2 --device cuda --time-limit 500 --out OUT
"""
import time

START = time.monotonic()  # the time limit counts from here, imports included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from vit_from_scratch.checkpoints import check_export_name, export_weights, load_checkpoint  # noqa: E402
from vit_from_scratch.config import ViTConfig  # noqa: E402
from vit_from_scratch.data import load_cifar10, resize_images, validation_split  # noqa: E402
from vit_from_scratch.mae import MaskedAutoencoder, pretrain, vit_from_mae  # noqa: E402
from vit_from_scratch.mae_training import scaled_lr  # noqa: E402
from vit_from_scratch.recipe import TrainConfig  # noqa: E402
from vit_from_scratch.runtime import pick_device, seed_everything  # noqa: E402

MARGIN_S = 1.0  # kept free at the time limit for writing a seed's files


class OutOfTime(Exception):
    """Raised between epochs when the next epoch would not end before the time limit."""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the weights and JSON files")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10's folder (default: VIT_DATA_DIR)")
    ap.add_argument("--size", type=int, default=32, choices=(16, 32), help="image side in pixels")
    ap.add_argument("--epochs", type=int, default=100, help="epochs per seed (the schedule spans exactly these)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--base-lr", type=float, default=1.5e-4, help="the paper's base lr: lr = base_lr * batch / 256")
    ap.add_argument("--warmup-share", type=float, default=0.05, help="warmup as a share of the epochs (at least 1)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, run one after another")
    ap.add_argument("--device", default="auto", help="auto (pick_device), cuda, cpu, mps")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds from this process's start: stop between epochs when the next would not fit")
    ap.add_argument("--tf32", choices=("on", "off"), default="on", help="TF32 matrix products on a GPU")
    ap.add_argument("--dim", type=int, default=96)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=2.0)
    ap.add_argument("--pos", default="sincos", help="encoder positions: sincos (the paper's) or learned")
    ap.add_argument("--decoder-dim", type=int, default=64)
    ap.add_argument("--decoder-depth", type=int, default=2)
    ap.add_argument("--decoder-heads", type=int, default=4)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--padding", type=int, default=None, help="crop padding in pixels (default: size / 8)")
    ap.add_argument("--val-size", type=int, default=5000,
                    help="validation images held out of the training split (5000: the package's split)")
    ap.add_argument("--pool", type=int, default=None, help="use only this many training images (tests)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--log-every", type=int, default=10, help="print epoch 1, every n-th and the last")
    ap.add_argument("--work-dir", default=None,
                    help="scratch folder for the per-epoch checkpoint (default: a temporary folder, removed)")
    ap.add_argument("--overwrite", action="store_true", help="replace weights of the same name in --out")
    ap.add_argument("--remark", default=None,
                    help="how the run was made, written into each JSON as `remark` (e.g. what shared the machine)")
    args = ap.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated whole numbers, got {args.seeds!r}")
    if not args.seed_list:
        ap.error("--seeds names no seed")
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be at least 1")
    if not 0 <= args.warmup_share < 1:
        ap.error(f"--warmup-share must be in [0, 1), got {args.warmup_share}")
    if args.time_limit is not None and args.time_limit <= 0:
        ap.error(f"--time-limit must be above 0 seconds, got {args.time_limit}")
    return args


def elapsed() -> float:
    return time.monotonic() - START


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_cores": os.cpu_count(), "cpu": cpu_name(),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            pass
    return info


def commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent)
        return (done.stdout.strip() or None) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def load_pool(args):
    """The training part of CIFAR-10's training split (validation and test sets left out), at ``args.size``."""
    train_full, _ = load_cifar10(args.data_dir, download=False)  # the test split is loaded, never used
    train_part, _ = validation_split(train_full, args.val_size, seed=0)
    pool = train_part.subset(args.pool, seed=0) if args.pool else train_part
    if pool.images.shape[-1] != args.size:
        pool = resize_images(pool, args.size)
    return pool


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(None if args.device == "auto" else args.device)
    tf32 = device.type == "cuda" and args.tf32 == "on"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = {k: f"cifar10_mae_{args.size}px_seed{k}" for k in args.seed_list}
    for name in names.values():  # refuse before any training, not after it
        check_export_name(name, out, overwrite=args.overwrite)
    deadline = None if args.time_limit is None else START + args.time_limit

    pool = load_pool(args)
    cfg = ViTConfig(image_size=args.size, patch_size=args.patch, num_classes=len(pool.classes), dim=args.dim,
                    depth=args.depth, num_heads=args.heads, mlp_ratio=args.mlp_ratio, pos_embed_type=args.pos)
    decoder = dict(decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth, decoder_heads=args.decoder_heads,
                   mask_ratio=args.mask_ratio)
    padding = args.size // 8 if args.padding is None else args.padding
    hw, sha = hardware(device), commit()
    command = "python " + shlex.join(sys.argv if argv is None else ["tests/benchmarks/mae_pretrain.py", *argv])
    print(f"data: {len(pool):,} images of {args.size} px ({pool.source}) | device {device} "
          f"{hw.get('gpu', hw['cpu'])} | torch {torch.__version__} | float32, TF32 {'on' if tf32 else 'off'} | "
          f"{elapsed():.1f} s since start", flush=True)

    scratch = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(
        prefix="mae-pretrain-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    estimate = None  # seconds per epoch, from the last seed: whether another seed's first epoch fits
    ran = []
    try:
        for seed in args.seed_list:
            if deadline is not None and estimate is not None and time.monotonic() + estimate + MARGIN_S > deadline:
                print(f"seed {seed}: not started, its first epoch (about {estimate:.1f} s) would not end before "
                      f"the time limit ({args.time_limit:g} s; {elapsed():.0f} s gone)", flush=True)
                continue
            record = run_seed(seed, pool, cfg, decoder, padding, args, device, deadline, scratch / f"seed{seed}")
            estimate = max(record["epoch_wall_s"][-3:])
            state = record.pop("_state")
            info = {**record, "image_size": args.size, "tf32": tf32, "hardware": hw, "command": command,
                    "commit": sha, "time_limit_s": args.time_limit,
                    **({"remark": args.remark} if args.remark else {})}
            note = (f"tests/benchmarks/mae_pretrain.py: MAE-pretrained encoder (labels unused), head zero; "
                    f"seed {seed}, "
                    f"{record['epochs_run']} of {record['epochs_planned']} epochs on {len(pool):,} images of "
                    f"{args.size} px; {hw.get('gpu', hw['cpu'])}, torch {torch.__version__}, float32"
                    f"{' + TF32' if tf32 else ''}; {record['seconds'] / 60:.1f} min")
            path = export_weights(state, names[seed], note=note, extra=info, directory=out,
                                  overwrite=args.overwrite)
            ran.append(seed)
            stopped = " | stopped by the time limit" if record["stopped_by_time_limit"] else ""
            print(f"seed {seed}: {record['epochs_run']}/{record['epochs_planned']} epochs in {record['seconds']:.1f} s "
                  f"({record['images_per_s']:.0f} img/s), loss {state['history'][0]['loss']:.4f} -> "
                  f"{state['history'][-1]['loss']:.4f}{stopped}"
                  f" | wrote {path.name} ({path.stat().st_size / 2**20:.2f} MiB)", flush=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"done: seeds {ran} of {args.seed_list} in {elapsed():.1f} s", flush=True)
    return 0 if ran else 1


def run_seed(seed, pool, cfg, decoder, padding, args, device, deadline, work) -> dict:
    """Pretrain one seed; stop between epochs if the next would pass ``deadline``. Returns the JSON's fields
    and, under ``_state``, what ``export_weights`` needs."""
    seed_everything(seed)
    mae = MaskedAutoencoder(cfg, **decoder)
    config = TrainConfig(model=cfg, epochs=args.epochs, batch_size=args.batch_size,
                         lr=scaled_lr(args.base_lr, args.batch_size), min_lr=0.0,
                         warmup_epochs=max(1.0, args.warmup_share * args.epochs), weight_decay=args.weight_decay,
                         betas=(0.9, 0.95), grad_clip=0.0, padding=padding, flip=True, seed=seed,
                         amp="off")  # pretrain runs in float32 whatever amp says; the record says so
    walls, last = [], [time.monotonic()]
    start = last[0]

    def on_epoch(epoch, _model):  # after pretrain wrote the epoch's checkpoint
        now = time.monotonic()
        walls.append(now - last[0])
        last[0] = now
        if deadline is not None and epoch < args.epochs and now + max(walls[-3:]) + MARGIN_S > deadline:
            raise OutOfTime(epoch)

    def log(line):
        epoch = int(line.split("epoch ")[1].split("/")[0])
        if epoch == 1 or epoch == args.epochs or epoch % args.log_every == 0:
            print(f"seed {seed}: {line} ({elapsed():.0f} s since start)", flush=True)

    try:
        pretrain(mae, pool, config, device=device, out_dir=work, overwrite=True, on_epoch=on_epoch, log=log)
        stopped = False
    except OutOfTime as stop:
        print(f"seed {seed}: stopped after epoch {stop.args[0]} of {args.epochs}: the next would not end before "
              f"the time limit ({args.time_limit:g} s; {elapsed():.0f} s gone)", flush=True)
        stopped = True
    seconds = time.monotonic() - start
    state = load_checkpoint(work / "mae_last.pt")  # the history (also of a stopped run) and the statistics
    history = state["history"]
    shutil.rmtree(work, ignore_errors=True)
    train_s = sum(r["epoch_time_s"] for r in history)
    images = sum(r["images_per_s"] * r["epoch_time_s"] for r in history)
    vit = vit_from_mae(mae).cpu()
    mean, std = [float(v) for v in state["mean"]], [float(v) for v in state["std"]]
    return {"_state": {"model": vit.state_dict(), "config": config.to_dict(), "classes": list(pool.classes),
                       "mean": mean, "std": std, "history": history},
            "what": "MAE pretraining of chapter 12's encoder (tests/benchmarks/mae_pretrain.py, issue 31)",
            "seed": seed, "epochs_planned": args.epochs, "epochs_run": len(history), "steps": history[-1]["step"],
            "stopped_by_time_limit": stopped, "seconds": seconds, "train_seconds": train_s,
            "images_per_s": images / train_s, "epoch_wall_s": [round(w, 3) for w in walls],
            "decoder": mae.settings, "precision": "float32 (pretrain has no autocast)",
            "data": {"source": pool.source, "images": len(pool), "validation_held_out": args.val_size,
                     "split_seed": 0, "pool_limit": args.pool, "labels_used": False, "test_set_used": False}}


if __name__ == "__main__":
    sys.exit(main())
