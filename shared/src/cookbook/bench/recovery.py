"""Recovery: a worker SIGKILLed mid-step, time until another worker runs the next step."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import sys
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path

from resonate.resonate import Resonate

from cookbook.bench.stats import percentile
from cookbook.bench.workloads import BENCH_GROUP, HOLD_STEP_SECONDS
from cookbook.processes import ManagedProcess
from cookbook.stack import devserver_process, url_of

RECOVERY_SETTINGS: tuple[tuple[str, float | None], ...] = (
    ("fast test mode", None),
    ("ttl 1 s", 1.0),
    ("ttl 2 s", 2.0),
    ("ttl 5 s", 5.0),
)
# Fast-mode workers get a long lease: with it, a kill is noticed through the dropped stream only.
FAST_MODE_TTL_SECONDS = 30.0


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
                f"p50 {percentile(figures.seconds, 50):.3f}s  "
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
