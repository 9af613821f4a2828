"""Broken workers for the crash harness's own tests: `python -m tests.crash.broken_workers`.

Each workflow sends an email, then an SMS, through the provider sandbox (one durable step each,
keyed by the step's id) and returns the receipts. `correct` does it right; every other one breaks
one promise the crash matrix checks, the way real code breaks it:

  forgetful   the worker does not see the steps that completed before a crash: on recovery it
              asks the server to create and settle them again, running them again (the SDK is
              patched for this workflow's executions only, as a buggy SDK or a journal that lost
              its entries would behave)
  double_keyed  a step that gets the provider's replayed answer distrusts it and sends the
              request again under a new key: after a crash the effect is applied twice
  dropped     a later version that no longer sends the SMS: a checkpoint fewer
  different   returns how many steps ran in this process, outside the journal: a recovered run
              returns another result than an uninterrupted one
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import msgspec
from cookbook import clients
from resonate.context import Context
from resonate.effects import ResonateEffects
from resonate.resonate import Resonate
from resonate.types import PromiseCreateReq, PromiseRecord

GROUP = "broken-workers"
FORGETFUL = ".forgetful."  # in the execution ids of the `forgetful` scenario (harness: ex.sc.*)

_client: httpx.AsyncClient | None = None
# Steps run by this process, by execution: state outside the journal, which `different` leaks.
_ran_here: Counter[str] = Counter()


async def _send(ctx: Context, channel: str, execution_id: str, *, distrust: bool = False) -> str:
    assert _client is not None
    _ran_here[execution_id] += 1
    response = await _client.post(
        f"/{channel}/send",
        json={"to": "ada@example.com", "text": "hello"},
        headers={"Idempotency-Key": ctx.info.id},
    )
    response.raise_for_status()
    receipt: str = response.json()["id"]
    if distrust and response.headers.get("Idempotent-Replayed") == "true":
        # The bug: a replayed answer is taken for a stale one, and the request is sent again
        # under a key of its own, which the provider has never seen.
        again = await _client.post(
            f"/{channel}/send",
            json={"to": "ada@example.com", "text": "hello"},
            headers={"Idempotency-Key": ctx.info.id + ".again"},
        )
        again.raise_for_status()
    return receipt


async def send_email(ctx: Context, execution_id: str) -> str:
    return await _send(ctx, "email", execution_id)


async def send_sms(ctx: Context, execution_id: str) -> str:
    return await _send(ctx, "sms", execution_id)


async def send_email_distrusting(ctx: Context, execution_id: str) -> str:
    return await _send(ctx, "email", execution_id, distrust=True)


async def correct(ctx: Context) -> dict[str, str]:
    email = await ctx.run(send_email, ctx.info.id)
    sms = await ctx.run(send_sms, ctx.info.id)
    return {"email": email, "sms": sms}


async def forgetful(ctx: Context) -> dict[str, str]:
    return await correct(ctx)


async def double_keyed(ctx: Context) -> dict[str, str]:
    email = await ctx.run(send_email_distrusting, ctx.info.id)
    sms = await ctx.run(send_sms, ctx.info.id)
    return {"email": email, "sms": sms}


async def dropped(ctx: Context) -> dict[str, str]:
    email = await ctx.run(send_email, ctx.info.id)
    return {"email": email}


async def different(ctx: Context) -> dict[str, Any]:
    result: dict[str, Any] = await correct(ctx)
    return {**result, "steps run by this worker": _ran_here[ctx.info.id]}


def _forget_completed_steps() -> None:
    """Make the SDK blind to completed steps of `forgetful` executions: it runs them again."""
    create, settle = ResonateEffects.create_promise, ResonateEffects.settle_promise

    async def create_promise(self: ResonateEffects, req: PromiseCreateReq) -> PromiseRecord:
        if FORGETFUL not in req.id or req.tags.get("resonate:scope") != "local":
            return await create(self, req)
        self.cache.pop(req.id, None)
        record = await create(self, req)
        return msgspec.structs.replace(record, state="pending")

    async def settle_promise(self: ResonateEffects, id: str, result: Any) -> PromiseRecord:
        if FORGETFUL in id:
            self.cache.pop(id, None)
        return await settle(self, id, result)

    ResonateEffects.create_promise = create_promise  # type: ignore[method-assign]
    ResonateEffects.settle_promise = settle_promise  # type: ignore[method-assign]


async def main() -> None:
    global _client
    _forget_completed_steps()
    async with clients.async_client(base_url=os.environ["PROVIDER_API_URL"], timeout=10) as client:
        _client = client
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=GROUP,
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "5"))),
        )
        for workflow in (correct, forgetful, double_keyed, dropped, different):
            resonate.register(workflow)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"broken worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
