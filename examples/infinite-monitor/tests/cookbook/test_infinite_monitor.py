"""infinite-monitor end to end: a real dev server that skips time, worker processes, the sandbox.

Every test here skips time: each iteration sleeps five real minutes, and the dev server fires a
sleep as soon as every execution is suspended on one. A thousand iterations are 83 hours.

What is counted where it lands: the alerts in Slack's records (the sandbox), the generations and
their promises in the dev server's records.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.stack import devserver_process
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from infinite_monitor.steps import generation_id, probe_key, stop_flag_id
from infinite_monitor.workflow import generation_deadline, monitor_problem
from resonate.resonate import Resonate
from resonate.types import Value

SERVICES = ["checkout", "inventory", "payments"]
INTERVAL = 300  # five minutes
# A task target no worker listens on: a promise sent there stays pending, which holds skipped time.
NOBODY = "poll://any@infinite-monitor-tests-nobody"
TIMEOUT_S = 600


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningDevServer]:
    """A dev server that skips time, ticking every 5 ms and not fsyncing its log.

    A sleep fires on the tick after the skip, so the default 100 ms tick alone would cost a
    thousand iterations two minutes; durability of the server's log is not what these tests
    measure (the crash matrix and the worker kills here run on what the server applied).
    """
    process = devserver_process(tmp_path / "devserver", fast_recovery=True, skip_time=True)
    process.argv += ["--tick-ms", "5", "--no-fsync"]
    running = RunningDevServer(process, tmp_path / "devserver", True, skip_time=True)
    try:
        process.start()
        yield running
    finally:
        process.stop()


def _worker(start_worker: ProcessFactory, server: RunningDevServer, sandbox_url: str) -> Any:
    env = {"RESONATE_URL": server.url, "PROVIDER_API_URL": sandbox_url}
    return start_worker("infinite_monitor.worker", env)


def _fail_probes(sandbox: RunningSandbox, key_prefix: str) -> None:
    """Make every probe whose Idempotency-Key starts with `key_prefix` answer 503."""
    fault = {"provider": "api", "mode": "fail_always", "status": 503, "key_prefix": key_prefix}
    clients.post(f"{sandbox.url}/_admin/faults", json=fault).raise_for_status()


def _run_monitor(
    server: RunningDevServer,
    monitor: str,
    generation_length: int,
    max_iterations: int | None,
    while_running: Callable[[Resonate], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """Start a monitor and follow its generations to the end; each generation's end, in order."""

    async def go() -> list[dict[str, Any]]:
        client = Resonate(url=server.url, group="infinite-monitor-tests")
        try:
            deadline = generation_deadline(INTERVAL, generation_length)
            handle = client.options(target="infinite-monitor", timeout=deadline).rpc(
                monitor, "monitor", SERVICES, INTERVAL, generation_length, max_iterations
            )
            if while_running is not None:
                await while_running(client)
            ends: list[dict[str, Any]] = []
            while True:
                ends.append(await asyncio.wait_for(handle.result(), TIMEOUT_S))
                if ends[-1]["reason"] != "continued":
                    return ends
                handle = await client.get(ends[-1]["continued_as"])
        finally:
            await client.stop()

    return asyncio.run(go())


def _executions(server: RunningDevServer, monitor: str) -> list[str]:
    """The monitor's executions the server holds: its root promises, by generation."""
    promises = server.state()["promises"]
    assert isinstance(promises, list)
    pattern = re.compile(rf"^{re.escape(monitor)}(-gen-(\d+))?$")
    found = [(m, p["id"]) for p in promises if (m := pattern.match(p["id"]))]
    return [i for m, i in sorted(found, key=lambda f: int(f[0][2] or 1))]


def _promise_count(server: RunningDevServer, execution_id: str) -> int:
    promises = server.state(execution_id)["promises"]
    assert isinstance(promises, list)
    return len(promises)


def _alerts(sandbox: RunningSandbox, monitor: str) -> list[tuple[str, str]]:
    """(service, became) of every alert Slack recorded for this monitor, in order."""
    effects = sandbox.records.effects(key_prefix=monitor)
    return [(e.body["service"], e.body["became"]) for e in effects if e.provider == "slack"]


