"""`python -m load_balancing.demo`: dispatch 30 jobs to a group of three workers, twice.

The first round shows the spread: which worker ran which job, counted from the sandbox's own
records. The second round SIGKILLs one worker while it holds jobs, and shows those jobs finish
on the other two. `make run-load-balancing` starts one worker; this demo starts two more in the
same group (and stops them by pid), so the group has three.

Environment: RESONATE_URL (required), PROVIDER_API_URL (the sandbox), RESONATE_TTL_SECONDS for
the workers it starts (default 5).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from resonate.resonate import Resonate

GROUP = "load-balancing"
JOBS = 30


async def dispatch(resonate: Resonate, batch: str, jobs: int = JOBS) -> list[Any]:
    """Start `jobs` durable RPCs on the group at once, then wait for every result."""
    handles = [
        resonate.options(target=GROUP).rpc(f"{batch}-job-{n:02d}", "job", n)
        for n in range(1, jobs + 1)
    ]
    return list(await asyncio.gather(*(handle.result() for handle in handles)))


@dataclass(frozen=True)
class Spread:
    """Who ran what, read from the notes the sandbox recorded for one batch."""

    started_by: dict[int, int]  # job number -> pid of the worker whose "started" note landed
    finished_by: dict[int, int]
    notes_per_key: Counter[str]  # idempotency key -> effects recorded under it

    def finished_per_worker(self) -> Counter[int]:
        return Counter(self.finished_by.values())

    def moved_from(self, pid: int) -> list[int]:
        """The jobs `pid` started that another worker finished."""
        return sorted(
            job
            for job, starter in self.started_by.items()
            if starter == pid and self.finished_by.get(job) not in (None, pid)
        )


async def spread(sandbox_url: str, batch: str) -> Spread:
    async with httpx.AsyncClient(base_url=sandbox_url) as sandbox:
        response = await sandbox.get("/_admin/effects", params={"key_prefix": f"{batch}-job-"})
    response.raise_for_status()
    started: dict[int, int] = {}
    finished: dict[int, int] = {}
    keys: Counter[str] = Counter()
    for effect in response.json():
        body = effect["body"]
        keys[effect["idempotency_key"]] += 1
        by_phase = started if body["phase"] == "started" else finished
        by_phase[body["job"]] = body["worker_pid"]
    return Spread(started, finished, keys)


def kill_on_first_start(victim: int) -> dict[str, Any]:
    """A sandbox kill switch: SIGKILL `victim` right after its own first "started" note landed.

    It holds a started job then, and has finished none. Counting every worker's notes instead
    (the 15th, say) could fire before the victim noted anything, or after it finished its jobs:
    it would die holding none, and show nothing moving."""
    victims_start = {"worker_pid": victim, "phase": "started"}
    return {"provider": "api", "action": "call", "pid": victim, "body": victims_start}


@contextmanager
def extra_workers(count: int) -> Iterator[list[int]]:
    """Start `count` more workers of the group; stop each one by its pid on the way out."""
    env = {**os.environ, "RESONATE_TTL_SECONDS": os.environ.get("RESONATE_TTL_SECONDS", "5")}
    processes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, "-m", "load_balancing.worker"],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            processes.append(process)
            assert process.stdout is not None
            for line in process.stdout:  # blocks until the worker says it is listening
                if "ready" in line:
                    break
        yield [p.pid for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)


def show(spread_: Spread, killed: int | None = None) -> None:
    started = Counter(spread_.started_by.values())
    finished = spread_.finished_per_worker()
    for pid in sorted(started.keys() | finished.keys()):
        name = f"pid {pid}" + (" (killed)" if pid == killed else "")
        print(
            f"   {name:<18} started {started[pid]:>2}, finished {finished[pid]:>2}"
            f"  {'█' * finished[pid]}"
        )


async def main() -> None:
    sandbox_url = os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100")
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="load-balancing-clients")
    stamp = int(time.time())
    try:
        with extra_workers(2) as (second, third):
            print(f"→ two more workers joined group '{GROUP}': pids {second} and {third}")
            print(f"→ round 1: {JOBS} durable RPCs, each with target='{GROUP}'")
            started = time.perf_counter()
            await dispatch(resonate, f"lb-{stamp}-a")
            first = await spread(sandbox_url, f"lb-{stamp}-a")
            print(f"✓ {JOBS} jobs done in {time.perf_counter() - started:.1f}s; who ran them:")
            show(first)

            async with httpx.AsyncClient(base_url=sandbox_url) as sandbox:
                armed = await sandbox.post("/_admin/kill-switches", json=kill_on_first_start(third))
                armed.raise_for_status()
            print(f"→ round 2: {JOBS} more; pid {third} will be SIGKILLed mid-run")
            started = time.perf_counter()
            await dispatch(resonate, f"lb-{stamp}-b")
            second_round = await spread(sandbox_url, f"lb-{stamp}-b")
            print(f"✓ {JOBS} jobs done in {time.perf_counter() - started:.1f}s; who ran them:")
            show(second_round, killed=third)
            moved = second_round.moved_from(third)
            ttl = os.environ.get("RESONATE_TTL_SECONDS", "5")
            print(
                f"✓ pid {third} died holding {len(moved)} started job(s); when its lease ran out"
                f" ({ttl}s without a heartbeat) the server handed them to the others, which"
                f" replayed each from its journal and finished it: jobs"
                f" {', '.join(map(str, moved))}"
            )
            once = all(n == 1 for n in second_round.notes_per_key.values())
            print(
                f"✓ {len(second_round.notes_per_key)} notes, each recorded "
                f"{'exactly once' if once else 'MORE THAN ONCE'} by the sandbox"
            )
    finally:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
