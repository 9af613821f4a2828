"""A tiny worker for the dev server's own tests: `python -m tests.devserver.workflows`.

`count(n)` runs n no-op steps; `nap(ms)` sleeps durably; `approval(amount)` waits for a signal;
`reminder(ms)` is a step, a durable sleep and a step (time skipping runs it with a 30-day sleep);
`tick(label)` is what a schedule fires: it logs its own promise id.
`deadline(ms)` waits for a decision that never comes, a promise that times out after ms.
Steps append to a file named by STEP_LOG, so tests can see which steps ran in which process.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path

from resonate.context import Context
from resonate.error import ApplicationError
from resonate.resonate import Resonate


def _log(line: str) -> None:
    path = os.environ.get("STEP_LOG")
    if path:
        with Path(path).open("a") as f:
            f.write(f"{os.getpid()} {line}\n")


async def step(ctx: Context, i: int) -> int:
    _log(f"step {ctx.info.id}")
    await asyncio.sleep(float(os.environ.get("STEP_SECONDS", "0")))
    return i


async def count(ctx: Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.run(step, i)
    return total


async def nap(ctx: Context, ms: int) -> str:
    await ctx.sleep(timedelta(milliseconds=ms))
    return "rested"


async def approval(ctx: Context, amount: int) -> str:
    """A step, a wait for a person's decision, a durable pause, a step: every kind of checkpoint."""
    await ctx.run(step, 1)
    decision = await ctx.promise()
    await ctx.sleep(timedelta(milliseconds=200))
    await ctx.run(step, 2)
    return f"{decision['verdict']} {amount}"


async def reminder(ctx: Context, ms: int) -> str:
    """A step, a long durable sleep started before a (slow) step, then another step."""
    wake = ctx.sleep(timedelta(milliseconds=ms))
    first = await ctx.run(step, 1)
    await wake
    second = await ctx.run(step, 2)
    return f"reminded after steps {first} and {second}"


async def tick(ctx: Context, label: str) -> str:
    _log(f"tick {ctx.info.id}")
    await asyncio.sleep(float(os.environ.get("STEP_SECONDS", "0")))
    return label


async def deadline(ctx: Context, ms: int) -> str:
    """A wait for a person's decision with a deadline: nobody but the server's clock ends it."""
    decision = ctx.promise(timeout=timedelta(milliseconds=ms))
    try:
        verdict = await decision
    except ApplicationError:
        # A timed-out child promise surfaces as an ApplicationError, not ResonateTimeoutError.
        return "no decision in time"
    return f"decided {verdict}"


async def main() -> None:
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group="devserver-tests",
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "5"))),
    )
    resonate.register(count)
    resonate.register(nap)
    resonate.register(approval)
    resonate.register(reminder)
    resonate.register(tick)
    resonate.register(deadline)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"test worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
