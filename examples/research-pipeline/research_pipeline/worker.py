"""`python -m research_pipeline.worker`: one worker of the group that runs `research_topic`.

Start as many as you like: the Resonate server gives each run to one live worker of the group,
and to another one when that worker dies mid-run. Everything comes from the environment:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group the gateway sends runs to (default: research-pipeline)
  RESONATE_TTL_SECONDS  task lease; a dead worker's run moves on after at most this long
  OPENAI_BASE_URL       the model server: OpenAI, or any compatible one (vLLM, Ollama, LiteLLM,
                        the cookbook's stand-in); the client's default is OpenAI's
  OPENAI_API_KEY        its key (required)
  OPENAI_MODEL          the model every agent uses (required)
  MODEL_TIMEOUT_SECONDS how long one completion may take (default 120); a call that takes longer
                        is a transient failure that may have been billed
  PROVIDER_API_URL      the chat API the report is delivered to
  REPORT_CHANNEL        the channel it is posted in (default: #research)
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

from research_pipeline.steps import Agents, Receiver
from research_pipeline.workflow import WORKFLOW_RETRIES, research_topic

GROUP = "research-pipeline"


async def main() -> None:
    missing = [
        v for v in ("RESONATE_URL", "OPENAI_API_KEY", "OPENAI_MODEL") if not os.environ.get(v)
    ]
    if missing:
        sys.exit(
            f"research_pipeline.worker: {', '.join(missing)} not set"
            " (see the README's 'Use a real model', or `make run-research-pipeline`)"
        )
    # max_retries=0: Resonate's retry policy owns retries (each one a request that may be billed).
    agents = Agents(
        openai.AsyncOpenAI(
            max_retries=0, timeout=float(os.environ.get("MODEL_TIMEOUT_SECONDS", "120"))
        ),
        os.environ["OPENAI_MODEL"],
    )
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(agents)
        resonate.with_dependency(Receiver(client, os.environ.get("REPORT_CHANNEL", "#research")))
        resonate.register(research_topic, retry_policy=WORKFLOW_RETRIES)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"research-pipeline worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()
        await agents.client.close()


if __name__ == "__main__":
    asyncio.run(main())
