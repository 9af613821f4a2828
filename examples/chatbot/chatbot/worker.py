"""`python -m chatbot.worker`: a worker process that answers chat turns until stopped.

Environment: RESONATE_URL (required), RESONATE_GROUP (default: chatbot), RESONATE_TTL_SECONDS,
OPENAI_BASE_URL, OPENAI_API_KEY (required), OPENAI_MODEL (required),
OPENAI_TIMEOUT_SECONDS (default 30), CHAT_ENCRYPTION_KEYS or CHAT_ENCRYPTION_KEYS_FILE (the
key ring; see crypto.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import openai
from resonate.resonate import Resonate
from resonate.retry import Never

from chatbot.crypto import AesGcmEncryptor, KeyRingError, load_key_ring
from chatbot.steps import Model
from chatbot.workflow import chat_turn


def model_from_environment() -> Model:
    """The model, from the environment alone: the stand-in by default, any compatible server."""
    missing = [name for name in ("OPENAI_API_KEY", "OPENAI_MODEL") if not os.environ.get(name)]
    if missing:
        sys.exit(f"chatbot.worker: {' and '.join(missing)} not set (or use `make run-chatbot`)")
    client = openai.AsyncOpenAI(
        # base_url and api_key come from OPENAI_BASE_URL and OPENAI_API_KEY.
        # Resonate's retry policy owns retries: the client's own (2 by default) would hide
        # attempts from it and stretch a step past its lease.
        max_retries=0,
        # A completion takes seconds; one silent for longer is retried under the same key.
        timeout=float(os.environ.get("OPENAI_TIMEOUT_SECONDS", "30")),
    )
    return Model(client, os.environ["OPENAI_MODEL"])


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit("chatbot.worker: RESONATE_URL is not set (start a server, or `make run-chatbot`)")
    try:
        key_ring = load_key_ring()
    except KeyRingError as exc:
        sys.exit(f"chatbot.worker: {exc}")
    model = model_from_environment()
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group=os.environ.get("RESONATE_GROUP", "chatbot"),
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        # A turn's arguments (the conversation so far) and its result (the reply) are personal
        # data: sealed before they reach the server, opened only by a process with the key.
        encryptor=AesGcmEncryptor(key_ring),
    )
    resonate.with_dependency(model)
    # A turn is never retried as a whole; its model call is, by MODEL_RETRIES. The SDK's default
    # (30 retries, doubling) would retry a body that fails before its first step (bad arguments,
    # a bug) for hours, holding its lease, to fail the same way every time.
    resonate.register(chat_turn, retry_policy=Never())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"chatbot worker {os.getpid()} ready (model {model.name})", flush=True)
    print(key_ring.describe(), flush=True)
    await stop.wait()
    await resonate.stop()
    await model.client.close()


if __name__ == "__main__":
    asyncio.run(main())
