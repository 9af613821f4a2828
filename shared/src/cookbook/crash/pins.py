"""Pinned crash points: each example's list, committed in tests/crash/points/<example>.txt.

Crash points come from golden runs, so a regression that drops a step would shrink the matrix and
still pass. The pin file is what the golden runs found when someone last looked on purpose; the
crash-matrix tests (and `cookbook crash`) fail on any difference, with a diff. After a deliberate
change, `make pin` (`cookbook pin [EXAMPLE ...]`) rewrites the files from fresh golden runs. The
crash-matrix tests are collected from these files (cookbook.testing.matrix), so that collecting
them starts no process.

The format is one crash-point id per line, grouped by scenario under `[scenario]` headers:

    [booked]
    booked:flight.reserve/before
    ...
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path

from cookbook.catalog import Example, repo_root

HEADER = """\
# The crash points of examples/{name}, by scenario, as its golden runs find them. The crash-matrix
# tests fail when a golden run finds others: after a deliberate change, rewrite this file with
# `make pin EXAMPLE={name}` (or `make pin` for every example) and commit the difference.
"""


def pin_dir(root: Path) -> Path:
    return root / "tests" / "crash" / "points"


def pin_path(example: Example) -> Path:
    return pin_dir(repo_root(example.path)) / f"{example.name}.txt"


def orphans(root: Path, examples: Sequence[Example]) -> list[Path]:
    """Pin files no example with scenarios owns any more (it was renamed, or removed)."""
    owned = {pin_path(e) for e in examples if e.scenarios}
    return sorted(p for p in pin_dir(root).glob("*.txt") if p not in owned)


def render(example: Example, points: Mapping[str, Sequence[str]]) -> str:
    sections = ["\n".join([f"[{scenario}]", *ids]) + "\n" for scenario, ids in points.items()]
    return HEADER.format(name=example.name) + "".join(f"\n{s}" for s in sections)


def parse(text: str) -> dict[str, list[str]]:
    points: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = points.setdefault(line[1:-1], [])
        elif current is None:
            raise ValueError(f"line {number}: a crash point before any [scenario] header")
        else:
            current.append(line)
    return points


def read(example: Example) -> dict[str, list[str]]:
    """The example's pinned crash points, by scenario (OSError: no file; ValueError: a bad one)."""
    return parse(pin_path(example).read_text())


def write(example: Example, points: Mapping[str, Sequence[str]]) -> Path:
    path = pin_path(example)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(example, points))
    return path


def drift(
    example: Example, found: Mapping[str, Sequence[str] | None], pinned_at: Path | None = None
) -> list[str]:
    """How the crash points found differ from the pinned ones; empty when they are the same.

    `found` maps every scenario to its crash-point ids, or to None when its golden run failed
    (that scenario's own test says why; its pinned points are then not compared). `pinned_at`
    reads the pins from another file than the example's own.
    """
    path = pinned_at or pin_path(example)
    shown = path if pinned_at else path.relative_to(repo_root(example.path))
    fix = f"if the change is deliberate, run `make pin EXAMPLE={example.name}` and commit it"
    if not path.is_file():
        return [f"{shown}: missing; {fix}"]
    try:
        pinned = parse(path.read_text())
    except ValueError as exc:
        return [f"{shown}: {exc}"]
    problems = [
        f"{shown}: scenario {name!r} is pinned but {example.name} no longer has it"
        for name in pinned
        if name not in found
    ]
    for name, ids in found.items():
        if ids is None:
            continue
        if name not in pinned:
            problems.append(f"{shown}: scenario {name!r} has no pinned crash points")
            continue
        if list(ids) != pinned[name]:
            diff = difflib.unified_diff(
                pinned[name], list(ids), f"pinned [{name}]", f"golden run [{name}]", lineterm=""
            )
            problems.append(f"{shown}: the crash points of {name!r} differ:\n" + "\n".join(diff))
    if problems:
        problems[-1] += f"\n{fix}"
    return problems
