"""`python -m batch_processor.demo [ITEMS BATCH_SIZE]`: run one job, watching its progress.

ITEMS and BATCH_SIZE (also read from the environment, so `make run-batch-processor ITEMS=2000`
works) default to 10,000 items in batches of 100. Bad sizes are refused here, before anything
starts, with the same check the workflow makes. While the job runs, the demo prints its progress
as `python -m batch_processor.progress <id>` reads it: from the execution's promises. At the end
it reads the sink's own records: every item once, and never more than four batches at a time.
Then it starts a job with a batch size of 0 directly, to show the workflow refuse it too.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time

from resonate.resonate import Resonate

from batch_processor.progress import read_progress
from batch_processor.sink import Sink, most_in_flight, sink_path
from batch_processor.workflow import WINDOW, job_problem

DEFAULT_ITEMS, DEFAULT_BATCH_SIZE = "10000", "100"
POLL_SECONDS = 0.25


def parse_sizes(argv: list[str], environ: dict[str, str]) -> tuple[int, int]:
    """(items, batch_size), or SystemExit naming what is wrong, before anything starts."""
    if len(argv) not in (0, 2):
        raise SystemExit("usage: python -m batch_processor.demo [ITEMS BATCH_SIZE], e.g. 10000 100")
    texts = argv or [
        environ.get("ITEMS", DEFAULT_ITEMS),
        environ.get("BATCH_SIZE", DEFAULT_BATCH_SIZE),
    ]
    sizes = []
    for name, text in zip(("item_count", "batch_size"), texts, strict=True):
        if not re.fullmatch(r"[0-9]+", text.strip()):
            raise SystemExit(f"job refused: {name}: must be a whole number, got {text!r}")
        sizes.append(int(text))
    problem = job_problem(sizes[0], sizes[1])
    if problem is not None:
        raise SystemExit(f"job refused: {problem}")
    return sizes[0], sizes[1]


async def main(item_count: int, batch_size: int) -> None:
    # A client, not a worker: it joins its own group so it is never handed work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="batch-processor-clients")
    sink = Sink(sink_path(os.environ))
    job = f"batch-processor-{int(time.time())}"
    try:
        print(
            f"→ process_items({item_count:,} items, batches of {batch_size}) as execution {job},"
            f" at most {WINDOW} batches at a time"
        )
        handle = resonate.options(target="batch-processor").rpc(
            job, "process_items", item_count, batch_size
        )
        await handle.id()  # the job's promise exists from here on
        last = ""
        while not handle.done():
            progress = (await read_progress(resonate, job)).line()
            if progress != last:
                print(f"  progress | {progress}", flush=True)
                last = progress
            await asyncio.sleep(POLL_SECONDS)
        summary = await handle.result()
        print(f"  progress | {(await read_progress(resonate, job)).line()}")
        print(
            f"✓ {summary['items']:,} items in {summary['batches']} batches,"
            f" checksum {summary['checksum']}"
        )

        items = sink.items(job)
        runs = sink.runs(job)
        keys = {(batch, item) for batch, item, _ in items}
        finished = [r for r in runs if r.finished_at is not None]
        took = max(r.finished_at or 0 for r in runs) - min(r.started_at for r in runs)
        print("  the sink's own records:")
        print(f"    {len(items):,} item rows, {len(keys):,} distinct (batch, item) keys")
        print(
            f"    {len(runs)} batch attempts, {len(finished)} finished, in {took:.2f}s;"
            f" at most {most_in_flight(runs)} in flight at once"
        )

        bad = f"{job}-bad"
        print(f"\n→ process_items({item_count:,} items, batches of 0) as execution {bad}")
        try:
            await (
                resonate.options(target="batch-processor")
                .rpc(bad, "process_items", item_count, 0)
                .result()
            )
        except ValueError as exc:
            started = len(sink.runs(bad))
            print(f"✗ refused before any batch started: {exc} ({started} batches in the sink)")
    finally:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main(*parse_sizes(sys.argv[1:], dict(os.environ))))
