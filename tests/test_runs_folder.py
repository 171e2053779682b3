"""runs_folder: runs stay local unless a Colab reader opts in to Google Drive."""

import sys
import types
from pathlib import Path

import pytest

from vit_from_scratch.checkpoints import runs_folder


def test_runs_stay_local_by_default():
    assert runs_folder() == Path("runs") and runs_folder(local="elsewhere") == Path("elsewhere")


def test_keep_on_drive_outside_colab_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", None)  # importing it fails, as outside Colab
    with pytest.raises(RuntimeError, match="only Google Colab can mount; .*set keep_on_drive=False"):
        runs_folder(keep_on_drive=True)


def test_keep_on_drive_in_colab_mounts_and_makes_the_folder(monkeypatch, tmp_path):
    mounted = []
    drive = types.SimpleNamespace(mount=lambda where: mounted.append(where))
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    folder = runs_folder(keep_on_drive=True, mount_point=str(tmp_path))
    assert mounted == [str(tmp_path)]
    assert folder == tmp_path / "MyDrive" / "vit_from_scratch" / "runs" and folder.is_dir()
