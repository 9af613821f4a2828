"""The child processes' entry point: `python -m cookbook.bench _steps|_worker ...`.

Each backend runs in a child of its own, so one backend's imports, threads or `sqlite3`
substitution cannot leak into another's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from resonate.resonate import Resonate

from cookbook.bench.concurrency import (
    CONFIG_LABELS,
    child_concurrency,
    concurrency_worker,
    parse_watch,
)
from cookbook.bench.steps import BACKENDS
from cookbook.bench.workloads import BENCH_GROUP, WARMUP_STEPS, count, hold, optional, plain_count


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
    pysqlite3 = optional("pysqlite3")
    sys.modules["sqlite3"] = pysqlite3
    sys.modules["sqlite3.dbapi2"] = pysqlite3.dbapi2
    dbos = optional("dbos").DBOS
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


def child_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m cookbook.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    steps = sub.add_parser("_steps")
    steps.add_argument("backend", choices=BACKENDS)
    steps.add_argument("n", type=int)
    steps.add_argument("--url")
    sub.add_parser("_worker")
    concurrency = sub.add_parser("_concurrency")
    concurrency.add_argument("config", choices=CONFIG_LABELS)
    concurrency.add_argument("k", type=int)
    concurrency.add_argument("workflows", type=int)
    concurrency.add_argument("--url", help="the dev server's, or DBOS's Postgres database")
    concurrency.add_argument("--watch", default="", help="role=pid+pid,... to read CPU time of")
    sub.add_parser("_concurrency_worker")
    args = parser.parse_args(argv)
    match args.command:
        case "_steps":
            _child_steps(args.backend, args.n, args.url)
        case "_worker":
            asyncio.run(_child_worker())
        case "_concurrency":
            child_concurrency(
                args.config, args.k, args.workflows, args.url, parse_watch(args.watch)
            )
        case _:
            asyncio.run(concurrency_worker())
