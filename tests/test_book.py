"""The book's wiring: Colab badges and setup cells agree with _config.yml; every chapter is in the TOC,
is committed executed, and prints the environment it ran in; the online page stays readable (short code
lines, markers as tags, no path of the executing machine in an output); the package's dependencies
cover every module a chapter imports."""

import ast
import json
import re
import sys
from importlib.metadata import packages_distributions
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
    assert '"vit-from-scratch[book] @ "' in setup, \
        f"{path.name}: install the package with its [book] extra, so timm and ipywidgets come along"
    assert not code[0].get("outputs"), f"{path.name}: the setup cell must print nothing outside Colab"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_committed_executed_and_reports_its_environment(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code" and _source(c).strip()]
    assert all(c.get("execution_count") for c in code), f"{path.name}: commit the notebook executed end to end"
    counts = [c["execution_count"] for c in code]
    assert counts == sorted(counts), f"{path.name}: cells were not executed top to bottom in one run"
    text = "".join("".join(o.get("text", "")) for c in code for o in c.get("outputs", []))
    assert re.search(r"device: .+ \| torch \S+ \| python \S+( \| [\w.-]+ [^|]+)* \| mode: (full|quick)", text), \
        f"{path.name}: print(environment_report()) near the top"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_output_comes_from_one_uninterrupted_execution(path):
    """A cell re-run alone after the full run (its output pasted into the notebook) must not pass for
    part of that run: the counts are 1..N with no gap, and each cell starts within seconds of the end
    of the cell before it, by the kernel's own clock (nbclient stores it in ``metadata.execution``)."""
    from datetime import datetime

    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(code)}: re-execute the whole chapter "
        f"(make outputs CHAPTERS=book/{path.name}), not single cells")
    stamps = [c.get("metadata", {}).get("execution", {}) for c in code]
    assert all("iopub.execute_input" in s and "shell.execute_reply" in s for s in stamps), (
        f"{path.name}: execute with nbconvert/nbclient, which records when each cell ran")

    def clock(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    for k in range(1, len(code)):
        idle = (clock(stamps[k]["iopub.execute_input"]) - clock(stamps[k - 1]["shell.execute_reply"]))
        assert 0 <= idle.total_seconds() < 60, (
            f"{path.name}: cell {k + 1} started {idle} after cell {k} ended: the outputs are not one "
            "execution of the notebook; re-execute it from the top")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_cell_has_its_own_id(path):
    """nbformat 4.5 wants an ``id`` per cell (nbformat warns today and will refuse later); a cell added
    by a script without one, or copied with its neighbour's, fails here."""
    ids = [c.get("id") for c in _cells(path)]
    assert all(ids), f"{path.name}: cells {[k for k, i in enumerate(ids) if not i]} have no id"
    assert len(set(ids)) == len(ids), f"{path.name}: cell ids repeat"


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


# A code cell shows one idea in at most about 25 lines (DESIGN.md); loops, tables and figures go to the package or
# to hide-input cells. A cell of nothing but imports may take up to 30: one import per module reads better than
# imports crammed to save lines.
CELL_LINES = 25
IMPORT_CELL_LINES = 30


def _only_imports(source):
    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython magics: not an imports cell
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_visible_code_cells_show_one_idea_in_a_few_lines(path):
    hidden = {"hide-input", "remove-input", "remove-cell", "hide-cell"}
    long = []
    for i, cell in enumerate(_cells(path)):
        if cell["cell_type"] != "code" or hidden & set(cell.get("metadata", {}).get("tags", [])):
            continue
        source = _source(cell)
        limit = IMPORT_CELL_LINES if _only_imports(source) else CELL_LINES
        if len(source.splitlines()) > limit:
            long.append((i, len(source.splitlines()), limit))
    assert not long, (f"{path.name}: visible code cells over their limit (cell, lines, limit): {long}; split "
                      "them or move loops, tables and figures into the package or a hide-input cell")


def test_the_line_limit_sees_imports_cells_apart():
    assert _only_imports("import math\nfrom torch import (\n    nn, optim)\n")
    assert not _only_imports("import math\nx = math.pi\n")
    assert not _only_imports("%xmode Minimal\nimport math\n")
    assert not _only_imports("")


# Paths of the machine that executed a notebook: they mean nothing to a reader and leak the runner's layout.
_MACHINE_PATHS = re.compile(r"(/work/|/tmp/|/root/|/home/|/usr/|/opt/|/private/var/|site-packages|[A-Z]:\\Users)")


def _output_texts(cell):
    for output in cell.get("outputs", []):
        yield "".join(output.get("text", ""))
        yield "".join(output.get("data", {}).get("text/plain", ""))
        yield "".join(output.get("data", {}).get("text/html", ""))
        yield output.get("evalue", "")
        yield "\n".join(output.get("traceback", []))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_output_names_a_path_of_the_executing_machine(path):
    """Tracebacks (use %xmode Minimal), data sources and warnings must not print /work/..., /home/... etc."""
    for i, cell in enumerate(_cells(path)):
        for text in _output_texts(cell):
            match = _MACHINE_PATHS.search(text)
            assert not match, (f"{path.name} cell {i}: an output names a path of the executing machine: "
                               f"...{text[max(0, match.start() - 60):match.end() + 60]!r}...")


def _imported_modules(path):
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        lines = [line for line in _source(cell).splitlines() if not line.lstrip().startswith(("%", "!"))]
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.Import):
                yield from (alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                yield node.module.split(".")[0]


def _requirement_name(requirement):
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_package_and_its_book_extra_cover_every_module_a_chapter_imports():
    """`pip install "vit-from-scratch[book] @ git+..."` must give a Colab reader every import of every chapter."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["book"]}
    declared.add(project["name"])
    providers = packages_distributions()  # import name -> distributions that install it
    for path in CHAPTERS:
        for module in sorted(set(_imported_modules(path))):
            if module in sys.stdlib_module_names or module == "google":  # google.colab: Colab's own
                continue
            names = {d.lower().replace("_", "-") for d in providers.get(module, [])}
            if module == "vit_from_scratch":
                names.add(project["name"])
            assert names, f"{path.name} imports {module}, which no installed distribution provides"
            assert names & declared, (f"{path.name} imports {module} (from {sorted(names)}), which neither "
                                      f"pyproject's dependencies nor its [book] extra declare")


def test_the_footer_names_every_cpu_the_committed_outputs_ran_on():
    footer = yaml.safe_load((ROOT / "_config.yml").read_text())["html"]["extra_footer"]
    cpus = set()
    for path in CHAPTERS:
        for cell in json.loads(path.read_text())["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", ""))
                cpus |= set(re.findall(r"device: CPU \(([^,]+),", text))
    names = {"AMD EPYC" if "EPYC" in cpu else "Intel Xeon" if "Xeon" in cpu else cpu for cpu in cpus}
    missing = [name for name in sorted(names) if name not in footer]
    assert not missing, f"chapters ran on {sorted(cpus)}; the footer in _config.yml does not name {missing}"


def test_the_bibliography_parses_and_every_cited_key_is_in_it():
    from pybtex.database import parse_file

    keys = set(parse_file(str(ROOT / "book" / "references.bib")).entries)
    cited = set()
    for path in [*CHAPTERS, ROOT / "book" / "intro.md"]:
        for group in re.findall(r"\{cite:[pt]\}`([^`]+)`", path.read_text()):
            cited |= {key.strip() for key in group.split(",")}
    assert not cited - keys, f"cited but not in references.bib: {sorted(cited - keys)}"
