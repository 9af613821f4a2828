"""`send_batch` in process: the SDK's `resonate.testing` and a fake rate-limited API.

The durable sleeps between calls are promises the test settles itself
(`root_context(preload=[...])`): a sleep whose promise is resolved is over, one whose promise is
pending suspends the workflow. These tests need only the SDK, this package and pytest: they run
in a copy of this folder outside the cookbook (`uv sync` then `uv run pytest tests`). The tests
that drive a real dev server, worker processes and the provider sandbox are in tests/cookbook/
and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import pytest
from paced_calls.steps import ApiUnavailableError, CallResult, Providers
from paced_calls.workflow import RETRY, send_batch
from resonate.dependencies import DependencyMap
from resonate.error import Suspended
from resonate.testing import instant_sleeper, pending_promise, resolved_promise, root_context
from resonate.types import PromiseRecord

RECORDS = ["r1", "r2", "r3"]


def takes(record: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"{record}-{attempt}"}


@dataclass
class FakeApi:
    """Answers by rule: `answer(record, attempt at it) -> (status, JSON body)` or a whole
    response; records every call."""

    answer: Callable[[str, int], tuple[int, dict[str, Any]] | httpx.Response] = takes
    calls: list[tuple[str, str]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        record = json.loads(request.content)["record"]
        self.calls.append((record, request.headers["Idempotency-Key"]))
        answer = self.answer(record, self.records().count(record))
        return (
            answer
            if isinstance(answer, httpx.Response)
            else httpx.Response(answer[0], json=answer[1])
        )

    def records(self) -> list[str]:
        return [record for record, _ in self.calls]


def slept(*after_calls: int) -> list[PromiseRecord]:
    """The sleeps after calls 1, 2, ... are over: the sleep after call c is the promise `2c`."""
    return [resolved_promise(f"batch-1:{2 * c}") for c in after_calls]


def run_body(
    api: FakeApi,
    journal: list[PromiseRecord],
    interval_ms: int = 1000,
    sleeper: Callable[[float], Awaitable[None]] = instant_sleeper,
) -> list[CallResult]:
    """The workflow body over a journal: `batch-1:<n>` are its calls and sleeps, in order."""

    async def go() -> list[CallResult]:
        transport = httpx.MockTransport(api.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(id="batch-1", preload=journal, deps=deps, sleeper=sleeper)
            return await send_batch(ctx, RECORDS, interval_ms)

    return asyncio.run(go())


def test_each_record_is_one_call_with_its_own_key_in_order() -> None:
    api = FakeApi()

    results = run_body(api, slept(1, 2))

    assert results == [CallResult(r, receipt=f"{r}-1") for r in RECORDS]
    assert api.records() == RECORDS
    assert len({key for _, key in api.calls}) == len(RECORDS)


def test_the_next_call_waits_for_the_sleep_after_the_last_one() -> None:
    """The first call goes at once; with the sleep after it still pending, nothing more is sent."""
    api = FakeApi()

    with pytest.raises(Suspended):
        run_body(api, [pending_promise("batch-1:2")])

    assert api.records() == ["r1"]


def test_a_refused_record_is_its_calls_result_asked_once_and_the_batch_goes_on() -> None:
    api = FakeApi(lambda r, n: (422, {"error": "bad record"}) if r == "r2" else takes(r, n))

    results = run_body(api, slept(1, 2))

    assert results[1] == CallResult("r2", refusal="422 bad record")
    assert api.records() == RECORDS


def test_a_429_is_asked_again_with_the_same_key_and_past_the_policy_fails_the_batch() -> None:
    api = FakeApi(lambda r, n: (429, {}) if r == "r1" and n == 1 else takes(r, n))

    results = run_body(api, slept(1, 2))

    assert results[0].receipt == "r1-2"
    assert api.calls[0][1] == api.calls[1][1]

    down = FakeApi(lambda r, n: (503, {}))
    with pytest.raises(ApiUnavailableError, match="call 1: answered 503"):
        run_body(down, [])
    assert len(down.calls) == 1 + RETRY.max_retries


@pytest.mark.parametrize(
    "answer",
    [
        lambda: httpx.Response(200, html="<html><body>Welcome to the gateway</body></html>"),
        lambda: httpx.Response(200, json={"status": "ok"}),
        # httpx decodes the body as it builds the response, and raises DecodingError
        lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_2xx_without_its_answer_may_have_landed_and_is_asked_again_with_the_same_key(
    answer: Callable[[], httpx.Response],
) -> None:
    # Not a bug in the step: the API may have acted. It fails as the API being unavailable, after
    # the policy's retries, all under one key.
    api = FakeApi(lambda r, n: answer())

    with pytest.raises(ApiUnavailableError, match="call 1: "):
        run_body(api, [])

    assert len(api.calls) == 1 + RETRY.max_retries
    assert len({key for _, key in api.calls}) == 1


def test_a_refusal_whose_body_is_a_page_is_still_its_calls_result_asked_once() -> None:
    api = FakeApi(
        lambda r, n: httpx.Response(403, html="<h1>Forbidden</h1>") if r == "r2" else takes(r, n)
    )

    results = run_body(api, slept(1, 2))

    assert results[1] == CallResult("r2", refusal="403 Forbidden")
    assert api.records() == RECORDS


def test_a_retry_reaches_the_api_no_sooner_than_one_interval_after_the_attempt_it_repeats() -> None:
    """At a pace slower than the policy's first delay (2 s), a 429 must not bring a request early.

    The retries' waits pass on a virtual clock; the API notes when each request for `r2` came.
    """
    now = 0.0
    r2_sent_at: list[float] = []

    async def virtual_sleep(seconds: float) -> None:
        nonlocal now
        now += seconds
        await asyncio.sleep(0)

    def answer(record: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if record != "r2":
            return takes(record, attempt)
        r2_sent_at.append(now)
        return (429, {}) if attempt <= 3 else takes(record, attempt)

    results = run_body(FakeApi(answer), slept(1, 2), interval_ms=5000, sleeper=virtual_sleep)

    assert results[1].receipt == "r2-4"
    gaps = [later - earlier for earlier, later in itertools.pairwise(r2_sent_at)]
    assert gaps == [5, 5, 8]  # the interval, until the policy's own backoff (2, 4, 8 s) is longer


def test_a_replay_skips_the_calls_the_journal_says_were_made() -> None:
    api = FakeApi()
    first = resolved_promise("batch-1:1", asdict(CallResult("r1", receipt="r1-journal")))

    results = run_body(api, [first, *slept(1, 2)])

    assert results[0].receipt == "r1-journal"
    assert api.records() == ["r2", "r3"]
