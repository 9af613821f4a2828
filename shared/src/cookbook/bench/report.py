"""The markdown report of a run."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from datetime import datetime

from cookbook.bench.concurrency import ConcurrencyFigures, concurrency_markdown
from cookbook.bench.floor import FloorFigures
from cookbook.bench.history import HISTORY_IN_FLIGHT, HISTORY_SPOT_CHECKS, HistoryFigures
from cookbook.bench.matrix import MatrixFigures
from cookbook.bench.recovery import RecoveryFigures
from cookbook.bench.stats import ms, percentile
from cookbook.bench.steps import BACKEND_LABELS, BACKENDS, STEP_COUNTS, StepFigures
from cookbook.bench.workloads import WARMUP_STEPS


@dataclass
class Results:
    started: datetime
    rounds: int
    kills: int
    steps: list[StepFigures] = field(default_factory=list)
    recovery: list[RecoveryFigures] = field(default_factory=list)
    matrix: MatrixFigures | None = None
    floor: list[FloorFigures] = field(default_factory=list)
    history: list[HistoryFigures] = field(default_factory=list)
    concurrency: list[ConcurrencyFigures] = field(default_factory=list)
    concurrency_rounds: int = 0
    seconds: float = 0.0


def markdown(results: Results) -> str:
    lines = [
        f"# Benchmark ({results.started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; "
        f"whole run {results.seconds:.0f} s.",
        "",
    ]
    if results.steps:
        lines += [
            f"## Durable step overhead: a workflow of N no-op steps ({results.rounds} rounds, "
            "interleaved)",
            "",
            "| backend | N | steps/s (median) | steps/s (best) | ms/step (median) "
            "| ms/step (min) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        by_key = {(f.backend, f.n): f for f in results.steps}
        for n in STEP_COUNTS:
            for backend in BACKENDS:
                f = by_key[backend, n]
                median, best = statistics.median(f.seconds), min(f.seconds)
                lines.append(
                    f"| {BACKEND_LABELS[backend]} | {n} | {f.steps_per_second(median):,.0f} | "
                    f"{f.steps_per_second(best):,.0f} | {ms(median / n)} | {ms(best / n)} |"
                )
        lines.append("")
        for n in STEP_COUNTS:
            ours, peer = by_key["devserver", n], by_key["dbos", n]
            ratio = statistics.median(peer.seconds) / statistics.median(ours.seconds)
            best_ratio = min(peer.seconds) / min(ours.seconds)
            lines.append(
                f"- N = {n}: dev server / DBOS+SQLite steps/s = **{ratio:.2f}x** at the median, "
                f"{best_ratio:.2f}x best against best"
            )
        lines += [
            "",
            "Each figure is one workflow, timed from start to result in a fresh child process "
            f"after a {WARMUP_STEPS}-step warm-up. The dev server fsyncs every state change "
            "before answering (two per step: the step's promise is created, then settled); "
            "DBOS runs its synchronous API on SQLite's default rollback journal with "
            "synchronous=FULL.",
            "",
        ]
    if results.concurrency:
        lines += concurrency_markdown(results.concurrency, results.concurrency_rounds)
    if results.recovery:
        lines += [
            f"## Recovery: worker SIGKILLed mid-step -> first step on another worker "
            f"({results.kills} kills each)",
            "",
            "| setting | kills | p50 s | p95 s | max s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in results.recovery:
            if r.seconds:
                lines.append(
                    f"| {r.setting} | {len(r.seconds)} | {percentile(r.seconds, 50):.3f} | "
                    f"{percentile(r.seconds, 95):.3f} | {max(r.seconds):.3f} |"
                )
            else:
                lines.append(f"| {r.setting} | 0 | - | - | - |")
            for failure in r.failures:
                lines.append(f"|  | ({failure}) | | | |")
        lines += [
            "",
            "The worker that takes over is already running (a second live worker of the group), "
            "so these are the server's recovery times, not Python's start-up. With a ttl the "
            "lease must lapse first (the SDK heartbeats every ttl/2, so expect ttl/2 to ttl plus "
            "a 100 ms tick); the fast test mode releases a worker's leases when its stream drops. "
            "The ttl settings run side by side (they mostly wait), the fast mode alone.",
            "",
        ]
    if results.matrix is not None:
        m = results.matrix
        lines += [
            "## Crash-matrix throughput",
            "",
            "| example | crash points | passed | wall time s | crash points per minute |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| {m.example} | {m.points} | {m.passed} | {m.seconds:.1f} | {m.per_minute:.1f} |",
            "",
            "Golden runs included; every crash point is a real SIGKILL and a fresh worker process.",
            "",
        ]
    if results.history:
        lines += [
            "## History: finished 3-step workflows, SIGKILL, restart",
            "",
            "| workflows | steps/s while adding them | restart s | start on an empty dir s "
            "| RSS MB | disk MB | spot checks |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        previous = 0
        for h in results.history:
            lines.append(
                f"| {h.workflows:,} | {h.steps_per_second:,.0f} ({previous:,}-{h.workflows:,}) "
                f"| {h.restart_seconds:.2f} | {h.empty_start_seconds:.2f} | {h.rss_mb:.0f} "
                f"| {h.disk_mb:.1f} "
                f"| {h.spot_checked}/{HISTORY_SPOT_CHECKS} |"
            )
            previous = h.workflows
        lines += [
            "",
            f"Workflows run by the SDK through the dev server, {HISTORY_IN_FLIGHT} in flight; "
            "at each size the server is SIGKILLed and restart is timed from start to listening "
            "(the last snapshot is loaded and the log written since it replayed; finished "
            "executions stay in the SQLite archive, read on demand), then RSS, the data "
            "directory, and random workflows read back whole (a search on the workflow's origin, "
            "then each of its four promises by id).",
            "",
        ]
    if results.floor:
        lines += [
            "## The physical floor (same disk)",
            "",
            "| what | median ms | min ms |",
            "| --- | ---: | ---: |",
        ]
        for floor in results.floor:
            lines.append(
                f"| {floor.what} | {ms(statistics.median(floor.seconds))} "
                f"| {ms(min(floor.seconds))} |"
            )
        lines.append("")
    return "\n".join(lines)
