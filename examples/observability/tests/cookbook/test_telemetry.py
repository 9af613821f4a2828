"""The telemetry, read from an in-memory exporter: its span tree is the server's promise tree,
its metrics count what happened, and an exporter that raises or hangs costs no workflow time."""

from __future__ import annotations

import asyncio
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any, cast

import pytest
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from cookbook.testing.http_server import serving
from observability.steps import Order, Outcome, Providers
from observability.telemetry import PROMISE_ID, DurableTelemetry, span_id_of, trace_id_of
from observability.workflow import place_order
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from resonate.resonate import Resonate
from resonate.retry import Never


def new_order() -> Order:
    execution_id = f"order-test-{secrets.token_hex(4)}"
    return Order(order_id=execution_id, customer_id="customer-42", amount_cents=4200)


@asynccontextmanager
async def in_process_worker(
    url: str, sandbox: RunningSandbox, telemetry: DurableTelemetry
) -> AsyncIterator[Resonate]:
    """A worker wired as observability.worker wires it, in this process, on a group of its own."""
    async with clients.async_client(base_url=sandbox.url, timeout=10) as client:
        resonate = Resonate(
            url=url, group=f"observability-{secrets.token_hex(3)}", observer=telemetry.observe
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(telemetry)
        resonate.register(place_order, retry_policy=Never())
        try:
            yield resonate
        finally:
            await resonate.stop()


async def place(resonate: Resonate, order: Order, seconds: float = 30) -> dict[str, Outcome]:
    handle = resonate.run(order.order_id, place_order, order)
    return await asyncio.wait_for(handle.result(), seconds)


def add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> str:
    response = clients.post(f"{sandbox.url}/_admin/faults", json={**spec, "key_prefix": key_prefix})
    response.raise_for_status()
    fault_id: str = response.json()["id"]
    return fault_id


def remove_fault(sandbox: RunningSandbox, fault_id: str) -> None:
    clients.delete(f"{sandbox.url}/_admin/faults/{fault_id}").raise_for_status()


def promise_tree(devserver: RunningDevServer, execution_id: str) -> dict[str, str | None]:
    """Each promise of the execution, as the server holds it, with its parent (None: the root)."""
    promises = cast(list[dict[str, Any]], devserver.state(execution_id)["promises"])
    tree: dict[str, str | None] = {}
    for promise in promises:
        parent = promise["tags"].get("resonate:parent")
        tree[promise["id"]] = None if parent in (None, promise["id"]) else parent
    return tree


def spans_by_promise(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    by_promise = {str((s.attributes or {})[PROMISE_ID]): s for s in spans}
    assert len(by_promise) == len(spans), "one span per promise"
    return by_promise


def counters(reader: InMemoryMetricReader) -> dict[str, float]:
    totals: dict[str, float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for metric in (m for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics):
        for point in metric.data.data_points:
            value = point.value if isinstance(point, NumberDataPoint) else point.count
            totals[metric.name] = totals.get(metric.name, 0) + value
    return totals


def test_one_trace_per_execution_whose_span_tree_is_the_promise_tree(
    devserver: RunningDevServer, sandbox: RunningSandbox
) -> None:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = DurableTelemetry(spans, [metrics], export_delay_ms=10)
    order = new_order()
    add_fault(sandbox, order.order_id + ":", provider="email", mode="fail_times", status=503)

    async def scenario() -> None:
        async with in_process_worker(devserver.url, sandbox, telemetry) as worker:
            await place(worker, order)

    asyncio.run(scenario())
    assert telemetry.shutdown(timeout_s=5)

    by_promise = spans_by_promise(spans.get_finished_spans())
    tree = promise_tree(devserver, order.order_id)
    assert set(by_promise) == set(tree)
    for promise_id, parent_id in tree.items():
        span = by_promise[promise_id]
        assert span.context is not None
        assert span.context.trace_id == trace_id_of(order.order_id)
        assert span.context.span_id == span_id_of(promise_id)
        assert (span.parent.span_id if span.parent else None) == (
            span_id_of(parent_id) if parent_id else None
        )
    retried = [p for p, s in by_promise.items() if any(e.name == "retry" for e in s.events)]
    assert [by_promise[p].name for p in retried] == ["step email_receipt"]
    assert counters(metrics) == {
        "resonate.steps.started": 4,
        "resonate.steps.completed": 4,
        "resonate.steps.retried": 1,
        "resonate.step.duration": 4,  # a histogram: its count
    }
    assert telemetry.hook_failures == 0


class RaisingSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise RuntimeError("collector unreachable")


class HangingSpans(SpanExporter):
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait()
        return SpanExportResult.SUCCESS


class RaisingMetrics(MetricExporter):
    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 0, **_: Any
    ) -> MetricExportResult:
        raise RuntimeError("collector unreachable")

    def force_flush(self, timeout_millis: float = 0) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 0, **_: Any) -> None:
        pass


class HangingMetrics(RaisingMetrics):
    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 0, **_: Any
    ) -> MetricExportResult:
        self.release.wait()
        return MetricExportResult.SUCCESS


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Lets a hanging exporter go when the test ends, so its thread does not outlive the test."""
    event = threading.Event()
    yield event
    event.set()


@pytest.mark.parametrize("failure", ["raises", "hangs"])
def test_an_exporter_that_raises_or_hangs_costs_telemetry_not_the_workflow(
    devserver: RunningDevServer, sandbox: RunningSandbox, release: threading.Event, failure: str
) -> None:
    span_exporter = RaisingSpans() if failure == "raises" else HangingSpans(release)
    metric_exporter = RaisingMetrics() if failure == "raises" else HangingMetrics(release)
    telemetry = DurableTelemetry(
        span_exporter,
        # Exports every 10 ms: a hanging metric export is in progress all through the workflow.
        [PeriodicExportingMetricReader(metric_exporter, export_interval_millis=10)],
        export_delay_ms=10,
    )
    order = new_order()

    async def scenario() -> tuple[dict[str, Any], float]:
        async with in_process_worker(devserver.url, sandbox, telemetry) as worker:
            started = time.monotonic()
            result = await place(worker, order, seconds=10)
            return dict(result), time.monotonic() - started

    result, seconds = asyncio.run(scenario())

    assert set(result) == {"charge", "warehouse", "receipt", "sms"}
    assert all(outcome.receipt for outcome in result.values())
    # Four steps against a local sandbox take well under a second; allow for a loaded machine.
    assert seconds < 5
    started = time.monotonic()
    telemetry.shutdown(timeout_s=1)
    assert time.monotonic() - started < 2, "shutdown is bounded even when an export never ends"


def test_a_hook_that_raises_is_contained(
    devserver: RunningDevServer, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    telemetry = DurableTelemetry(InMemorySpanExporter())

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer bug")

    monkeypatch.setattr(telemetry._tracer, "start_span", broken)
    monkeypatch.setattr(telemetry._completed, "add", broken)
    order = new_order()

    async def scenario() -> dict[str, Any]:
        async with in_process_worker(devserver.url, sandbox, telemetry) as worker:
            return dict(await place(worker, order, seconds=10))

    result = asyncio.run(scenario())

    assert all(outcome.receipt for outcome in result.values())
    assert telemetry.hook_failures >= 5  # the root and four steps failed to open their spans


# -- across a crash: real worker processes exporting over OTLP ---------------------------------


class OtlpReceiver:
    """A collector stand-in: keeps in memory the spans that workers send it over OTLP/HTTP."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.url = ""  # set once it serves (the `receiver` fixture)
        self._changed = threading.Condition()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """The HTTP handler that receives OTLP/HTTP trace exports into this receiver."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    with receiver._changed:
                        for resource_spans in request.resource_spans:
                            for scope_spans in resource_spans.scope_spans:
                                receiver.spans.extend(scope_spans.spans)
                        receiver._changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def wait_for_span(self, promise_id: str, timeout: float = 15) -> Span:
        with self._changed:
            found = self._changed.wait_for(lambda: self.by_promise().get(promise_id), timeout)
        assert found, f"no span for {promise_id} within {timeout}s"
        return found

    def by_promise(self) -> dict[str, Span]:
        return {_attributes(s)[PROMISE_ID]: s for s in self.spans}


def _attributes(span: Span) -> dict[str, str]:
    return {a.key: a.value.string_value or str(a.value.int_value) for a in span.attributes}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    with serving(receiver.handler()) as url:
        receiver.url = url
        yield receiver


def test_a_worker_that_takes_over_after_a_crash_continues_the_same_trace(
    devserver: RunningDevServer,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    receiver: OtlpReceiver,
) -> None:
    env = {
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": sandbox.url,
        "RESONATE_TTL_SECONDS": "2",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    first = start_worker("observability.worker", env, name="worker-a")
    order = new_order()
    execution_id = order.order_id
    # The email provider (step 3) takes 2 s. Once worker-a's spans of steps 1 and 2 have reached
    # the collector, the dev server is told to SIGKILL worker-a as it checkpoints the email step:
    # the email was sent, its result never recorded. Worker-b re-runs the step (at full speed).
    slow_email = add_fault(
        sandbox, execution_id + ":", provider="email", mode="latency", latency_ms=2000
    )

    async def scenario() -> dict[str, Any]:
        client = Resonate(url=devserver.url, group="observability-tests")
        try:
            handle = client.options(target="observability").rpc(execution_id, "place_order", order)
            for step in (1, 2):
                await asyncio.to_thread(receiver.wait_for_span, f"{execution_id}:{step}")
            await asyncio.to_thread(devserver.kill_at, "settle", f"{execution_id}:3", pid=first.pid)
            assert await asyncio.to_thread(first.wait, 30) == -signal.SIGKILL
            await asyncio.to_thread(remove_fault, sandbox, slow_email)
            await asyncio.to_thread(start_worker, "observability.worker", env, "worker-b")
            return cast(dict[str, Any], await asyncio.wait_for(handle.result(), 30))
        finally:
            await client.stop()

    result = asyncio.run(scenario())
    assert all(outcome["receipt"] for outcome in result.values())
    root = receiver.wait_for_span(execution_id)

    by_promise = receiver.by_promise()
    tree = promise_tree(devserver, execution_id)
    assert set(by_promise) == set(tree)
    for promise_id, parent_id in tree.items():
        span = by_promise[promise_id]
        assert int.from_bytes(span.trace_id) == trace_id_of(execution_id)
        assert int.from_bytes(span.span_id) == span_id_of(promise_id)
        expected_parent = span_id_of(parent_id).to_bytes(8) if parent_id else b""
        assert span.parent_span_id == expected_parent
    workers = {p: _attributes(s)["process.pid"] for p, s in by_promise.items()}
    second_pid = {w for w in workers.values() if w != str(first.pid)}
    assert workers[f"{execution_id}:1"] == workers[f"{execution_id}:2"] == str(first.pid)
    assert workers[f"{execution_id}:3"] == workers[f"{execution_id}:4"] == workers[execution_id]
    assert len(second_pid) == 1
    recovered = [p for p, s in by_promise.items() if any(e.name == "recovered" for e in s.events)]
    assert sorted(recovered) == [execution_id, f"{execution_id}:3"]
    assert [e.name for e in root.events] == ["recovered"]
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [e.provider for e in effects] == ["payment", "slack", "email", "sms"]
