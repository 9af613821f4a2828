"""`python -m tests.chaos_mutant_workers`: the saga's worker with one bug on purpose, for
tests/test_chaos.py: its provider calls send no Idempotency-Key, so a step run again after a
crash books again, and no booking names the trip it was made for."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from resonate.context import Context
from saga import steps, worker


async def _post_without_key(ctx: Context, path: str, body: dict[str, Any]) -> httpx.Response:
    providers = ctx.get_dependency(steps.Providers)
    response = await providers.client.post(path, json=body)
    if response.is_server_error or response.status_code in (408, 429):
        raise steps.ProviderUnavailableError(f"{path}: {response.status_code}", ctx.info.id)
    return response


steps._post = _post_without_key  # the bug: the steps call this instead of the keyed POST

if __name__ == "__main__":
    asyncio.run(worker.main())
