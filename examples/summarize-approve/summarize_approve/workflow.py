"""The durable workflow: fetch a page, summarize it, and revise until a person approves.

One execution per page to summarize, keyed by an id the caller chooses. The page is fetched
once, a checkpoint: every round summarizes the same text. Each summary is one completion and one
checkpoint: a crash after the model answered never asks (nor pays) for that summary again. The
reviewer gets the summary by email with the id of a latent promise, and the workflow suspends on
it: nothing runs and no worker holds the execution while the reviewer reads. Their answer
resolves the promise: `{"approve": true}`, or `{"approve": false, "feedback": "..."}`, which
starts the next round with the feedback in the conversation. At most MAX_ROUNDS summaries; the
approved one is posted to the team's channel.

The promise settles once, one way, so every replay takes the same branch. A decision that cannot
be read is never taken as an approval, and a reviewer who does not answer within REVIEW_WITHIN
ends the execution (the server times the promise out by itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from resonate.context import Context
from resonate.error import ApplicationError
from resonate.retry import Exponential, Never

from summarize_approve.steps import (
    Refused,
    Round,
    ask_reviewer,
    fetch_page,
    publish,
    summarize,
)

MAX_ROUNDS = 3
# Every round's wait must fit in the execution's deadline: a child's deadline is capped by its
# parent's, so a round that does not fit is cut short and the execution itself times out instead
# of ending `no-decision`. Started without a timeout (as here), an execution gets the SDK's
# default of a day: 3 rounds of 7 h, and 3 h for the fetch, the completions and the emails. To
# give reviewers longer, start the execution with a longer timeout and raise this with it.
REVIEW_WITHIN = timedelta(hours=7)
# The web, the email and chat providers: a 5xx, 408, 429, timeout or lost connection is retried
# after 2, 4, 8 and 16 s (about 30 s, a restart or a burst of 503s), under the same key.
PROVIDER_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)
# The model: a rate limit (429) tells the client to back off for seconds to a minute, and an
# overloaded model (500/503) passes as slowly, so six retries 2, 4, 8, 16, 30, 30 s apart (about
# 90 s). Each retry sends the same Idempotency-Key: the stand-in bills it once.
MODEL_RETRIES = Exponential(delay=1, factor=2, max_retries=6, max_delay=30)
# The workflow itself is never retried: once it made a durable call the SDK would not retry it
# anyway, and before that nothing can fail that a retry would fix.
WORKFLOW_RETRIES = Never()

type State = Literal[
    "invalid",  # the arguments were refused before anything was done
    "approved",  # a summary was approved (and posted)
    "rejected",  # MAX_ROUNDS summaries, each rejected
    "no-decision",  # the reviewer did not answer in time, or the answer could not be read
    "unfetchable",  # the page could not be had (a 4xx)
    "model-refused",  # the model API said no (a 4xx): asking again gets the same answer
    "reviewer-unreachable",  # the reviewer could not be emailed
]


@dataclass(frozen=True)
class Ended:
    """What an execution returns."""

    state: State
    rounds: int  # how many summaries were written (= completions billed)
    summary: str | None = None  # the approved one, or the last one written
    feedback: list[str] = field(default_factory=list)  # what the reviewer asked, round by round
    reason: str | None = None  # why it ended without an approved summary
    posted: str | None = None  # the chat message id of the approved summary


# The reviewer by reference, a staff user id, never an email address or a name: the Resonate
# server stores the execution's arguments in plaintext, readable by anyone who can read the
# server. The email provider resolves the id to an address. (Checked with `fullmatch`: `match`
# would let a trailing newline past the `$`.)
REVIEWER_ID = re.compile(r"^usr_[A-Za-z0-9]{4,32}$")


def problems(url: object, reviewer: object) -> list[str]:
    """What is wrong with the arguments, each naming the argument; empty when they are fine."""
    found = []
    if not isinstance(url, str) or len(url) > 2000 or not _is_page(url):
        found.append("url: must be a path (/...) or an http(s) URL, of at most 2,000 characters")
    if not isinstance(reviewer, str) or not REVIEWER_ID.fullmatch(reviewer):
        found.append("reviewer: must be a reviewer id like usr_...")
    return found


def _is_page(url: str) -> bool:
    if not url or any(c.isspace() for c in url):
        return False
    if url.startswith("/"):  # a path on the web's base URL
        return True
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


async def summarize_and_approve(ctx: Context, url: str, reviewer: str) -> Ended:
    # Checked before the first step, so bad arguments do nothing: no fetch (a malformed URL
    # would look like a connection error and be retried), no completion, no email.
    refused = problems(url, reviewer)
    if refused:
        return Ended("invalid", rounds=0, reason="; ".join(refused))
    web = ctx.options(retry_policy=PROVIDER_RETRIES)
    model = ctx.options(retry_policy=MODEL_RETRIES)

    page = await web.run(fetch_page, url)
    if page.refusal is not None:
        return Ended("unfetchable", rounds=0, reason=page.refusal)

    rounds: list[Round] = []
    while True:
        summary = await model.run(summarize, page, rounds)
        written = len(rounds) + 1
        feedback = [r.feedback for r in rounds]
        if summary.refusal is not None:
            return Ended("model-refused", written, feedback=feedback, reason=summary.refusal)

        decision = ctx.promise(timeout=REVIEW_WITHIN)
        asked = await web.run(
            ask_reviewer, reviewer, page, summary.text, written, await decision.id()
        )
        if isinstance(asked, Refused):  # nobody will answer: waiting for it is pointless
            return Ended("reviewer-unreachable", written, summary.text, feedback, asked.reason)
        try:
            decided = await decision
        except ApplicationError:  # timed out (nothing else rejects it)
            return Ended("no-decision", written, summary.text, feedback, "no answer in time")

        match decided:
            case {"approve": True}:
                posted = await web.run(publish, page, summary.text)
                if isinstance(posted, Refused):  # approved all the same; the post is reported
                    return Ended("approved", written, summary.text, feedback, posted.reason)
                return Ended("approved", written, summary.text, feedback, posted=posted)
            case {"approve": False, **rest}:
                rounds.append(Round(summary.text, _feedback(rest.get("feedback"))))
                if written == MAX_ROUNDS:
                    said = [r.feedback for r in rounds]
                    why = f"{MAX_ROUNDS} summaries rejected"
                    return Ended("rejected", written, summary.text, said, why)
            case _:  # resolved with something else: never publish on a value we misread
                why = "the decision could not be read"
                return Ended("no-decision", written, summary.text, feedback, why)


def _feedback(said: object) -> str:
    return said.strip() if isinstance(said, str) and said.strip() else "(no reason given)"
