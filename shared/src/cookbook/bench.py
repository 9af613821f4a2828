"""`cookbook bench` (`make bench`): what durability costs here, side by side with a peer.

One run, five measurements, written to `bench-results/` as a markdown table and a PNG chart:

1. Durable step overhead: a workflow of N no-op durable steps through the embedded dev server
   (a real server process and a real worker process, HTTP+SSE, fsync on), the SDK's in-process
   local mode, DBOS with its SQLite system database, and plain Python function calls. Rounds are
   interleaved (round 1 of every backend, then round 2, ...) so a noisy machine hurts all alike.
2. Recovery: a worker is SIGKILLed mid-step; how long until a fresh worker runs the next step,
   for lease ttls of 1, 2 and 5 s and for the dev server's fast test mode.
3. Crash-matrix throughput: crash points per minute over the saga example's matrix.
4. The physical floor: one fsync'd append to a file (what the dev server's log does per
   record) and one fsync'd SQLite WAL commit, on the same disk.
5. History: finished 3-step workflows run by the SDK (100 in flight) up to 1,000 and 10,000
   (`ARGS="--only history --history 100000"` for more); at each size the dev server is
   SIGKILLed, and its restart time (start to listening, next to a start on an empty data
   directory), RSS, data directory and a spot check of old workflows (each promise by id) are
   measured, with the steps/s of each stretch.

A benchmark, not a test: it prints what it measured and never fails on a number. Each backend
runs in a child process of its own (`python -m cookbook.bench _steps ...`), so one backend's
imports, threads or `sqlite3` substitution cannot leak into another's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from resonate.context import Context
from resonate.resonate import Resonate

from cookbook import catalog
from cookbook.processes import ManagedProcess
from cookbook.stack import devserver_process, url_of

STEP_COUNTS = (100, 1000)
BACKENDS = ("devserver", "local", "dbos", "plain")
BACKEND_LABELS = {
    "devserver": "Resonate dev server (HTTP+SSE, fsync)",
    "local": "Resonate SDK local mode (in-process)",
    "dbos": "DBOS + SQLite",
    "plain": "plain Python",
}
# Each child warms up (imports, connections, first-call caches) on a short workflow first.
WARMUP_STEPS = 20
RECOVERY_SETTINGS: tuple[tuple[str, float | None], ...] = (
    ("fast test mode", None),
    ("ttl 1 s", 1.0),
    ("ttl 2 s", 2.0),
    ("ttl 5 s", 5.0),
)
# Recovery workflows run steps of this length, so a kill lands somewhere inside a step.
HOLD_STEP_SECONDS = 0.02
# Fast-mode workers get a long lease: with it, a kill is noticed through the dropped stream only.
FAST_MODE_TTL_SECONDS = 30.0
BENCH_GROUP = "cookbook-bench"


# =================================================================================================
# The workloads (run in child processes)
# =================================================================================================


async def noop(ctx: Context, i: int) -> int:
    return i


async def count(ctx: Context, n: int) -> int:
    """N durable no-op steps, one after another: the cost of a checkpoint and nothing else."""
    total = 0
    for i in range(n):
        total += await ctx.run(noop, i)
    return total


async def plain_noop(i: int) -> int:
    return i


async def plain_count(n: int) -> int:
    total = 0
    for i in range(n):
        total += await plain_noop(i)
    return total


def tick(ctx: Context, marker: str, log: str) -> bool:
    """One step of a recovery workflow: say who ran it and when, then take a little while.

    Returns whether the workflow should go on: the benchmark deletes the marker file once it has
    seen a fresh worker take over. The answer is journaled, so a replay follows the same path.
    """
    with Path(log).open("a") as f:
        f.write(f"{ctx.info.origin_id} {os.getpid()} {time.time():.6f}\n")
    time.sleep(HOLD_STEP_SECONDS)
    return Path(marker).exists()


async def hold(ctx: Context, marker: str, log: str) -> int:
    steps = 0
    while steps < 100_000 and await ctx.run(tick, marker, log):
        steps += 1
    return steps


async def _resonate_steps(url: str | None, n: int) -> float:
    # Without a URL: LocalConnection, the SDK's server state machine in this process.
    resonate = Resonate(env={}) if url is None else Resonate(url=url, group=f"{BENCH_GROUP}-steps")
    resonate.register(count)
    try:
        await resonate.run(f"warmup-{uuid.uuid4().hex}", count, WARMUP_STEPS).result()
        started = time.perf_counter()
        total = await resonate.run(f"steps-{uuid.uuid4().hex}", count, n).result()
        seconds = time.perf_counter() - started
    finally:
        await resonate.stop()
    assert total == n * (n - 1) // 2, total
    return seconds


def _dbos_steps(n: int) -> float:
    # DBOS's SQLite schema needs SQLite >= 3.42; the system library may be older. pysqlite3-binary
    # bundles a current one. This runs in a child process of its own, so the swap stays here.
    pysqlite3 = _optional("pysqlite3")
    sys.modules["sqlite3"] = pysqlite3
    sys.modules["sqlite3.dbapi2"] = pysqlite3.dbapi2
    dbos = _optional("dbos").DBOS
    workdir = Path(tempfile.mkdtemp(prefix="cookbook-bench-dbos-"))
    try:
        dbos(
            config={
                "name": "cookbook-bench",
                "system_database_url": f"sqlite:///{workdir / 'dbos.sqlite'}",
                "log_level": "WARNING",
            }
        )

        @dbos.step()  # type: ignore[untyped-decorator]
        def dbos_noop(i: int) -> int:
            return i

        @dbos.workflow()  # type: ignore[untyped-decorator]
        def dbos_count(n: int) -> int:
            total = 0
            for i in range(n):
                total += dbos_noop(i)
            return total

        dbos.launch()
        try:
            dbos_count(WARMUP_STEPS)
            started = time.perf_counter()
            total = dbos_count(n)
            seconds = time.perf_counter() - started
        finally:
            dbos.destroy()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert total == n * (n - 1) // 2, total
    return seconds


def _plain_steps(n: int) -> float:
    async def run() -> float:
        await plain_count(WARMUP_STEPS)
        started = time.perf_counter()
        total = await plain_count(n)
        seconds = time.perf_counter() - started
        assert total == n * (n - 1) // 2, total
        return seconds

    return asyncio.run(run())


def _child_steps(backend: str, n: int, url: str | None) -> None:
    match backend:
        case "devserver":
            seconds = asyncio.run(_resonate_steps(url, n))
        case "local":
            seconds = asyncio.run(_resonate_steps(None, n))
        case "dbos":
            seconds = _dbos_steps(n)
        case _:
            seconds = _plain_steps(n)
    print(json.dumps({"seconds": seconds}), flush=True)


async def _child_worker() -> None:
    """A worker for the recovery runs: executes `hold` workflows until stopped."""
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group=BENCH_GROUP,
        ttl=timedelta(seconds=float(os.environ["RESONATE_TTL_SECONDS"])),
    )
    resonate.register(hold)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"bench worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()


def _optional(module: str) -> Any:
    """Import one of the `bench` dependency group's packages, saying how to get it if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"cookbook bench: {module} is not installed; run `make bench`, which installs the "
            "`bench` dependency group"
        ) from exc


