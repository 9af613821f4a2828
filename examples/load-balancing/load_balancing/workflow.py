"""The durable job: one small unit of work that any worker of the group may run.

Each `ctx.run` is a checkpoint. A worker that dies mid-job loses its lease when its TTL runs
out; another worker of the group picks the job up, replays it, and gets the finished steps
from the journal, so only the step that was in flight runs again.
"""

from __future__ import annotations

from resonate.context import Context
from resonate.retry import Exponential

from load_balancing.steps import crunch, note_job

# A sandbox that is down gets 4 more attempts, 2, 4, 8 and 8 s apart (22 s in all): enough to
# ride out a restart or a burst of 503s. After that the job fails, naming the step, and the
# client sees it; nothing is half-written, as each note is one idempotent call. Delays are
# whole seconds: the SDK's policies take `int`, and `Exponential` waits `delay * factor**n`
# before retry n, n counted from 1.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=8)


async def job(ctx: Context, job_number: int) -> dict[str, int | str]:
    step = ctx.options(retry_policy=STEP_RETRIES)
    started = await step.run(note_job, job_number, "started")
    digest = await step.run(crunch, job_number)
    finished = await step.run(note_job, job_number, "finished")
    return {"job": job_number, "digest": digest, "started": started, "finished": finished}
