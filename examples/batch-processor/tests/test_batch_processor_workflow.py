"""`process_items` in process: the SDK's `resonate.testing` and the real sink in a temporary file.

These tests need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev
server and worker processes are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict
from hashlib import sha256
from pathlib import Path

import pytest
from batch_processor.sink import Sink, most_in_flight
from batch_processor.steps import BatchResult, Processing, process_item
from batch_processor.workflow import (
    BATCH_RETRIES,
    WINDOW,
    InvalidJobError,
    JobSummary,
    process_items,
)
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context


class FlakySink(Sink):
    """A sink whose first `failures` writes find the database locked (by another writer)."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def record_batch(
        self, job: str, batch: int, results: Sequence[tuple[int, str]], run_id: int
    ) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return super().record_batch(job, batch, results, run_id)


def run_job(sink: Sink, item_count: int, batch_size: int, work_seconds: float = 0) -> JobSummary:
    """`process_items` on an in-process Resonate (no server, no worker); retries take no time."""

    async def go() -> JobSummary:
        resonate = local_resonate()
        try:
            resonate.with_dependency(Processing(sink, work_seconds))
            resonate.register(process_items, retry_policy=Never())
            handle = resonate.run("job-1", process_items, item_count, batch_size)
            summary: JobSummary = await asyncio.wait_for(handle.result(), 30)
            return summary
        finally:
            await resonate.stop()

    return asyncio.run(go())


def batch_checksum(items: range) -> str:
    return sha256("".join(process_item(n) for n in items).encode()).hexdigest()[:16]


def checksum_of(item_count: int, batch_size: int) -> str:
    """What the job's summary should say: a checksum over every batch's, in batch order."""
    starts = range(0, item_count, batch_size)
    per_batch = [batch_checksum(range(f, min(f + batch_size, item_count))) for f in starts]
    return sha256("".join(per_batch).encode()).hexdigest()[:16]


def test_every_item_is_in_the_sink_once_and_the_summary_covers_them_all(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "sink.db")

    summary = run_job(sink, item_count=10, batch_size=3)

    assert summary == JobSummary(batches=4, items=10, checksum=checksum_of(10, 3))
    assert [item for _, item, _ in sink.items("job-1")] == list(range(10))
    assert [run.batch for run in sink.runs("job-1")] == [0, 1, 2, 3]  # one attempt each


def test_the_window_fills_to_four_batches_and_never_more(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "sink.db")

    # Five batches of a second each: nothing holds back the first four, and in process they all
    # start within milliseconds, far less than a second, so the peak is exact on a busy machine
    # too. The fifth may start only once the first has finished.
    run_job(sink, item_count=WINDOW + 1, batch_size=1, work_seconds=1.0)

    runs = {run.batch: run for run in sink.runs("job-1")}
    assert most_in_flight(list(runs.values())) == WINDOW == 4
    first_finished = runs[0].finished_at
    assert first_finished is not None
    assert runs[WINDOW].started_at >= first_finished


def test_a_batch_the_sink_could_not_take_is_retried_and_its_items_land_once(tmp_path: Path) -> None:
    sink = FlakySink(tmp_path / "sink.db", failures=BATCH_RETRIES.max_retries)

    summary = run_job(sink, item_count=6, batch_size=3)

    assert summary.items == 6
    assert [item for _, item, _ in sink.items("job-1")] == list(range(6))
    assert len(sink.runs("job-1")) == 2 + BATCH_RETRIES.max_retries


@pytest.mark.parametrize(
    ("item_count", "batch_size", "named"),
    [(0, 3, "item_count"), (10, 0, "batch_size"), (10_000, 1, "item_count / batch_size")],
)
def test_a_job_it_cannot_run_is_refused_before_any_batch(
    tmp_path: Path, item_count: int, batch_size: int, named: str
) -> None:
    sink = Sink(tmp_path / "sink.db")

    with pytest.raises(InvalidJobError, match=f"^{named}:"):
        run_job(sink, item_count, batch_size)
    assert sink.runs("job-1") == []


def test_a_replay_carries_on_from_the_first_batch_the_journal_has_no_result_for(
    tmp_path: Path,
) -> None:
    """After a crash with batches 1 and 2 checkpointed: only 3 and 4 run, the summary is whole."""
    sink = Sink(tmp_path / "sink.db")
    first_two = [
        resolved_promise(
            f"job-1:{n + 1}", asdict(BatchResult(n, 3, batch_checksum(range(3 * n, 3 * n + 3))))
        )
        for n in range(2)
    ]
    deps = DependencyMap()
    deps.insert(Processing(sink, 0))

    summary = asyncio.run(
        process_items(root_context(id="job-1", preload=first_two, deps=deps), 12, 3)
    )

    assert summary == JobSummary(batches=4, items=12, checksum=checksum_of(12, 3))
    assert [run.batch for run in sink.runs("job-1")] == [2, 3]