# =================================================================================================
# 1. Durable step overhead
# =================================================================================================


@dataclass
class StepFigures:
    backend: str
    n: int
    seconds: list[float] = field(default_factory=list)

    @property
    def ms_per_step(self) -> list[float]:
        return [s * 1000 / self.n for s in self.seconds]

    def steps_per_second(self, seconds: float) -> float:
        return self.n / seconds if seconds > 0 else float("inf")


def measure_steps(workdir: Path, rounds: int, say: Callable[[str], None]) -> list[StepFigures]:
    figures = {(b, n): StepFigures(b, n) for n in STEP_COUNTS for b in BACKENDS}
    with devserver_process(workdir / "steps-devserver").start() as server:
        url = url_of(server)
        for round_ in range(1, rounds + 1):
            for n in STEP_COUNTS:
                for backend in BACKENDS:
                    seconds = _run_steps_child(backend, n, url)
                    figures[backend, n].seconds.append(seconds)
                    say(
                        f"  round {round_}/{rounds}  N={n:<5} {backend:<10} "
                        f"{_ms(seconds / n):>8} ms/step  {n / seconds:12,.0f} steps/s"
                    )
    return list(figures.values())


def _run_steps_child(backend: str, n: int, url: str) -> float:
    argv = [sys.executable, "-m", "cookbook.bench", "_steps", backend, str(n), "--url", url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"bench child {backend} N={n} exited with {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    seconds: float = json.loads(lines[-1])["seconds"]
    return seconds


# =================================================================================================
# 2. Recovery
# =================================================================================================


@dataclass
class RecoveryFigures:
    setting: str
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _bench_worker(url: str, ttl: float, name: str) -> ManagedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    env |= {"RESONATE_URL": url, "RESONATE_TTL_SECONDS": str(ttl)}
    return ManagedProcess(
        name,
        [sys.executable, "-m", "cookbook.bench", "_worker"],
        env=env,
        ready=r"bench worker \d+ ready",
    )


class StepLog:
    """The lines `tick` appends (`<execution> <pid> <time>`), read as they arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self._offset = 0
        self.lines: list[tuple[str, int, float]] = []

    def _read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            execution, pid, at = line.split()
            self.lines.append((execution, int(pid), float(at)))

    async def first(
        self, execution: str, *, among: Container[int] = (), besides: int = 0
    ) -> tuple[int, float]:
        """The first step of `execution` run by one of `among`, or by anyone but `besides`.

        Returns (pid, wall-clock time); the caller bounds the wait.
        """
        while True:
            self._read()
            for line_execution, pid, at in self.lines:
                if line_execution == execution and (pid in among if among else pid != besides):
                    return pid, at
            await asyncio.sleep(0.005)


async def _measure_one_setting(
    workdir: Path, setting: str, ttl: float | None, kills: int, say: Callable[[str], None]
) -> RecoveryFigures:
    """Kill the worker running a workflow, `kills` times; time until another worker runs a step.

    Two workers are live, so the one that takes over is already running: the figure is the
    server's recovery (lease expiry or the dropped stream, then dispatch, acquire and replay),
    not Python's start-up time. Whichever worker got the workflow is the victim; a replacement
    starts right after the kill, while the recovery is under way, so there are two again.
    """
    figures = RecoveryFigures(setting)
    data = workdir / f"recovery-{setting.replace(' ', '-')}"
    data.mkdir(parents=True)
    steps = StepLog(data / "steps.log")
    fast = ttl is None
    worker_ttl = FAST_MODE_TTL_SECONDS if ttl is None else ttl
    server = devserver_process(data / "devserver", fast_recovery=fast).start()
    url = url_of(server)
    workers: list[ManagedProcess] = []
    client = Resonate(url=url, group=f"{BENCH_GROUP}-client")
    spawned = 0

    def new_worker() -> ManagedProcess:
        nonlocal spawned
        spawned += 1
        process = _bench_worker(url, worker_ttl, f"worker-{spawned}")
        workers.append(process)
        return process.start()

    try:
        live = [await asyncio.to_thread(new_worker) for _ in range(2)]
        for k in range(kills):
            execution = f"recover-{secrets.token_hex(4)}-{k}"
            marker = data / f"{execution}.hold"
            marker.touch()
            handle = client.options(target=BENCH_GROUP).rpc(
                execution, "hold", str(marker), str(steps.path)
            )
            pids = {p.pid: p for p in live}
            async with asyncio.timeout(30):
                victim_pid, _ = await steps.first(execution, among=pids)
            victim = pids.pop(victim_pid)
            # Land the kill at a random point of the heartbeat cycle (the worker renews its
            # lease every ttl/2, starting at the acquire), or of a step in the fast mode.
            cycle = HOLD_STEP_SECONDS if ttl is None else ttl / 2
            await asyncio.sleep(random.uniform(0.05, 0.05 + cycle))
            killed_at = time.time()
            victim.kill()
            replacement = asyncio.ensure_future(asyncio.to_thread(new_worker))
            try:
                async with asyncio.timeout(4 * worker_ttl + 30):
                    _, first_step_at = await steps.first(execution, besides=victim_pid)
                figures.seconds.append(first_step_at - killed_at)
            except TimeoutError:
                figures.failures.append(f"kill {k + 1}: no other worker ran a step of it")
            marker.unlink()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handle.result(), 60)
            live = [*pids.values(), await replacement]
        if figures.seconds:
            say(
                f"  {setting:<15} {len(figures.seconds)} kills: "
                f"p50 {_percentile(figures.seconds, 50):.3f}s  "
                f"max {max(figures.seconds):.3f}s"
            )
    finally:
        await client.stop()
        for process in reversed(workers):
            process.stop()
        server.stop()
    return figures


def measure_recovery(
    workdir: Path, kills: int, say: Callable[[str], None]
) -> list[RecoveryFigures]:
    """The fast mode alone (its figures are milliseconds), then the ttl settings side by side.

    A ttl setting spends nearly all its time waiting for leases to lapse, so running the three
    together costs their figures a few milliseconds at most and the run a couple of minutes less.
    """

    async def all_settings() -> list[RecoveryFigures]:
        (fast_name, _), *ttls = RECOVERY_SETTINGS
        fast = await _measure_one_setting(workdir, fast_name, None, kills, say)
        rest = await asyncio.gather(
            *(_measure_one_setting(workdir, name, ttl, kills, say) for name, ttl in ttls)
        )
        return [fast, *rest]

    return asyncio.run(all_settings())


# =================================================================================================
# 3. Crash-matrix throughput
# =================================================================================================


@dataclass
class MatrixFigures:
    example: str
    points: int
    passed: int
    seconds: float

    @property
    def per_minute(self) -> float:
        return self.points * 60 / self.seconds if self.seconds > 0 else 0.0


def measure_crash_matrix(example_name: str, say: Callable[[str], None]) -> MatrixFigures:
    """The example's whole matrix, golden runs included, exactly as `cookbook crash` runs it."""
    from cookbook.crash.harness import CrashHarness, harness_stack

    example = catalog.example(example_name)
    points = passed = 0
    started = time.perf_counter()
    with harness_stack(example) as stack, CrashHarness(example, stack) as harness:
        for scenario in example.scenarios:
            golden = harness.golden(scenario)
            for point in golden.points:
                result = harness.run(golden, point)
                points += 1
                passed += result.passed
    seconds = time.perf_counter() - started
    say(f"  {example_name}: {points} crash points ({passed} passed) in {seconds:.1f}s")
    return MatrixFigures(example_name, points, passed, seconds)


# =================================================================================================
# 4. The physical floor
# =================================================================================================


@dataclass
class FloorFigures:
    what: str
    seconds: list[float]


def measure_floor(workdir: Path, samples: int = 400) -> list[FloorFigures]:
    import sqlite3

    workdir.mkdir(parents=True, exist_ok=True)
    record = b'{"now":1700000000000,"req":{"kind":"task.fence","id":"x"}}' + b" " * 200 + b"\n"
    fd = os.open(workdir / "floor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    appends = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            os.write(fd, record)
            os.fsync(fd)
            appends.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    db = sqlite3.connect(workdir / "floor.sqlite", isolation_level=None)
    commits = []
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(samples):
            started = time.perf_counter()
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (record + str(i).encode(),))
            db.execute("COMMIT")
            commits.append(time.perf_counter() - started)
    finally:
        db.close()
    return [
        FloorFigures(
            "fsync'd append of one ~250-byte record to a file (the dev server's log)", appends
        ),
        FloorFigures("fsync'd SQLite commit of one row (WAL mode, synchronous=FULL)", commits),
    ]


# =================================================================================================
# The report
# =================================================================================================


# =================================================================================================
# History: restart time, memory and throughput as finished workflows pile up
# =================================================================================================

HISTORY_SIZES = (1_000, 10_000)
HISTORY_IN_FLIGHT = 100
HISTORY_SPOT_CHECKS = 20


async def three_steps(ctx: Context, i: int) -> int:
    total = 0
    for step in range(3):
        total += await ctx.run(noop, step)
    return total


@dataclass
class HistoryFigures:
    workflows: int
    # Steps/s while running the workflows from the previous size up to this one, 100 in flight.
    steps_per_second: float
    restart_seconds: float
    # The same start on an empty data directory, right after: Python and its imports, which
    # on a loaded machine are most of a restart.
    empty_start_seconds: float
    rss_mb: float
    disk_mb: float
    spot_checked: int


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _run_history(url: str, prefix: str, start: int, stop: int) -> float:
    resonate = Resonate(url=url, group=f"{BENCH_GROUP}-history")
    resonate.register(three_steps)
    slots = asyncio.Semaphore(HISTORY_IN_FLIGHT)

    async def one(i: int) -> None:
        async with slots:
            assert await resonate.run(f"{prefix}-{i}", three_steps, i).result() == 3

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(start, stop)))
        return time.perf_counter() - started
    finally:
        await resonate.stop()


