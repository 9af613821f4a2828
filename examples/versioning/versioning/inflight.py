"""`python -m versioning.inflight <version>`: the renewals still running on a version.

Before a deploy drops a version, an operator asks this: a version may go once no renewal runs on
it. It reads the version markers the renewals keep (versioning.steps.mark_version) through the
server's promise search, by the tags this example chose: no id is parsed.

Environment: RESONATE_URL (required).
"""

from __future__ import annotations

import asyncio
import os
import sys

from resonate.resonate import Resonate

from versioning.steps import RENEWAL_TAG, VERSION_TAG

PAGE = 100


async def in_flight(resonate: Resonate, version: int) -> list[str]:
    """The ids of the renewals started on `version` and still running: marker and renewal pending.

    A renewal marks its version in its first step, so one that no worker has begun yet is not
    listed: switch every starter to the new version first, then ask (see the README).
    """
    renewals: list[str] = []
    cursor: str | None = None
    while True:
        page = await resonate.promises.search("pending", {VERSION_TAG: str(version)}, PAGE, cursor)
        for marker in page.promises:
            renewal_id = marker.tags[RENEWAL_TAG]
            # A renewal settles its marker when it ends with an outcome. One that failed (a
            # provider down through every retry) or was cancelled leaves it pending until its
            # deadline; it needs no code any more, so its own promise has the last word.
            if (await resonate.promises.get(renewal_id)).state == "pending":
                renewals.append(renewal_id)
        if not page.cursor:
            return sorted(renewals)
        cursor = page.cursor


async def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m versioning.inflight <version>", file=sys.stderr)
        return 2
    if not os.environ.get("RESONATE_URL"):
        print("versioning.inflight: RESONATE_URL is not set", file=sys.stderr)
        return 2
    version = int(argv[0])
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="versioning-operators")
    try:
        renewals = await in_flight(resonate, version)
    finally:
        await resonate.stop()
    for renewal_id in renewals:
        print(renewal_id)
    print(f"{len(renewals)} renewal(s) in flight on version {version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
