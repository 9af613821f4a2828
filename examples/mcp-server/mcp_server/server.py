"""`python -m mcp_server.server`: a stdio MCP server whose tools are durable Resonate workflows.

An AI client (Claude Desktop, an IDE, an agent built on the `mcp` SDK) starts this process and
talks to it over stdin/stdout. The process is only a client of Resonate: each tool starts a
workflow on the workers (`rpc`, by an id derived from the tool's arguments) and waits a bounded
while for its result. A tool call that outlives the wait, or whose MCP server dies (the client
restarts it), is not lost: the workflow goes on on the workers, and `call_status` with the call's
id (told to the client at once as a progress message, and in every answer) reads its result,
from this process or from a new one.

Tools:
  weather_report(city)          a report written by the model from the weather API's observation;
                                one per city and day (`weather.<city>-<hash>.<date>`)
  approve_invoice(...)          asks the workers' configured approver (never one the client
                                names) to approve an invoice and returns the decision; one per
                                invoice (`invoice.<id>`); the approver decides outside MCP
  call_status(call_id, wait_seconds)
                                where a call is: pending, done (its result) or failed (why)
Each refuses an argument it does not declare, naming it (`refusing_undeclared`).

Environment: RESONATE_URL (required), RESONATE_GROUP (the workers' group, default mcp-server),
MCP_CALL_WAIT_SECONDS (how long a tool waits for its result, default 20), DECIDE_WITHIN_SECONDS
(an invoice's decision deadline, default 3 days). Nothing is printed to stdout: it carries the
protocol.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from pydantic import BaseModel, Field, StringConstraints
from resonate.error import ServerError
from resonate.resonate import Resonate

from mcp_server.calls import (
    City,
    Currency,
    Invoice,
    InvoiceId,
    Text,
    invoice_call_id,
    weather_call_id,
)

CallId = Annotated[
    str,
    StringConstraints(pattern=r"^(weather|invoice)\.[A-Za-z0-9][A-Za-z0-9._-]{0,100}$"),
    Field(description="The call's id, as a tool's answer or progress message gave it"),
]
MAX_WAIT_SECONDS = 50  # below the 60 s many MCP clients give a tool call


class CallStatus(BaseModel):
    """What every tool answers: where the call is, and its result once it has one."""

    call_id: str
    status: Literal["pending", "done", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None
    hint: str | None = None


class Pending(Protocol):
    """What a tool needs of the SDK's handle to an execution."""

    def done(self) -> bool: ...
    async def result(self) -> Any: ...


@dataclass(frozen=True)
class Calls:
    """This MCP server's way to the workers: a Resonate client and how long a tool waits."""

    resonate: Resonate
    group: str
    wait_seconds: float
    decide_within: timedelta

    async def wait(self, call_id: str, handle: Pending, seconds: float) -> CallStatus:
        try:
            if handle.done():
                result = await handle.result()
            else:
                # shield: giving up the wait must not cancel the result for a later caller.
                result = await asyncio.wait_for(asyncio.shield(handle.result()), seconds)
        except TimeoutError:
            return CallStatus(
                call_id=call_id,
                status="pending",
                hint=f"still running; ask call_status with call_id {call_id!r}",
            )
        except Exception as exc:  # the workflow failed: its error is the answer
            return CallStatus(call_id=call_id, status="failed", error=str(exc))
        return CallStatus(call_id=call_id, status="done", result=result)


@asynccontextmanager
async def connect(_: MCPServer[Calls]) -> AsyncIterator[Calls]:
    url = os.environ.get("RESONATE_URL")
    if not url:
        sys.exit(
            "mcp_server.server: RESONATE_URL is not set (start a server, or `make run-mcp-server`)"
        )
    resonate = Resonate(url=url, group="mcp-server-clients")
    wait_seconds = min(float(os.environ.get("MCP_CALL_WAIT_SECONDS", "20")), MAX_WAIT_SECONDS)
    decide_within = timedelta(seconds=int(os.environ.get("DECIDE_WITHIN_SECONDS", "259200")))
    print(f"mcp-server {os.getpid()} ready", file=sys.stderr, flush=True)
    try:
        yield Calls(
            resonate, os.environ.get("RESONATE_GROUP", "mcp-server"), wait_seconds, decide_within
        )
    finally:
        await resonate.stop()


