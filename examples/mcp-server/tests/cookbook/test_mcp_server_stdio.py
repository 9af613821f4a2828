"""The MCP server end to end, driven by the `mcp` SDK's own client over stdio.

A real dev server, the provider sandbox and a worker process; the MCP server is started by
`stdio_client` as an AI app would start it, and SIGKILLed mid-call by the pid it reports on its
stderr. Effects are counted where they land: the sandbox's records.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cookbook.stack import devserver_process, worker_process
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent
from mcp_server.decide import decide
from resonate.resonate import Resonate

APPROVER = "payables-lead@example.com"  # the worker's, as a deployment would set it


@pytest.fixture(scope="module")
def devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDevServer]:
    """One dev server for the module: every test uses ids of its own."""
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir, fast_recovery=True) as process:
        yield RunningDevServer(process, data_dir, fast_recovery=True)


@pytest.fixture(scope="module")
def stack(devserver: RunningDevServer, sandbox: RunningSandbox) -> Iterator[dict[str, str]]:
    """The environment of the MCP servers the tests start, with one worker running."""
    env = {
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": sandbox.url,
        "OPENAI_BASE_URL": os.environ.get("OPENAI_BASE_URL", f"{sandbox.url}/v1"),
        "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "stand-in-key"),
        "OPENAI_MODEL": os.environ.get("OPENAI_MODEL", "stand-in-1"),
        "INVOICE_APPROVER": APPROVER,
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
    with worker_process("mcp_server.worker", {**inherited, **env}):
        yield env


@asynccontextmanager
async def mcp_server(
    stack: dict[str, str], errlog: Path, wait_seconds: float = 20
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server.server"],
        env={**stack, "MCP_CALL_WAIT_SECONDS": str(wait_seconds)},
    )
    with errlog.open("a") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


def server_pid(errlog: Path) -> int:
    ready = [line for line in errlog.read_text().splitlines() if line.endswith(" ready")]
    return int(ready[-1].split()[1])


def answer(result: Any) -> dict[str, Any]:
    assert isinstance(result, CallToolResult)
    assert not result.is_error, result.content
    structured: dict[str, Any] | None = result.structured_content
    assert structured is not None
    return structured


def error_text(result: Any) -> str:
    assert isinstance(result, CallToolResult)
    assert result.is_error
    [content] = result.content
    assert isinstance(content, TextContent)
    return content.text


def an_invoice(**changes: Any) -> dict[str, Any]:
    return {
        "invoice_id": f"INV-{secrets.token_hex(4)}",
        "vendor": "Atelier Lumiere",
        "amount_cents": 184_000,
        "currency": "EUR",
        "description": "Stage lighting for the March launch",
    } | changes


async def call_killed_mid_call(
    session: ClientSession, errlog: Path, tool: str, arguments: dict[str, Any]
) -> str:
    """Call a tool and SIGKILL its MCP server as soon as it says the call started; the call id."""
    started: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        assert message is not None
        started.append(message.split()[1])  # "call <id> started"
        os.kill(server_pid(errlog), signal.SIGKILL)

    with pytest.raises(MCPError, match="Connection closed"):
        await session.call_tool(tool, arguments, progress_callback=on_progress)
    [call_id] = started
    return call_id


def test_an_approval_survives_its_mcp_server_killed_mid_call(
    stack: dict[str, str], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    errlog = tmp_path / "mcp.stderr"
    invoice = an_invoice()

    async def go() -> None:
        async with mcp_server(stack, errlog) as session:
            call_id = await call_killed_mid_call(session, errlog, "approve_invoice", invoice)
        assert call_id == f"invoice.{invoice['invoice_id']}"

        # The approver decides while no MCP server runs at all.
        [email] = await emails(sandbox, call_id)
        approver = Resonate(url=stack["RESONATE_URL"], group="mcp-server-approvers")
        try:
            said = await decide(approver, email.body["decision_promise"], "approve", "ok")
        finally:
            await approver.stop()
        assert said.startswith("approved")

        async with mcp_server(stack, errlog) as session:
            status = answer(
                await session.call_tool("call_status", {"call_id": call_id, "wait_seconds": 20})
            )
        assert status["status"] == "done"
        assert status["result"]["state"] == "paid"
        [payment] = [
            e for e in sandbox.records.effects(key_prefix=f"{call_id}:") if e.provider == "payment"
        ]
        assert status["result"]["payment_id"] == payment.resource_id

    asyncio.run(go())


async def emails(sandbox: RunningSandbox, call_id: str) -> list[Any]:
    for _ in range(300):
        found = [
            e for e in sandbox.records.effects(key_prefix=f"{call_id}:") if e.provider == "email"
        ]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no email for {call_id}")


def test_the_ai_client_cannot_choose_who_approves(
    stack: dict[str, str], devserver: RunningDevServer, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    # An AI that could name the approver, or a prompt injection in what it read, could send the
    # request to an address it controls and approve its own invoice. The tool takes no approver,
    # and one sent anyway is refused, not dropped: dropped, the AI would believe it was used.
    mallory = "mallory@attacker.example"
    invoice = an_invoice()
    call_id = f"invoice.{invoice['invoice_id']}"
    promises_before = len(devserver.state()["promises"])  # type: ignore[arg-type]
    effects_before = len(sandbox.records.effects())

    async def go() -> tuple[dict[str, Any], str, int, int, dict[str, Any], Any]:
        async with mcp_server(stack, tmp_path / "mcp.stderr", wait_seconds=0) as session:
            tools = {tool.name: tool for tool in (await session.list_tools()).tools}
            schema = tools["approve_invoice"].input_schema
            refusal = error_text(
                await session.call_tool("approve_invoice", invoice | {"approver_email": mallory})
            )
            promises_after = len(devserver.state()["promises"])  # type: ignore[arg-type]
            effects_after = len(sandbox.records.effects())
            sent = answer(await session.call_tool("approve_invoice", invoice))
        client = Resonate(url=stack["RESONATE_URL"], group="mcp-server-approvers")
        try:
            stored = await client.promises.get(call_id)
        finally:
            await client.stop()
        return schema, refusal, promises_after, effects_after, sent, stored

    schema, refusal, promises_after, effects_after, sent, stored = asyncio.run(go())

    assert set(schema["properties"]) == set(invoice)  # no approver among them
    assert schema["additionalProperties"] is False  # said to the client, before it calls
    assert "\napprover_email\n  Extra inputs are not permitted" in refusal
    assert (promises_after, effects_after) == (promises_before, effects_before)  # nothing started
    # Called without it, the worker's approver is asked; no address is in the stored invoice.
    assert sent["call_id"] == call_id
    [email] = asyncio.run(emails(sandbox, call_id))
    assert email.body["to"] == APPROVER
    assert "@" not in repr(stored.param.data)


def test_identical_calls_are_one_execution_and_other_figures_are_refused(
    stack: dict[str, str], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    invoice = an_invoice()
    call_id = f"invoice.{invoice['invoice_id']}"

    async def go() -> tuple[list[dict[str, Any]], str]:
        async with mcp_server(stack, tmp_path / "mcp.stderr", wait_seconds=1) as session:
            calls = [session.call_tool("approve_invoice", invoice) for _ in range(20)]
            answers = [answer(result) for result in await asyncio.gather(*calls)]
            other = invoice | {"amount_cents": 999_999}
            return answers, error_text(await session.call_tool("approve_invoice", other))

    answers, refusal = asyncio.run(go())

    assert {(a["call_id"], a["status"]) for a in answers} == {(call_id, "pending")}
    assert refusal.endswith(
        f"invoice_id {invoice['invoice_id']!r} was already submitted with other details; "
        f"ask call_status with call_id {call_id!r}"
    )
    [email] = asyncio.run(emails(sandbox, call_id))  # one execution asked the approver once
    assert "1,840.00 EUR" in email.body["subject"]


BAD_ARGUMENTS = [
    ("approve_invoice", an_invoice(amount_cents=0), "amount_cents"),
    ("approve_invoice", an_invoice(amount_cents="1"), "amount_cents"),
    ("approve_invoice", an_invoice(currency="XYZ"), "currency"),
    ("approve_invoice", an_invoice(invoice_id="INV:1"), "invoice_id"),
    ("approve_invoice", an_invoice(description="x" * 100_000), "description"),
    ("approve_invoice", {k: v for k, v in an_invoice().items() if k != "vendor"}, "vendor"),
    ("weather_report", {"city": ""}, "city"),
    ("weather_report", {"city": "Lyon; DROP"}, "city"),
    ("weather_report", {"city": "L" * 100_000}, "city"),
    ("call_status", {"call_id": "nothing.1"}, "call_id"),
    ("call_status", {"call_id": "invoice.x", "wait_seconds": 3600}, "wait_seconds"),
    # An argument a tool does not declare: refused, never dropped (`refusing_undeclared`).
    ("weather_report", {"city": "Lyon", "units": "imperial"}, "units"),
    ("call_status", {"call_id": "invoice.x", "wait": 20}, "wait"),
]


def test_bad_arguments_and_unknown_calls_are_refused_naming_the_field_starting_nothing(
    stack: dict[str, str], devserver: RunningDevServer, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    promises_before = len(devserver.state()["promises"])  # type: ignore[arg-type]
    effects_before = len(sandbox.records.effects())

    async def go() -> tuple[list[str], str]:
        async with mcp_server(stack, tmp_path / "mcp.stderr", wait_seconds=0) as session:
            refusals = [error_text(await session.call_tool(t, a)) for t, a, _ in BAD_ARGUMENTS]
            unknown = await session.call_tool("call_status", {"call_id": "invoice.nope"})
            return refusals, error_text(unknown)

    refusals, unknown = asyncio.run(go())

    for (tool, _, field_name), refusal in zip(BAD_ARGUMENTS, refusals, strict=True):
        assert f"\n{field_name}\n" in refusal, (tool, field_name, refusal)
        assert len(refusal) < 1_000  # an oversized value is not echoed back whole
    assert len(devserver.state()["promises"]) == promises_before  # type: ignore[arg-type]
    assert len(sandbox.records.effects()) == effects_before
    assert unknown.endswith("call_id 'invoice.nope': no such call")


def test_a_report_survives_its_mcp_server_killed_mid_call_and_is_billed_once(
    stack: dict[str, str], sandbox: RunningSandbox, tmp_path: Path
) -> None:
    errlog = tmp_path / "mcp.stderr"
    city = (
        f"Oslo {secrets.choice('ABCDEFGH')}{secrets.choice('ABCDEFGH')}{secrets.choice('ABCDEFGH')}"
    )

    async def go() -> tuple[str, dict[str, Any], dict[str, Any]]:
        async with mcp_server(stack, errlog) as session:
            call_id = await call_killed_mid_call(session, errlog, "weather_report", {"city": city})
        async with mcp_server(stack, errlog) as session:
            status = answer(
                await session.call_tool("call_status", {"call_id": call_id, "wait_seconds": 20})
            )
            again = answer(await session.call_tool("weather_report", {"city": city}))
        return call_id, status, again

    call_id, status, again = asyncio.run(go())

    assert status["status"] == "done"
    assert status["result"]["city"] == city
    assert status["result"]["report"]
    assert again == status  # the same question attaches to the same call
    billed = [e for e in sandbox.records.effects(key_prefix=f"{call_id}:") if e.provider == "model"]
    assert len(billed) == 1
