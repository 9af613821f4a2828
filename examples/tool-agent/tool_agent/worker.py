"""`python -m tool_agent.worker`: a worker process that runs `agent` workflows until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's dev
server and stand-in model, or the official Resonate server and a real model:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: tool-agent)
  RESONATE_TTL_SECONDS  task lease; a dead worker's work moves on after at most this long
  OPENAI_BASE_URL       the model's API (OpenAI, or any compatible server: vLLM, Ollama, LiteLLM)
  OPENAI_API_KEY        its key (required)
  OPENAI_MODEL          the model's name (required)
  MODEL_TIMEOUT_SECONDS how long one model call may take (default 60); longer is a transient failure
  PROVIDER_API_URL      the flight provider and the chat service the tools call
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

from tool_agent.steps import Model, Providers
from tool_agent.workflow import WORKFLOW_RETRIES, agent

GROUP = "tool-agent"


def model_from_environment() -> Model:
    missing = [name for name in ("OPENAI_API_KEY", "OPENAI_MODEL") if not os.environ.get(name)]
    if missing:
        sys.exit(
            f"tool_agent.worker: {' and '.join(missing)} not set (or use `make run-tool-agent`)"
        )
    client = openai.AsyncOpenAI(
        base_url=os.environ.get("OPENAI_BASE_URL"),  # None: the client's default (OpenAI)
        # Resonate's retry policy owns retries (see workflow.py): the client's own would repeat a
        # call unseen by it, and stretch one attempt past the worker's lease.
        max_retries=0,
        timeout=float(os.environ.get("MODEL_TIMEOUT_SECONDS", "60")),
    )
    return Model(client, os.environ["OPENAI_MODEL"])


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "tool_agent.worker: RESONATE_URL is not set (start a server, or `make run-tool-agent`)"
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
        resonate.with_dependency(model)
        resonate.with_dependency(Providers(client))
        resonate.register(agent, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"tool-agent worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()
        await model.client.close()


if __name__ == "__main__":
    asyncio.run(main())
