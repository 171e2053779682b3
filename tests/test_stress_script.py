"""tests/stress_chapters.py: its run options and its tables (the script itself runs by hand, not in CI)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("stress_chapters", Path(__file__).parent / "stress_chapters.py")
stress = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stress)


def test_runs_are_threads_and_seed_pairs():
    assert stress.parse_run("1:0") == (1, 0) and stress.parse_run("2:7") == (2, 7)
    for bad in ("1", "a:0", "0:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            stress.parse_run(bad)


def test_tables_show_failures_and_every_claims_least_margin():
    claim = {"name": "beats chance", "direction": "above", "threshold": 0.15, "n": 500, "asserted": False}
    results = [
        {"chapter": "12_mae.ipynb", "threads": 1, "seed": 0, "ok": True, "seconds": 30.0,
         "claims": [{**claim, "value": 0.30, "margin_se": 7.3, "ratio": 2.0}]},
        {"chapter": "12_mae.ipynb", "threads": 2, "seed": 1, "ok": False, "seconds": 12.0, "cell": 33,
         "error": "AssertionError: x", "claims": [{**claim, "value": 0.16, "margin_se": 0.6, "ratio": 1.07}]},
    ]
    text = stress.tables(results, [(1, 0), (2, 1)])
    assert "pass (30 s)" in text and "**FAIL** cell 33: AssertionError: x" in text
    assert "1 of 2 chapter runs passed" in text
    row = next(line for line in text.splitlines() if "beats chance" in line)
    assert "0.16 to 0.3 (2 values)" in row and "+0.6 SE (n = 500)" in row and "full budget only" in row
