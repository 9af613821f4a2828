"""Concurrent throughput: K workflows of ten no-op steps in flight at once, side by side with DBOS.

Each configuration runs in fresh processes on a fresh data directory, one K after another:

- the dev server with one worker process, and with two: a client process keeps K workflows in
  flight (`rpc` to the workers' group, then each result), the workers run them;
- DBOS + SQLite in one process, through its queue (concurrency K) and through `start_workflow`
  with K handles outstanding; opt-in, the same on DBOS + Postgres, on a server the bench starts.

Besides steps/s, the client reads the CPU time of every process involved (server, workers, and
itself) over its timed window, so the table shows where the time goes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resonate.resonate import Resonate

from cookbook.bench.postgres import postgres_server
from cookbook.bench.workloads import BENCH_GROUP, CONCURRENT_STEPS, optional, ten_steps
from cookbook.processes import ManagedProcess
from cookbook.stack import devserver_process, url_of

LEVELS = (1, 10, 100)
DEVSERVER_CONFIGS = ("devserver-1", "devserver-2")
DBOS_CONFIGS = ("dbos-queue", "dbos-start")
POSTGRES_CONFIGS = ("dbos-pg-queue", "dbos-pg-start")
CONFIG_LABELS = {
    "devserver-1": "Resonate dev server, 1 worker process",
    "devserver-2": "Resonate dev server, 2 worker processes",
    "dbos-queue": "DBOS + SQLite, queue (concurrency K)",
    "dbos-start": "DBOS + SQLite, start_workflow",
    "dbos-pg-queue": "DBOS + Postgres, queue (concurrency K)",
    "dbos-pg-start": "DBOS + Postgres, start_workflow",
}
# The peer every figure is compared with.
BASELINE = "dbos-queue"
CONCURRENCY_GROUP = f"{BENCH_GROUP}-concurrency"
EXPECTED_RESULT = sum(range(CONCURRENT_STEPS))
# DBOS's queue is polled; its default interval (1 s) would cap K = 1 at 10 steps/s. A user
# tuning for throughput lowers it, so the bench does too.
DBOS_QUEUE_POLLING_SECONDS = 0.01


def workflows_for(k: int) -> int:
    """Workflows per timed run: enough for a steady state, few enough to keep DBOS's run short."""
    return max(30, 2 * k)


@dataclass
class ConcurrencyRun:
    seconds: float
    steps: int
    # CPU seconds over the timed window, per role: "server", "workers", "client" (for DBOS, its
    # one process is the "client").
    cpu: dict[str, float]

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class ConcurrencyFigures:
    config: str
    k: int
    runs: list[ConcurrencyRun] = field(default_factory=list)

    def median_run(self) -> ConcurrencyRun:
        ordered = sorted(self.runs, key=lambda r: r.steps_per_second)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def steps_per_second(self) -> float:
        return statistics.median(r.steps_per_second for r in self.runs)


# =================================================================================================
# CPU time of other processes
# =================================================================================================


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (PostgreSQL runs a process per connection)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
            pending += [int(child) for child in children.split()]
    return tree


