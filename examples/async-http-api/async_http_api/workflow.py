"""The durable job behind `POST /jobs`: export a report (query, store the file, email the link).

Three checkpointed steps. A crash anywhere resumes at the first unfinished one: the worker that
picks the job up replays the workflow from the top and gets every finished step from the
journal instead of querying, storing or mailing again. A system's final no (a 4xx) ends the job
with that refusal as its result, a value, never retried; a system that is down is asked again
under the step's retry policy, and when that runs out the job fails naming the system. The mail
is the exception: once the file is stored, the job is done with or without it.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from resonate.context import Context
from resonate.retry import Linear, Never

from async_http_api.steps import (
    Refused,
    SystemUnavailableError,
    email_link,
    run_query,
    store_file,
)

# Where the stored files are downloaded from (the storage system's public address).
DOWNLOADS = "https://files.example.com"
MAX_PERIOD_DAYS = 366

# -- the export request: checked by the gateway, and again whenever a worker decodes it --------


def _iso_date(value: object) -> object:
    # JSON has no dates, and pydantic's lax date parsing would take a number as Unix seconds:
    # only an ISO calendar date string gets through (a `date` made in Python passes as it is).
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("must be an ISO date string, YYYY-MM-DD")
    return value


Day = Annotated[date, Field(strict=False), BeforeValidator(_iso_date)]
# Who asked for the report, and gets its link: by reference, never by name or email address. The
# Resonate server stores the request as the execution's argument, in plaintext, readable by
# anyone who can read the server; the mail system resolves the reference to an address. A name
# or an email here is refused.
UserId = Annotated[str, StringConstraints(pattern=r"^usr_[A-Za-z0-9]{4,32}$")]


class ExportRequest(BaseModel):
    """What `POST /jobs` accepts, and what `export_report` exports."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    report: Literal["sales", "inventory", "signups"]
    period_start: Day
    period_end: Day
    format: Literal["csv", "xlsx"] = "csv"
    user_id: UserId  # who gets the download link (the staff user who asked for the report)

    @model_validator(mode="after")
    def _a_period(self) -> Self:
        if self.period_end < self.period_start:
            raise ValueError("period_end is before period_start")
        if (self.period_end - self.period_start).days >= MAX_PERIOD_DAYS:
            raise ValueError(f"the period is longer than {MAX_PERIOD_DAYS} days")
        return self


class ExportResult(BaseModel):
    """What a job came to. `refused`: a system said no for good (`refused_by`, `reason`)."""

    outcome: Literal["exported", "refused"]
    file: str | None = None  # exported: the stored object's name
    link: str | None = None  # exported: where to download it
    emailed: str | None = None  # exported: the mail system's message id, if it took the mail
    refused_by: str | None = None  # refused: which system said no
    reason: str | None = None  # refused: what it said; exported but not emailed: why not


# -- the workflow ------------------------------------------------------------------------------

# Whole seconds (the SDK's policies take `int`): `Linear(delay=1)` waits 1, 2, 3 s. A warehouse
# or a store that is restarting or overloaded gets three more attempts over about 6 s; one that
# is down for longer fails the job, which a caller can see and submit again (the job is a report,
# not a payment: nothing is lost by failing it, and a client is polling for it).
STEP_RETRIES = Linear(delay=1, max_retries=3)
# The mail goes out last, after the file exists: worth waiting longer for (2, 4, 6, 8, 10 s).
# Past that the job does not fail (its report is stored): the result says the mail may be missing.
EMAIL_RETRIES = Linear(delay=2, max_retries=5)
# The workflow calls no system itself: what fails before its first step (a request that does
# not decode, a bug) fails the same way every time. The SDK default would retry it 30 times with
# doubling delays while holding the lease; the worker registers it with this instead.
WORKFLOW_RETRIES = Never()


async def export_report(ctx: Context, request: ExportRequest) -> ExportResult:
    job_id = ctx.info.id  # the id the gateway chose for the job
    step = ctx.options(retry_policy=STEP_RETRIES)
    period = {"from": request.period_start.isoformat(), "to": request.period_end.isoformat()}
    result_set = await step.run(run_query, request.report, period)
    if isinstance(result_set, Refused):
        return _refused(result_set)
    name = f"reports/{job_id}.{request.format}"
    stored = await step.run(store_file, name, result_set)
    if isinstance(stored, Refused):
        return _refused(stored)
    link = f"{DOWNLOADS}/{stored}"
    mailing = ctx.options(retry_policy=EMAIL_RETRIES)
    try:
        sent = await mailing.run(email_link, request.user_id, request.report, link)
    except SystemUnavailableError as down:
        # Out of retries, with the report stored: failing the job would hide its link, and a
        # caller who submits again would query, store and perhaps mail a second time. The job
        # is exported, saying the mail may not have gone out (its last attempt may have).
        reason = f"may not have been emailed: {down}"
        return ExportResult(outcome="exported", file=name, link=link, reason=reason)
    if isinstance(sent, Refused):  # the file is stored all the same: the link is in the result
        reason = f"not emailed: {sent.reason}"
        return ExportResult(outcome="exported", file=name, link=link, reason=reason)
    return ExportResult(outcome="exported", file=name, link=link, emailed=sent)


def _refused(refusal: Refused) -> ExportResult:
    return ExportResult(outcome="refused", refused_by=refusal.system, reason=refusal.reason)
