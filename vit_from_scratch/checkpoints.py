"""Chapter 6: files that survive a crash — atomic writes, a run's folder, checkpoints and the shipped weights.

A file is written to a temporary name beside its destination and renamed over it in one step, so a
reader (or a resumed run) sees the old file or the new one, never half of one.

Checkpoints hold only tensors and plain data (numbers, strings, lists, tuples, dicts) and are read
with ``torch.load(..., weights_only=True)``: unpickling anything else can run arbitrary code, so a
planted or downloaded ``last.pt`` is refused instead of executed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ViTConfig
from .model import VisionTransformer
from .runtime import durable_replace, pick_device

__all__ = [
    "WEIGHTS_DIR", "CheckpointError", "atomic_write", "check_writable", "check_room", "remove_stale_temporaries",
    "checkpoint_bytes", "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "check_export_name",
    "export_weights", "file_sha256", "load_trained_model", "runs_folder", "RUN_FILES", "TEST_FILE", "prepare_out_dir",
    "data_differences", "refuse_other_run",
]

WEIGHTS_DIR = Path(__file__).parent / "weights"


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read safely: corrupt, truncated, or not plain data."""


# --------------------------------------------------------------------------- writing files safely


def _no_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    # torch.save reports a failed write as a RuntimeError from its zip writer, without an errno
    return isinstance(error, RuntimeError) and ("write failed" in str(error) or "unexpected pos" in str(error))


