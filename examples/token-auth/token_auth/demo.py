"""`python -m token_auth.demo`: three clients try to start the same payout on a server that
requires a bearer token. Without a token and with a wrong one the server refuses them, and
nothing is created; with the token from RESONATE_TOKEN the payout is paid once and finance told.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Mapping

from resonate.error import ServerError
from resonate.resonate import Resonate

GROUP = "token-auth"
PAYOUT = ("acme-supplies", 125_000, "EUR", "INV-2041")


def client(*, token: str | None = None, env: Mapping[str, str] | None = None) -> Resonate:
    # No `token`: the SDK reads RESONATE_TOKEN from `env` (by default this process's environment).
    return Resonate(
        url=os.environ["RESONATE_URL"], group="token-auth-clients", token=token, env=env
    )


async def accepted(creation: Awaitable[str], execution_id: str) -> bool:
    """Whether the server took the payout `rpc` asked it to create (and if not, why)."""
    print(f"→ rpc payout{PAYOUT} as {execution_id}")
    try:
        # `rpc` creates the execution in the background: `handle.id()` waits for that answer
        # and raises its error, where `handle.result()` alone would wait for ever.
        await creation
    except ServerError as exc:
        print(f"✗ refused: {type(exc).__module__}.{type(exc).__name__}: {exc}")
        return False
    print("✓ accepted: the execution is created; a worker of the group pays")
    return True


async def main() -> None:
    # The SDK's own log lines (a refused event stream, a failed background request), marked.
    logging.basicConfig(format="  sdk log | %(levelname)s %(name)s: %(message)s")
    execution_id = f"payout-{PAYOUT[3]}-{secrets.token_hex(2)}"
    amount, currency = PAYOUT[1] / 100, PAYOUT[2]
    print(f"· payout {execution_id}: {amount:.2f} {currency} to {PAYOUT[0]} for {PAYOUT[3]}")
    print("· the server requires a bearer token; the right one is in RESONATE_TOKEN (not shown)")

    print("\n1. a client with no token")
    # This process has RESONATE_TOKEN, which the SDK would read: an empty environment is a client
    # that was never given one.
    anonymous = client(env={})
    payout = anonymous.options(target=GROUP).rpc(execution_id, "payout", *PAYOUT)
    let_in = await accepted(payout.id(), execution_id)
    await anonymous.stop()
    print(
        "  the server answered 401 and the SDK does not retry that: the create's ServerError\n"
        "  (code 401) comes out of `await handle.id()`; `rpc` sent it in the background"
    )

    print("\n2. a client with a wrong token")
    impostor = client(token="not-the-token")
    payout = impostor.options(target=GROUP).rpc(execution_id, "payout", *PAYOUT)
    let_in |= await accepted(payout.id(), execution_id)
    await impostor.stop()

    print("\n3. a client with the token from RESONATE_TOKEN")
    finance = client()
    try:
        await finance.promises.get(execution_id)
        let_in = True
    except ServerError as exc:
        print(f"· {execution_id} does not exist yet ({exc.code}): the refusals created nothing")
    if let_in:
        await finance.stop()
        sys.exit("! the server let a client in without the right token: it requires none")
    payout = finance.options(target=GROUP).rpc(execution_id, "payout", *PAYOUT)
    if not await accepted(payout.id(), execution_id):
        await finance.stop()
        sys.exit("! the right token was refused: is RESONATE_TOKEN the server's token?")
    result = await payout.result()
    print(
        f"✓ {result['status']}: payout {result['payout_id']}, "
        f"finance told in message {result['notification']}"
    )
    await finance.stop()


if __name__ == "__main__":
    asyncio.run(main())
