"""History: restart time, memory and throughput as finished workflows pile up."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from resonate.resonate import Resonate

from cookbook.bench.workloads import BENCH_GROUP, three_steps
from cookbook.stack import devserver_process, url_of

HISTORY_SIZES = (1_000, 10_000)
HISTORY_IN_FLIGHT = 100
HISTORY_SPOT_CHECKS = 20


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
