"""Telemetry for a terminal: a line per finished step, then each execution's span tree.

The SDK's ConsoleSpanExporter prints every span as a page of JSON; for `make run-observability`
this prints what a trace viewer would show, compactly. It is an ordinary SpanExporter, run by
the BatchSpanProcessor's thread, so printing never happens on the workflow's event loop.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from observability.telemetry import KIND, PROMISE_ID


class ConsoleTraces(SpanExporter):
    """Prints each step span as it is exported, and the tree when the execution's span ends."""

    def __init__(self, metrics: InMemoryMetricReader | None = None, out: TextIO = sys.stdout):
        self._metrics = metrics
        self._out = out
        self._traces: dict[int, list[ReadableSpan]] = {}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            if span.context is None:
                continue
            trace = self._traces.setdefault(span.context.trace_id, [])
            trace.append(span)
            if span.attributes and span.attributes.get(KIND) == "step":
                self._print(f"span {_describe(span)}")
            if span.parent is None:
                self._print_tree(self._traces.pop(span.context.trace_id))
        return SpanExportResult.SUCCESS

    def _print_tree(self, spans: list[ReadableSpan]) -> None:
        root = next(s for s in spans if s.parent is None)
        assert root.context is not None
        children = sorted(
            (s for s in spans if s.parent is not None), key=lambda s: s.start_time or 0
        )
        lines = [f"trace {root.context.trace_id:032x}", f"└─ {_describe(root)}"]
        for i, child in enumerate(children):
            lines.append(f"   {'└─' if i == len(children) - 1 else '├─'} {_describe(child)}")
        if any(event.name == "recovered" for event in root.events):
            lines.append(
                "   (steps checkpointed before the take-over: exported by the worker that ran them)"
            )
        if self._metrics is not None:
            lines.append(f"metrics: {_metrics_summary(self._metrics)}")
        self._print("\n".join(lines))

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)


def _describe(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    millis = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    events = "".join(
        f"  [{e.name}{_attempt(e.attributes or {})}]" for e in span.events if e.name != "exception"
    )
    failed = sum(1 for e in span.events if e.name == "exception")
    if failed:
        events += f"  [{failed} failed attempt{'s' if failed > 1 else ''}]"
    status = "" if span.status.is_ok else f"  {span.status.status_code.name}"
    return f"{span.name:<24} {attributes.get(PROMISE_ID)!s:<28} {millis:7.0f} ms{status}{events}"


def _attempt(attributes: Mapping[str, object]) -> str:
    attempt = attributes.get("resonate.attempt")
    return f" #{attempt}" if attempt is not None else ""


def _metrics_summary(reader: InMemoryMetricReader) -> str:
    totals: dict[str, float] = {}
    slowest = 0.0
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, NumberDataPoint):
                        name = metric.name.removeprefix("resonate.steps.")
                        totals[name] = totals.get(name, 0) + point.value
                    elif isinstance(point, HistogramDataPoint) and point.count:
                        slowest = max(slowest, point.max)
    counts = " · ".join(
        f"{name} {totals.get(name, 0):.0f}"
        for name in ("started", "completed", "retried", "recovered")
    )
    return f"steps {counts}; slowest step {slowest * 1000:.0f} ms"
