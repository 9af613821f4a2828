"""The workflows the benchmark runs, in child processes, and the names they register under."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import Any

from resonate.context import Context

# Each child warms up (imports, connections, first-call caches) on a short workflow first.
WARMUP_STEPS = 20

# Recovery workflows run steps of this length, so a kill lands somewhere inside a step.
HOLD_STEP_SECONDS = 0.02
BENCH_GROUP = "cookbook-bench"


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


async def three_steps(ctx: Context, i: int) -> int:
    total = 0
    for step in range(3):
        total += await ctx.run(noop, step)
    return total


def optional(module: str) -> Any:
    """Import one of the `bench` dependency group's packages, saying how to get it if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"cookbook bench: {module} is not installed; run `make bench`, which installs the "
            "`bench` dependency group"
        ) from exc


CONCURRENT_STEPS = 10


async def ten_steps(ctx: Context, i: int) -> int:
    """The concurrency workload: a workflow of ten durable no-op steps."""
    total = 0
    for step in range(CONCURRENT_STEPS):
        total += await ctx.run(noop, step)
    return total
