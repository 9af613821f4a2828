"""`monitor`'s body in process: the SDK's `resonate.testing`, fake services and a fake Slack.

The durable sleeps between iterations are promises the test settles itself
(`root_context(preload=[...])`); the stop flag and the next generation live on an in-process
Resonate (`local_resonate`), the launcher. These tests need only the SDK, this package and
pytest: they run in a copy of this folder outside the cookbook (`uv sync` then
`uv run pytest tests`). The tests that drive a real dev server, worker processes and the
provider sandbox are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from infinite_monitor.steps import Launcher, Providers, probe_key, stop_flag_id
from infinite_monitor.workflow import (
    ALERT_RETRIES,
    GenerationEnd,
    InvalidMonitorError,
    generation_deadline,
    monitor,
)
from resonate.dependencies import DependencyMap
from resonate.testing import (
    FAR_FUTURE,
    instant_sleeper,
    local_resonate,
    resolved_promise,
    root_context,
)
from resonate.types import Value

SERVICES = ["api", "db"]
MILLISECOND = timedelta(milliseconds=1)


@dataclass
class FakeWorld:
    """The services (`down`: the (service, iteration) probes that fail) and Slack (`slack`: the
    status it answers each alert with, or a whole response)."""

    down: set[tuple[str, int]] = field(default_factory=set)
    garbled: set[tuple[str, int]] = field(default_factory=set)  # probes answered undecodably
    slack: Callable[[int], int | httpx.Response] = lambda attempt: 200
    probes: list[tuple[str, int, str]] = field(default_factory=list)
    alerts: list[tuple[str, str]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        key = request.headers["Idempotency-Key"]
        if request.url.path == "/api/call":
            service, iteration = body["health_check"], body["iteration"]
            self.probes.append((service, iteration, key))
            if (service, iteration) in self.garbled:  # httpx raises DecodingError building it
                return httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"})
            return httpx.Response(503 if (service, iteration) in self.down else 200, json={})
        self.alerts.append((body["text"], key))
        answer = self.slack(len(self.alerts))
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(answer, json={"id": f"msg-{len(self.alerts)}"})


def run_body(
    world: FakeWorld,
    sleeps: list[int],
    *,
    max_iterations: int | None = None,
    generation_length: int = 100,
    stop: bool = False,
    interval: int = 60,
    timeout: timedelta | None = None,
) -> tuple[GenerationEnd, list[str]]:
    """`monitor` as generation 1 of `mon`: its sleeps `mon:<n>` over; the ids the launcher holds.

    `timeout`: the execution's deadline, from now (none: far in the future).
    """

    async def go() -> tuple[GenerationEnd, list[str]]:
        launcher = local_resonate()
        try:
            if stop:
                await launcher.promises.create(stop_flag_id("mon"), 2**62, Value(), {})
            transport = httpx.MockTransport(world.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://world") as client:
                deps = DependencyMap()
                deps.insert(Providers(client))
                deps.insert(Launcher(launcher, "infinite-monitor"))
                journal = [resolved_promise(f"mon:{n}") for n in sleeps]
                timeout_at = FAR_FUTURE
                if timeout is not None:
                    timeout_at = int(time.time() * 1000) + timeout // MILLISECOND
                ctx = root_context(
                    id="mon",
                    preload=journal,
                    deps=deps,
                    sleeper=instant_sleeper,
                    timeout_at=timeout_at,
                )
                end = await monitor(ctx, SERVICES, interval, generation_length, max_iterations)
            launched = [
                generation
                for generation in ("mon-gen-2", "mon-gen-3")
                if await exists(launcher, generation)
            ]
            return end, launched
        finally:
            await launcher.stop()

    return asyncio.run(go())


async def exists(resonate: Any, promise_id: str) -> bool:
    try:
        await resonate.promises.get(promise_id)
    except Exception:
        return False
    return True


def test_an_alert_goes_out_per_state_change_and_none_while_a_state_holds() -> None:
    """api: up, down, down, up. Ids: observe, [alert], sleep per iteration."""
    world = FakeWorld(down={("api", 2), ("api", 3)})

    end, _ = run_body(world, sleeps=[2, 5, 7, 10], max_iterations=4)

    assert [text for text, _ in world.alerts] == [
        "[mon] api is DOWN (answered 503)",
        "[mon] api is UP",
    ]
    assert [(a.service, a.became, a.iteration) for a in end.alerts] == [
        ("api", "down", 2),
        ("api", "up", 4),
    ]
    assert end.reason == "max-iterations"
    assert end.states == {"api": "up", "db": "up"}


def test_a_probe_is_keyed_by_monitor_service_and_iteration_and_a_failure_is_not_retried() -> None:
    world = FakeWorld(down={("db", 1)})

    run_body(world, sleeps=[3], max_iterations=1)

    assert sorted(world.probes) == sorted(
        (service, 1, probe_key("mon", service, 1)) for service in SERVICES
    )  # db answered 503 once: it is "down" this iteration, asked again only the next one


def test_a_probe_answered_with_a_body_that_cannot_be_decoded_counts_the_service_down() -> None:
    world = FakeWorld(garbled={("db", 1)})

    end, _ = run_body(world, sleeps=[3], max_iterations=1)

    assert end.states == {"api": "up", "db": "down"}
    assert [text for text, _ in world.alerts] == ["[mon] db is DOWN (DecodingError)"]
    assert [service for service, _, _ in world.probes].count("db") == 1  # not retried


@pytest.mark.parametrize(
    "slack",
    [
        lambda: 503,
        lambda: httpx.Response(200, html="<html><body>Welcome to the gateway</body></html>"),
        lambda: httpx.Response(200, json={"ok": True}),
        # httpx decodes the body as it builds the response, and raises DecodingError
        lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
    ],
    ids=["a 503", "a 2xx HTML page", "a 2xx without the id", "a body that cannot be decoded"],
)
def test_slack_down_past_its_retries_counts_the_alert_undelivered_and_the_monitor_goes_on(
    slack: Callable[[], int | httpx.Response],
) -> None:
    # A 2xx that is not Slack's answer may have posted: like a 503, not a bug that ends the monitor.
    world = FakeWorld(down={("api", 1), ("api", 2)}, slack=lambda attempt: slack())

    end, _ = run_body(world, sleeps=[3, 5], max_iterations=2)

    assert len(world.alerts) == 1 + ALERT_RETRIES.max_retries
    assert len({key for _, key in world.alerts}) == 1
    assert end.alerts_undelivered == 1
    assert end.iterations == 2


def test_a_stop_flag_ends_the_monitor_before_it_probes() -> None:
    world = FakeWorld()

    end, _ = run_body(world, sleeps=[], stop=True)

    assert end.reason == "stopped"
    assert world.probes == []


def test_a_generation_hands_over_to_one_successor_with_what_it_knows() -> None:
    world = FakeWorld(down={("db", 1), ("db", 2)})

    end, launched = run_body(world, sleeps=[3, 5], generation_length=2)

    assert end.reason == "continued"
    assert end.continued_as == "mon-gen-2"
    assert launched == ["mon-gen-2"]
    assert end.states == {"api": "up", "db": "down"}


@pytest.mark.parametrize(
    ("services", "interval", "named"),
    [([], 60, "services"), (["API"], 60, "services"), (["api"], 0, "interval_seconds")],
)
def test_arguments_it_cannot_monitor_are_refused_before_any_probe(
    services: list[str], interval: int, named: str
) -> None:
    with pytest.raises(InvalidMonitorError, match=f"^{named}:"):
        asyncio.run(monitor(root_context(id="mon"), services, interval))


def test_a_deadline_that_cannot_hold_the_generations_sleeps_is_refused_before_any_probe() -> None:
    """Hourly probes, 100 a generation, started with the SDK's default deadline: a day.

    Not refused, it would run 24 iterations and die at its deadline: no successor, no alert.
    """
    world = FakeWorld()

    with pytest.raises(InvalidMonitorError, match=r"^timeout: .*generation_deadline"):
        run_body(world, sleeps=[], interval=3600, timeout=timedelta(days=1))
    assert world.probes == []


def test_a_generation_started_with_its_generation_deadline_runs() -> None:
    world = FakeWorld()

    end, _ = run_body(
        world, sleeps=[2], max_iterations=1, interval=3600, timeout=generation_deadline(3600, 100)
    )

    assert end.reason == "max-iterations"
    assert len(world.probes) == len(SERVICES)
