"""Durable executions as OpenTelemetry traces and metrics, without ever slowing or failing them.

Two seams of the SDK's public API, used together:
  - `traced`, a decorator around the workflow and each step, sees every *attempt*: when a body
    starts, fails (and is retried in place), suspends or returns, with `ctx.info` naming its
    promise, its parent and its execution;
  - `DurableTelemetry.observe`, the SDK's `observer=` hook, sees what became *durable*: a promise
    this process created, and a step's promise settled. A step's span ends there, when its
    result is checkpointed, not when its body returns (a crash in between re-runs the step).

SDK 0.8.1's observer reports promise creations and settlements only, by id: it says nothing of
attempts, retries or which execution a promise belongs to, so it cannot build a span tree alone.

Ids are derived, not random: the trace id from the execution id, a span id from its promise id.
A worker that takes over an execution after a crash therefore continues the same trace, and the
span of a step it re-runs has the id the dead worker's span would have had: one span per step.

Nothing here may block or raise into the SDK. Spans go to a BatchSpanProcessor (ending one only
appends to an in-memory queue; a background thread exports, and drops spans when the queue is
full); metrics are aggregated in memory and exported by the reader's own thread; and every hook
catches its own exceptions. An exporter that raises or hangs costs telemetry, never a workflow.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Concatenate

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.util.types import Attributes
from resonate.context import Context
from resonate.error import Suspended
from resonate.observability import Event, PromiseCreateReturned, PromiseSettleReturned
from resonate.observability import logging_observer as sdk_logging_observer
from resonate.types import Info

logger = logging.getLogger(__name__)

INSTRUMENTATION = "resonate-cookbook.observability"

# Span attributes. `resonate.promise.id` is the key that joins a span to the server's promise.
PROMISE_ID = "resonate.promise.id"
PARENT_ID = "resonate.parent.id"
EXECUTION_ID = "resonate.execution.id"
FUNCTION = "resonate.function"
KIND = "resonate.kind"  # "workflow" (the execution's root) or "step"


def trace_id_of(execution_id: str) -> int:
    """The trace id of an execution: the same in every process that ever works on it."""
    return _derived_id(b"trace", execution_id, 16)


def span_id_of(promise_id: str) -> int:
    """The span id of a durable function call: the same in every process that runs it."""
    return _derived_id(b"span", promise_id, 8)


def _derived_id(kind: bytes, durable_id: str, size: int) -> int:
    digest = hashlib.sha256(kind + b"\0" + durable_id.encode()).digest()
    return int.from_bytes(digest[:size]) or 1  # zero is OpenTelemetry's "invalid id"


class _DerivedIds(IdGenerator):
    """Hands the tracer the ids planned for the span being started (random ones otherwise)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._local = threading.local()

    def plan(self, trace_id: int, span_id: int) -> None:
        self._local.planned = (trace_id, span_id)

    def _planned(self) -> tuple[int, int] | None:
        planned: tuple[int, int] | None = getattr(self._local, "planned", None)
        return planned

    def generate_trace_id(self) -> int:
        planned = self._planned()
        return planned[0] if planned else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        planned = self._planned()
        self._local.planned = None  # the span id is asked for last: the plan is used up
        return planned[1] if planned else self._random.generate_span_id()


@dataclass
class _OpenSpan:
    span: Span
    kind: str
    function: str
    started: float = field(default_factory=time.monotonic)
    attempts: int = 1


