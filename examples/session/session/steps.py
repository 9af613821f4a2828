"""The steps: calls to the identity provider's API, and stopping a timer that is no longer needed.

Each provider call carries an Idempotency-Key derived from the step's durable id, which is stable
across retries and crashes. If this process dies after the provider acted (issued a token,
recorded an activity, revoked a token) but before the step's result was checkpointed, the step runs
again on another worker, sends the same key, and the provider answers with its original response
instead of acting twice. That is also why the token is stable: it is the provider's answer to the
login step, stored with the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context
from resonate.resonate import Resonate
from resonate.types import Value


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the identity provider's API (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Timers:
    """The worker's own Resonate client, to stop a durable timer early (a worker dependency)."""

    resonate: Resonate


async def issue_token(ctx: Context, user: str) -> str:
    print(f"issuing a token for {user} (step {ctx.info.id})", flush=True)
    return await _call(ctx, {"op": "issue_token", "user": user})


async def record_activity(ctx: Context, token: str, activity_id: str, action: str) -> str:
    print(f"recording activity {action!r} (step {ctx.info.id})", flush=True)
    body = {"op": "record_activity", "token": token, "activity_id": activity_id, "action": action}
    return await _call(ctx, body)


async def revoke_token(ctx: Context, token: str) -> str:
    print(f"revoking token {token} (step {ctx.info.id})", flush=True)
    return await _call(ctx, {"op": "revoke_token", "token": token})


async def stop_timer(ctx: Context, timer_id: str) -> None:
    """Settle a durable sleep before its deadline: SDK 0.8.1 has no call to cancel one.

    A workflow completes only once every durable call it made has settled, its sleeps included,
    so a timer left running would hold the session open until its deadline.
    """
    promises = ctx.get_dependency(Timers).resonate.promises
    # Read first: after a crash this step may run again, and an already stopped (or already
    # fired) timer needs nothing more.
    if (await promises.get(timer_id)).state == "pending":
        await promises.resolve(timer_id, Value())


async def _call(ctx: Context, body: dict[str, str]) -> str:
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        "/api/call", json=body, headers={"Idempotency-Key": ctx.info.id}
    )
    response.raise_for_status()  # a 5xx raises, and the SDK retries the step with backoff
    resource_id: str = response.json()["id"]
    return resource_id
