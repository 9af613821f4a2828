"""The receiving-system and stall self-tests' harness: the workflows in tests/crash/mutants.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cookbook.catalog import Example, Scenario
from cookbook.crash.harness import CrashHarness, CrashResult, Golden
from cookbook.stack import Stack

ROOT = Path(__file__).parents[2]
BOOK = Scenario("book", "book", [])
WITHOUT_KEY = Scenario("without-key", "book_without_key", [])
APPENDING = Scenario("appending", "book_appending", [])

# Data only, as an example declares it: one receiver per form.
RECEIVERS = """
[tool.cookbook]
worker = "tests.crash.mutants"
group = "receivers-selftest"

[[tool.cookbook.receivers]]
name = "bookings file"
sqlite = "bookings.db"
table = "bookings"
fields = ["booking", "confirmation"]

[[tool.cookbook.receivers]]
name = "flight provider"
service = "sandbox"
path = "/_admin/effects"
watermark = "id"
fields = ["provider", "action"]
where = { provider = "flight" }
"""


@pytest.fixture(scope="module")
def mutants_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashHarness]:
    folder = tmp_path_factory.mktemp("receivers-selftest")
    (folder / "pyproject.toml").write_text(RECEIVERS)
    example = Example(
        name="receivers-selftest",
        path=folder,
        worker="tests.crash.mutants",
        group="receivers-selftest",
        demo=None,
        gateway=None,
        services=("sandbox",),
        scenarios=(BOOK, WITHOUT_KEY, APPENDING),
    )
    # The harness runs workers in a directory of their own: say where the test workflows are.
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    with (
        Stack(sandbox=True, fast_recovery=True, environ=environ) as stack,
        CrashHarness(example, stack) as harness,
    ):
        yield harness


def run_at(harness: CrashHarness, golden: Golden, step: int, phase: str) -> CrashResult:
    """Crash the run at the phase of its `step`th checkpoint (1: the flight, 2: the row)."""
    point = next(p for p in golden.points if p.checkpoint.suffix == f":{step}" and p.phase == phase)
    return harness.run(golden, point)
