"""`python -m recursive_factorial.demo`: 10!, then 12! reusing 10..1, then 200!, then a bad n."""

from __future__ import annotations

import asyncio
import os
import time

from resonate.error import ServerError
from resonate.resonate import Resonate

from recursive_factorial.steps import InvalidInputError, level_id
from recursive_factorial.workflow import ask


async def created_at(resonate: Resonate, n: int) -> int | None:
    """When the server created the promise of n! (ms), or None if it does not exist."""
    try:
        return (await resonate.promises.get(level_id(n))).created_at
    except ServerError:
        return None


async def request(resonate: Resonate, n: int) -> str:
    before = {k: await created_at(resonate, k) for k in range(1, n + 1)}
    started = time.monotonic()
    result = await ask(resonate, n)
    elapsed = time.monotonic() - started
    created = [k for k, at in before.items() if at is None]
    reused = [k for k, at in before.items() if at is not None]
    print(f"→ {level_id(n)}: {len(result)} digits in {elapsed:.2f}s")
    print(f"    computed now : {_ranges(created) or 'none'}")
    print(f"    read from the store: {_ranges(reused) or 'none'}")
    return result


def _ranges(levels: list[int]) -> str:
    if not levels:
        return ""
    return f"{len(levels)} level(s), {max(levels)}..{min(levels)}"


async def main() -> None:
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="recursive-factorial-clients")
    print("Each level n runs as the execution factorial-<n>: one promise per n, for every caller.")
    print(f"  10! = {await request(resonate, 10)}")
    print(f"  12! = {await request(resonate, 12)}")
    big = await request(resonate, 200)
    print(f"  200! = {big[:20]}...{big[-10:]} (carried as a decimal string, exact)")
    for bad in (-3, 2.5, 5000):
        try:
            await ask(resonate, bad)
        except InvalidInputError as exc:
            print(f"✗ refused before anything was created: {exc}")
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
