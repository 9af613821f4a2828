"""The durable workflow: delete one user's data in batches, then report that it is done.

The consumer starts one execution per Kafka record, with the record's id as the execution id.
Each `ctx.run` is a checkpoint: a worker that takes over after a crash replays the workflow from
the top, gets the plan and every finished batch from the journal, and carries on with the first
batch that has no result yet.
"""

from __future__ import annotations

from resonate.context import Context
from resonate.retry import Exponential, Never

from kafka_worker.steps import delete_batch, plan_deletion, report_deletion

# A step that fails transiently (the database locked, the service down or timing out) is
# retried after 2, 4, 8, 10, 10 and 10 s: long enough to ride out a restart, short enough that
# a lasting outage fails the execution, visibly, under the record's id, within a minute.
STEP_RETRY = Exponential(delay=1, factor=2, max_retries=6, max_delay=10)

# The workflow itself is never retried as a whole. Its body does no I/O of its own: what can
# raise out of it is a step whose retries ran out, or a bug (a request it cannot decode, before
# its first step), and running it again would only repeat that. Under the SDK's default policy
# such a body is retried 30 times, with doubling delays, while it holds its lease.
WORKFLOW_RETRY = Never()


async def delete_user_data(ctx: Context, user_id: str) -> dict[str, str | int | None]:
    step = ctx.options(retry_policy=STEP_RETRY)
    plan = await step.run(plan_deletion, user_id)
    for number, batch in enumerate(plan.batches, start=1):
        await step.run(delete_batch, user_id, batch, f"{number}/{len(plan.batches)}")
    report = await step.run(report_deletion, user_id, plan.rows)
    return {
        "user_id": user_id,
        "rows_deleted": plan.rows,
        "batches": len(plan.batches),
        "receipt": report.receipt,
        "report_refused": report.refused,
    }
