"""batch-processor end to end: a real dev server, worker processes, the example's SQLite sink.

Everything is counted where it lands: the sink keeps one row per item under the key (job, batch,
item), and one row per attempt at a batch with the worker's pid and when it started and when its
items were committed. Exactly-once is the item rows; the window (never more than four batches at
once) and the resume point (the first unfinished batch) are the attempts' timestamps and pids.
Progress is read as `python -m batch_processor.progress` reads it: from the execution's promises.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from batch_processor.demo import parse_sizes
from batch_processor.progress import NotAJobError, Progress, read_progress
from batch_processor.sink import Sink, most_in_flight
from batch_processor.steps import process_item
from batch_processor.workflow import WINDOW, InvalidJobError, job_problem
from cookbook.processes import ManagedProcess
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer
from resonate.resonate import Resonate

TIMEOUT_S = 60


@pytest.fixture
def sink_dir(tmp_path: Path) -> Path:
    return tmp_path / "batch-processor"


@pytest.fixture
def sink(sink_dir: Path) -> Sink:
    return Sink(sink_dir / "sink.db")


def _worker(
    start_worker: ProcessFactory, server: RunningDevServer, sink_dir: Path, work_ms: int = 50
) -> ManagedProcess:
    env = {
        "RESONATE_URL": server.url,
        "BATCH_PROCESSOR_DATA_DIR": str(sink_dir),
        "BATCH_WORK_MS": str(work_ms),
    }
    return start_worker("batch_processor.worker", env)


def _job_id() -> str:
    return f"batch-test-{secrets.token_hex(4)}"


def _run_job(
    server: RunningDevServer,
    job: str,
    item_count: int,
    batch_size: int,
    while_running: Callable[[Resonate], Awaitable[None]] | None = None,
) -> Any:
    async def go() -> Any:
        client = Resonate(url=server.url, group="batch-processor-tests")
        try:
            handle = client.options(target="batch-processor").rpc(
                job, "process_items", item_count, batch_size
            )
            await handle.id()
            if while_running is not None:
                await while_running(client)
            return await asyncio.wait_for(handle.result(), TIMEOUT_S)
        finally:
            await client.stop()

    return asyncio.run(go())


def _progress(server: RunningDevServer, job: str) -> Progress:
    async def go() -> Progress:
        client = Resonate(url=server.url, group="batch-processor-tests")
        try:
            return await read_progress(client, job)
        finally:
            await client.stop()

    return asyncio.run(go())


def _promise_ids(server: RunningDevServer, job: str) -> list[str]:
    promises = server.state(job)["promises"]
    assert isinstance(promises, list)
    return [str(promise["id"]) for promise in promises]


def _expected_summary(item_count: int, batch_size: int) -> dict[str, Any]:
    batches = [
        range(first, min(first + batch_size, item_count))
        for first in range(0, item_count, batch_size)
    ]
    checksums = [
        sha256("".join(process_item(n) for n in batch).encode()).hexdigest()[:16]
        for batch in batches
    ]
    return {
        "batches": len(batches),
        "items": item_count,
        "checksum": sha256("".join(checksums).encode()).hexdigest()[:16],
    }


def _assert_each_item_once(sink: Sink, job: str, item_count: int, batch_size: int) -> None:
    """The sink holds every item of the input exactly once, under its batch, with its result."""
    assert sink.items(job) == [(n // batch_size, n, process_item(n)) for n in range(item_count)]


def test_ten_thousand_items_each_once_never_more_than_four_batches_at_a_time(
    devserver: RunningDevServer, start_worker: ProcessFactory, sink_dir: Path, sink: Sink
) -> None:
    _worker(start_worker, devserver, sink_dir, work_ms=60)
    job = _job_id()

    summary = _run_job(devserver, job, 10_000, 100)

    assert summary == _expected_summary(10_000, 100)
    _assert_each_item_once(sink, job, 10_000, 100)
    runs = sink.runs(job)
    assert sorted(run.batch for run in runs) == list(range(100))  # each batch ran once
    assert all(run.added == 100 for run in runs)
    # The window, on the sink's clock: batches overlap, never more than four. (How full it gets
    # here depends on how busy the machine is: the in-process tests prove it fills to four.)
    assert 1 < most_in_flight(runs) <= WINDOW
    # Sliding: batch i + 4 starts only once batch i has finished.
    by_batch = {run.batch: run for run in runs}
    for i in range(100 - WINDOW):
        finished_at = by_batch[i].finished_at
        assert finished_at is not None
        assert by_batch[i + WINDOW].started_at >= finished_at, f"batch {i + WINDOW} started early"


def test_a_crash_resumes_at_the_first_unfinished_batch_and_writes_no_item_twice(
    devserver: RunningDevServer, start_worker: ProcessFactory, sink_dir: Path, sink: Sink
) -> None:
    first = _worker(start_worker, devserver, sink_dir)
    job = _job_id()
    # Dies once batch 6 (step 6) has committed its items, before the workflow checkpoints it.
    devserver.kill_at("settle", f"{job}:6", when="before", pid=first.pid)
    at_kill: list[Progress] = []
    killed_at: list[float] = []

    async def crash(client: Resonate) -> None:
        assert await asyncio.to_thread(first.wait, TIMEOUT_S) == -9
        killed_at.append(time.time())
        at_kill.append(await read_progress(client, job))
        second = await asyncio.to_thread(_worker, start_worker, devserver, sink_dir)
        pids.append(second.pid)

    pids: list[int] = []
    summary = _run_job(devserver, job, 1_000, 100, crash)

    assert summary == _expected_summary(1_000, 100)
    _assert_each_item_once(sink, job, 1_000, 100)
    (progress,) = at_kill
    assert 5 not in progress.finished  # batch 6 (index 5) was never checkpointed
    assert progress.first_unfinished is not None
    runs = sink.runs(job)
    resumed = sorted(run.batch for run in runs if run.worker == pids[0])
    # The new worker ran exactly the batches the execution had not finished, from the first.
    assert resumed == sorted(set(range(10)) - progress.finished)
    assert resumed[0] == progress.first_unfinished
    # Batch 6 ran twice; its second attempt found its items in the sink and added none.
    batch_6 = [run for run in runs if run.batch == 5]
    assert [(run.worker, run.added) for run in batch_6] == [(first.pid, 100), (pids[0], 0)]
    # Never more than four at once, the dead worker's attempts counted until it was killed.
    assert most_in_flight(runs, ended_at={first.pid: killed_at[0]}) <= WINDOW


def test_progress_is_read_from_the_execution_while_it_runs(
    devserver: RunningDevServer, start_worker: ProcessFactory, sink_dir: Path
) -> None:
    worker = _worker(start_worker, devserver, sink_dir)
    job = _job_id()
    # Freeze the job where it is when batch 8 is about to start: batches 1-4 are done.
    devserver.kill_at("create", f"{job}:8", when="before", pid=worker.pid)
    seen: list[Progress] = []

    async def watch(client: Resonate) -> None:
        assert await asyncio.to_thread(worker.wait, TIMEOUT_S) == -9
        seen.append(await read_progress(client, job))
        await asyncio.to_thread(_worker, start_worker, devserver, sink_dir)

    _run_job(devserver, job, 2_000, 100, watch)

    (midway,) = seen
    assert midway.state == "pending"
    assert (midway.batches_total, midway.items_total) == (20, 2_000)
    # Batch 8 starts when batch 4 is done, so batches 1-4 are done; 5-7 may be too.
    assert {0, 1, 2, 3} <= midway.finished <= set(range(7))
    assert midway.items_done == 100 * midway.batches_done
    assert midway.batches_done + midway.in_flight == 7
    done = _progress(devserver, job)
    assert (done.state, done.batches_done, done.in_flight, done.items_done) == (
        "resolved",
        20,
        0,
        2_000,
    )
    # The CLI prints the same, read the same way.
    cli = subprocess.run(
        [sys.executable, "-m", "batch_processor.progress", job],
        env={**os.environ, "RESONATE_URL": devserver.url},
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT_S,
    )
    assert (cli.returncode, cli.stdout) == (0, done.line() + "\n")
    assert "20/20 batches done (2,000/2,000 items), 0 in flight; resolved" in cli.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "batch_processor.progress", f"{job}-unknown"],
        env={**os.environ, "RESONATE_URL": devserver.url},
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT_S,
    )
    assert unknown.returncode == 1
    assert "no such execution" in unknown.stderr


BAD_JOBS = [
    (0, 100, "item_count: the input is empty (0 items)"),
    (1_000, 0, "batch_size: must be between 1 and 10,000 items, got 0"),
    (1_000, -5, "batch_size: must be between 1 and 10,000 items, got -5"),
    (10**9, 100, "item_count: must be between 1 and 1,000,000 items, got 1,000,000,000"),
    (1_000, 10**6, "batch_size: must be between 1 and 10,000 items, got 1,000,000"),
    (1_000_000, 100, "make 10,000 batches, more than 1,000 in one job"),
]


def test_a_bad_job_is_refused_before_any_batch_starts(
    devserver: RunningDevServer, start_worker: ProcessFactory, sink_dir: Path, sink: Sink
) -> None:
    _worker(start_worker, devserver, sink_dir)
    refused_jobs: list[str] = []
    for item_count, batch_size, reason in BAD_JOBS:
        job = _job_id()

        with pytest.raises(InvalidJobError, match=re.escape(reason)):
            _run_job(devserver, job, item_count, batch_size)

        assert sink.runs(job) == []
        assert sink.items(job) == []
        # The execution has no child: not a single batch was started.
        assert _promise_ids(devserver, job) == [job]
        # Its progress says so, for the same reason, instead of counting batches it never had.
        refused = f"refused before any batch started: .*{re.escape(reason)}"
        with pytest.raises(NotAJobError, match=refused):
            _progress(devserver, job)
        refused_jobs.append(job)

    # The CLI, on the job the demo starts with batch size 0: an answer, not a traceback.
    cli = subprocess.run(
        [sys.executable, "-m", "batch_processor.progress", refused_jobs[1]],
        env={**os.environ, "RESONATE_URL": devserver.url},
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT_S,
    )
    assert (cli.returncode, cli.stdout) == (1, "")
    assert cli.stderr == (
        f"progress: {refused_jobs[1]}: refused before any batch started:"
        " batch_size: must be between 1 and 10,000 items, got 0\n"
    )


@pytest.mark.parametrize(
    ("item_count", "batch_size", "problem"),
    [
        (10_000, 100, None),
        (1, 1, None),
        (1_000, 10_000, None),
        (100_000, 100, None),
        (0, 100, "item_count: the input is empty"),
        (True, 100, "item_count: must be a whole number"),
        ("10", 100, "item_count: must be a whole number"),
        (-1, 100, "item_count: must be between 1 and 1,000,000"),
        (100, 1.5, "batch_size: must be a whole number"),
        (100, 10_001, "batch_size: must be between 1 and 10,000"),
        (1_000_001, 10_000, "item_count: must be between"),
        (100_001, 100, "make 1,001 batches"),
    ],
)
def test_job_problem_names_the_argument(
    item_count: Any, batch_size: Any, problem: str | None
) -> None:
    found = job_problem(item_count, batch_size)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem) or problem in found


def test_the_demo_refuses_bad_sizes_before_it_starts() -> None:
    assert parse_sizes([], {}) == (10_000, 100)
    assert parse_sizes(["2000", "50"], {}) == (2_000, 50)
    assert parse_sizes([], {"ITEMS": "300", "BATCH_SIZE": "30"}) == (300, 30)
    for argv, message in [
        (["1000", "0"], "job refused: batch_size: must be between 1 and 10,000 items, got 0"),
        (["0", "100"], "job refused: item_count: the input is empty"),
        (["lots", "100"], "job refused: item_count: must be a whole number, got 'lots'"),
        (["1000"], "usage:"),
    ]:
        with pytest.raises(SystemExit) as refused:
            parse_sizes(argv, {})
        assert str(refused.value.code).startswith(message)