async def _spot_check(url: str, ids: Sequence[str]) -> int:
    """How many of the workflows `ids` read back whole: each of its four promises (the workflow
    and its three steps, found by a search on its origin) resolved, also when read by id."""
    resonate = Resonate(url=url, group=f"{BENCH_GROUP}-history-check")
    whole = 0
    try:
        for execution_id in ids:
            found, cursor = [], None
            while True:
                page = await resonate.promises.search(
                    None, {"resonate:origin": execution_id}, 100, cursor
                )
                found += page.promises
                if (cursor := page.cursor) is None:
                    break
            by_id = [await resonate.promises.get(p.id) for p in found]
            if len(found) == 4 and all(p.state == "resolved" for p in [*found, *by_id]):
                whole += 1
    finally:
        await resonate.stop()
    return whole


def measure_history(
    workdir: Path, sizes: Sequence[int], say: Callable[[str], None]
) -> list[HistoryFigures]:
    """Finished 3-step workflows run by the SDK, then at each size: SIGKILL, restart, measure."""
    data, prefix, done, figures = workdir / "history", uuid.uuid4().hex[:8], 0, []
    server = devserver_process(data).start()
    try:
        for size in sorted(sizes):
            seconds = asyncio.run(_run_history(url_of(server), prefix, done, size))
            steps_per_second = 3 * (size - done) / seconds
            done = size
            server.kill()
            started = time.perf_counter()
            server = devserver_process(data).start(timeout=600)
            restart = time.perf_counter() - started
            rss = _rss_mb(server.pid)
            disk = sum(f.stat().st_size for f in data.iterdir() if f.is_file()) / 1e6
            ids = [f"{prefix}-{random.randrange(size)}" for _ in range(HISTORY_SPOT_CHECKS)]
            checked = asyncio.run(_spot_check(url_of(server), ids))
            started = time.perf_counter()
            devserver_process(workdir / f"history-empty-{size}").start(timeout=600).stop()
            empty = time.perf_counter() - started
            figures.append(
                HistoryFigures(size, steps_per_second, restart, empty, rss, disk, checked)
            )
            say(
                f"  {size:,} workflows: {steps_per_second:,.0f} steps/s, restart {restart:.2f} s "
                f"(empty data dir: {empty:.2f} s), RSS {rss:.0f} MB, disk {disk:.1f} MB, "
                f"{checked}/{len(ids)} spot checks"
            )
    finally:
        server.stop()
    return figures


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
    seconds: float = 0.0