def _cpu_of(watched: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per role, each summed over its processes and their children (a child that
    exits within the window takes its time with it: for PostgreSQL's per-connection backends,
    which DBOS's pool keeps open, that does not happen)."""
    cpu = {}
    for role, pids in watched.items():
        total = 0.0
        for pid in (p for root in pids for p in process_tree(root)):
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        cpu[role] = total
    return cpu


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in before}


# =================================================================================================
# Child processes
# =================================================================================================


async def resonate_concurrent(
    url: str, k: int, workflows: int, watched: dict[str, list[int]]
) -> ConcurrencyRun:
    """The client: keep K workflows in flight on the workers' group, `workflows` in all."""
    client = Resonate(url=url, group=f"{BENCH_GROUP}-concurrency-client")
    run_id = uuid.uuid4().hex[:8]

    async def drive(prefix: str, count: int) -> None:
        slots = asyncio.Semaphore(k)

        async def one(i: int) -> None:
            async with slots:
                handle = client.options(target=CONCURRENCY_GROUP).rpc(
                    f"{prefix}-{i}", "ten_steps", i
                )
                result = await handle.result()
                assert result == EXPECTED_RESULT, result

        await asyncio.gather(*(one(i) for i in range(count)))

    try:
        await drive(f"warmup-{run_id}", max(k, 5))
        before = _cpu_of(watched) | {"client": time.process_time()}
        started = time.perf_counter()
        await drive(f"conc-{run_id}", workflows)
        seconds = time.perf_counter() - started
        after = _cpu_of(watched) | {"client": time.process_time()}
    finally:
        await client.stop()
    return ConcurrencyRun(seconds, workflows * CONCURRENT_STEPS, _cpu_delta(before, after))


def dbos_concurrent(
    mode: str, k: int, workflows: int, database_url: str | None, watched: dict[str, list[int]]
) -> ConcurrencyRun:
    """DBOS in this process: `workflows` workflows with K in flight, by its queue or by handles."""
    workdir = Path(tempfile.mkdtemp(prefix="cookbook-bench-dbos-"))
    if database_url is None:
        # DBOS's SQLite schema needs SQLite >= 3.42 (see child.py).
        pysqlite3 = optional("pysqlite3")
        sys.modules["sqlite3"] = pysqlite3
        sys.modules["sqlite3.dbapi2"] = pysqlite3.dbapi2
        database_url = f"sqlite:///{workdir / 'dbos.sqlite'}"
    dbos = optional("dbos").DBOS
    try:
        dbos(
            config={
                "name": "cookbook-bench",
                "system_database_url": database_url,
                "log_level": "WARNING",
                # Room for every workflow in flight: the default pool would cap K.
                "max_executor_threads": max(64, 2 * k),
            }
        )

        @dbos.step()  # type: ignore[untyped-decorator]
        def dbos_noop(i: int) -> int:
            return i

        @dbos.workflow()  # type: ignore[untyped-decorator]
        def dbos_ten_steps(i: int) -> int:
            total = 0
            for step in range(CONCURRENT_STEPS):
                total += dbos_noop(step)
            return total

        dbos.launch()
        try:
            queue = dbos.register_queue(
                f"cookbook-bench-{k}",
                worker_concurrency=k,
                polling_interval_sec=DBOS_QUEUE_POLLING_SECONDS,
            )

            def drive(count: int) -> None:
                if mode == "queue":
                    handles = [queue.enqueue(dbos_ten_steps, i) for i in range(count)]
                    for handle in handles:
                        assert handle.get_result() == EXPECTED_RESULT
                    return
                in_flight: collections.deque[Any] = collections.deque()
                for i in range(count):
                    if len(in_flight) >= k:
                        assert in_flight.popleft().get_result() == EXPECTED_RESULT
                    in_flight.append(dbos.start_workflow(dbos_ten_steps, i))
                while in_flight:
                    assert in_flight.popleft().get_result() == EXPECTED_RESULT

            drive(max(k, 5))
            before = _cpu_of(watched) | {"client": time.process_time()}
            started = time.perf_counter()
            drive(workflows)
            seconds = time.perf_counter() - started
            after = _cpu_of(watched) | {"client": time.process_time()}
        finally:
            dbos.destroy()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ConcurrencyRun(seconds, workflows * CONCURRENT_STEPS, _cpu_delta(before, after))


async def concurrency_worker() -> None:
    """A dev server worker for the concurrency runs: executes `ten_steps` until stopped."""
    resonate = Resonate(url=os.environ["RESONATE_URL"], group=CONCURRENCY_GROUP)
    resonate.register(ten_steps)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"concurrency worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()


def child_concurrency(
    config: str, k: int, workflows: int, url: str | None, watched: dict[str, list[int]]
) -> None:
    if config.startswith("devserver"):
        assert url is not None
        run = asyncio.run(resonate_concurrent(url, k, workflows, watched))
    else:
        mode = config.rsplit("-", 1)[1]
        run = dbos_concurrent(mode, k, workflows, url, watched)
    print(json.dumps({"seconds": run.seconds, "steps": run.steps, "cpu": run.cpu}), flush=True)


# =================================================================================================
# The measurement (in the bench process)
# =================================================================================================


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}


