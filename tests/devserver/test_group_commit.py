"""Group commit: concurrent requests share an fsync, and none is answered before it is durable.

The log's fsync is also made slow here (a loaded disk: 20 ms), so that requests pile up behind
it and share the next one, and an answer sent before its fsync would be seen.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cookbook import clients
from cookbook.devserver.app import DevServer, DevServerConfig

CONCURRENT_REQUESTS = 40


def _durable_part(durable_bytes: dict[str, int]) -> bytes:
    """What the fsyncs so far made durable, read at once: the check must not let the loop run."""
    return b"".join(Path(path).read_bytes()[:size] for path, size in durable_bytes.items())


async def _concurrent_creates(
    data_dir: Path, fsync_seconds: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[str], int]:
    """(requests answered, those answered before their record was durable, fsyncs of the log)."""
    durable_bytes: dict[str, int] = {}  # log file -> how many of its bytes an fsync covered
    log_fsyncs = 0
    real_fsync = os.fsync

    def slow_recording_fsync(fd: int) -> None:
        nonlocal log_fsyncs
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            real_fsync(fd)
            return
        # Only what was written before the fsync began is sure to be covered by it.
        covered = info.st_size
        time.sleep(fsync_seconds)
        real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        durable_bytes[path] = max(durable_bytes.get(path, 0), covered)
        log_fsyncs += 1

    answered: list[str] = []
    early: list[str] = []
    real_prepare = web.Response.prepare

    async def checking_prepare(self: web.Response, request: web.BaseRequest) -> Any:
        if request.method == "POST" and request.path == "/":
            corr_id = json.loads(await request.read())["head"]["corrId"]
            on_disk = _durable_part(durable_bytes)
            answered.append(corr_id)
            if f'"corrId":"{corr_id}"'.encode() not in on_disk:
                early.append(corr_id)
        return await real_prepare(self, request)

    server = DevServer(DevServerConfig(data_dir=data_dir))
    url = await server.start()
    monkeypatch.setattr(os, "fsync", slow_recording_fsync)
    monkeypatch.setattr(web.Response, "prepare", checking_prepare)
    fsyncs_before = log_fsyncs
    try:
        async with clients.async_client(base_url=url, timeout=30) as client:

            async def create(i: int) -> None:
                envelope = {
                    "kind": "promise.create",
                    "head": {"corrId": f"create-{i}", "version": "2026-04-01"},
                    "data": {"id": f"promise-{i}", "timeoutAt": 2**62, "param": {}, "tags": {}},
                }
                response = await client.post("/", json=envelope)
                assert response.json()["head"]["status"] == 201, response.text

            await asyncio.gather(*(create(i) for i in range(CONCURRENT_REQUESTS)))
        return answered, early, log_fsyncs - fsyncs_before
    finally:
        monkeypatch.undo()
        await server.stop()


@pytest.mark.parametrize("fsync_seconds", [0.0, 0.02], ids=["fast-disk", "slow-disk"])
def test_no_request_is_answered_before_its_record_is_fsynced(
    tmp_path: Path, fsync_seconds: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered, early, _ = asyncio.run(
        _concurrent_creates(tmp_path / "data", fsync_seconds, monkeypatch)
    )

    assert len(answered) == CONCURRENT_REQUESTS
    assert early == []


def test_concurrent_requests_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, fsyncs = asyncio.run(_concurrent_creates(tmp_path / "data", 0.02, monkeypatch))

    # One fsync per request would be 40; requests that arrive during an fsync share the next.
    assert 1 <= fsyncs <= CONCURRENT_REQUESTS // 4
