"""`python -m mutex.demo`: three report requests at once; the coordinator serves them in turn."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import closing

from resonate.resonate import Resonate

from mutex.steps import report_store

HOLDERS = ["ada", "grace", "linus"]


async def main() -> None:
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="mutex-clients")
    execution_id = f"mutex-{int(time.time())}"
    print(f"→ {len(HOLDERS)} waiters ask for the report generator at once: {', '.join(HOLDERS)}")
    print(f"  (execution {execution_id}: one coordinator workflow, one waiter workflow each)")
    handle = resonate.options(target="mutex").rpc(execution_id, "contend", HOLDERS, 600, 0.5)
    result = await handle.result()
    await resonate.stop()
    print(f"✓ every waiter finished: {result['uses']}")
    print("  the generator's own records (one row per use, from its SQLite file):")
    with closing(report_store().connect()) as db:
        rows = db.execute(
            "SELECT turn, holder, started_at, finished_at, status FROM uses"
            " WHERE mutex = ? ORDER BY turn",
            (result["mutex"],),
        ).fetchall()
    _print_uses(rows)


def _print_uses(rows: list[sqlite3.Row] | list[tuple[object, ...]]) -> None:
    first = float(str(rows[0][2])) if rows else 0.0
    previous_end = None
    overlaps = 0
    for turn, holder, started, finished, status in rows:
        start = float(str(started)) - first
        end = float(str(finished)) - first if finished is not None else None
        gap = (
            ""
            if previous_end is None
            else f"  (starts {start - previous_end:+.2f} s after the last end)"
        )
        shown_end = f"{end:6.2f}" if end is not None else "   ---"
        print(f"  turn {turn}: {holder:<6} {start:6.2f} s → {shown_end} s  {status}{gap}")
        if previous_end is not None and start < previous_end:
            overlaps += 1
        previous_end = end
    if overlaps:
        print(f"  ✗ {overlaps} use(s) started before the previous one ended")
    else:
        print("  no two uses overlap: each starts after the previous one ended")


if __name__ == "__main__":
    asyncio.run(main())