def _run_child(argv: list[str]) -> ConcurrencyRun:
    command = [sys.executable, "-m", "cookbook.bench", *argv]
    done = subprocess.run(
        command, env=_clean_env(), capture_output=True, text=True, timeout=900, check=False
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"bench child {' '.join(argv)} exited with {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    figures = json.loads(lines[-1])
    return ConcurrencyRun(figures["seconds"], figures["steps"], figures["cpu"])


def _worker(url: str, name: str) -> ManagedProcess:
    return ManagedProcess(
        name,
        [sys.executable, "-m", "cookbook.bench", "_concurrency_worker"],
        env=_clean_env() | {"RESONATE_URL": url},
        ready=r"concurrency worker \d+ ready",
    )


def _devserver_run(workdir: Path, config: str, k: int) -> ConcurrencyRun:
    worker_count = int(config.rsplit("-", 1)[1])
    data = workdir / f"concurrency-{config}-{k}-{uuid.uuid4().hex[:6]}"
    with devserver_process(data).start() as server:
        url = url_of(server)
        workers = [_worker(url, f"worker-{i + 1}") for i in range(worker_count)]
        try:
            for worker in workers:
                worker.start()
            watched = f"server={server.pid},workers=" + "+".join(str(w.pid) for w in workers)
            argv = ["_concurrency", config, str(k), str(workflows_for(k)), "--url", url]
            return _run_child([*argv, "--watch", watched])
        finally:
            for worker in reversed(workers):
                worker.stop()


def measure_concurrency(
    workdir: Path,
    rounds: int,
    say: Callable[[str], None],
    *,
    postgres: bool = False,
    levels: Sequence[int] = LEVELS,
    configs: Sequence[str] | None = None,
) -> list[ConcurrencyFigures]:
    """Every configuration (or those in `configs`, and Postgres's if asked), `rounds` times."""
    chosen = [*DEVSERVER_CONFIGS, *DBOS_CONFIGS] if configs is None else list(configs)
    configs = [*chosen, *(POSTGRES_CONFIGS if postgres else ())]
    figures = {(c, k): ConcurrencyFigures(c, k) for c in configs for k in levels}
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(postgres_server()) if postgres else None
        for round_ in range(1, rounds + 1):
            for k in levels:
                for config in configs:
                    if config.startswith("devserver"):
                        run = _devserver_run(workdir, config, k)
                    else:
                        argv = ["_concurrency", config, str(k), str(workflows_for(k))]
                        if config.startswith("dbos-pg"):
                            assert database is not None
                            argv += ["--url", database.url, "--watch", f"server={database.pid}"]
                        run = _run_child(argv)
                    figures[config, k].runs.append(run)
                    cpu = "  ".join(
                        f"{role} {seconds * 1e3 / run.steps:.2f}"
                        for role, seconds in run.cpu.items()
                    )
                    say(
                        f"  round {round_}/{rounds}  K={k:<4} {config:<14} "
                        f"{run.steps_per_second:8,.0f} steps/s  CPU ms/step: {cpu}"
                    )
    return list(figures.values())


def parse_watch(value: str) -> dict[str, list[int]]:
    """`server=12,workers=13+14` -> {"server": [12], "workers": [13, 14]}."""
    watched: dict[str, list[int]] = {}
    for part in filter(None, value.split(",")):
        role, _, pids = part.partition("=")
        watched[role] = [int(pid) for pid in pids.split("+") if pid]
    return watched


# =================================================================================================
# The table
# =================================================================================================


def _peer(
    figures: dict[tuple[str, int], ConcurrencyFigures], k: int, configs: Sequence[str]
) -> float:
    """The faster of a DBOS backend's two modes at K: the figure a DBOS user would get."""
    return max((figures[c, k].steps_per_second for c in configs if (c, k) in figures), default=0.0)


def concurrency_markdown(results: Sequence[ConcurrencyFigures], rounds: int) -> list[str]:
    by_key = {(f.config, f.k): f for f in results}
    levels = sorted({f.k for f in results})
    configs = [c for c in CONFIG_LABELS if any(f.config == c for f in results)]
    lines = [
        f"## Concurrent throughput: K workflows of {CONCURRENT_STEPS} no-op steps in flight "
        f"({rounds} rounds, median)",
        "",
        "| configuration | K | steps/s | vs DBOS+SQLite | CPU ms/step: server | workers "
        "| client / DBOS process |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in levels:
        sqlite = _peer(by_key, k, DBOS_CONFIGS)
        for config in configs:
            if (config, k) not in by_key:
                continue
            f = by_key[config, k]
            run = f.median_run()

            def cpu(role: str, run: ConcurrencyRun = run) -> str:
                seconds = run.cpu.get(role)
                return "-" if seconds is None else f"{seconds * 1e3 / run.steps:.2f}"

            ratio = f"{f.steps_per_second / sqlite:.2f}x" if sqlite > 0 else "-"
            lines.append(
                f"| {CONFIG_LABELS[config]} | {k} | {f.steps_per_second:,.0f} | {ratio} "
                f"| {cpu('server')} | {cpu('workers')} | {cpu('client')} |"
            )
    lines.append("")
    top = max(levels)
    ours = max(
        (by_key[c, top].steps_per_second for c in DEVSERVER_CONFIGS if (c, top) in by_key),
        default=0.0,
    )
    sqlite = _peer(by_key, top, DBOS_CONFIGS)
    postgres = _peer(by_key, top, POSTGRES_CONFIGS)
    single = min(levels)
    ours_single = max(
        (by_key[c, single].steps_per_second for c in DEVSERVER_CONFIGS if (c, single) in by_key),
        default=0.0,
    )
    if ours and sqlite:
        lines.append(
            f"- K = {top}: the dev server (its better configuration) runs **{ours / sqlite:.2f}x** "
            f"DBOS+SQLite's steps/s (its better mode)"
            + (f", **{ours / postgres:.2f}x** DBOS+Postgres's" if postgres else "")
            + (f", and **{ours / ours_single:.2f}x** its own K = {single}" if ours_single else "")
            + "."
        )
    lines += [
        "",
        f"Each run: fresh processes and a fresh data directory, max(K, 5) warm-up workflows, "
        "then the timed workflows (max(30, 2K)) with K in flight. The dev server configurations "
        "have a client process that keeps K workflows in flight (`rpc` to the workers' group, "
        "then each result) and one or two worker processes; the dev server fsyncs every change "
        "before answering, sharing one fsync among the requests that arrive together (group "
        "commit). DBOS runs all in one process (its executor given a thread per workflow in "
        "flight); its queue is polled every "
        f"{DBOS_QUEUE_POLLING_SECONDS * 1000:.0f} ms (default 1 s). CPU is user + system "
        "seconds over the timed window divided by the steps (DBOS: its one process in the "
        "last column, PostgreSQL's processes in the server column). vs DBOS+SQLite: against "
        "the faster of its two modes at the same K.",
        "",
    ]
    return lines
