"""Parallel test processes make each golden run once and collect the same crash points."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from cookbook import catalog
from cookbook.crash.harness import Golden, Outcome
from cookbook.crash.plan import Checkpoint
from cookbook.testing import matrix

HELLO = catalog.example("hello")


@pytest.fixture
def fresh_matrix(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The matrix module as a new test process sees it; yields the examples it records."""
    recorded: list[str] = []

    def record(example: catalog.Example) -> dict[str, Golden]:
        recorded.append(example.name)
        scenario = example.scenarios[0]
        checkpoint = Checkpoint(":1", "step", "sms.send", suspended_on=False)
        outcome = Outcome("resolved", "'sent'")
        golden = Golden(scenario, "golden-id", outcome, [checkpoint], Counter(), 0.5)
        return {scenario.name: golden}

    # Restored afterwards, whatever share_goldens_through sets in between.
    monkeypatch.setattr(matrix, "_goldens", {})
    monkeypatch.setattr(matrix, "_shared_dir", None)
    monkeypatch.setattr(matrix, "_rotation", 0)
    monkeypatch.setattr(matrix, "_record", record)
    return recorded


def test_a_second_process_loads_the_golden_run_the_first_one_made(
    fresh_matrix: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix.share_goldens_through(tmp_path, worker_index=0)
    first = matrix.crash_matrix(["hello"])
    assert fresh_matrix == ["hello"]

    monkeypatch.setattr(matrix, "_goldens", {})  # the second process
    matrix.share_goldens_through(tmp_path, worker_index=1)
    second = matrix.crash_matrix(["hello"])
    assert fresh_matrix == ["hello"], "the second process ran the golden run again"
    assert [p.id for p in second] == [p.id for p in first]  # type: ignore[attr-defined]
    assert [p.id for p in first] == [  # type: ignore[attr-defined]
        "hello[greet:sms.send/before]",
        "hello[greet:sms.send/after-effect]",
        "hello[greet:sms.send/server-kill]",
        "hello[greet:sms.send/stall]",
    ]


def test_without_xdist_the_golden_runs_stay_in_the_process(
    fresh_matrix: list[str],
) -> None:
    matrix.crash_matrix(["hello"])
    matrix.golden_run("hello", HELLO.scenarios[0].name)
    assert fresh_matrix == ["hello"]
