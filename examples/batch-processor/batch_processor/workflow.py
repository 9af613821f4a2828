"""The durable workflow: process an input in batches, each batch a checkpoint, four at a time.

Each batch is one durable step. The window is a queue of at most four running steps: the next
batch starts when the oldest running one has finished. A worker that dies mid-job loses nothing
that finished: the worker that takes over replays the workflow from the top, gets every finished
batch from the journal without running it, and carries on from the first unfinished batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from hashlib import sha256

from resonate.context import Context, ResonateFuture
from resonate.retry import Exponential

from batch_processor.steps import Batch, BatchResult, Processing, process_batch

WINDOW = 4
# One execution holds one promise per batch and a resume replays all of them, so a job is kept to
# a size whose replay stays short; a bigger input is several jobs (see the README's limits).
MAX_BATCHES = 1000
MAX_BATCH_SIZE = 10_000
MAX_ITEMS = 1_000_000

# A batch fails when the sink cannot take its items now (locked, or its disk briefly gone): 3 more
# attempts, 2, 4 and 4 s apart, ride out a lock held by another writer or a restart. A batch that
# still fails then fails the job, naming the batch, rather than skipping its items. (SDK 0.8.1's
# policies cannot tell errors apart, so a bug is retried 3 times too, and fails the same way.)
BATCH_RETRIES = Exponential(delay=1, factor=2, max_retries=3, max_delay=4)


@dataclass(frozen=True)
class JobSummary:
    """What a finished job did: its batches and items, and a checksum over every item's result."""

    batches: int
    items: int
    checksum: str


class InvalidJobError(ValueError):
    """The arguments describe no job this workflow runs; no batch was started."""


def job_problem(item_count: object, batch_size: object) -> str | None:
    """What is wrong with a job's arguments, naming the argument; None when nothing is."""
    if not isinstance(item_count, int) or isinstance(item_count, bool):
        return f"item_count: must be a whole number of items, got {item_count!r}"
    if item_count == 0:
        return "item_count: the input is empty (0 items), there is nothing to process"
    if not 1 <= item_count <= MAX_ITEMS:
        return f"item_count: must be between 1 and {MAX_ITEMS:,} items, got {item_count:,}"
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        return f"batch_size: must be a whole number of items, got {batch_size!r}"
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        return f"batch_size: must be between 1 and {MAX_BATCH_SIZE:,} items, got {batch_size:,}"
    batches = -(-item_count // batch_size)
    if batches > MAX_BATCHES:
        return (
            f"item_count / batch_size: {item_count:,} items in batches of {batch_size:,} make "
            f"{batches:,} batches, more than {MAX_BATCHES:,} in one job"
        )
    return None


def plan_batches(item_count: int, batch_size: int) -> list[Batch]:
    return [
        Batch(
            index=index,
            of=-(-item_count // batch_size),
            first=first,
            last=min(first + batch_size, item_count) - 1,
        )
        for index, first in enumerate(range(0, item_count, batch_size))
    ]


async def process_items(ctx: Context, item_count: int, batch_size: int) -> JobSummary:
    problem = job_problem(item_count, batch_size)
    if problem is not None:
        raise InvalidJobError(problem)  # before the first batch: nothing starts
    step = ctx.options(retry_policy=BATCH_RETRIES)
    # The execution id the caller chose is the job's key in the sink.
    job = ctx.info.id
    guard = ctx.get_dependency(Processing).sink_guard
    running: deque[ResonateFuture[BatchResult]] = deque()
    done: list[BatchResult] = []
    for batch in plan_batches(item_count, batch_size):
        if len(running) == WINDOW:
            # Wait for the oldest running batch, not whichever finishes first: the order of the
            # ctx.run calls, which numbers the steps, must be the same on every replay.
            done.append(await running.popleft())
        async with guard:  # no sink write of this process while the step is created
            started = step.run(process_batch, job, batch)
            await started.id()
        running.append(started)
    while running:
        done.append(await running.popleft())
    checksum = sha256("".join(result.checksum for result in done).encode()).hexdigest()[:16]
    return JobSummary(batches=len(done), items=sum(r.items for r in done), checksum=checksum)