class DurableTelemetry:
    """Spans and metrics for the durable functions this process runs.

    Give it to the SDK twice: `Resonate(observer=telemetry.observe)` and
    `resonate.with_dependency(telemetry)` (which is how `traced` finds it).
    """

    def __init__(
        self,
        span_exporter: SpanExporter | None,
        metric_readers: Sequence[MetricReader] = (),
        resource: Resource | None = None,
        *,
        export_delay_ms: int | None = None,
    ) -> None:
        resource = resource or Resource.create({"service.name": "observability-worker"})
        self._ids = _DerivedIds()
        self.tracer_provider = TracerProvider(resource=resource, id_generator=self._ids)
        if span_exporter is not None:
            # Never a SimpleSpanProcessor: it exports inside span.end(), on the event loop. The
            # delay between exports: None reads OTEL_BSP_SCHEDULE_DELAY (default 5 s).
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(span_exporter, schedule_delay_millis=export_delay_ms)
            )
        self.meter_provider = MeterProvider(metric_readers=metric_readers, resource=resource)
        self._tracer = self.tracer_provider.get_tracer(INSTRUMENTATION)
        meter = self.meter_provider.get_meter(INSTRUMENTATION)
        self._started = meter.create_counter(
            "resonate.steps.started", unit="{step}", description="Step executions started"
        )
        self._completed = meter.create_counter(
            "resonate.steps.completed",
            unit="{step}",
            description="Steps whose result (or final error) was checkpointed",
        )
        self._retried = meter.create_counter(
            "resonate.steps.retried", unit="{attempt}", description="Step attempts after a failure"
        )
        self._recovered = meter.create_counter(
            "resonate.steps.recovered",
            unit="{step}",
            description="Steps re-run after the process running them died",
        )
        self._latency = meter.create_histogram(
            "resonate.step.duration",
            unit="s",
            description="From a step's first attempt to its checkpoint, retry delays included",
        )
        self._open: dict[str, _OpenSpan] = {}
        self._created_here: set[str] = set()
        self.hook_failures = 0  # exceptions caught in a hook: telemetry lost, workflow unharmed

    # -- the SDK's observer hook -------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """`Resonate(observer=...)`: called synchronously by the SDK, so it must not raise."""
        try:
            sdk_logging_observer(event)  # keep the SDK's own log lines
            match event:
                case PromiseCreateReturned(id=promise_id):
                    self._created_here.add(promise_id)
                case PromiseSettleReturned(id=promise_id, state=state):
                    self._created_here.discard(promise_id)
                    self._checkpointed(promise_id, state)
                case _:
                    pass
        except Exception:
            self._hook_failed("observe")

    def _checkpointed(self, promise_id: str, state: str) -> None:
        opened = self._open.get(promise_id)
        if opened is None or opened.kind != "step":
            return
        del self._open[promise_id]
        outcome = {FUNCTION: opened.function, "resonate.outcome": state}
        self._completed.add(1, outcome)
        self._latency.record(time.monotonic() - opened.started, outcome)
        opened.span.set_attribute("resonate.attempts", opened.attempts)
        if state != "resolved":
            opened.span.set_status(Status(StatusCode.ERROR, f"promise {state}"))
        opened.span.end()

    # -- attempts, reported by `traced` ------------------------------------------------------

    def attempt_started(self, info: Info, kind: str) -> None:
        try:
            self._attempt_started(info, kind)
        except Exception:
            self._hook_failed("attempt_started")

    def _attempt_started(self, info: Info, kind: str) -> None:
        opened = self._open.get(info.id)
        if opened is not None:
            opened.attempts += 1
            if kind == "step":
                self._retried.add(1, {FUNCTION: info.func_name})
                opened.span.add_event("retry", {"resonate.attempt": opened.attempts})
            else:
                opened.span.add_event("resumed", {"resonate.attempt": opened.attempts})
            return
        opened = _OpenSpan(self._start_span(info, kind), kind, info.func_name)
        self._open[info.id] = opened
        if kind != "step":
            return
        self._started.add(1, {FUNCTION: info.func_name})
        if info.id not in self._created_here:
            # This process never created the step's promise, yet runs its body: another
            # process created it and died before checkpointing a result.
            self._recovered.add(1, {FUNCTION: info.func_name})
            attributes: Attributes = {PROMISE_ID: info.id, "process.pid": os.getpid()}
            opened.span.add_event("recovered", attributes)
            root = self._open.get(info.origin_id)
            if root is not None:
                root.span.add_event("recovered", attributes)

    def _start_span(self, info: Info, kind: str) -> Span:
        trace_id = trace_id_of(info.origin_id)
        parent = None
        if kind == "step":
            parent = set_span_in_context(
                NonRecordingSpan(
                    SpanContext(
                        trace_id,
                        span_id_of(info.parent_id),
                        is_remote=True,
                        trace_flags=TraceFlags(TraceFlags.SAMPLED),
                    )
                )
            )
        self._ids.plan(trace_id, span_id_of(info.id))
        return self._tracer.start_span(
            f"{kind} {info.func_name}",
            context=parent,
            attributes={
                PROMISE_ID: info.id,
                PARENT_ID: info.parent_id,
                EXECUTION_ID: info.origin_id,
                FUNCTION: info.func_name,
                KIND: kind,
                "process.pid": os.getpid(),
            },
        )

    def attempt_failed(self, info: Info, error: Exception) -> None:
        """A body raised. A step may be retried: its span stays open until it is checkpointed."""
        try:
            opened = self._open.get(info.id)
            if opened is None:
                return
            opened.span.record_exception(error, {"resonate.attempt": opened.attempts})
            if opened.kind != "step":
                self._end_workflow(info.id, Status(StatusCode.ERROR, type(error).__name__))
        except Exception:
            self._hook_failed("attempt_failed")

    def attempt_suspended(self, info: Info) -> None:
        try:
            opened = self._open.get(info.id)
            if opened is not None:
                opened.span.add_event("suspended")
        except Exception:
            self._hook_failed("attempt_suspended")

    def attempt_returned(self, info: Info) -> None:
        """A workflow body returned: the execution is done (a step waits for its checkpoint)."""
        try:
            opened = self._open.get(info.id)
            if opened is not None and opened.kind != "step":
                self._end_workflow(info.id, Status(StatusCode.OK))
        except Exception:
            self._hook_failed("attempt_returned")

    def _end_workflow(self, promise_id: str, status: Status) -> None:
        opened = self._open.pop(promise_id)
        opened.span.set_attribute("resonate.attempts", opened.attempts)
        opened.span.set_status(status)
        opened.span.end()

    def _hook_failed(self, hook: str) -> None:
        self.hook_failures += 1
        logger.warning("telemetry hook %s failed; the execution is unaffected", hook, exc_info=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush what can be flushed within `timeout_s`; True if everything was.

        The providers' own shutdown waits for an export in progress: with an exporter that hangs
        it never returns. It runs on a daemon thread, so a stuck exporter cannot hold the worker.
        """
        done = threading.Event()

        def flush() -> None:
            try:
                self.tracer_provider.shutdown()
                self.meter_provider.shutdown(timeout_millis=timeout_s * 1000)
            except Exception:
                logger.warning("telemetry shutdown failed", exc_info=True)
            done.set()

        threading.Thread(target=flush, name="telemetry-shutdown", daemon=True).start()
        return done.wait(timeout_s)


def traced[**P, R](
    function: Callable[Concatenate[Context, P], Awaitable[R]],
) -> Callable[Concatenate[Context, P], Awaitable[R]]:
    """Report each attempt of a durable function to the worker's `DurableTelemetry`.

    The execution's own function (registered with the worker) becomes the trace's root span;
    every function it runs with `ctx.run` becomes a child span. Without a `DurableTelemetry`
    dependency the function runs untraced.
    """

    @functools.wraps(function)
    async def attempt(ctx: Context, /, *args: P.args, **kwargs: P.kwargs) -> R:
        telemetry = _telemetry_of(ctx)
        if telemetry is None:
            return await function(ctx, *args, **kwargs)
        info = ctx.info
        telemetry.attempt_started(info, "workflow" if info.id == info.origin_id else "step")
        try:
            result = await function(ctx, *args, **kwargs)
        except Suspended:
            telemetry.attempt_suspended(info)
            raise
        except Exception as error:
            telemetry.attempt_failed(info, error)
            raise
        telemetry.attempt_returned(info)
        return result

    # The SDK reads the signature through functools.wraps but resolves its string annotations
    # (`from __future__ import annotations`) in the wrapper's module, this one, where `Order`
    # is unknown: it would hand the function a dict. Resolve them where they were written.
    with contextlib.suppress(NameError):
        vars(attempt)["__signature__"] = inspect.signature(function, eval_str=True)
    return attempt


def _telemetry_of(ctx: Context) -> DurableTelemetry | None:
    try:
        return ctx.get_dependency(DurableTelemetry)
    except KeyError:
        return None
