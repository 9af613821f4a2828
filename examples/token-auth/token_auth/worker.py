"""`python -m token_auth.worker`: a worker process that executes `payout` workflows until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's dev
server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_TOKEN        the bearer token the server requires; the SDK reads it from here and
                        sends it on every request and on the stream that brings work
  RESONATE_GROUP        the worker group clients send work to (default: token-auth)
  RESONATE_TTL_SECONDS  task lease; a dead worker's payouts move on after at most this long
  PROVIDER_API_URL      the payment provider's and the chat's API
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.retry import Never

from token_auth.steps import Providers
from token_auth.workflow import payout

GROUP = "token-auth"
# A promise id of this example's own, read (never created) to find out whether the server lets
# this worker in: a read changes nothing, and its answer is 404 (in) or 401 (not in).
AUTH_CHECK_ID = "token-auth.worker-auth-check"


async def check_token(resonate: Resonate) -> str | None:
    """Why the server refuses this worker (None: it is let in).

    Without this, a worker with a missing or wrong token looks alive: SDK 0.8.1 retries a refused
    event stream for ever (backing off to a minute, a warning each time) and never gets any work.
    A 403 is not a refusal of the token: the official server says it when a valid token's
    `prefix` claim does not cover the id asked for, and this id is outside any payout's prefix.
    """
    try:
        await resonate.promises.get(AUTH_CHECK_ID)
    except ServerError as exc:
        if exc.code == 401:
            return exc.message
        if exc.code not in (403, 404):
            raise
    return None


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "token_auth.worker: RESONATE_URL is not set (start a server, or `make run-token-auth`)"
        )
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        # No token argument: the SDK reads RESONATE_TOKEN, so the token is in no file and no
        # command line (the process list shows arguments, not the environment).
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        if (refusal := await check_token(resonate)) is not None:
            await resonate.stop()
            given = "a token" if os.environ.get("RESONATE_TOKEN") else "no token"
            sys.exit(f"token_auth.worker: the server refused {given} (RESONATE_TOKEN): {refusal}")
        resonate.with_dependency(Providers(client))
        # The workflow itself is never retried: before its first step the only thing that can
        # raise is a bad argument, which fails the same way every time (the SDK's default would
        # retry it 30 times with doubling delays, holding the lease). The steps are retried by
        # their own policy (RETRIES in workflow.py).
        resonate.register(payout, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"token-auth worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
