"""The package's layout shows the book's order: a module of chapter N imports only modules of chapters
up to N and the shared helpers, no module reaches for another's private names, and files stay small
enough to read in one sitting."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vit_from_scratch"
MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")

# The chapter that introduces each module; 0 marks the shared helpers every chapter may use.
CHAPTER = {
    "runtime": 0, "plotting": 0, "diagrams": 0,
    "patches": 1, "positions": 2, "attention": 3, "encoder": 4,
    "config": 5, "model": 5, "state_dicts": 5, "interop": 5,
    "data": 6, "loaders": 6, "checkpoints": 6, "recipe": 6, "training": 6, "cli": 6, "train": 6, "parallel": 6,
    "policies": 6, "averaging": 6, "evaluation": 6, "loss_guard": 6, "near_copies": 6,
    "attention_maps": 7, "attention_plots": 7, "explorer": 7, "attention_checks": 7,
    "efficiency": 8,
    "cnn": 9, "distillation": 9, "learning_curve": 9, "small_data": 9,
    "windows": 10, "hybrid": 10, "pyramid": 10, "matched": 10,
    "distributed": 11,
    "mae": 12, "mae_training": 12, "probe": 12,
    "datasets": 13, "transfer": 13, "inspection": 13,
    "export": 14, "classifier_page": 14,
}
MAX_LINES = 410  # "about 400": a file a reader takes in at one sitting


def _package_imports(path: Path):
    """(imported module, names) for every `from .x import ...` / `import vit_from_scratch.x` in path."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                yield node.module.split(".")[0], [a.name for a in node.names]
            elif node.module and node.module.startswith("vit_from_scratch."):
                yield node.module.split(".")[1], [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vit_from_scratch."):
                    yield alias.name.split(".")[1], []


def test_every_module_has_a_chapter():
    unknown = [p.stem for p in MODULES if p.stem not in CHAPTER]
    assert not unknown, f"add {unknown} to CHAPTER in tests/test_layout.py (the chapter that introduces it)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_module_imports_only_earlier_chapters_and_no_private_names(path):
    chapter = CHAPTER[path.stem]
    for module, names in _package_imports(path):
        assert CHAPTER[module] <= chapter, (
            f"{path.name} (chapter {chapter}) imports {module} (chapter {CHAPTER[module]}): "
            "move the shared piece to the earlier chapter's module")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path.name} imports private names {private} from {module}: make them public"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_a_module_is_short_enough_to_read_in_one_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES}): split it by idea"


MAX_FUNCTION_LINES = 60
KEPT_WHOLE = "kept in one piece"  # the comment that explains a longer function, beside its def


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_functions_are_short_or_say_why_not(path):
    source = path.read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            head = "\n".join(lines[node.lineno - 2:node.lineno + 3]).lower()
            assert length <= MAX_FUNCTION_LINES or KEPT_WHOLE in head, (
                f"{path.name}: {node.name} has {length} lines (at most {MAX_FUNCTION_LINES}): split it into "
                f"named steps, or say why not in a comment beside its def containing {KEPT_WHOLE!r}")


def test_every_test_file_has_its_own_name():
    """pytest imports test files by basename (no __init__.py here): two files of one name stop the collection."""
    names = [p.name for p in Path(__file__).parent.rglob("test_*.py")]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"rename one of each: {twice}"
