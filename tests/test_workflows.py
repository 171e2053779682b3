"""The GitHub Actions workflows: they validate against SchemaStore's GitHub workflow schema (bundled with
check-jsonschema, so offline) and a typo fails it; the book
workflow builds from the committed outputs with -W and deploys with GitHub's Pages actions and the
permissions they need, the test workflow runs the README's test command on pull requests, and every
action is one of GitHub's own, pinned."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BOOK = WORKFLOWS / "book.yml"
TESTS = WORKFLOWS / "tests.yml"
PINNED = re.compile(r"actions/[\w.-]+@(v\d+|[0-9a-f]{40})")  # a release tag of GitHub's own, or a commit


def _lint(*paths):
    """check-jsonschema with the GitHub workflow schema it ships (no download): unknown keys, missing
    required keys and wrong types fail."""
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", "-o", "text",
           *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)


def _load(path):
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def _steps(workflow):
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _readme_command(intro):
    """The bash block that follows the README line starting with `intro`."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^{re.escape(intro)}.*?```bash\n(.+?)\n```", text, re.M | re.S)
    assert match, f"README.md has no bash block after a line starting {intro!r}"
    return match.group(1).strip()


def test_there_are_workflows():
    assert BOOK.is_file() and TESTS.is_file()


def test_the_workflows_match_the_schema():
    result = _lint(*sorted(WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, f"check-jsonschema:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("typo", [("permissions:", "permisions:"), ("runs-on:", "run-on:"),
                                  ("uses: actions/upload-pages-artifact", "use: actions/upload-pages-artifact")])
def test_a_typo_fails_the_schema(tmp_path, typo):
    broken = tmp_path / "book.yml"
    text = BOOK.read_text()
    assert typo[0] in text
    broken.write_text(text.replace(*typo, 1))
    result = _lint(broken)
    assert result.returncode != 0 and "book.yml" in result.stdout, f"the schema missed {typo}: {result.stdout}"


def test_the_book_is_built_from_the_committed_outputs_with_warnings_as_errors():
    workflow = _load(BOOK)
    assert workflow["on"]["push"]["branches"] == ["main"]
    runs = [step.get("run", "") for step in _steps(workflow)]
    assert any("pip install -r requirements.txt" in run for run in runs)
    builds = [run for run in runs if "jupyter-book build" in run]
    assert builds and all(" -W" in run for run in builds), f"build with -W: {builds}"
    assert not any("--execute" in run or "execute_notebooks" in run for run in runs), "no execution"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"


def test_the_book_is_deployed_with_the_pages_actions_and_their_permissions():
    workflow = _load(BOOK)
    assert workflow.get("concurrency"), "one Pages deployment at a time: set concurrency"
    uses = {step.get("uses", "").split("@")[0]: step for step in _steps(workflow)}
    for action in ("actions/checkout", "actions/setup-python", "actions/upload-pages-artifact",
                   "actions/deploy-pages"):
        assert action in uses, f"book.yml does not use {action}"
    assert uses["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    deploy = next(job for job in workflow["jobs"].values()
                  if any(s.get("uses", "").startswith("actions/deploy-pages@") for s in job["steps"]))
    permissions = {**workflow.get("permissions", {}), **deploy.get("permissions", {})}
    assert permissions.get("pages") == "write" and permissions.get("id-token") == "write", permissions
    assert deploy["environment"]["name"] == "github-pages"
    assert "needs" in deploy, "deploy after the build job"


def test_pull_requests_run_the_readmes_test_command():
    workflow = _load(TESTS)
    assert "pull_request" in workflow["on"]
    command = _readme_command("Run the tests")
    runs = [step.get("run", "").strip() for step in _steps(workflow)]
    assert command in runs, f"tests.yml must run the README's test command {command!r}; it runs {runs}"


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_every_action_is_githubs_own_and_pinned(path):
    uses = [step["uses"] for step in _steps(_load(path)) if "uses" in step]
    assert uses
    loose = [u for u in uses if not PINNED.fullmatch(u)]
    assert not loose, f"{path.name}: pin GitHub's own actions to a release tag or commit: {loose}"


def test_unit_tests_run_on_the_torch_floor_and_the_newest_on_two_pythons():
    workflow = _load(TESTS)
    unit = workflow["jobs"]["unit"]
    assert unit["strategy"]["matrix"] == {"python": ["3.10", "3.12"], "torch": ["floor", "newest"]}
    runs = "\n".join(step.get("run", "") for step in unit["steps"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([\d.]+)"', pyproject).group(1)
    vision = re.search(r'"torchvision>=([\d.]+)"', pyproject).group(1)
    # the pins are the lower bounds pyproject.toml declares, so raising the floor means editing both
    assert f'"torch=={floor}.0"' in runs or f'"torch=={floor}"' in runs, (floor, runs)
    assert f'"torchvision=={vision}.0"' in runs or f'"torchvision=={vision}"' in runs, (vision, runs)
    assert "pytest tests" in runs
