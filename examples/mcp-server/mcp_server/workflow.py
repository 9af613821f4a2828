"""The durable workflows behind the MCP tools. Each `ctx.run` is a checkpoint.

`weather_report`: the weather API's observation, then one model call that writes the report. A
crash after the model answered never pays for that completion again: the step's result is in
the journal, and a replay reads it from there.

`invoice_approval`: a latent promise (the approver's decision) that the workers' configured
approver is emailed about, awaited for as long as the decision takes: no worker holds the
execution meanwhile, and its deadline is kept by the server with the promise. An approval pays
the vendor once; a rejection, or no decision in time, pays nothing.

The MCP server (a client of Resonate, in another process) starts these by an id it derives from
the tool's arguments, so a tool called again, by the same MCP server or by a new one after a
crash, attaches to the same execution.
"""

from __future__ import annotations

from datetime import timedelta

from resonate.context import Context
from resonate.error import ApplicationError
from resonate.retry import Exponential, Never

from mcp_server.calls import City, Invoice, InvoiceOutcome, WeatherReport
from mcp_server.steps import Refused, ask_approver, observe_weather, pay_vendor, write_report

# -- the workflows -----------------------------------------------------------------------------

# A provider or the model that fails transiently (a 5xx, 408, 429, a timeout, a lost connection)
# is asked again after 2, 4, 8, 16 and 30 s, then every 30 s: eight retries in about three
# minutes, long enough for a rate limit or a provider's restart to pass, short enough that the AI
# client polling `call_status` hears of a real outage. Each retry sends the same Idempotency-Key,
# so a completion or a payment that landed before a timeout is not paid twice. Whole seconds:
# the SDK's policies count in seconds.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=8, max_delay=30)
# The workflows themselves are never retried: before their first durable call the only thing
# that can fail is decoding their arguments, which no retry fixes.
WORKFLOW_RETRIES = Never()


async def weather_report(ctx: Context, city: City, date: str) -> WeatherReport:
    step = ctx.options(retry_policy=STEP_RETRIES)
    observed = await step.run(observe_weather, city, date)
    if isinstance(observed, Refused):
        return WeatherReport(city, date, refused=f"{observed.provider}: {observed.reason}")
    written = await step.run(write_report, city, date, observed)
    if isinstance(written, Refused):
        return WeatherReport(city, date, observed, refused=f"{written.provider}: {written.reason}")
    return WeatherReport(city, date, observed, report=written)


async def invoice_approval(
    ctx: Context, invoice: Invoice, decide_within_seconds: int
) -> InvoiceOutcome:
    step = ctx.options(retry_policy=STEP_RETRIES)
    # The approver's decision: resolved by a person (`python -m mcp_server.decide`), never by the
    # AI client. The server times it out at the deadline by itself.
    decision = ctx.promise(timeout=timedelta(seconds=decide_within_seconds))
    # Sent to the workers' configured approver, whom the AI client cannot name (`Approver`).
    asked = await step.run(
        ask_approver, invoice.summary, await decision.id(), decide_within_seconds
    )
    if isinstance(asked, Refused):  # nobody was asked: waiting for the deadline is pointless
        return InvoiceOutcome(invoice.invoice_id, "not-asked", reason=asked.reason)
    try:
        decided = await decision
    except ApplicationError:  # timed out at the deadline (nothing else rejects it)
        return InvoiceOutcome(invoice.invoice_id, "expired", reason="no decision in time")

    match decided:
        case {"decision": "approve", **rest}:
            paid = await step.run(
                pay_vendor, invoice.vendor, invoice.amount_cents, invoice.currency
            )
            if isinstance(paid, Refused):
                return InvoiceOutcome(
                    invoice.invoice_id, "payment-refused", _note(rest), reason=paid.reason
                )
            return InvoiceOutcome(invoice.invoice_id, "paid", _note(rest), payment_id=paid)
        case {"decision": "reject", **rest}:
            return InvoiceOutcome(invoice.invoice_id, "rejected", _note(rest))
        case _:  # something else settled it: never pay on a value we misread
            return InvoiceOutcome(invoice.invoice_id, "rejected", reason="unreadable decision")


def _note(rest: dict[object, object]) -> str | None:
    note = rest.get("note")
    return note if isinstance(note, str) and note else None
