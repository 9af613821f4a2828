"""`python -m encryption.worker`: a worker process that executes `onboard` workflows until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and the official Resonate server:
  RESONATE_URL           the Resonate server (required)
  RESONATE_GROUP         the worker group clients send work to (default: encryption)
  RESONATE_TTL_SECONDS   task lease; a dead worker's work moves on after at most this long
  PROVIDER_API_URL       the identity and email providers the steps call
  ENCRYPTION_KEYS        the key ring as JSON, or
  ENCRYPTION_KEYS_FILE   the path of a file holding it (see crypto.py)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate
from resonate.retry import Never

from encryption.crypto import AesGcmEncryptor, KeyRingError, load_key_ring
from encryption.steps import Providers
from encryption.workflow import onboard

GROUP = "encryption"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "encryption.worker: RESONATE_URL is not set (start a server, or `make run-encryption`)"
        )
    try:
        key_ring = load_key_ring()
    except KeyRingError as exc:
        sys.exit(f"encryption.worker: {exc}")
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
            # Every value this worker stores (arguments, results, errors) is sealed with the
            # current key, and every value it reads is opened with the key that sealed it.
            encryptor=AesGcmEncryptor(key_ring),
        )
        resonate.with_dependency(Providers(client))
        # The workflow itself is never retried; its steps are, each by its own policy. The SDK's
        # default (30 retries, doubling) would retry a body that fails before its first step (bad
        # arguments, a bug) for hours, holding its lease, to fail the same way every time.
        resonate.register(onboard, retry_policy=Never())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"encryption worker {os.getpid()} ready", flush=True)
        keys = ", ".join(sorted(key_ring.keys))
        print(
            f"sealing with key {key_ring.current!r}, opening {keys}: {key_ring.source}", flush=True
        )
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
