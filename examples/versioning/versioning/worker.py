"""`python -m versioning.worker`: a worker process that executes `renewal` workflows until stopped.

Everything it needs comes from the environment, so the same code runs against the cookbook's dev
server and the official Resonate server:
  RESONATE_URL          the Resonate server (required)
  RESONATE_GROUP        the worker group clients send work to (default: versioning)
  RESONATE_TTL_SECONDS  task lease; a dead worker's renewals move on after at most this long
  RENEWAL_VERSIONS      the versions of `renewal` this deploy runs, e.g. "1,2" (the default: all
                        of versioning.workflow.VERSIONS); the demo deploys "1", then "1,2", then
                        "2", as a team would over three releases
  PROVIDER_API_URL      the payment, fraud and email providers the steps call
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta

import httpx
from resonate.resonate import Resonate

from versioning.steps import Providers, Server
from versioning.workflow import NAME, VERSIONS, WORKFLOW_RETRIES

GROUP = "versioning"


def deployed_versions(setting: str | None) -> list[int]:
    """The versions named by RENEWAL_VERSIONS; every known one when it is not set."""
    if setting is None or not setting.strip():
        return sorted(VERSIONS)
    try:
        versions = sorted({int(v) for v in setting.split(",")})
    except ValueError:
        sys.exit(f"versioning.worker: RENEWAL_VERSIONS={setting!r} is not a list like '1,2'")
    if unknown := [v for v in versions if v not in VERSIONS]:
        sys.exit(f"versioning.worker: RENEWAL_VERSIONS names unknown versions {unknown}")
    return versions


def register_versions(resonate: Resonate, versions: list[int]) -> None:
    """Register each deployed version's body under the one name: `renewal` v1, v2, ..."""
    for version in versions:
        resonate.register(
            VERSIONS[version], name=NAME, version=version, retry_policy=WORKFLOW_RETRIES
        )


async def main() -> None:
    if not os.environ.get("RESONATE_URL"):
        sys.exit(
            "versioning.worker: RESONATE_URL is not set (start a server, or `make run-versioning`)"
        )
    versions = deployed_versions(os.environ.get("RENEWAL_VERSIONS"))
    async with httpx.AsyncClient(
        base_url=os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100"), timeout=10
    ) as client:
        resonate = Resonate(
            url=os.environ["RESONATE_URL"],
            group=os.environ.get("RESONATE_GROUP", GROUP),
            ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "30"))),
        )
        resonate.with_dependency(Providers(client))
        resonate.with_dependency(Server(resonate))
        register_versions(resonate, versions)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        shown = ", ".join(str(v) for v in versions)
        print(f"versioning worker {os.getpid()} ready (renewal versions {shown})", flush=True)
        await stop.wait()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
