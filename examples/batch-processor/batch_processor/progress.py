"""`python -m batch_processor.progress <job id>`: how far a job is, read from its execution.

The job id is the execution id the caller chose when it started the job. Its promise holds the
job's arguments (how many batches there are); each batch is a child promise of it, found by the
promise search of the SDK (`resonate.promises.search`) with the tag every child carries,
`resonate:parent = <job id>`. A resolved child is a finished batch (its value says which one
and how many items), a pending one a batch in flight. Nothing is read from a side table: this
is the state the workflow resumes from.

Environment: RESONATE_URL (required).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Any

from resonate.error import ServerError
from resonate.resonate import Resonate

from batch_processor.workflow import job_problem

PAGE = 100


@dataclass(frozen=True)
class Progress:
    job: str
    state: str  # the job's promise: pending (running), resolved, rejected, ...
    batches_done: int
    batches_total: int
    in_flight: int
    items_done: int
    items_total: int
    finished: frozenset[int]  # the indexes (from 0) of the finished batches

    @property
    def first_unfinished(self) -> int | None:
        """Where the job resumes if its worker dies now (None: every batch is done)."""
        return next((i for i in range(self.batches_total) if i not in self.finished), None)

    def line(self) -> str:
        status = "running" if self.state == "pending" else self.state
        resume = self.first_unfinished
        if self.state == "pending" and resume is not None:
            status += f", first unfinished: batch {resume + 1}"
        return (
            f"{self.job}: {self.batches_done}/{self.batches_total} batches done"
            f" ({self.items_done:,}/{self.items_total:,} items), {self.in_flight} in flight;"
            f" {status}"
        )


class NotAJobError(LookupError):
    """No job has this id, its promise is not a `process_items` execution, or the workflow refused
    its arguments (so it has no batches)."""


async def read_progress(resonate: Resonate, job: str) -> Progress:
    try:
        root = await resonate.promises.get(job)
    except ServerError as exc:
        raise NotAJobError(f"{job}: no such execution ({exc})") from exc
    item_count, batch_size = _arguments(job, root.param.data)
    in_flight = items_done = 0
    finished: set[int] = set()
    cursor: str | None = None
    while True:
        page = await resonate.promises.search(None, {"resonate:parent": job}, PAGE, cursor)
        for child in page.promises:
            if child.id == job:  # a top-level promise is tagged as its own parent
                continue
            if child.state == "pending":
                in_flight += 1
            elif child.state == "resolved" and isinstance(child.value.data, dict):
                finished.add(int(child.value.data["index"]))
                items_done += int(child.value.data["items"])
        cursor = page.cursor
        if cursor is None:
            break
    return Progress(
        job=job,
        state=root.state,
        batches_done=len(finished),
        batches_total=-(-item_count // batch_size),
        in_flight=in_flight,
        items_done=items_done,
        items_total=item_count,
        finished=frozenset(finished),
    )


def _arguments(job: str, param: Any) -> tuple[int, int]:
    """(item_count, batch_size), as the job was started with them."""
    if isinstance(param, dict) and param.get("func") == "process_items":
        args = param.get("args")
        if isinstance(args, list) and len(args) == 2 and all(isinstance(a, int) for a in args):
            # The workflow refuses some arguments (a batch size of 0, say) before its first batch:
            # the same check here, so such a job is reported as refused, not divided by.
            problem = job_problem(*args)
            if problem is not None:
                raise NotAJobError(f"{job}: refused before any batch started: {problem}")
            return args[0], args[1]
    raise NotAJobError(f"{job}: not a process_items job")


async def main(job: str) -> int:
    # A client, not a worker: it joins its own group so it is never handed work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="batch-processor-clients")
    try:
        print((await read_progress(resonate, job)).line())
        return 0
    except NotAJobError as exc:
        print(f"progress: {exc}", file=sys.stderr)
        return 1
    finally:
        await resonate.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m batch_processor.progress <job id>")
    sys.exit(asyncio.run(main(sys.argv[1])))
