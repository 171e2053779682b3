"""The book's wiring: Colab badges and setup cells agree with _config.yml; every chapter is in the TOC,
is committed executed, and prints the environment it ran in."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _repo_and_branch():
    url = CONFIG["repository"]["url"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", url)
    assert match, f"repository.url in _config.yml must be a GitHub repository, got {url}"
    return match.group(1), CONFIG["repository"]["branch"]


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _source(cell):
    return "".join(cell["source"])


def test_there_are_chapters():
    assert CHAPTERS, "no chapters found in book/"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_colab_badge_points_at_this_notebook_in_the_configured_repository(path):
    repo, branch = _repo_and_branch()
    first = _source(_cells(path)[0])
    expected = f"https://colab.research.google.com/github/{repo}/blob/{branch}/book/{path.name}"
    assert f"]({expected})" in first, f"{path.name}: first cell must carry the Colab badge linking {expected}"
    assert "colab-badge.svg" in first


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_setup_cell_installs_the_configured_repository_only_in_colab(path):
    repo, branch = _repo_and_branch()
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    setup = _source(code[0])
    assert '"google.colab" in sys.modules' in setup
    assert "import vit_from_scratch" in setup and "except ImportError" in setup
    installs = re.findall(r"git\+https://github\.com/([^\"'@\s]+)@([^\"'\s]+)", setup)
    assert installs == [(repo, branch)], f"{path.name}: setup cell installs {installs}, _config.yml says {(repo, branch)}"
    assert not code[0].get("outputs"), f"{path.name}: the setup cell must print nothing outside Colab"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_committed_executed_and_reports_its_environment(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code" and _source(c).strip()]
    assert all(c.get("execution_count") for c in code), f"{path.name}: commit the notebook executed end to end"
    counts = [c["execution_count"] for c in code]
    assert counts == sorted(counts), f"{path.name}: cells were not executed top to bottom in one run"
    text = "".join("".join(o.get("text", "")) for c in code for o in c.get("outputs", []))
    assert re.search(r"device: .+ \| torch \S+ \| python \S+ \| mode: (full|quick)", text), \
        f"{path.name}: print(environment_report()) near the top"


def _toc_files(entries):
    for entry in entries:
        if "file" in entry:
            yield entry["file"]
        yield from _toc_files(entry.get("chapters", []) + entry.get("sections", []) + entry.get("parts", []))


def test_every_chapter_is_in_the_toc_and_every_toc_entry_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"], *_toc_files(toc.get("parts", []) + toc.get("chapters", []))]
    for f in files:
        assert any((ROOT / f).with_suffix(s).exists() for s in (".md", ".ipynb")), f"_toc.yml names missing {f}"
    for path in CHAPTERS:
        assert f"book/{path.stem}" in files, f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_code_reads_on_the_online_page(path):
    """The page cuts code lines longer than 88 characters off, and nbval markers belong in cell tags."""
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code":
            continue
        lines = _source(cell).splitlines()
        long = [line for line in lines if len(line) > 88]
        assert not long, f"{path.name} cell {i}: {len(long)} code lines over 88 characters, e.g. {long[0]!r}"
        markers = [line for line in lines if line.lstrip().startswith("# NBVAL_")]
        assert not markers, f"{path.name} cell {i}: {markers[0].strip()!r} as a comment; use the cell tag instead"