def _percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: with 20 samples, p95 is the 19th smallest."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.3f}" if ms >= 0.01 else f"{ms:.2g}"  # plain Python's steps take nanoseconds


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
                    f"{f.steps_per_second(best):,.0f} | {_ms(median / n)} | {_ms(best / n)} |"
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
                    f"| {r.setting} | {len(r.seconds)} | {_percentile(r.seconds, 50):.3f} | "
                    f"{_percentile(r.seconds, 95):.3f} | {max(r.seconds):.3f} |"
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
                f"| {floor.what} | {_ms(statistics.median(floor.seconds))} "
                f"| {_ms(min(floor.seconds))} |"
            )
        lines.append("")
    return "\n".join(lines)


def chart(results: Results, path: Path) -> None:
    matplotlib = _optional("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    panels = [p for p in ("steps", "recovery") if getattr(results, p)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    column = 0
    if results.steps:
        ax = axes[0][column]
        column += 1
        by_key = {(f.backend, f.n): f for f in results.steps}
        # Plain Python is four orders of magnitude faster: it gets a note, not a bar, so that the
        # durable backends can be compared on a linear scale.
        durable = [b for b in BACKENDS if b != "plain"]
        width = 0.8 / len(STEP_COUNTS)
        for i, n in enumerate(STEP_COUNTS):
            xs = [b + (i - (len(STEP_COUNTS) - 1) / 2) * width for b in range(len(durable))]
            figures = [by_key[b, n] for b in durable]
            medians = [f.steps_per_second(statistics.median(f.seconds)) for f in figures]
            bests = [f.steps_per_second(min(f.seconds)) for f in figures]
            worsts = [f.steps_per_second(max(f.seconds)) for f in figures]
            errors = [
                [m - w for m, w in zip(medians, worsts, strict=True)],
                [b - m for b, m in zip(bests, medians, strict=True)],
            ]
            bars = ax.bar(xs, medians, width, yerr=errors, capsize=3, label=f"N = {n}")
            ax.bar_label(bars, labels=[f"{m:,.0f}" for m in medians], fontsize=7, padding=2)
        ax.set_xticks(range(len(durable)))
        ax.set_xticklabels(
            ["dev server\n(HTTP+SSE, fsync)", "SDK local mode\n(in-process)", "DBOS\n+ SQLite"]
        )
        ax.set_ylabel("durable steps per second (median; whiskers: min-max)")
        plain = by_key["plain", STEP_COUNTS[-1]]
        ax.set_title(
            "Durable step overhead: N no-op steps in one workflow\n"
            f"(plain Python function calls: "
            f"{plain.steps_per_second(statistics.median(plain.seconds)):,.0f} steps/s)",
            fontsize=10,
        )
        ax.legend()
    if results.recovery:
        ax = axes[0][column]
        measured = [r for r in results.recovery if r.seconds]
        names = [r.setting for r in measured]
        positions = list(range(len(measured)))
        for offset, (label, pct) in enumerate((("p50", 50), ("p95", 95), ("max", 100))):
            values = [_percentile(r.seconds, pct) for r in measured]
            bars = ax.bar([x + (offset - 1) * 0.25 for x in positions], values, 0.25, label=label)
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
        ax.set_xticks(positions)
        ax.set_xticklabels(names)
        ax.set_ylabel("seconds from SIGKILL to the next step on another worker")
        ax.set_title(f"Recovery ({results.kills} kills per setting)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# =================================================================================================
# Entry points
# =================================================================================================

SECTIONS = ("steps", "recovery", "crash", "floor", "history")


def run(
    out: Path,
    rounds: int = 5,
    kills: int = 20,
    only: Sequence[str] = SECTIONS,
    say: Callable[[str], None] = print,
    history_sizes: Sequence[int] = HISTORY_SIZES,
) -> Results:
    results = Results(datetime.now(UTC), rounds, kills)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=out))  # the same disk as the results
    try:
        if "floor" in only:
            say("physical floor ...")
            results.floor = measure_floor(workdir / "floor")
        if "steps" in only:
            say(f"durable step overhead: {rounds} rounds x N in {STEP_COUNTS} x {BACKENDS} ...")
            results.steps = measure_steps(workdir, rounds, say)
        if "recovery" in only:
            say(f"recovery: {kills} kills per setting ...")
            results.recovery = measure_recovery(workdir, kills, say)
        if "crash" in only:
            say("crash-matrix throughput (saga) ...")
            results.matrix = measure_crash_matrix("saga", say)
        if "history" in only:
            say(f"history: finished 3-step workflows, {sorted(history_sizes)} ...")
            results.history = measure_history(workdir, history_sizes, say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results.seconds = time.perf_counter() - started
    table = markdown(results)
    (out / "bench.md").write_text(table + "\n")
    chart(results, out / "bench.png")
    say("")
    say(table)
    say(f"written: {out / 'bench.md'}, {out / 'bench.png'}")
    return results


@contextlib.contextmanager
def _quiet_sdk_logs() -> Iterator[None]:
    import logging

    # The SDK logs every reconnect; the recovery runs kill workers on purpose.
    logger = logging.getLogger("resonate")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="default: %(default)s"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per step backend (default: %(default)s)"
    )
    parser.add_argument(
        "--kills", type=int, default=20, help="kills per recovery setting (default: %(default)s)"
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--history",
        type=int,
        action="append",
        help="history size in finished workflows (repeatable; default: 1000 and 10000; "
        "100000 takes about half an hour)",
    )


def command(args: argparse.Namespace, say: Callable[[str], None] = print) -> int:
    """`cookbook bench`: run, print and write the figures. Never fails on a number."""
    with _quiet_sdk_logs():
        run(
            args.out,
            args.rounds,
            args.kills,
            args.only or SECTIONS,
            say,
            args.history or HISTORY_SIZES,
        )
    return 0


def _child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m cookbook.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    steps = sub.add_parser("_steps")
    steps.add_argument("backend", choices=BACKENDS)
    steps.add_argument("n", type=int)
    steps.add_argument("--url")
    sub.add_parser("_worker")
    args = parser.parse_args(argv)
    if args.command == "_steps":
        _child_steps(args.backend, args.n, args.url)
    else:
        asyncio.run(_child_worker())


if __name__ == "__main__":
    _child_main(sys.argv[1:])
