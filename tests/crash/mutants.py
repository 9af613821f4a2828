"""A worker for the receiving-system and stall self-tests: `python -m tests.crash.mutants`.

Two steps per workflow: a flight booked at the provider sandbox, then a row written to a SQLite
file in the worker's directory. `book` does both idempotently; each mutant breaks one of them the
way a real bug would, so that only the receiving system can tell:
  book_without_key   the flight call carries no Idempotency-Key (the issue's saga variant)
  book_appending     the row is appended on every attempt instead of inserted once
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from cookbook import clients
from resonate.context import Context
from resonate.resonate import Resonate

ROWS_DB = Path("bookings.db")


async def reserve_flight(ctx: Context, keyed: bool) -> str:
    headers = {"Idempotency-Key": ctx.info.id} if keyed else {}
    async with clients.async_client(base_url=os.environ["PROVIDER_API_URL"]) as provider:
        response = await provider.post(
            "/flight/reserve", json={"origin": "LHR", "destination": "LIS"}, headers=headers
        )
    response.raise_for_status()
    confirmation: str = response.json()["id"]
    return confirmation


def _write_row(booking: str, confirmation: str, once: bool) -> None:
    with closing(sqlite3.connect(ROWS_DB, isolation_level=None)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS bookings (booking TEXT, confirmation TEXT)")
        if once:
            db.execute(
                "INSERT INTO bookings SELECT ?, ?"
                " WHERE NOT EXISTS (SELECT 1 FROM bookings WHERE booking = ?)",
                (booking, confirmation, booking),
            )
        else:
            db.execute("INSERT INTO bookings VALUES (?, ?)", (booking, confirmation))


async def record_booking(ctx: Context, confirmation: str, once: bool) -> None:
    await asyncio.to_thread(_write_row, ctx.info.origin_id, confirmation, once)


async def _book(ctx: Context, keyed: bool, once: bool) -> str:
    confirmation = await ctx.run(reserve_flight, keyed)
    await ctx.run(record_booking, confirmation, once)
    return confirmation


async def book(ctx: Context) -> str:
    return await _book(ctx, keyed=True, once=True)


async def book_without_key(ctx: Context) -> str:
    return await _book(ctx, keyed=False, once=True)


async def book_appending(ctx: Context) -> str:
    return await _book(ctx, keyed=True, once=False)


async def main() -> None:
    resonate = Resonate(
        url=os.environ["RESONATE_URL"],
        group="receivers-selftest",
        ttl=timedelta(seconds=float(os.environ.get("RESONATE_TTL_SECONDS", "5"))),
    )
    for workflow in (book, book_without_key, book_appending):
        resonate.register(workflow)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"test worker {os.getpid()} ready", flush=True)
    await stop.wait()
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
