"""Time skipping (`--skip-time`): once every execution is suspended, the next timer fires now."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from cookbook import clients
from cookbook.testing.fixtures import DevServerFactory, ProcessFactory, RunningDevServer
from resonate.resonate import Resonate

WORKER = "tests.devserver.workflows"
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
# The SDK bounds a sleep by its workflow's deadline (1 day unless told): give it room.
WORKFLOW_TIMEOUT = timedelta(days=31)


def _remind(url: str, execution_id: str, sleep_ms: int, timeout: float = 10) -> tuple[str, float]:
    """Run `reminder(sleep_ms)` to completion; return its value and how long it took."""

    async def go() -> tuple[str, float]:
        client = Resonate(url=url, group="devserver-tests-client")
        try:
            started = time.perf_counter()
            handle = client.options(target="devserver-tests", timeout=WORKFLOW_TIMEOUT).rpc(
                execution_id, "reminder", sleep_ms
            )
            value: str = await asyncio.wait_for(handle.result(), timeout)
            return value, time.perf_counter() - started
        finally:
            await client.stop()

    return asyncio.run(go())


def _tree(server: RunningDevServer, execution_id: str) -> dict[str, Any]:
    """An execution's promises and tasks, without timestamps or its own id (which differ)."""

    def strip(text: str) -> str:
        return text.replace(execution_id, "<id>")

    snapshot: Any = server.state(execution_id)
    promises = sorted(
        (
            strip(p["id"]),
            p["state"],
            # The root's param holds the sleep's duration, the one input that differs.
            None if p["id"] == execution_id else p["param"],
            p["value"],
            sorted((k, strip(v)) for k, v in p["tags"].items()),
            sorted(strip(a) for a in p["awaiters"]),
        )
        for p in snapshot["promises"]
    )
    tasks = sorted((strip(t["id"]), t["state"]) for t in snapshot["tasks"])
    return {"promises": promises, "tasks": tasks}


def _promise(server: RunningDevServer, promise_id: str) -> dict[str, Any]:
    snapshot: Any = server.state(promise_id.split(":", 1)[0])
    found: dict[str, Any] = next(p for p in snapshot["promises"] if p["id"] == promise_id)
    return found


def test_a_30_day_sleep_completes_in_seconds(
    start_devserver: DevServerFactory, start_worker: ProcessFactory
) -> None:
    server = start_devserver(skip_time=True)
    start_worker(WORKER, {"RESONATE_URL": server.url})
    value, seconds = _remind(server.url, f"skip-{secrets.token_hex(3)}", THIRTY_DAYS_MS)
    assert value == "reminded after steps 1 and 2"
    # Well under a second on a quiet machine; a loaded one gets room, days are still far off.
    assert seconds < 8.0, f"took {seconds:.2f}s"


def test_a_skipped_sleep_gives_the_same_result_and_promise_tree_as_a_real_one(
    start_devserver: DevServerFactory, start_worker: ProcessFactory
) -> None:
    real, skipping = start_devserver(), start_devserver(skip_time=True)
    start_worker(WORKER, {"RESONATE_URL": real.url})
    start_worker(WORKER, {"RESONATE_URL": skipping.url})
    real_id, skipped_id = f"real-{secrets.token_hex(3)}", f"skip-{secrets.token_hex(3)}"

    real_value, _ = _remind(real.url, real_id, 300)
    skipped_value, _ = _remind(skipping.url, skipped_id, THIRTY_DAYS_MS)

    assert skipped_value == real_value
    assert _tree(skipping, skipped_id) == _tree(real, real_id)
    assert any(p[0] == "<id>:1" and p[1] == "resolved" for p in _tree(real, real_id)["promises"])


def test_no_timer_fires_early_while_a_step_holds_a_lease(
    start_devserver: DevServerFactory, start_worker: ProcessFactory, tmp_path: Path
) -> None:
    # The sleep starts before a 1.5 s step whose lease (ttl 1 s) the worker keeps renewing:
    # the workflow is not suspended until it awaits the sleep, so nothing may skip before.
    server = start_devserver(skip_time=True)
    steps = tmp_path / "steps.log"
    start_worker(
        WORKER,
        {
            "RESONATE_URL": server.url,
            "STEP_LOG": str(steps),
            "STEP_SECONDS": "1.5",
            "RESONATE_TTL_SECONDS": "1",
        },
    )
    execution_id = f"busy-{secrets.token_hex(3)}"
    value, _ = _remind(server.url, execution_id, THIRTY_DAYS_MS)

    assert value == "reminded after steps 1 and 2"
    timer, first_step = _promise(server, f"{execution_id}:1"), _promise(server, f"{execution_id}:2")
    assert timer["settledAt"] >= first_step["settledAt"], "the timer fired while a step ran"
    runs = Counter(line.split()[2] for line in steps.read_text().splitlines())
    assert runs == Counter({f"{execution_id}:2": 1, f"{execution_id}:3": 1}), "a lease lapsed"


def test_a_restarted_server_keeps_the_time_it_skipped(
    start_devserver: DevServerFactory, start_worker: ProcessFactory
) -> None:
    server = start_devserver(skip_time=True)
    start_worker(WORKER, {"RESONATE_URL": server.url})
    execution_id = f"restart-{secrets.token_hex(3)}"
    _remind(server.url, execution_id, THIRTY_DAYS_MS)
    before = server.state(execution_id)

    server.kill()
    server.process.wait(10)
    server.restart()

    assert server.state(execution_id) == before


def test_without_the_flag_a_long_sleep_takes_its_time(
    devserver: RunningDevServer, start_worker: ProcessFactory
) -> None:
    start_worker(WORKER, {"RESONATE_URL": devserver.url})
    execution_id = f"plain-{secrets.token_hex(3)}"

    async def start() -> None:
        client = Resonate(url=devserver.url, group="devserver-tests-client")
        try:
            await (
                client.options(target="devserver-tests", timeout=WORKFLOW_TIMEOUT)
                .rpc(execution_id, "reminder", THIRTY_DAYS_MS)
                .id()
            )
        finally:
            await client.stop()

    asyncio.run(start())
    devserver.wait_for("settle", f"{execution_id}:2")  # step 1 done: only the sleep is left
    time.sleep(0.5)  # no event to await: the point is that ticks pass and nothing fires
    assert _promise(devserver, f"{execution_id}:1")["state"] == "pending"
    health = clients.get(f"{devserver.url}/_cookbook/health").json()
    assert health["status"] == "ok"
