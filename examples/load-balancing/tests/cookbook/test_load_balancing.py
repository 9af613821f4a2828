"""load-balancing end to end: a real dev server, three workers in one group, the sandbox."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from cookbook import clients
from cookbook.sandbox.app import KillSwitch
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from load_balancing.demo import JOBS, Spread, dispatch, kill_on_first_start, spread
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
    # The demo's switch: the victim dies right after its own first "started" note has landed,
    # holding a started job (a job works 2 s).
    switch = kill_on_first_start(victim)
    clients.post(f"{sandbox.url}/_admin/kill-switches", json=switch).raise_for_status()

    results, seen = run_batch(devserver.url, sandbox.url, batch)

    assert_each_job_ran_once(results, seen)
    assert victim not in seen.finished_per_worker()
    recovered = seen.moved_from(victim)
    assert recovered, "the victim held no started job when it died"
    assert {seen.finished_by[job] for job in recovered} <= set(worker_pids) - {victim}


def test_the_kill_switch_fires_only_on_the_victims_own_first_start() -> None:
    # As the sandbox matches it: on any other worker's note, the victim could die before it
    # holds a job; on its own "finished" note, after it finished one.
    switch = KillSwitch.model_validate(kill_on_first_start(4242))

    def fires_on(pid: int, phase: str) -> bool:
        note = {"job": 7, "phase": phase, "worker_pid": pid}
        return switch.nth == 1 and switch.matches("api", "call", note)

    assert fires_on(4242, "started")
    assert not fires_on(1717, "started")
    assert not fires_on(4242, "finished")
