"""The durable workflow: a researcher, a writer and a reviewer agent, then the report delivered.

Every agent call is a checkpointed step. The researcher's notes go to the writer; the writer's
draft goes to the reviewer, who approves it or sends it back with feedback, at most twice; the
last draft goes to the receiver once. A crash anywhere resumes at the first unfinished call: the
worker that picks the run up replays the workflow from the top and gets every finished agent's
answer from the journal, so no finished call is asked (or paid for) again.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints
from resonate.context import Context
from resonate.retry import Exponential, Never

from research_pipeline.steps import deliver, research, review, write

# How many times the reviewer may send a draft back: a third "revise" is reported with the
# report, not acted on, so a run costs at most 3 drafts and 3 reviews.
MAX_SEND_BACKS = 2

# A model that is rate-limited or failing (429, 5xx, a timeout) is asked again after 2, 4, 8, 16
# and 30 s (about a minute): per-minute rate limits and short outages pass; one that lasts
# longer fails the run naming the agent, rather than holding it for hours. Every attempt carries
# the same Idempotency-Key. Whole seconds: the SDK's policies take `int`.
MODEL_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)
# The receiver is asked again after 2, 4, 8 and 16 s (about 30 s): a restart or a burst of 503s.
DELIVERY_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)
# The workflow itself calls nothing: what fails before its first step (an argument that does
# not decode, a bug) fails the same way every time, so the worker registers it with `Never()`.
WORKFLOW_RETRIES = Never()

# Visible text: no control or format characters, no leading or trailing whitespace.
Topic = Annotated[
    str,
    StringConstraints(
        min_length=3, max_length=200, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"
    ),
]


class ResearchRequest(BaseModel):
    """What `POST /research` accepts, and what `research_topic` researches."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    topic: Topic


class ResearchReport(BaseModel):
    """How a run ended: the report delivered (approved or not), or an agent's refusal."""

    outcome: Literal["delivered", "refused"]
    topic: str
    revisions: int = 0  # how many times the reviewer sent the draft back
    approved: bool | None = None  # delivered: did the reviewer approve the last draft?
    report: str | None = None  # delivered: the last draft, as delivered
    reviewer_notes: str | None = None  # delivered unapproved: what the reviewer still wanted
    message_id: str | None = None  # delivered: the receiver's id for the message
    refused_by: str | None = None  # refused: which agent (or the receiver)
    reason: str | None = None  # refused: why


async def research_topic(ctx: Context, request: ResearchRequest) -> ResearchReport:
    topic = request.topic
    agent = ctx.options(retry_policy=MODEL_RETRIES)
    notes = await agent.run(research, topic)
    if notes.refusal:
        return ResearchReport(
            outcome="refused", topic=topic, refused_by="researcher", reason=notes.refusal
        )
    draft = await agent.run(write, topic, notes.text, "", "")
    revisions = 0
    while not draft.refusal:
        verdict = await agent.run(review, topic, draft.text)
        if verdict.refusal:
            return ResearchReport(
                outcome="refused",
                topic=topic,
                revisions=revisions,
                refused_by="reviewer",
                reason=verdict.refusal,
            )
        if verdict.approved or revisions == MAX_SEND_BACKS:
            return await _deliver(
                ctx, topic, draft.text, revisions, verdict.approved, verdict.feedback
            )
        revisions += 1
        draft = await agent.run(write, topic, notes.text, draft.text, verdict.feedback)
    return ResearchReport(
        outcome="refused",
        topic=topic,
        revisions=revisions,
        refused_by="writer",
        reason=draft.refusal,
    )


async def _deliver(
    ctx: Context, topic: str, report: str, revisions: int, approved: bool, feedback: str
) -> ResearchReport:
    note = "approved by the reviewer" if approved else f"not approved after {revisions} revisions"
    delivered = await ctx.options(retry_policy=DELIVERY_RETRIES).run(deliver, topic, report, note)
    if delivered.refusal:
        return ResearchReport(
            outcome="refused",
            topic=topic,
            revisions=revisions,
            refused_by="receiver",
            reason=delivered.refusal,
        )
    return ResearchReport(
        outcome="delivered",
        topic=topic,
        revisions=revisions,
        approved=approved,
        report=report,
        reviewer_notes=None if approved else feedback,
        message_id=delivered.message_id,
    )