def refusing_undeclared(fn: Callable[..., Any]) -> Tool:
    """`fn` as a tool that refuses an argument it does not declare, naming it.

    The SDK checks a call's arguments with a model of the function's parameters that drops any
    other key silently (modelcontextprotocol/python-sdk#3067): an AI still sending
    `approver_email` to approve_invoice would get no error, and believe its address was used.
    The same model set to forbid other keys refuses the call before the tool runs, as it refuses
    a bad value, and the schema the client lists says so (`additionalProperties: false`).
    """
    tool = Tool.from_function(fn)
    arguments = tool.fn_metadata.arg_model  # made for this tool alone
    arguments.model_config["extra"] = "forbid"
    arguments.model_rebuild(force=True)
    tool.parameters = arguments.model_json_schema(by_alias=True)
    return tool


async def _started(ctx: Context[Calls, Any], call_id: str) -> None:
    # Told before the wait, so a client whose server dies mid-call still has the id.
    await ctx.report_progress(0, None, f"call {call_id} started")


async def weather_report(
    city: Annotated[City, Field(description="The city, e.g. 'Lyon'")],
    ctx: Context[Calls, Any],
) -> CallStatus:
    """Today's weather report for a city, written by a model from a weather API's observation.

    One report per city and day: calling again attaches to the same call.
    """
    calls = ctx.request_context.lifespan_context
    date = datetime.now(UTC).date().isoformat()
    call_id = weather_call_id(city, date)
    handle = calls.resonate.options(target=calls.group).rpc(call_id, "weather_report", city, date)
    await handle.id()  # the execution exists from here on, whatever happens to this process
    await _started(ctx, call_id)
    return await calls.wait(call_id, handle, calls.wait_seconds)


async def approve_invoice(
    invoice_id: Annotated[InvoiceId, Field(description="The invoice's own id, e.g. 'INV-2041'")],
    vendor: Annotated[Text, Field(description="Who is paid")],
    amount_cents: Annotated[int, Field(strict=True, ge=1, le=100_000_000, description="In cents")],
    currency: Currency,
    description: Annotated[Text, Field(description="What the invoice is for")],
    # No approver: an AI that could name one could name itself (the workers' `Approver` decides).
    ctx: Context[Calls, Any],
) -> CallStatus:
    """Ask the approver to approve an invoice; returns the decision (paid, rejected, expired).

    Who approves is set where the workflows run, not by the caller. The approver decides outside
    this server, within DECIDE_WITHIN_SECONDS; until then the call is pending (ask call_status).
    One approval per invoice id: calling again attaches to it.
    """
    calls = ctx.request_context.lifespan_context
    invoice = Invoice(
        invoice_id=invoice_id,
        vendor=vendor,
        amount_cents=amount_cents,
        currency=currency,
        description=description,
    )
    call_id = invoice_call_id(invoice_id)
    # The decision's deadline is inside the execution's: a child's timeout is capped by its
    # parent's, and the SDK's default for a root is one day.
    handle = calls.resonate.options(
        target=calls.group, timeout=calls.decide_within + timedelta(days=1)
    ).rpc(
        call_id,
        "invoice_approval",
        invoice.model_dump(mode="json"),
        int(calls.decide_within.total_seconds()),
    )
    await handle.id()
    # Starting an id that exists attaches to that execution without comparing arguments: an
    # invoice id reused for other figures is refused, never approved under the first ones.
    if await _submitted(calls, call_id) != invoice:
        raise ToolError(
            f"invoice_id {invoice_id!r} was already submitted with other details; "
            f"ask call_status with call_id {call_id!r}"
        )
    await _started(ctx, call_id)
    return await calls.wait(call_id, handle, calls.wait_seconds)


async def _submitted(calls: Calls, call_id: str) -> Invoice | None:
    param = (await calls.resonate.promises.get(call_id)).param.data
    if isinstance(param, dict) and param.get("func") == "invoice_approval":
        match param.get("args"):
            case [dict(stored), *_]:
                return Invoice.model_validate(stored)
    return None


async def call_status(
    call_id: CallId,
    ctx: Context[Calls, Any],
    wait_seconds: Annotated[
        int,
        Field(strict=True, ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait for a result"),
    ] = 0,
) -> CallStatus:
    """Where a call started by weather_report or approve_invoice is, and its result once done."""
    calls = ctx.request_context.lifespan_context
    try:
        handle = await calls.resonate.get(call_id)
    except ServerError as exc:
        if exc.code == 404:
            raise ToolError(f"call_id {call_id!r}: no such call") from exc
        raise
    return await calls.wait(call_id, handle, wait_seconds)


server = MCPServer(
    "resonate-durable-tools",
    instructions=(
        "Tools backed by durable workflows. A call that is still running answers status "
        "'pending' with its call_id: ask call_status with that id later; calling the same tool "
        "again with the same arguments also attaches to the same call, never starts a second."
    ),
    lifespan=connect,
    tools=[refusing_undeclared(fn) for fn in (weather_report, approve_invoice, call_status)],
)

if __name__ == "__main__":
    server.run("stdio")
