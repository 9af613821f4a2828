"""Cross-cutting checks over every example: portability, catalog, README shape, snippet drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from cookbook import catalog, docs

ROOT = catalog.repo_root(Path(__file__))
EXAMPLE_DIRS = sorted(p for p in (ROOT / "examples").iterdir() if (p / "pyproject.toml").is_file())

# The SDK's public API, as used in its own documentation. Everything else (connections, core,
# send, testing, ...) is internal and may differ on another server or SDK release.
PUBLIC_SDK_MODULES = {
    "resonate.resonate",
    "resonate.context",
    "resonate.retry",
    "resonate.types",
    "resonate.error",
}
STANDARD_SECTIONS = [
    "## What it shows",
    "## How it works",
    "## Run it",
    "## What to observe",
    "## How it is tested",
    "## Files",
]


def runtime_modules(example: Path) -> list[Path]:
    package = example / example.name.replace("-", "_")
    return sorted(package.rglob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_runtime_code_uses_only_the_public_sdk_api(example: Path) -> None:
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in runtime_modules(example)
        for line, module in imported_modules(path)
        if module == "cookbook"
        or module.startswith("cookbook.")
        or (module.startswith("resonate") and module not in PUBLIC_SDK_MODULES)
    ]
    assert not offending, "examples must run unchanged against the official server:\n" + "\n".join(
        offending
    )


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_every_example_is_declared_and_listed_in_the_catalog(example: Path) -> None:
    assert catalog.declares_example(example), f"{example.name}: no [tool.cookbook] table"
    declared = catalog.load_example(example)
    assert declared.scenarios, f"{example.name}: no crash scenario"
    catalog_table = (ROOT / "README.md").read_text()
    assert f"[{example.name}](examples/{example.name})" in catalog_table


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_every_readme_has_the_standard_sections_in_order(example: Path) -> None:
    headings = re.findall(r"^## .+$", (example / "README.md").read_text(), re.MULTILINE)
    assert [h for h in headings if h in STANDARD_SECTIONS] == STANDARD_SECTIONS


def test_readme_snippets_match_their_source_files() -> None:
    drifted = docs.sync(ROOT, check=True)
    assert not drifted, "run `make docs`:\n" + "\n".join(f"{d.readme}: {d.ref}" for d in drifted)


def test_the_snippet_checker_notices_drift(tmp_path: Path) -> None:
    (tmp_path / "code.py").write_text("def shown() -> int:\n    return 2\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "<!-- snippet: code.py:shown -->\n```python\ndef shown() -> int:\n    return 1\n```\n"
        "<!-- end snippet -->\n"
    )
    text, drifted = docs.render(readme)
    assert [d.ref for d in drifted] == ["code.py:shown"]
    assert "return 2" in text
