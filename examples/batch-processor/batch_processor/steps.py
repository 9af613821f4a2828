"""The step: process one batch of items and write them to the sink.

The input is a made-up data set whose item n is always the same record (`record(n)`), standing
in for a file or a table the batch would read its slice of by offset. Processing an item is
hashing its record; `work_seconds` stands in for the I/O a real batch does (an API call, a bulk
load), so that batches overlap and the window is visible.

A batch that runs again after a crash (its items were written, its worker died before the
workflow checkpointed it) writes nothing twice: the sink keys each item by (job, batch, item)
and keeps the first write.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass, field
from hashlib import sha256

from resonate.context import Context

from batch_processor.sink import Sink


@dataclass(frozen=True)
class Processing:
    """What every batch step needs (a worker dependency): the sink, the simulated I/O time, and
    the guard that keeps this process's sink writes apart from its step creations.

    SQLite has one writer at a time, and its write lock is a file lock: a process that is paused
    while it holds it (a GC pause, a frozen VM, the crash matrix's SIGSTOP) stops every other
    worker's writes until it runs again. The crash matrix pauses a worker while it creates a step,
    so no write of this process may be under way then: the workflow holds the guard while it
    creates a batch's step, and a batch holds it while it writes.
    """

    sink: Sink
    work_seconds: float
    sink_guard: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class Batch:
    index: int  # from 0
    of: int  # how many batches the job has
    first: int  # the items first..last, inclusive
    last: int


@dataclass(frozen=True)
class BatchResult:
    index: int
    items: int
    checksum: str


class SinkUnavailableError(Exception):
    """The sink did not take the batch now (locked, or its disk unavailable); try again."""


def record(n: int) -> str:
    return f"reading-{n:07d}"


def process_item(n: int) -> str:
    return sha256(record(n).encode()).hexdigest()[:16]


async def process_batch(ctx: Context, job: str, batch: Batch) -> BatchResult:
    processing = ctx.get_dependency(Processing)
    sink = processing.sink
    try:
        async with processing.sink_guard:
            run_id = await asyncio.to_thread(sink.batch_started, job, batch.index, os.getpid())
        results = [(n, process_item(n)) for n in range(batch.first, batch.last + 1)]
        await asyncio.sleep(processing.work_seconds)
        async with processing.sink_guard:
            added = await asyncio.to_thread(sink.record_batch, job, batch.index, results, run_id)
    except sqlite3.OperationalError as exc:
        raise SinkUnavailableError(f"batch {batch.index + 1}: {exc}") from exc
    again = "" if added == len(results) else f", {len(results) - added} already in the sink"
    print(
        f"batch {batch.index + 1}/{batch.of}: items {batch.first}-{batch.last} written{again}",
        flush=True,
    )
    checksum = sha256("".join(result for _, result in results).encode()).hexdigest()[:16]
    return BatchResult(index=batch.index, items=len(results), checksum=checksum)
