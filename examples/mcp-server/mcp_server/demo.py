"""`python -m mcp_server.demo`: an AI client's side, with the `mcp` SDK's own client over stdio.

It starts the MCP server as a desktop app would (a child process on stdin/stdout), asks for a
weather report, asks for an invoice's approval, then SIGKILLs the MCP server while that call is
pending. The approver decides meanwhile (from the email the workflow sent: the provider
sandbox's records stand in for the inbox), and a new MCP server answers for the same call id.

Environment: RESONATE_URL and PROVIDER_API_URL (required), and whatever the workers need.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult
from resonate.resonate import Resonate

from mcp_server.decide import decide


@asynccontextmanager
async def mcp_server(errlog: Path, wait_seconds: int) -> AsyncIterator[ClientSession]:
    """Start `python -m mcp_server.server` on stdio and open a session with it."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_server.server"],
        env={**os.environ, "MCP_CALL_WAIT_SECONDS": str(wait_seconds)},
    )
    with errlog.open("a") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    print(f"→ {tool}({shown})")

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        print(f"  … {message}")

    result = await session.call_tool(tool, arguments, progress_callback=progress)
    assert isinstance(result, CallToolResult)
    if result.is_error or result.structured_content is None:
        raise SystemExit(f"✗ {tool}: {result.content}")
    answer: dict[str, Any] = result.structured_content
    hint = answer.get("hint")
    print(f"← {answer['status']}" + (f": {hint}" if hint else ""))
    for name, value in (answer.get("result") or {}).items():
        if value is not None:
            print(f"    {name}: {value}")
    return answer


def last_pid(errlog: Path) -> int:
    """The pid the latest MCP server wrote to its stderr when it became ready."""
    ready = [line for line in errlog.read_text().splitlines() if line.endswith(" ready")]
    return int(ready[-1].split()[1])


def effects(provider_url: str, key_prefix: str, provider: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(
        f"{provider_url}/_admin/effects", params={"key_prefix": key_prefix}
    ).json()
    return [e for e in found if e["provider"] == provider]


async def main() -> None:
    provider_url = os.environ["PROVIDER_API_URL"]
    errlog = Path(tempfile.mkdtemp(prefix="mcp-demo-")) / "mcp-server.stderr"
    invoice_id = f"INV-{int(time.time())}"
    invoice = {
        "invoice_id": invoice_id,
        "vendor": "Atelier Lumière",
        "amount_cents": 184_000,
        "currency": "EUR",
        "description": "Stage lighting for the March launch",
    }

    print("• The AI client starts the MCP server over stdio (it is a client of Resonate).")
    async with mcp_server(errlog, wait_seconds=20) as session:
        tools = await session.list_tools()
        print(f"  tools: {', '.join(t.name for t in tools.tools)}")
        report = await call(session, "weather_report", {"city": "Lyon"})
        weather_call = report["call_id"]
        print("• The same question again attaches to the same call: nothing runs, nothing billed.")
        await call(session, "weather_report", {"city": "Lyon"})
        billed = effects(provider_url, f"{weather_call}:", "model")
        print(f"  the model billed {len(billed)} completion(s) for {weather_call}")

    print("\n• An invoice to approve. The workers' approver decides, outside MCP; the tool waits.")
    async with mcp_server(errlog, wait_seconds=20) as session:
        invoice_call = await killed_mid_call(session, errlog, invoice)

    print("\n• The approver reads the email the workflow sent, and approves.")
    mail = await _first_email(provider_url, f"{invoice_call}:")
    print(f"  email to {mail['to']}: {mail['subject']}")
    approver = Resonate(url=os.environ["RESONATE_URL"], group="mcp-server-approvers")
    try:
        print(f"  {await decide(approver, mail['decision_promise'], 'approve', 'within budget')}")
    finally:
        await approver.stop()

    print("\n• A new MCP server answers for the same call id.")
    async with mcp_server(errlog, wait_seconds=20) as session:
        await call(session, "call_status", {"call_id": invoice_call, "wait_seconds": 20})
    paid = effects(provider_url, f"{invoice_call}:", "payment")
    print(f"  the vendor was paid {len(paid)} time(s)")


async def killed_mid_call(session: ClientSession, errlog: Path, invoice: dict[str, Any]) -> str:
    """Call approve_invoice, and SIGKILL the MCP server once the call has started."""
    shown = ", ".join(f"{k}={v!r}" for k, v in invoice.items())
    print(f"→ approve_invoice({shown})")
    started: list[str] = []

    async def crash(progress: float, total: float | None, message: str | None) -> None:
        print(f"  … {message}")
        started.append(str(message).split()[1])  # "call <id> started"
        pid = last_pid(errlog)
        print(f"• The AI app crashes mid-call: SIGKILL to the MCP server (pid {pid}).")
        os.kill(pid, signal.SIGKILL)

    try:
        await session.call_tool("approve_invoice", invoice, progress_callback=crash)
    except MCPError as lost:
        print(f"← the client sees: {lost}")
    return started[0]


async def _first_email(provider_url: str, key_prefix: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not (mails := effects(provider_url, key_prefix, "email")):
        if time.monotonic() > deadline:
            raise SystemExit("✗ no email reached the approver in 30 s")
        await asyncio.sleep(0.1)
    body: dict[str, Any] = mails[0]["body"]
    return body


if __name__ == "__main__":
    asyncio.run(main())
