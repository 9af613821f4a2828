"""`python -m summarize_approve.worker`: a worker that runs `summarize_and_approve` until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's dev
server and stand-ins, or the official Resonate server and a real model:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: summarize-approve)
  RESONATE_TTL_SECONDS  task lease; a dead worker's work moves on after at most this long
  PROVIDER_API_URL      the web (pages given as a path are fetched from it) and the email and
                        chat providers
  OPENAI_BASE_URL       the model API (any OpenAI-compatible server), OPENAI_API_KEY its key,
                        OPENAI_MODEL the model's name (all three required)
  MODEL_TIMEOUT_SECONDS how long one completion may take (default 60); longer is a transient
                        failure that may have been billed
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
import openai
from resonate.resonate import Resonate

from summarize_approve.steps import Model, Providers
from summarize_approve.workflow import WORKFLOW_RETRIES, summarize_and_approve

GROUP = "summarize-approve"
MODEL_SETTINGS = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL")


def model_from_environment() -> Model:
    """The model client, configured only from the environment."""
    return Model(
        openai.AsyncOpenAI(
            base_url=os.environ["OPENAI_BASE_URL"],
            api_key=os.environ["OPENAI_API_KEY"],
            # Resonate's retry policy owns retries (MODEL_RETRIES, on purpose); the client's own
            # would retry a request the step then retries again, multiplying the attempts.
            max_retries=0,
            timeout=float(os.environ.get("MODEL_TIMEOUT_SECONDS", "60")),
        ),
        os.environ["OPENAI_MODEL"],
    )


async def main() -> None:
    missing = [name for name in ("RESONATE_URL", *MODEL_SETTINGS) if not os.environ.get(name)]
    if missing:
        sys.exit(
            f"summarize_approve.worker: {', '.join(missing)} not set"
            " (`make run-summarize-approve` sets them for the cookbook's stand-ins)"
        )
    model = model_from_environment()
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(model)
        resonate.register(summarize_and_approve, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"summarize-approve worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()
        await model.client.close()


if __name__ == "__main__":
    asyncio.run(main())
