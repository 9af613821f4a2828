"""`python -m k8s_drain.worker`: a worker process that executes `drain` workflows until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's
dev server and stand-ins, and against the official Resonate server and a real cluster:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: k8s-drain)
  RESONATE_TTL_SECONDS  task lease; a dead worker's work moves on after at most this long
  KUBE_API_URL          the Kubernetes API without authentication: the cookbook's stand-in, or
                        `kubectl proxy`; unset: KUBECONFIG, ~/.kube/config, or in-cluster
  PROVIDER_API_URL      the chat provider that pages the operator
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from kubernetes.aio.config import ConfigException
from resonate.resonate import Resonate

from k8s_drain.steps import Cluster, Pager, Questions
from k8s_drain.workflow import WORKFLOW_RETRY, drain, drain_node

GROUP = "k8s-drain"


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit("k8s_drain.worker: RESONATE_URL is not set (or use `make run-k8s-drain`)")
    try:
        cluster = await Cluster.connect()
    except ConfigException as exc:
        sys.exit(f"k8s_drain.worker: no Kubernetes API (set KUBE_API_URL or KUBECONFIG): {exc}")
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as pager:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(cluster)
        resonate.with_dependency(Pager(pager))
        resonate.with_dependency(Questions(resonate))
        # Explicitly never retried as a whole (see WORKFLOW_RETRY); their steps have their own.
        resonate.register(drain, retry_policy=WORKFLOW_RETRY)
        resonate.register(drain_node, retry_policy=WORKFLOW_RETRY)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print(f"k8s-drain worker {os.getpid()} ready", flush=True)
        await stop.wait()
        await resonate.stop()
    await cluster.close()


if __name__ == "__main__":
    asyncio.run(main())
