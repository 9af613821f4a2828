"""Cross-cutting checks over every example: portability, catalog, README shape, docs drift."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest
from cookbook import catalog, diagram, docs
from cookbook.crash import pins
from cookbook.crash.harness import Golden, Outcome
from cookbook.crash.plan import Checkpoint
from cookbook.testing import matrix

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
    # The event types of `Resonate(observer=...)`, the SDK's documented observer hook.
    "resonate.observability",
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


def test_every_example_says_its_pattern_and_what_it_shows() -> None:
    """The catalog's rows (README table, site home page) come from `[tool.cookbook]`."""
    unsaid = [
        e.name
        for e in catalog.examples(ROOT)
        if not e.pattern or not e.summary or "TODO" in e.pattern + e.summary
    ]
    assert not unsaid, f"set `pattern` and `summary` in [tool.cookbook] of {unsaid}"


def test_every_folder_under_examples_is_in_the_catalog() -> None:
    folders = {p.name for p in (ROOT / "examples").iterdir() if p.is_dir()}
    listed = {e.name for e in catalog.examples(ROOT)}
    assert folders - {"__pycache__"} == listed


def test_the_catalog_table_follows_the_examples(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    examples = catalog.examples(ROOT)
    readme.write_text("intro\n<!-- catalog -->\n<!-- end catalog -->\nafter\n")
    text, drifted = docs.render_catalog(readme, examples)
    assert [d.ref for d in drifted] == ["catalog"]
    readme.write_text(text)
    assert docs.render_catalog(readme, examples) == (text, [])
    saga = next(e for e in examples if e.name == "saga")
    assert f"| [saga](examples/saga) | {saga.pattern} | {saga.summary} | " in text
    points = sum(map(len, pins.parse(pins.pin_path(saga).read_text()).values()))
    assert f"| {points} |\n" in text
    renamed = [dataclasses.replace(e, summary="changed") if e is saga else e for e in examples]
    _, drifted = docs.render_catalog(readme, renamed)
    assert [d.ref for d in drifted] == ["catalog"]


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


def how_it_works(text: str) -> tuple[int, int]:
    start = text.index("## How it works")
    following = text.find("\n## ", start)
    return start, len(text) if following == -1 else following


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_every_readme_shows_a_promise_tree_under_how_it_works(example: Path) -> None:
    text = (example / "README.md").read_text()
    blocks = list(docs.TREE.finditer(text))
    assert blocks, "add <!-- tree: <scenario> --> ... <!-- end tree --> and run `make docs`"
    start, end = how_it_works(text)
    assert all(start < b.start() < end for b in blocks), "the tree belongs under How it works"
    declared = {s.name for s in catalog.load_example(example).scenarios}
    assert {b["scenario"] for b in blocks} <= declared


# The diagrams are compared with the golden runs the crash-matrix tests make anyway (cached for
# the session): in `make test` this costs nothing; alone, it makes one golden run per tree.
@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_readme_promise_trees_match_a_real_run(example: Path) -> None:
    readme = example / "README.md"
    diagrams = {
        name: diagram.diagram(matrix.golden_run(example.name, name))
        for name in docs.tree_scenarios(readme)
    }
    _, drifted = docs.render_trees(readme, diagrams)
    assert not drifted, "run `make docs`: " + ", ".join(d.ref for d in drifted)


def synthetic_golden() -> Golden:
    """A workflow that ran a step, slept, called `audit` (which ran a step), then failed."""
    root = "order-7"
    promises = [
        {"id": root, "state": "rejected", "tags": {"resonate:parent": root}},
        {"id": f"{root}:10", "state": "rejected", "tags": {"resonate:parent": root}},
        {"id": f"{root}:2", "state": "resolved", "tags": {"resonate:parent": root}},
        {"id": f"{root}:1", "state": "resolved", "tags": {"resonate:parent": root}},
        {"id": f"{root}:3", "state": "resolved", "tags": {"resonate:parent": root}},
        {"id": f"{root}:3:1", "state": "resolved", "tags": {"resonate:parent": f"{root}:3"}},
    ]
    checkpoints = [
        Checkpoint(":1", "step", "card.charge", False),
        Checkpoint(":2", "sleep", "sleep", True),
        Checkpoint(":3", "rpc", "audit", True),
        Checkpoint(":3:1", "step", "ledger.post", False),
        Checkpoint(":10", "step", 'say "no"', False),
    ]
    scenario = catalog.Scenario("refused", "place_order", [])
    return Golden(scenario, root, Outcome("rejected", "x"), checkpoints, Counter(), 0.0, promises)


def test_a_promise_tree_is_drawn_from_the_run_in_call_order() -> None:
    assert diagram.diagram(synthetic_golden()) == (
        "flowchart LR\n"
        '    n0("place_order<br/>workflow · rejected")\n'
        '    n1[":1 card.charge<br/>step · resolved"]\n'
        '    n2{{":2 sleep<br/>sleep · resolved"}}\n'
        '    n3[[":3 audit<br/>rpc · resolved"]]\n'
        '    n4[":3:1 ledger.post<br/>step · resolved"]\n'
        '    n5[":10 say #quot;no#quot;<br/>step · rejected"]\n'
        "    n0 --> n1\n"
        "    n0 --> n2\n"
        "    n0 --> n3\n"
        "    n0 --> n5\n"
        "    n3 --> n4\n"
        "    classDef rejected fill:#fdecea,stroke:#c0392b\n"
        "    class n0,n5 rejected\n"
    )


def test_the_tree_checker_notices_drift(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- tree: refused -->\n```mermaid\nflowchart LR\n```\n<!-- end tree -->\n")
    drawn = diagram.diagram(synthetic_golden())
    text, drifted = docs.render_trees(readme, {"refused": drawn})
    assert [d.ref for d in drifted] == ["tree: refused"]
    readme.write_text(text)
    assert docs.render_trees(readme, {"refused": drawn}) == (text, [])


CRASH_HEADER = re.compile(
    r"^(?P<example>[\w-]+)/(?P<scenario>[\w-]+): golden run \w+ in [\d.]+s, \d+ checkpoints?,"
    r" (?P<points>\d+) crash points?$",
    re.MULTILINE,
)
CRASH_TOTAL = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)


def shown_crash_points(readme: str) -> tuple[dict[str, int], int | None]:
    """What a README's `make crash-<x>` output says: points per scenario, and the total passed."""
    per_scenario = {m["scenario"]: int(m["points"]) for m in CRASH_HEADER.finditer(readme)}
    totals = CRASH_TOTAL.findall(readme)
    return per_scenario, int(totals[-1][0]) if totals else None


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_readme_crash_output_matches_the_pinned_crash_points(example: Path) -> None:
    # The output a README shows is a real run; it must also still be the run of today's matrix.
    pinned = pins.parse(pins.pin_path(catalog.load_example(example)).read_text())
    per_scenario, total = shown_crash_points((example / "README.md").read_text())
    assert per_scenario == {scenario: len(points) for scenario, points in pinned.items()}, (
        f"{example.name}/README.md shows another crash matrix than tests/crash/points pins:"
        " run `make crash-<example>` and show its output"
    )
    assert total == sum(len(points) for points in pinned.values())


def test_the_readme_crash_output_check_reads_what_a_run_prints() -> None:
    shown = (
        "saga/booked: golden run resolved in 0.38s, 3 checkpoints, 9 crash points\n"
        "  ok   saga[booked:flight.reserve/before]  recovered in 0.41s\n"
        "tiered-batch/invalid: golden run rejected in 0.20s, 0 checkpoints, 0 crash points\n"
        "9 passed, 0 failed\n"
    )
    assert shown_crash_points(shown) == ({"booked": 9, "invalid": 0}, 9)
    assert shown_crash_points("no output shown") == ({}, None)
