"""`python -m faas_router.worker`: the router, the executors, or both in one process.

Environment: RESONATE_URL (required), FAAS_ROLE (router, executor or all; default all),
RESONATE_TTL_SECONDS, PROVIDER_API_URL.

A `Resonate` instance belongs to one worker group, so a process that serves both groups (the
default, used by `make run-faas-router` and the crash harness) holds two instances: one in the
router's group, one in the executors' group. In production run them apart: a few router
processes with FAAS_ROLE=router and as many executors (FAAS_ROLE=executor) as the load needs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate
from resonate.retry import Exponential, Never

from faas_router.steps import Providers, record_audit, thumbnail, transcode
from faas_router.workflow import EXECUTORS, process_video

ROUTER = "faas-router"
ROLES = ("router", "executor", "all")

# An executor call whose provider is down gets 4 more attempts, 2, 4, 8 and 16 s apart (about
# 30 s, enough to ride out a provider restart or a burst of 503s); then the call fails and the
# router sees the error where it awaits the call. A refusal is never retried: it is returned.
EXECUTOR_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)


def router(url: str, ttl: timedelta) -> Resonate:
    resonate = Resonate(url=url, group=ROUTER, ttl=ttl)
    # The orchestration is never retried as a whole: its calls are retried on the executors.
    resonate.register(process_video, retry_policy=Never())
    return resonate


def executor(url: str, ttl: timedelta, providers: Providers) -> Resonate:
    resonate = Resonate(url=url, group=EXECUTORS, ttl=ttl)
    resonate.with_dependency(providers)
    for function in (thumbnail, transcode, record_audit):
        resonate.register(function, retry_policy=EXECUTOR_RETRIES)
    return resonate


async def main() -> None:
    url = os.environ.get("RESONATE_URL")
    if not url:
        sys.exit("faas_router.worker: RESONATE_URL is not set (or run `make run-faas-router`)")
    role = os.environ.get("FAAS_ROLE", "all")
    if role not in ROLES:
        sys.exit(f"faas_router.worker: FAAS_ROLE must be one of {', '.join(ROLES)}, not {role!r}")
    ttl = timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30")))
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        instances: list[Resonate] = []
        if role in ("router", "all"):
            instances.append(router(url, ttl))
        if role in ("executor", "all"):
            instances.append(executor(url, ttl, Providers(client)))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"faas-router worker {os.getpid()} ready as {role}", flush=True)
        await stop.wait()
        for instance in instances:
            await instance.stop()


if __name__ == "__main__":
    asyncio.run(main())
