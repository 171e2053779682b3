"""The command line (``python -m vit_from_scratch.cli``, old name ``vit_from_scratch.train``): one clear line
per error, tracebacks only with --debug, Ctrl-C, and the export (issue 13, items 3, 5, 10, 11)."""

import json
import subprocess
import sys

import pytest
import torch

from _tiny_runs import TINY_MODEL, write_image_folder
from vit_from_scratch import cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("data"))


def _args(data_dir, out, *more):
    return ["--data-dir", str(data_dir), "--out", str(out), "--device", "cpu", "--model", json.dumps(TINY_MODEL),
            "--epochs", "1", "--low-res-epochs", "0", "--batch-size", "16", "--no-progress", *more]


def _errors(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_the_old_module_name_still_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "vit_from_scratch.train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--resume" in done.stdout and "--overwrite" in done.stdout


@pytest.mark.parametrize("case", ["data folder", "model field", "cuda", "batch", "subset", "export name"])
def test_errors_are_one_clear_line_without_a_traceback(tmp_path, data_dir, capsys, case):
    """Issue 13.10 (and 13.5, 13.11 as the command line reports them)."""
    out = tmp_path / "run"
    args, code, expected = {
        "data folder": (_args(tmp_path / "missing", out), 1, "missing"),
        "model field": (_args(data_dir, out, "--model", '{"depht": 2}'), 2, "unknown ViTConfig field"),
        "cuda": (_args(data_dir, out, "--device", "cuda"), 1, "CUDA is not available"),
        "batch": (_args(data_dir, out, "--batch-size", "500"), 1, "86 training images"),  # 10 held out
        "subset": (_args(data_dir, out, "--train-subset", "0"), 2, "--train-subset must be a positive"),
        "export name": (_args(data_dir, out, "--export", "../elsewhere"), 1, "plain name"),
    }[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert cli.main(args) == code
    err = _errors(capsys)
    assert err.startswith("error:") and expected in err, err
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("option, value, expected", [
    ("--grad-clip", "nan", "--grad-clip must be a finite number"),
    ("--grad-clip", "-1", "--grad-clip must be 0 or more"),
    ("--mixup", "-1", "--mixup must be 0 or more"),
    ("--mixup", "nan", "--mixup must be a finite number"),
    ("--cutmix", "-1", "--cutmix must be 0 or more"),
    ("--warmup-epochs", "-1", "--warmup-epochs must be 0 or more"),
    ("--warmup-epochs", "inf", "--warmup-epochs must be a finite number"),
    ("--padding", "1000", "--padding must be from 0 to 15"),
    ("--epochs", "99999999999999999999", "--epochs must be from 1 to 1000000"),
    ("--lr", "nan", "--lr must be a finite number"),
    ("--model", '{"qkv_bias": "false"}', "--model: qkv_bias must be True or False"),
    ("--model", '{"dim": "32"}', "--model: dim must be a whole number"),
    ("--model", '{"depth": 1.7}', "--model: depth must be a whole number"),
    ("--model", '{"mlp_ratio": Infinity}', "--model: mlp_ratio must be a finite number"),
])
def test_impossible_options_are_one_line_naming_the_option(tmp_path, data_dir, capsys, option, value, expected):
    """Issue 28.7, 28.9, 28.13: no silent acceptance, no OverflowError, no torch-internal message."""
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out, option, value)) == 2
    err = _errors(capsys)
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError):
        cli.main(_args(tmp_path / "missing", tmp_path / "run", "--debug"))


def test_ctrl_c_says_how_to_resume(tmp_path, data_dir, capsys, monkeypatch):
    """Issue 13.10: Ctrl-C prints one line and exits 130."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", interrupted)
    assert cli.main(_args(data_dir, tmp_path / "run")) == 130
    assert "interrupted; resume with --resume" in _errors(capsys)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_args(data_dir, tmp_path / "run", "--debug"))


def test_a_new_run_into_a_used_folder_needs_resume_or_overwrite(tmp_path, data_dir, capsys):
    """Issue 13.3 on the command line."""
    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out)) == 0
    before = (out / "last.pt").read_bytes()
    assert cli.main(_args(data_dir, out, "--seed", "1")) == 1
    err = _errors(capsys)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "last.pt").read_bytes() == before
    assert cli.main(_args(data_dir, out, "--seed", "1", "--overwrite")) == 0
    assert (out / "last.pt").read_bytes() != before


def test_export_with_no_steps(tmp_path, data_dir, capsys):
    """Issue 13.10: ``--max-steps 0 --export`` without --resume explains itself (no 'drop --resume');
    with --resume it exports the finished run; the name must be plain and existing weights are kept."""
    out, weights = tmp_path / "run", tmp_path / "weights"
    export = ["--export", "tiny", "--export-dir", str(weights)]
    assert cli.main(_args(data_dir, out, "--max-steps", "0", *export)) == 1
    err = _errors(capsys)
    assert "nothing to export" in err and "drop --resume" not in err
    assert cli.main(_args(data_dir, out)) == 0
    assert cli.main(_args(data_dir, out, "--resume", "--max-steps", "0", *export)) == 0
    assert (weights / "tiny.pt").exists() and (weights / "tiny.json").exists()
    assert cli.main(_args(data_dir, out, "--resume", "--max-steps", "0", *export)) == 1
    assert "--overwrite-export" in _errors(capsys)
    assert cli.main(_args(data_dir, out, "--resume", "--max-steps", "0", *export, "--overwrite-export")) == 0


def test_a_checkpoint_of_two_processes_is_refused_by_the_one_process_command(tmp_path, data_dir, capsys):
    """Issue 28.11: as 2 -> 1 processes under torchrun is refused, so is the one-process command's resume.
    The checkpoint is given the ``ranks`` list that rank 0 of a 2-process run writes (test_distributed)."""
    from vit_from_scratch.checkpoints import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    assert cli.main(_args(data_dir, out, "--epochs", "2", "--max-steps", "6")) == 0  # one epoch of two
    state = load_checkpoint(out / "last.pt")
    save_checkpoint(out / "last.pt", **state, ranks=[{"rng": state["rng"]}, {"rng": state["rng"]}])
    before = (out / "last.pt").read_bytes()
    assert cli.main(_args(data_dir, out, "--epochs", "2", "--resume")) == 1
    err = _errors(capsys)
    assert "written by 2 processes" in err and "torchrun --nproc_per_node=2" in err, err
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.parametrize("case", ["long name", "unwritable folder"])
def test_export_problems_are_found_before_training(tmp_path, data_dir, capsys, monkeypatch, case):
    """Issue 28.15: an export that would fail after training is refused before the first step."""
    from pathlib import Path

    out, weights = tmp_path / "run", tmp_path / "weights"
    name = "x" * 300 if case == "long name" else "tiny"
    if case == "unwritable folder":  # a read-only folder, as root (which may write anywhere) cannot make one
        write_bytes = Path.write_bytes

        def refuse(self, data):
            if self.parent == weights:
                raise PermissionError(13, "Permission denied")
            return write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", refuse)
    assert cli.main(_args(data_dir, out, "--export", name, "--export-dir", str(weights))) == 1
    err = _errors(capsys)
    assert err.startswith("error:") and ("100 characters" if case == "long name" else "--export-dir") in err, err
    assert not (out / "last.pt").exists(), "nothing may train before the export is known to work"