# A thousand iterations take one to two minutes on two shared cores (70 to 120 ms an iteration,
# by load, most of it the worker's and the server's CPU), so `make test` runs two hundred, and
# `make test-slow` the thousand: the same assertions, the same generation length.
@pytest.mark.parametrize("iterations", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_many_iterations_in_generations_of_bounded_size_with_each_alert_once(
    server: RunningDevServer,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    iterations: int,
) -> None:
    generation_length = 10
    _worker(start_worker, server, sandbox.url)
    monitor = f"mon-{secrets.token_hex(4)}"
    middle, last_ten = iterations // 2, iterations - 10
    _fail_probes(sandbox, probe_key(monitor, "payments", 10)[:-1])  # iterations 10 to 19
    _fail_probes(sandbox, probe_key(monitor, "inventory", middle))
    _fail_probes(sandbox, probe_key(monitor, "checkout", last_ten)[:-1])  # the last ten but one

    started = time.monotonic()
    ends = _run_monitor(server, monitor, generation_length, iterations)
    wall = time.monotonic() - started

    # The chain: generation n ran iterations 10(n-1)+1 to 10n and handed over to generation
    # n+1; none missing, none twice. The hand-over comes before the bound is checked, so the
    # bound, a multiple of 10, is found by one more generation that ends at once.
    generations = iterations // generation_length + 1
    ids = [generation_id(monitor, n) for n in range(1, generations + 1)]
    assert [e["generation"] for e in ends] == list(range(1, generations + 1))
    assert [e["iterations"] for e in ends] == [
        min(generation_length * n, iterations) for n in range(1, generations + 1)
    ]
    assert [e["continued_as"] for e in ends] == [*ids[1:], None]
    assert [e["reason"] for e in ends] == ["continued"] * (generations - 1) + ["max-iterations"]
    assert _executions(server, monitor) == ids
    # Each state change alerted once, and only state changes.
    expected = [
        ("payments", "down"),
        ("payments", "up"),
        ("inventory", "down"),
        ("inventory", "up"),
        ("checkout", "down"),
        ("checkout", "up"),
    ]
    assert _alerts(sandbox, monitor) == expected
    assert [(a["service"], a["became"]) for e in ends for a in e["alerts"]] == expected
    assert [a["iteration"] for e in ends for a in e["alerts"]] == [
        10,
        20,
        middle,
        middle + 1,
        last_ten,
        iterations,
    ]
    # Every execution's history is bounded by the generation length, not by the monitor's age:
    # the root, an observation and a sleep per iteration, an alert per change, the hand-over.
    counts = [_promise_count(server, i) for i in ids]
    for count, end in zip(counts[:-1], ends, strict=False):
        assert count == 1 + 2 * generation_length + len(end["alerts"]) + 1
    assert counts[-1] == 1
    assert max(counts) <= 2 + generation_length * (2 + len(SERVICES))
    print(f"{iterations} iterations in {wall:.1f}s; promises per execution: {max(counts)} at most")


def test_alerts_once_and_one_successor_across_worker_kills_in_an_alert_and_the_hand_over(
    server: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    first = _worker(start_worker, server, sandbox.url)
    monitor = f"mon-{secrets.token_hex(4)}"
    _fail_probes(sandbox, probe_key(monitor, "payments", 2))
    # Generation 1: observe :1, sleep :2; observe :3, alert DOWN :4, sleep :5; observe :6,
    # alert UP :7, sleep :8; hand-over :9. Die after Slack took the DOWN alert, before its
    # result was checkpointed; then, on the next worker, after generation 2 was started.
    server.kill_at("settle", f"{monitor}:4", when="before", pid=first.pid)
    workers: list[ManagedProcess] = [first]

    async def outages(client: Resonate) -> None:
        assert await asyncio.to_thread(first.wait, 60) == -9
        # The worker that takes over reaches the hand-over as soon as time skips past the sleep
        # at :5: hold time (a task nobody serves is pending) until its tripwire is armed.
        hold = f"{monitor}-hold"
        in_an_hour = int(time.time() * 1000) + 3600 * 1000
        await client.promises.create(hold, in_an_hour, Value(), {"resonate:target": NOBODY})
        second = await asyncio.to_thread(_worker, start_worker, server, sandbox.url)
        workers.append(second)
        server.kill_at("settle", f"{monitor}:9", when="before", pid=second.pid)
        await client.promises.resolve(hold, Value())
        assert await asyncio.to_thread(second.wait, 60) == -9
        await asyncio.to_thread(_worker, start_worker, server, sandbox.url)

    ends = _run_monitor(server, monitor, 3, 6, outages)

    assert [e["reason"] for e in ends] == ["continued", "continued", "max-iterations"]
    assert _executions(server, monitor) == [generation_id(monitor, n) for n in (1, 2, 3)]
    assert _alerts(sandbox, monitor) == [("payments", "down"), ("payments", "up")]
    down = sandbox.records.requests(key_prefix=f"{monitor}:4")
    assert [r.replayed for r in down] == [False, True]  # sent again, answered from its key
    # Generation 2 ran once: one probe per service per iteration, each acted on once.
    for service in SERVICES:
        probes = sandbox.records.effects(key_prefix=f"{monitor}/{service}/")
        failed = [2] if service == "payments" else []  # an injected 503 acts on nothing
        assert [p.body["iteration"] for p in probes] == [i for i in range(1, 7) if i not in failed]
    assert ends[-1]["iterations"] == 6
    assert ends[-1]["states"] == dict.fromkeys(SERVICES, "up")


def test_the_stop_flag_ends_the_monitor_at_its_next_iteration(
    server: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, server, sandbox.url)
    monitor = f"mon-{secrets.token_hex(4)}"

    async def stop_once_it_is_going(client: Resonate) -> None:
        await asyncio.to_thread(server.wait_for, "settle", f"{monitor}-gen-3:1", 60)
        in_a_week = int(time.time() * 1000) + 7 * 24 * 3600 * 1000
        await client.promises.create(stop_flag_id(monitor), in_a_week, Value(), {})

    ends = _run_monitor(server, monitor, 5, None, stop_once_it_is_going)  # no bound: forever

    last = ends[-1]
    assert last["reason"] == "stopped"
    assert len(ends) >= 3
    assert _executions(server, monitor) == [
        generation_id(monitor, n) for n in range(1, len(ends) + 1)
    ]
    # Nothing probed after the iteration that saw the flag.
    probed = sandbox.records.requests(key_prefix=f"{monitor}/checkout/")
    assert max(p.body["iteration"] for p in probed) == last["iterations"]


def test_slack_that_cannot_take_an_alert_now_is_asked_again_with_the_same_key(
    server: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, server, sandbox.url)
    monitor = f"mon-{secrets.token_hex(4)}"
    _fail_probes(sandbox, probe_key(monitor, "inventory", 1))
    fault = {"provider": "slack", "mode": "fail_times", "times": 1, "key_prefix": monitor}
    clients.post(f"{sandbox.url}/_admin/faults", json={**fault, "status": 503}).raise_for_status()

    ends = _run_monitor(server, monitor, 5, 2)

    assert _alerts(sandbox, monitor) == [("inventory", "down"), ("inventory", "up")]
    first_alert = sandbox.records.requests(key_prefix=f"{monitor}:2")
    assert [r.status_code for r in first_alert] == [503, 200]
    assert ends[-1]["alerts_undelivered"] == 0


def test_a_monitor_with_bad_arguments_is_refused_before_it_probes(
    server: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, server, sandbox.url)
    monitor = f"mon-{secrets.token_hex(4)}"

    async def go() -> Any:
        client = Resonate(url=server.url, group="infinite-monitor-tests")
        try:
            handle = client.options(target="infinite-monitor").rpc(
                monitor, "monitor", ["checkout", "checkout"], INTERVAL
            )
            return await asyncio.wait_for(handle.result(), 30)
        finally:
            await client.stop()

    with pytest.raises(ValueError, match="services: a service is named twice"):
        asyncio.run(go())
    assert _promise_count(server, monitor) == 1  # the execution alone: nothing probed or slept
    assert sandbox.records.requests(key_prefix=monitor) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (([], 300, 100, None), "services: must be a list of 1 to 10 service names"),
        ((["a"] * 11, 300, 100, None), "services: must be a list of 1 to 10"),
        ((["Checkout"], 300, 100, None), "services: 'Checkout' is not a service name"),
        ((["a/b"], 300, 100, None), "services: 'a/b' is not a service name"),
        ((["a\n"], 300, 100, None), "services: 'a\\n' is not a service name"),
        ((["a", "a"], 300, 100, None), "services: a service is named twice"),
        ((["a"], 0, 100, None), "interval_seconds: must be between 1 and 86400, got 0"),
        ((["a"], "300", 100, None), "interval_seconds: must be a whole number, got '300'"),
        ((["a"], 300, 0, None), "generation_length: must be between 1 and 1000, got 0"),
        ((["a"], 300, True, None), "generation_length: must be a whole number, got True"),
        ((["a"], 300, 100, 0), "max_iterations: must be a whole number of at least 1"),
        ((["a"], 300, 100, 2.5), "max_iterations: must be a whole number of at least 1"),
    ],
)
def test_bad_arguments_are_named_with_the_reason(args: tuple[Any, ...], named: str) -> None:
    assert (monitor_problem(*args) or "").startswith(named), monitor_problem(*args)


@pytest.mark.parametrize("args", [(["a"], 1, 1, None), (SERVICES, 300, 100, 1000)])
def test_good_arguments_pass(args: tuple[Any, ...]) -> None:
    assert monitor_problem(*args) is None
