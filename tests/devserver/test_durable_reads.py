"""Reads answer from durable state only: nothing is shown before it is on disk.

A request's change is applied in memory, then waits for its fsync (shared with other requests).
A read served in between must not show that change before the fsync covers it: if the server
died right then, the reader would have seen a promise that never existed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cookbook import clients
from cookbook.devserver.app import DevServer, DevServerConfig

PROMISE_ID = "not-yet-on-disk"


async def _read_while_a_create_awaits_its_fsync(
    data_dir: Path, read: tuple[str, str, dict[str, Any] | None], monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, int, int]:
    """(the read's answer, the log position of the create, how far the log was durable then)."""
    server = DevServer(DevServerConfig(data_dir=data_dir))
    url = await server.start()
    durable_up_to = 0
    real_durable = server.state.wal.durable

    async def recording_durable(seq: int) -> None:
        nonlocal durable_up_to
        await real_durable(seq)
        durable_up_to = max(durable_up_to, seq)

    monkeypatch.setattr(server.state.wal, "durable", recording_durable)
    try:
        # What the request handler does before it awaits the fsync of its record.
        created = server.state.apply(
            {"kind": "promise.create", "corrId": "c", "id": PROMISE_ID, "timeoutAt": 2**62}
        )
        method, path, body = read
        async with clients.async_client(base_url=url) as client:
            response = await client.request(method, path, json=body)
        return response.json(), created.log_seq, durable_up_to
    finally:
        await server.stop()


SEARCH = {
    "kind": "promise.search",
    "head": {"corrId": "s", "version": "2026-04-01"},
    "data": {"tags": {}, "limit": 100},
}


@pytest.mark.parametrize(
    "read",
    [
        ("POST", "/", SEARCH),
        ("GET", "/_cookbook/state", None),
        ("GET", f"/_cookbook/journal?origin={PROMISE_ID}", None),
    ],
    ids=["promise.search", "inspection-state", "inspection-journal"],
)
def test_a_read_shows_a_change_only_once_it_is_on_disk(
    tmp_path: Path, read: tuple[str, str, dict[str, Any] | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    answer, created_at, durable_when_answered = asyncio.run(
        _read_while_a_create_awaits_its_fsync(tmp_path / "data", read, monkeypatch)
    )

    assert PROMISE_ID in str(answer)  # the read saw the change...
    assert durable_when_answered >= created_at  # ...and answered only after it was on disk