def _free_mib(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 2**20
    except OSError:
        return float("nan")


def atomic_write(write: Callable[[Path], object], path: str | os.PathLike) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path`` atomically.

    The temporary name carries the process id, so two processes never write the same temporary file. A
    failed write (a full disk, an interruption) leaves ``path`` as it was; :func:`durable_replace` flushes
    the bytes and the rename to the disk, so a power cut never leaves an empty file either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        durable_replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if not _no_space(error):
            raise
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise OSError(errno.ENOSPC, f"no space left on the device to write {path} "
                                    f"({_free_mib(path.parent):.0f} MiB free); {kept}; free some space and "
                                    "try again") from error
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` leaves for ``names`` in ``folder`` when a process
    dies mid-write (``.last.pt.tmp-<pid>``); returns what was removed."""
    folder = Path(folder)
    stale = [p for name in names for p in folder.glob(f".{name}.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_writable(folder: str | os.PathLike, what: str = "output folder (--out)") -> Path:
    """Create ``folder`` if needed and write and remove a probe file in it, so that a folder that cannot
    hold checkpoints (or exported weights: ``what`` names the option) is found before training starts,
    not after an epoch."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder; choose another {what}")
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        reason = "no space left on the device" if error.errno == errno.ENOSPC else error.strerror or str(error)
        raise OSError(error.errno, f"cannot write into {folder} ({reason}); choose another {what} or fix "
                                   "its permissions") from error
    return folder


def check_room(folder: str | os.PathLike, nbytes: int, replaces: str | os.PathLike | None = None) -> None:
    """Refuse to start when ``folder``'s disk cannot hold two checkpoints of about ``nbytes``: replacing one
    atomically writes the new file beside the old. The file it ``replaces``, if there, already holds its room."""
    held = min(Path(replaces).stat().st_size, nbytes) if replaces is not None and Path(replaces).exists() else 0
    free = shutil.disk_usage(folder).free
    if free < 2 * nbytes - held:
        raise OSError(errno.ENOSPC, f"no space left for checkpoints in {folder}: {free / 2**20:.1f} MiB free, "
                                    f"a checkpoint needs about {nbytes / 2**20:.1f} MiB and its atomic replace "
                                    f"two at once ({(2 * nbytes - held) / 2**20:.1f} MiB more); free some space "
                                    "or choose another output folder (--out)")


# --------------------------------------------------------------------------- random-number states as plain data


# --------------------------------------------------------------------------- a run's folder

TEST_FILE = "test.json"  # a finished run's test numbers, read once after its last epoch (fit's final_test_set)
RUN_FILES = ("last.pt", "history.json", TEST_FILE)  # what a training run writes into its output folder


def prepare_out_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool = False,
                    files: tuple[str, ...] = RUN_FILES) -> Path:
    """Check that ``out_dir`` can take this run before any training: it is a writable folder (a probe file
    is written and removed), temporaries left by a crash are removed, and an earlier run in it is refused
    unless ``resume`` continues it or ``overwrite`` replaces it (its files are then deleted). ``files``: what
    the run writes, its checkpoint first (MAE pretraining writes ``mae_last.pt``)."""
    if resume and overwrite:
        raise ValueError("resume continues the run in the output folder, overwrite starts over: choose one")
    out = check_writable(out_dir)
    remove_stale_temporaries(out, files)
    held = [name for name in files if (out / name).exists()]
    if resume and not (out / files[0]).exists():
        raise FileNotFoundError(f"no checkpoint at {out / files[0]} to resume from; train first, or drop "
                                "--resume (resume=False)")
    if held and not resume:
        if not overwrite:
            raise FileExistsError(f"{out} already holds a run ({', '.join(held)}); continue it with --resume "
                                  "(resume=True), start over with --overwrite (overwrite=True), or choose "
                                  "another output folder")
        for name in held:
            (out / name).unlink()
    return out


def data_differences(state: dict, mean: tuple[float, ...], std: tuple[float, ...],
                     classes: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """How a checkpoint's training data (its normalisation, and ``classes`` if given) differ from the data now
    given, one line each: a resume on other data would change what the model sees in the middle of the run."""
    diffs = []
    for key, now in (("mean", mean), ("std", std)):
        saved = state.get(key)
        if saved is not None and not (len(saved) == len(now) and all(
                math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(saved, now))):
            diffs.append(f"{key}: checkpoint {[round(v, 4) for v in saved]}, now {[round(v, 4) for v in now]}")
    if classes is not None and state.get("classes") is not None and list(state["classes"]) != list(classes):
        diffs.append(f"classes: checkpoint {list(state['classes'])}, now {list(classes)}")
    return diffs


def refuse_other_run(path: Path, config_diffs: list[str], data_diffs: list[str], *, data_option: str = "--data-dir",
                     fresh: str = "--overwrite, or another --out") -> None:
    """Refuse to resume ``path`` when the configuration or the training data differ from the checkpoint's, one
    line per difference (``config_diffs`` from :func:`~vit_from_scratch.recipe.config_differences`,
    ``data_diffs`` from :func:`data_differences`), saying what to do instead."""
    if config_diffs:
        raise ValueError(f"{path} was written by a run with another configuration:\n  " + "\n  ".join(config_diffs)
                         + f"\nresume with the same options, or start fresh ({fresh})")
    if data_diffs:
        raise ValueError(f"{path} was trained on other training data (its normalisation would change mid-run): "
                         + "; ".join(data_diffs) + f"; resume with the run's own data ({data_option}), or start "
                         f"fresh ({fresh})")


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About the size of a checkpoint: the weights and AdamW's two moments, plus room for the rest."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters()) + 2**20


def rng_state() -> dict:
    """Python's, NumPy's and torch's generator states as tensors and lists (safe to load)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, **state: Any) -> None:
    """``torch.save(state)`` to a temporary file beside ``path``, then an atomic rename. ``state`` must be
    tensors and plain data, or :func:`load_checkpoint` refuses it."""
    atomic_write(lambda tmp: torch.save(state, tmp), Path(path))


def _safe_load(path: Path, map_location: Any, fix: str) -> Any:
    """``torch.load`` with ``weights_only=True``, every failure turned into one error naming ``path``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower() or "weights_only" in str(error):
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects other than tensors and plain data, and "
                "unpickling them could run arbitrary code (a file from someone else, or from an older "
                f"version of this package); use only files your own runs wrote; {fix}") from error
        raise CheckpointError(f"{path} is corrupted ({error}); {fix}") from error
    except (EOFError, RuntimeError, IndexError, ValueError, KeyError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is empty, truncated or corrupted ({type(error).__name__}: {first}); "
                              f"{fix}") from error


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    fix = "resume from another run's last.pt (--resume with another --out), or start this run again (--overwrite)"
    state = _safe_load(path, map_location, fix)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint; {fix}")
    return state


# --------------------------------------------------------------------------- the shipped model


def check_export_name(name: str, directory: str | os.PathLike = WEIGHTS_DIR, *, overwrite: bool = False) -> None:
    """An export name is a plain, short file name (no folders) and ``directory`` is a folder this process can
    write; existing weights are replaced only on request. Checked before training, so that an export that
    would fail is found before the run, not after it."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", name or ""):
        short = f" ({len(name)} characters)" if len(name or "") > 100 else ""
        raise ValueError(f"the weights' name must be a plain name of at most 100 characters such as 'cifar10_vit' "
                         f"(letters, digits, _ . -; no folders), got {name!r}{short}")
    existing = [p for p in (Path(directory) / f"{name}.pt", Path(directory) / f"{name}.json") if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; refusing to replace it; pass overwrite=True "
                              "(--overwrite-export) to replace it, or choose another name")
    check_writable(directory, "export folder (--export-dir)")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex (what ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a weights JSON says about its tensors; "fields_sha256" covers these, "sha256" the .pt file.
_DESCRIPTION = ("model", "classes", "mean", "std")


def _fields_sha256(info: dict) -> str:
    """The SHA-256 of the JSON's model config, class names, mean and std (compact JSON, sorted keys)."""
    described = {k: info.get(k) for k in _DESCRIPTION}
    return hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_description(info: dict, config: ViTConfig, meta: Path | str, fix: str) -> None:
    """Refuse class names and normalisation that cannot belong to a model of ``config``: as many distinct
    names as the head has outputs, one finite mean in [0, 1] and one std in (0, 1] per input channel
    (``meta`` names the file, or the checkpoint, in the error)."""
    classes, C = info.get("classes"), config.in_channels
    if not isinstance(classes, list) or len(classes) != config.num_classes:
        count = len(classes) if isinstance(classes, list) else 0
        raise CheckpointError(f"{meta} lists {count} class names for a head of {config.num_classes} outputs; {fix}")
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise CheckpointError(f"{meta}'s class names must be distinct, non-empty strings, got {classes}; {fix}")
    for key, low, low_ok in (("mean", 0.0, True), ("std", 0.0, False)):
        values = info.get(key)
        plausible = isinstance(values, list) and len(values) == C and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= low if low_ok else v > low) and v <= 1
            for v in values)
        if not plausible:
            bounds = "in [0, 1]" if low_ok else "in (0, 1]"
            raise CheckpointError(f"{meta}: {key} must be {C} numbers {bounds} (one per input channel, for "
                                  f"images scaled to [0, 1]), got {values}; {fix}")


def export_weights(checkpoint: Any, name: str, *, note: str, extra: dict | None = None,
                   directory: str | os.PathLike = WEIGHTS_DIR, half: bool = True, overwrite: bool = False) -> Path:
    """Write a weights-only file ``<name>.pt`` (float16 by default) and ``<name>.json`` (config, class names,
    normalisation, history, ``note``) for :func:`load_trained_model`. A run with ``ema`` exports the average
    of its weights, the model it evaluated. The JSON holds the SHA-256 of the ``.pt`` file (``sha256``) and
    of its own model, classes, mean and std (``fields_sha256``), which :func:`load_trained_model` verifies.

    Args:
        checkpoint: a checkpoint's path, a loaded checkpoint (dict), or a ``FitResult`` (its checkpoint).
        overwrite: replace existing files of that name (the shipped weights are refused otherwise).
    """
    check_export_name(name, directory, overwrite=overwrite)
    checkpoint = getattr(checkpoint, "checkpoint", checkpoint)
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    directory = Path(directory)
    weights = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
               for k, v in state.get("average", state)["model"].items()}  # an EMA run ships its average
    info = {"name": name, "model": ViTConfig.from_dict(state["config"]["model"]).to_dict(),
            "train_config": state["config"], "classes": list(state["classes"]), "mean": list(state["mean"]),
            "std": list(state["std"]), "history": state["history"], "note": note,
            "dtype": "float16" if half else "float32", **(extra or {})}
    info = json.loads(json.dumps(info))  # as the JSON file will read back: the hash covers exactly that
    _check_description(info, ViTConfig.from_dict(info["model"]), "the checkpoint to export",
                       "nothing was exported; export a checkpoint whose classes, mean and std fit its model")
    atomic_write(lambda tmp: torch.save(weights, tmp), directory / f"{name}.pt")
    info.update(sha256=file_sha256(directory / f"{name}.pt"), fields_sha256=_fields_sha256(info))
    atomic_write(lambda tmp: tmp.write_text(json.dumps(info, indent=1)), directory / f"{name}.json")
    return directory / f"{name}.pt"


def load_trained_model(name: str = "cifar10_vit", *, device: torch.device | str | None = None,
                       directory: str | os.PathLike = WEIGHTS_DIR) -> tuple[VisionTransformer, dict]:
    """The model the training chapter trained and the package ships, in eval mode, with its info
    (config, classes, mean/std for normalisation, history, how it was made).

    Checked before the weights are used: the ``.pt`` file's SHA-256 against the JSON's ``sha256`` (before
    it is unpickled), and the JSON's model, classes, mean and std against its ``fields_sha256``. The
    tensors' shapes are checked against the config, the number of class names against the head, and mean
    and std for plausibility (one per channel, in [0, 1]); a different ``num_heads`` or ``norm_eps``, other
    class names or other statistics of the right length fit every shape, so only the hashes catch those.
    Weights exported before the hashes existed have none, and get the other checks only.
    """
    directory = Path(directory)
    weights, meta = directory / f"{name}.pt", directory / f"{name}.json"
    if not weights.exists():
        available = sorted(p.stem for p in directory.glob("*.pt")) if directory.is_dir() else []
        raise FileNotFoundError(f"no shipped weights {name!r} in {directory} (found: {available or 'none'}); "
                                "run book/06_training.ipynb or `python -m vit_from_scratch.cli --export NAME` "
                                "to make them")
    fix = "re-export the weights (export_weights, or `python -m vit_from_scratch.cli --resume --export NAME`)"
    if not meta.exists():
        raise FileNotFoundError(f"{meta} is missing: the weights {weights.name} need it (config, classes, "
                                f"normalisation); {fix}")
    try:
        info = json.loads(meta.read_text())
        config = ViTConfig.from_dict(info["model"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{meta} is corrupted or incomplete ({type(error).__name__}: {error}); {fix}") from error
    if "sha256" in info and file_sha256(weights) != info["sha256"]:
        raise CheckpointError(f"{weights} does not match the SHA-256 in {meta}: the file was damaged or replaced "
                              f"after the export; {fix}")
    if "fields_sha256" in info and _fields_sha256(info) != info["fields_sha256"]:
        raise CheckpointError(f"the model, classes, mean or std in {meta} were changed after the export (their "
                              f"SHA-256 differs from fields_sha256); {fix}")
    state = _safe_load(weights, "cpu", fix)
    _check_description(info, config, meta, fix)
    model = VisionTransformer(config)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (AttributeError, RuntimeError) as error:
        first = str(error).strip().splitlines()[:3] if isinstance(error, RuntimeError) else [str(error)]
        raise CheckpointError(f"the weights in {weights} do not fit the model described in {meta} "
                              f"({' '.join(line.strip() for line in first)}); {fix}") from error
    device = torch.device(device) if device is not None else pick_device()
    return model.to(device).eval(), info


def runs_folder(keep_on_drive: bool = False, *, local: str | os.PathLike = "runs",
                drive_folder: str = "vit_from_scratch/runs", mount_point: str = "/content/drive") -> Path:
    """Where training runs (``last.pt``, ``history.json``) go: ``local``, or with ``keep_on_drive=True`` in
    Google Colab a folder on the reader's Google Drive, so that ``--resume`` survives a recycled runtime.

    Mounting the Drive asks the reader for permission in the browser; nothing else changes. Outside Colab
    ``keep_on_drive=True`` is an error that says so (runs then stay in ``local``).
    """
    if not keep_on_drive:
        return Path(local)
    try:
        from google.colab import drive
    except ImportError:
        raise RuntimeError("keep_on_drive=True keeps runs on Google Drive, which only Google Colab can mount; "
                           f"here runs stay in the local folder {str(local)!r}: set keep_on_drive=False") from None
    drive.mount(mount_point)
    folder = Path(mount_point) / "MyDrive" / drive_folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder
