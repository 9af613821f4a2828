"""`python -m versioning.demo`: three releases of the renewal workflow, with renewals in flight.

Release 1 runs version 1. Two renewals start on it and sleep until they fall due. Release 2
(versions 1 and 2) replaces it while they sleep: they wake on it and finish on version 1, while
new renewals start on version 2. Once no renewal runs on version 1, release 3 drops it.

The demo deploys each release as its own worker process, in a group of its own
(`versioning-releases`), so that it can stop one and start the next.
Environment: RESONATE_URL, PROVIDER_API_URL (as `make run-versioning` sets them).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Protocol

from resonate.resonate import Resonate

from versioning.inflight import in_flight
from versioning.steps import Subscription
from versioning.workflow import CURRENT_VERSION, NAME, Renewal

GROUP = "versioning-releases"
# Long enough for release 2 to be up before the version-1 renewals fall due.
FALLS_DUE_IN_SECONDS = 5
# Right after a renewal's timer exists, its worker asks the server to wake it (the task's
# suspend), and nothing public says when that has landed. The SDK's stop() closes its connection
# before it joins its work, so a worker stopped in between fails that request and logs it with a
# traceback (harmless: release 2 takes the renewal over). It takes milliseconds on a quiet
# machine; the demo waits this long before it stops release 1, for a loaded one.
SUSPEND_GRACE_SECONDS = 1.0


class Handle(Protocol):
    """What the demo uses of the handle `rpc` returns."""

    async def id(self) -> str: ...

    async def result(self) -> Any: ...


class Release:
    """One deploy: a worker process running these versions of `renewal`, stopped by its pid."""

    def __init__(self, number: int, versions: str) -> None:
        self.name = f"release-{number}"
        env = {**os.environ, "RESONATE_GROUP": GROUP, "RENEWAL_VERSIONS": versions}
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "versioning.worker"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._relay, daemon=True).start()
        if not self.ready.wait(30):
            self.stop()
            sys.exit(f"{self.name}: its worker did not start")

    def _relay(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"  {self.name} | {line.rstrip()}", flush=True)
            if " ready " in line:
                self.ready.set()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def subscription(renews_in_seconds: int) -> Subscription:
    # The subscription id (in the renewal's id) and the customer reference are stored on the
    # Resonate server, so neither spells who the customer is: random references, which only the
    # providers resolve. The demo names the customers in what it prints, never in what it sends.
    return Subscription(
        subscription_id=f"sub-{secrets.token_hex(4)}",
        # A reference, never the address: the email provider looks the customer up by it.
        customer_id=f"cus_{secrets.token_hex(6)}",
        plan="pro-monthly",
        amount_cents=1200,
        currency="EUR",
        renews_in_seconds=renews_in_seconds,
    )


def start(resonate: Resonate, name: str, who: Subscription, version: int, period: str) -> Handle:
    renewal_id = f"renewal.{who.subscription_id}.{period}"
    print(f"→ start {renewal_id} ({name}'s renewal) on version {version}", flush=True)
    # The timeout covers the sleep until the renewal falls due, and then some.
    options = resonate.options(target=GROUP, version=version, timeout=timedelta(days=40))
    return options.rpc(renewal_id, NAME, asdict(who))


async def asleep(resonate: Resonate, renewal_id: str) -> None:
    """Return once the renewal sleeps in the server: its timer, a promise the SDK tags
    `resonate:timer` under the renewal's id as origin, is pending. Stopped before that, release 1
    would be stopped in the middle of a step (harmless, but not the story the demo tells)."""
    timer = {"resonate:origin": renewal_id, "resonate:timer": "true"}
    while True:
        if (await resonate.promises.search("pending", timer, 1, None)).promises:
            return
        await asyncio.sleep(0.05)  # the server pushes nothing for this: ask again shortly


async def show(handle: Handle) -> None:
    renewal_id, renewal = await handle.id(), Renewal(**await handle.result())
    detail = renewal.charge or renewal.reason
    body = "no fraud check" if renewal.version == 1 else "fraud check first"
    print(
        f"✓ {renewal_id}: {renewal.outcome} ({detail}) on version {renewal.version}: {body}",
        flush=True,
    )


async def main() -> None:
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="versioning-clients")
    period = str(int(time.time()))
    release: Release | None = None
    try:
        print(f"· the demo deploys its own releases, in group '{GROUP}'", flush=True)
        print("· release 1 is deployed: renewal version 1 only", flush=True)
        release = Release(1, "1")
        sleeping = [
            start(resonate, name, subscription(FALLS_DUE_IN_SECONDS), 1, period)
            for name in ("Ada", "Bob")
        ]
        async with asyncio.timeout(30):  # well under a second, on a quiet machine
            for handle in sleeping:
                await asleep(resonate, await handle.id())
        await asyncio.sleep(SUSPEND_GRACE_SECONDS)
        ids = await in_flight(resonate, 1)
        print(f"· in flight on version 1, found by their markers' tag: {ids}", flush=True)

        release.stop()
        print("· release 1 stopped: both renewals sleep on in the server; no worker holds them")
        print("· release 2 is deployed: versions 1 and 2; new renewals start on version 2")
        release = Release(2, "1,2")
        started = start(resonate, "Cyd", subscription(1), CURRENT_VERSION, period)
        for handle in [*sleeping, started]:
            await show(handle)

        ids = await in_flight(resonate, 1)
        print(f"· in flight on version 1: {ids or 'none'}, so version 1 can go", flush=True)
        release.stop()
        print("· release 3 is deployed: version 2 only", flush=True)
        release = Release(3, "2")
        await show(start(resonate, "Dee", subscription(1), CURRENT_VERSION, period))
        # Asked before the demo stops release 3, and not only for the story: the SDK's stop()
        # closes its connection before it joins its work, so a worker stopped the moment its
        # result is seen can lose the answer to its last request (harmless: the server had
        # committed it, but the worker logs an error). One round trip to the server first means
        # that answer is already in the worker's socket.
        ids = await in_flight(resonate, CURRENT_VERSION)
        print(f"· in flight on version 2: {ids or 'none'}; the demo ends", flush=True)
    finally:
        if release is not None:
            release.stop()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
