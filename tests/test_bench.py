"""The benchmark's own arithmetic: what the concurrency table compares, and whose CPU it reads."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from cookbook.bench.concurrency import (
    ConcurrencyFigures,
    ConcurrencyRun,
    concurrency_markdown,
    cpu_seconds,
    parse_watch,
    process_tree,
)


def _figures(
    config: str, k: int, steps_per_second: float, cpu: dict[str, float]
) -> ConcurrencyFigures:
    steps = 1000
    return ConcurrencyFigures(config, k, [ConcurrencyRun(steps / steps_per_second, steps, cpu)])


def _row(table: list[str], label: str, k: int) -> list[str]:
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == label and cells[1] == str(k):
            return cells
    raise AssertionError(f"no row {label!r} K={k} in:\n" + "\n".join(table))


def test_each_figure_is_compared_with_the_faster_dbos_sqlite_mode_at_the_same_k() -> None:
    results = [
        _figures("devserver-1", 1, 300, {"server": 0.5, "workers": 0.6, "client": 0.1}),
        _figures("devserver-1", 100, 900, {"server": 0.4, "workers": 0.5, "client": 0.05}),
        _figures("dbos-queue", 1, 150, {"client": 4.0}),
        _figures("dbos-start", 1, 100, {"client": 4.0}),
        _figures("dbos-queue", 100, 100, {"client": 3.0}),
        _figures("dbos-start", 100, 300, {"client": 3.0}),
        _figures("dbos-pg-start", 100, 450, {"server": 1.0, "client": 2.0}),
    ]

    table = concurrency_markdown(results, rounds=1)

    assert _row(table, "Resonate dev server, 1 worker process", 1)[3] == "2.00x"
    assert _row(table, "Resonate dev server, 1 worker process", 100)[3] == "3.00x"
    assert _row(table, "DBOS + SQLite, queue (concurrency K)", 100)[3] == "0.33x"
    # CPU per step in milliseconds: 0.4 s over 1000 steps.
    assert _row(table, "Resonate dev server, 1 worker process", 100)[4:7] == [
        "0.40",
        "0.50",
        "0.05",
    ]
    summary = next(line for line in table if line.startswith("- K = 100"))
    assert "**3.00x** DBOS+SQLite" in summary
    assert "**2.00x** DBOS+Postgres" in summary
    assert "**3.00x** its own K = 1" in summary


def test_the_cpu_of_a_process_includes_its_children() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time\\nwhile True: time.sleep(1)'])",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while len(tree := process_tree(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree[0] == parent.pid
        assert len(tree) == 2
        assert all(cpu_seconds(pid) >= 0 for pid in tree)
    finally:
        for pid in reversed(process_tree(parent.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait()


def test_watched_processes_are_read_by_role() -> None:
    assert parse_watch("server=12,workers=13+14") == {"server": [12], "workers": [13, 14]}
    assert parse_watch("") == {}
