"""Execute every chapter at the quick budget under perturbations that change the numerics.

CI executes the chapters once, on one machine. A short run's numbers move with the CPU, the thread
count, the torch version and the seed, so an assertion that holds there may fail on a reader's
laptop. This script runs each chapter under several of those perturbations and writes a table:

* one thread and two threads (``OMP_NUM_THREADS``);
* other seeds (``VIT_SEED``: every seed ``seed_everything``, ``fit`` and the linear probe set is
  shifted by it).

Every measured claim a chapter makes through ``vit_from_scratch.runtime.claim`` is logged
(``VIT_CLAIMS_LOG``), so the second table lists each claim's quick-budget values, its margin from
the threshold (in binomial standard errors for an accuracy) and whether the quick run asserts it.

It is not part of CI (it takes a few times CI's time). From the repository root:

    VIT_DATA_DIR=/tmp/data python tests/stress_chapters.py --out stress/
    python tests/stress_chapters.py --chapters book/12_mae.ipynb --runs 1:0 2:3

``--runs`` takes ``THREADS:SEED`` pairs (default ``1:0 2:0 2:1 2:2``). The tables go to
``OUT/stress.md`` and the raw results to ``OUT/stress.json``; results already in ``OUT`` for other
runs or chapters are kept, so a long stress run can be done in parts. A chapter's failure is
printed with its cell and error, and the exit status is 1 when any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ("1:0", "2:0", "2:1", "2:2")


def parse_run(text: str) -> tuple[int, int]:
    try:
        threads, seed = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected THREADS:SEED, e.g. 1:0") from None
    if threads < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: THREADS must be at least 1")
    return threads, seed


def execute(chapter: Path, threads: int, seed: int, log: Path, timeout: int) -> dict:
    """Execute one chapter in a fresh kernel with the perturbation's environment; never raises."""
    env = {"VIT_QUICK": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "VIT_SEED": str(seed), "VIT_CLAIMS_LOG": str(log), "JUPYTER_PLATFORM_DIRS": "1",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    nb = nbformat.read(chapter, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(chapter.parent)}})
    start = time.perf_counter()
    result = {"chapter": chapter.name, "threads": threads, "seed": seed, "ok": True}
    try:
        client.execute()
    except CellExecutionError as error:
        cell = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        result.update(ok=False, cell=cell, error=f"{error.ename}: {error.evalue}"[:500])
    except Exception as error:  # a kernel that died or a timeout is a failure too
        result.update(ok=False, cell=None, error=f"{type(error).__name__}: {error}"[:500])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def read_claims(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def tables(results: list[dict], runs: list[tuple[int, int]]) -> str:
    names = [f"{t} thr, seed {s}" for t, s in runs]
    lines = ["| chapter | " + " | ".join(names) + " |", "|---" * (len(runs) + 1) + "|"]
    for chapter in dict.fromkeys(r["chapter"] for r in results):
        cells = []
        for t, s in runs:
            r = next((r for r in results if r["chapter"] == chapter and (r["threads"], r["seed"]) == (t, s)),
                     None)
            cells.append("—" if r is None else f"pass ({r['seconds']:.0f} s)" if r["ok"]
                         else f"**FAIL** cell {r['cell']}: {r['error'][:80]}")
        lines.append(f"| {chapter} | " + " | ".join(cells) + " |")
    failed = sum(not r["ok"] for r in results)
    lines += ["", f"{len(results) - failed} of {len(results)} chapter runs passed.", ""]
    # the claims: one row per (chapter, claim), its quick values over the runs
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        for c in r.get("claims", []):
            rows.setdefault((r["chapter"], c["name"]), []).append(c)
    lines += ["| chapter | claim | threshold | quick values (all runs) | least margin | asserted at quick |",
              "|---|---|---|---|---|---|"]
    for (chapter, name), cs in rows.items():
        values = [c["value"] for c in cs]
        sign = ">" if cs[0]["direction"] == "above" else "<"
        if cs[0]["n"] is not None:
            margin = f"{min(c['margin_se'] for c in cs):+.1f} SE (n = {cs[0]['n']})"
        else:
            ratios = [c["ratio"] for c in cs if c["ratio"] is not None]
            margin = f"value / threshold {min(ratios) if sign == '>' else max(ratios):.2f}" if ratios else "—"
        lines.append(f"| {chapter} | {name} | {sign} {cs[0]['threshold']:.4g} | {min(values):.4g} to "
                     f"{max(values):.4g} ({len(values)} values) | {margin} | "
                     f"{'yes' if any(c['asserted'] for c in cs) else 'no (full budget only)'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapters", nargs="*", type=Path,
                        default=sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb")))
    parser.add_argument("--runs", nargs="*", type=parse_run, default=[parse_run(r) for r in DEFAULT_RUNS],
                        help="THREADS:SEED pairs (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("stress"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    missing = [str(c) for c in args.chapters if not c.exists()]
    if missing:
        parser.error(f"no such chapter: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "stress.json"
    earlier = json.loads(saved.read_text()) if saved.exists() else []
    runs = list(dict.fromkeys([*((r["threads"], r["seed"]) for r in earlier), *args.runs]))
    names = {c.name for c in args.chapters}
    results = [r for r in earlier  # kept unless this invocation runs them again
               if r["chapter"] not in names or (r["threads"], r["seed"]) not in args.runs]
    for threads, seed in args.runs:
        for chapter in args.chapters:
            log = (args.out / f"claims-{chapter.stem}-t{threads}-s{seed}.jsonl").resolve()
            log.unlink(missing_ok=True)
            result = execute(chapter.resolve(), threads, seed, log, args.timeout)
            result["claims"] = read_claims(log)
            results.append(result)
            status = "pass" if result["ok"] else f"FAIL cell {result['cell']}: {result['error']}"
            print(f"{chapter.name} threads={threads} seed={seed}: {status} ({result['seconds']:.0f} s)",
                  flush=True)
            saved.write_text(json.dumps(results, indent=1))
            (args.out / "stress.md").write_text(tables(results, runs))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
