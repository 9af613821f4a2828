"""load-balancing end to end: a real dev server, three workers in one group, the sandbox."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from load_balancing.demo import JOBS, Spread, dispatch, spread
from resonate.resonate import Resonate


@pytest.fixture
def worker_pids(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> list[int]:
    env = {
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": sandbox.url,
        # A dead worker's jobs wait this long for its lease to lapse.
        "RESONATE_TTL_SECONDS": "2",
        # Long enough that a job the victim started is still running when it is killed.
        "JOB_WORK_SECONDS": "2",
    }
    pids = [start_worker("load_balancing.worker", env, name=f"worker-{n}").pid for n in (1, 2, 3)]
    # Every worker connected before the batch is sent: one that is not yet gets no job, and the
    # victim of the kill test would then die holding none.
    devserver.wait_for_streams("load-balancing", 3)
    return pids


def run_batch(url: str, sandbox_url: str, batch: str) -> tuple[list[Any], Spread]:
    async def go() -> tuple[list[Any], Spread]:
        client = Resonate(url=url, group="load-balancing-tests")
        try:
            results = await asyncio.wait_for(dispatch(client, batch), 60)
            return results, await spread(sandbox_url, batch)
        finally:
            await client.stop()

    return asyncio.run(go())


def assert_each_job_ran_once(results: list[Any], seen: Spread) -> None:
    assert [r["job"] for r in results] == list(range(1, JOBS + 1))
    assert all(r["started"] == r["finished"] == "noted" for r in results)
    assert sorted(seen.started_by) == sorted(seen.finished_by) == list(range(1, JOBS + 1))
    assert len(seen.notes_per_key) == 2 * JOBS
    assert set(seen.notes_per_key.values()) == {1}


def test_the_group_spreads_the_jobs_and_each_runs_once(
    devserver: RunningDevServer, sandbox: RunningSandbox, worker_pids: list[int]
) -> None:
    batch = f"lb-test-{secrets.token_hex(4)}"

    results, seen = run_batch(devserver.url, sandbox.url, batch)

    assert_each_job_ran_once(results, seen)
    workers_with_work = set(seen.finished_per_worker())
    assert workers_with_work <= set(worker_pids)
    assert len(workers_with_work) >= 2


def test_a_killed_workers_jobs_finish_on_the_others(
    devserver: RunningDevServer, sandbox: RunningSandbox, worker_pids: list[int]
) -> None:
    batch = f"lb-test-{secrets.token_hex(4)}"
    victim = worker_pids[2]
    # The sandbox SIGKILLs the victim right after its own first "started" note has landed: it
    # holds a started job then, and has finished none (a job works 2 s). Counting every
    # worker's notes instead, a loaded machine could reach the count before the victim had one.
    victims_start = {"worker_pid": victim, "phase": "started"}
    switch = {"provider": "api", "action": "call", "pid": victim, "body": victims_start}
    clients.post(f"{sandbox.url}/_admin/kill-switches", json=switch).raise_for_status()

    results, seen = run_batch(devserver.url, sandbox.url, batch)

    assert_each_job_ran_once(results, seen)
    assert victim not in seen.finished_per_worker()
    recovered = seen.moved_from(victim)
    assert recovered, "the victim held no started job when it died"
    assert {seen.finished_by[job] for job in recovered} <= set(worker_pids) - {victim}
