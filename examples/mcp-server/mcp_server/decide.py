"""`python -m mcp_server.decide <promise> approve|reject [--note TEXT]`: the approver's answer.

The decision is not an MCP tool on purpose: the AI client that asked for the approval must not
be able to give it. The approver gets the promise's id in the email the workflow sends, and
this resolves that promise; the workflow, suspended on it, wakes on a worker.

Environment: RESONATE_URL (required).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Literal

from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import Value

type Decision = Literal["approve", "reject"]
PAST: dict[Decision, str] = {"approve": "approved", "reject": "rejected"}


async def decide(resonate: Resonate, promise_id: str, decision: Decision, note: str) -> str:
    """Settle the decision; what happened, in a sentence."""
    try:
        settled = await resonate.promises.resolve(
            promise_id, Value(data={"decision": decision, "note": note})
        )
    except ServerError as exc:
        if exc.code == 404:
            return f"no decision is awaited under {promise_id!r}"
        raise
    # A settled promise is returned as it is: only our own value means this call decided.
    if settled.state != "resolved" or settled.value.data != {"decision": decision, "note": note}:
        return f"{promise_id} was already settled ({settled.state}): nothing changed"
    return f"{PAST[decision]}: {promise_id}"


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcp_server.decide")
    parser.add_argument("promise_id")
    parser.add_argument("decision", choices=["approve", "reject"])
    parser.add_argument("--note", default="", help="why, for the requester")
    args = parser.parse_args(argv)
    if not os.environ.get("RESONATE_URL"):
        sys.exit("mcp_server.decide: RESONATE_URL is not set")
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="mcp-server-approvers")
    try:
        print(await decide(resonate, args.promise_id, args.decision, args.note))
    finally:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
