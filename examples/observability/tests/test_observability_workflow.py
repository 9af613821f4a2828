"""`place_order` and its telemetry in process: the SDK's own `resonate.testing`, fake providers on
`httpx.MockTransport`, and OpenTelemetry's in-memory exporter and reader.

The worker's `DurableTelemetry` is wired as the worker wires it (`observer=telemetry.observe` and
a dependency). These tests need only the SDK, this package and its dependencies, and pytest: they
run in a copy of this folder outside the cookbook (`make copy-out-observability`). The tests that
drive a real dev server, worker processes, a crash and an OTLP receiver are in tests/cookbook/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from observability.steps import Order, Outcome, Providers, ProviderUnavailableError, charge_card
from observability.telemetry import FUNCTION, PROMISE_ID, DurableTelemetry, span_id_of, trace_id_of
from observability.workflow import STEP_RETRIES, place_order
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context

ORDER = Order("o-1", "cus_1", 4200)


@dataclass
class FakeProviders:
    """Answer by rule: `answer(path, attempt) -> (status, body)`, attempt counting that path."""

    answer: Callable[[str, int], tuple[int, dict[str, Any]]]
    calls: list[tuple[str, str]] = field(default_factory=list)  # (path, idempotency key)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.url.path, request.headers["Idempotency-Key"]))
        status, body = self.answer(request.url.path, self.paths().count(request.url.path))
        return httpx.Response(status, json=body)

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]


def acted(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": path.split("/")[1] + "_1"}


@dataclass
class Observed:
    result: dict[str, Outcome]
    spans: list[ReadableSpan]
    counters: dict[str, float]
    rejected: dict[str, float]  # resonate.steps.completed with outcome "rejected", by function


def place(providers: FakeProviders) -> Observed:
    """The order on an in-process Resonate wired as the worker is, its telemetry in memory."""
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = DurableTelemetry(exporter, [reader], export_delay_ms=10)

    async def go() -> dict[str, Outcome]:
        resonate = local_resonate(observer=telemetry.observe)
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.with_dependency(telemetry)
                resonate.register(place_order, retry_policy=Never())
                handle = resonate.run(ORDER.order_id, place_order, ORDER)
                result: dict[str, Outcome] = await asyncio.wait_for(handle.result(), 30)
                return result
        finally:
            await resonate.stop()

    result = asyncio.run(go())
    counters: dict[str, float] = {}
    rejected: dict[str, float] = {}
    data = reader.get_metrics_data()
    assert telemetry.shutdown(timeout_s=5)
    for resource_metrics in data.resource_metrics if data else []:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, NumberDataPoint):
                        counters[metric.name] = counters.get(metric.name, 0) + point.value
                        labels = point.attributes or {}
                        if labels.get("resonate.outcome") == "rejected":
                            function = str(labels[FUNCTION])
                            rejected[function] = rejected.get(function, 0) + point.value
    return Observed(result, list(exporter.get_finished_spans()), counters, rejected)


def test_each_step_calls_its_provider_once_under_its_own_key() -> None:
    providers = FakeProviders(acted)

    observed = place(providers)

    assert observed.result == {
        "charge": Outcome(receipt="payment_1"),
        "warehouse": Outcome(receipt="slack_1"),
        "receipt": Outcome(receipt="email_1"),
        "sms": Outcome(receipt="sms_1"),
    }
    assert providers.paths() == ["/payment/charge", "/slack/send", "/email/send", "/sms/send"]
    assert len({key for _, key in providers.calls}) == 4


def test_a_declined_card_ends_the_order_with_the_refusal_and_nothing_else_runs() -> None:
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (402, {"error": "card declined"}) if path == "/payment/charge" else acted(path, 1)

    providers = FakeProviders(answer)

    observed = place(providers)

    assert observed.result == {"charge": Outcome(refusal="402 card declined")}
    assert providers.paths() == ["/payment/charge"]


def test_the_span_tree_is_the_promise_tree_and_a_retry_is_an_event_and_a_count() -> None:
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (503, {}) if path == "/email/send" and attempt == 1 else acted(path, attempt)

    providers = FakeProviders(answer)

    observed = place(providers)

    email_keys = [key for path, key in providers.calls if path == "/email/send"]
    assert email_keys == [email_keys[0]] * 2  # retried under the same key
    step_ids = list(dict.fromkeys(key for _, key in providers.calls))
    by_promise = {
        str(span.attributes[PROMISE_ID]): span for span in observed.spans if span.attributes
    }
    assert sorted(by_promise) == sorted([ORDER.order_id, *step_ids])  # one span per promise
    for promise_id, span in by_promise.items():
        assert span.context is not None
        assert span.context.trace_id == trace_id_of(ORDER.order_id)
        assert span.context.span_id == span_id_of(promise_id)
        if promise_id != ORDER.order_id:
            assert span.parent is not None
            assert span.parent.span_id == span_id_of(ORDER.order_id)
    email_span = by_promise[email_keys[0]]
    assert [event.name for event in email_span.events].count("retry") == 1
    assert observed.counters["resonate.steps.started"] == 4
    assert observed.counters["resonate.steps.completed"] == 4
    assert observed.counters["resonate.steps.retried"] == 1
    assert STEP_RETRIES.max_retries >= 1


def test_a_message_out_of_retries_after_the_charge_keeps_the_charge_and_shows_in_the_trace() -> (
    None
):
    # The warehouse is down for longer than the retries last: the card is charged all the same.
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (503, {}) if path == "/slack/send" else acted(path, attempt)

    providers = FakeProviders(answer)

    observed = place(providers)

    assert observed.result == {
        "charge": Outcome(receipt="payment_1"),
        "warehouse": Outcome(unconfirmed="may not have been sent: /slack/send: answered 503"),
        "receipt": Outcome(receipt="email_1"),
        "sms": Outcome(receipt="sms_1"),
    }
    assert providers.paths().count("/slack/send") == 1 + STEP_RETRIES.max_retries
    assert providers.paths().count("/email/send") == 1  # and the order went on
    status = {span.name: span.status.status_code for span in observed.spans}
    assert status["step notify_warehouse"] == StatusCode.ERROR  # the step failed, visibly
    assert status["workflow place_order"] == StatusCode.OK  # the order did not
    assert observed.rejected == {"notify_warehouse": 1}  # the count to alert on


def charge_answered(answer: Callable[[], httpx.Response]) -> tuple[Outcome, int]:
    """`charge_card` alone, on a bare context, answered by `answer`: its outcome, requests."""
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer()

    async def go() -> Outcome:
        transport = httpx.MockTransport(handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            return await charge_card(root_context(id="o-1:1", deps=deps), ORDER)

    return asyncio.run(go()), len(requests)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            lambda: httpx.Response(200, html="<html><body>Welcome to the gateway</body></html>"),
            "answered 200 without its id",
        ),
        (lambda: httpx.Response(200, json={"status": "ok"}), "answered 200 without its id"),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "DecodingError",
        ),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_charge_answered_without_its_answer_may_have_landed(
    answer: Callable[[], httpx.Response], reason: str
) -> None:
    # Not a bug in the step: the card may have been charged. Raised as the provider being
    # unavailable, the step is retried under the same key and the provider answers from it.
    with pytest.raises(ProviderUnavailableError, match=reason):
        charge_answered(answer)


def test_a_refusal_whose_body_is_a_page_is_still_a_refusal_asked_once() -> None:
    outcome, requests = charge_answered(
        lambda: httpx.Response(402, html="<h1>Payment Required</h1>")
    )

    assert (outcome, requests) == (Outcome(refusal="402 Payment Required"), 1)


def test_a_replay_skips_the_steps_its_journal_holds() -> None:
    providers = FakeProviders(acted)
    journal = [
        resolved_promise("o-1:1", {"receipt": "payment_1", "refusal": None}),
        resolved_promise("o-1:2", {"receipt": "slack_1", "refusal": None}),
    ]

    async def replay() -> dict[str, Outcome]:
        transport = httpx.MockTransport(providers.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
            deps = DependencyMap()
            deps.insert(Providers(c))
            ctx: Context = root_context(id="o-1", preload=journal, deps=deps)
            return await place_order(ctx, ORDER)

    result = asyncio.run(replay())

    assert result["charge"] == Outcome(receipt="payment_1")
    assert providers.paths() == ["/email/send", "/sms/send"]
