"""`python -m observability.worker`: a worker that executes `place_order` workflows, traced.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server, and exports to a terminal or to a collector:
  RESONATE_URL           the Resonate server (required)
  RESONATE_GROUP         the worker group clients send work to (default: observability)
  RESONATE_TTL_SECONDS   task lease; a dead worker's work moves on after at most this long
  PROVIDER_API_URL       the third-party APIs the steps call
  OTEL_TRACES_EXPORTER   console (default here), otlp, or none
  OTEL_METRICS_EXPORTER  console (default here: a summary under each trace), otlp, or none
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, ..._METRICS_ENDPOINT,
  OTEL_SERVICE_NAME, OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL: read by OpenTelemetry itself
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from resonate.resonate import Resonate
from resonate.retry import Never

from observability.console import ConsoleTraces
from observability.steps import Providers
from observability.telemetry import DurableTelemetry
from observability.workflow import place_order

GROUP = "observability"
EXPORTERS = ("console", "otlp", "none")


def telemetry_from_environment() -> DurableTelemetry:
    traces = os.environ.get("OTEL_TRACES_EXPORTER", "console")
    metrics = os.environ.get("OTEL_METRICS_EXPORTER", "console")
    for variable, value in (("OTEL_TRACES_EXPORTER", traces), ("OTEL_METRICS_EXPORTER", metrics)):
        if value not in EXPORTERS:
            sys.exit(f"observability.worker: {variable}={value!r}: expected one of {EXPORTERS}")
    readers: list[MetricReader] = []
    summary = None
    if metrics == "otlp":
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    elif metrics == "console":
        summary = InMemoryMetricReader()
        readers.append(summary)
    exporter: SpanExporter | None = None
    if traces == "otlp":
        exporter = OTLPSpanExporter()
    elif traces == "console":
        exporter = ConsoleTraces(summary)
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES over these defaults.
    resource = Resource.create({"service.name": "observability-worker"})
    # A terminal wants the tree soon after the execution ends; a collector takes the default.
    delay_ms = 200 if traces == "console" else None
    return DurableTelemetry(exporter, readers, resource, export_delay_ms=delay_ms)


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "observability.worker: RESONATE_URL is not set "
            "(start a server, or use `make run-observability`)"
        )
    telemetry = telemetry_from_environment()
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
            observer=telemetry.observe,
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(telemetry)
        # The workflow itself is never retried; its steps are, each by its own policy. The SDK's
        # default (30 retries, doubling) would retry a body that fails before its first step (bad
        # arguments, a bug) for hours, holding its lease, to fail the same way every time.
        resonate.register(place_order, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"observability worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()
    if not telemetry.shutdown(timeout_s=5):
        print("telemetry: not everything was exported within 5 s; the rest is dropped", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
