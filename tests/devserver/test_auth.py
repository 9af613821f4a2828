"""Opt-in bearer-token auth: with tokens, nothing passes without one; without, nothing changes."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.devserver.__main__ import parse_args
from cookbook.devserver.app import DevServer, DevServerConfig
from cookbook.devserver.auth import TOKENS_ENV
from cookbook.testing.fixtures import DevServerFactory, ProcessFactory
from resonate.error import ServerError
from resonate.resonate import Resonate

WORKER = "tests.devserver.workflows"
TOKEN = "s3cret-" + "a" * 24
OTHER_TOKEN = "second-" + "b" * 24


def _create(promise_id: str) -> bytes:
    envelope = {
        "kind": "promise.create",
        "head": {"corrId": "c-auth", "version": "2026-04-01"},
        "data": {"id": promise_id, "timeoutAt": 2**53, "param": {}, "tags": {}},
    }
    return json.dumps(envelope).encode()


def _get(promise_id: str) -> bytes:
    envelope = {
        "kind": "promise.get",
        "head": {"corrId": "c-get", "version": "2026-04-01"},
        "data": {"id": promise_id},
    }
    return json.dumps(envelope).encode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_401(response: httpx.Response, kind: Any = None, corr_id: Any = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    envelope = response.json()
    assert envelope["kind"] == kind
    assert envelope["head"]["corrId"] == corr_id
    assert envelope["head"]["status"] == 401
    assert "unauthorized" in envelope["data"]["error"]


@pytest.mark.parametrize(
    "headers",
    [{}, _bearer("wrong-token"), {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
def test_without_a_valid_token_every_endpoint_answers_401_and_nothing_changes(
    start_devserver: DevServerFactory, headers: dict[str, str]
) -> None:
    server = start_devserver(tokens=[TOKEN, OTHER_TOKEN])
    before = server.state()
    promise_id = f"auth-{secrets.token_hex(3)}"

    _assert_401(
        clients.post(f"{server.url}/", content=_create(promise_id), headers=headers),
        "promise.create",
        "c-auth",
    )
    _assert_401(clients.get(f"{server.url}/poll/intruders/pid-1", headers=headers))
    _assert_401(clients.get(f"{server.url}/_cookbook/state", headers=headers))
    _assert_401(clients.get(f"{server.url}/_cookbook/health", headers=headers))
    wire = {"operation": "create", "promise_id": promise_id, "victim": "server"}
    _assert_401(clients.post(f"{server.url}/_cookbook/tripwires", json=wire, headers=headers))

    assert server.state() == before
    authorized = _bearer(OTHER_TOKEN)  # any of the configured tokens is accepted
    answer = clients.post(f"{server.url}/", content=_get(promise_id), headers=authorized).json()
    assert answer["head"]["status"] == 404, "the refused create must not have happened"
    health = clients.get(f"{server.url}/_cookbook/health", headers=authorized).json()
    assert health["subscribers"] == [], "the refused stream must not have subscribed"
    tripwires = clients.get(f"{server.url}/_cookbook/tripwires", headers=authorized).json()
    assert tripwires["armed"] == []

    server.process.stop()
    logged = [line for line in server.process.output if " 401 " in line]
    assert any("POST / " in line for line in logged), server.process.tail()
    assert any("GET /poll/intruders/pid-1 " in line for line in logged), server.process.tail()
    assert not any(TOKEN in line for line in server.process.output), "tokens are never logged"


def test_a_worker_and_a_client_with_the_token_run_a_workflow(
    start_devserver: DevServerFactory, start_worker: ProcessFactory
) -> None:
    server = start_devserver(tokens=[TOKEN])
    start_worker(WORKER, {"RESONATE_URL": server.url, "RESONATE_TOKEN": TOKEN})

    async def run() -> tuple[int, ServerError]:
        client = Resonate(url=server.url, group="devserver-tests-client", token=TOKEN)
        intruder = Resonate(url=server.url, group="devserver-tests-intruder")
        try:
            handle = client.options(target="devserver-tests").rpc(
                f"authed-{secrets.token_hex(3)}", "count", 3
            )
            value: int = await asyncio.wait_for(handle.result(), 20)
            # The SDK surfaces the refusal as the 401 it is, not as a protocol error.
            with pytest.raises(ServerError) as refused:
                await asyncio.wait_for(intruder.promises.get("anything"), 10)
            return value, refused.value
        finally:
            await client.stop()
            await intruder.stop()

    value, refused = asyncio.run(run())
    assert value == sum(range(3))
    assert refused.code == 401


def test_the_token_is_never_written_to_the_log(
    start_devserver: DevServerFactory, start_worker: ProcessFactory
) -> None:
    # SDK 0.8.1 repeats the token in the envelope a task.fence nests; the log must not keep it.
    server = start_devserver(tokens=[TOKEN])
    start_worker(WORKER, {"RESONATE_URL": server.url, "RESONATE_TOKEN": TOKEN})

    async def run() -> int:
        client = Resonate(url=server.url, group="devserver-tests-client", token=TOKEN)
        try:
            handle = client.options(target="devserver-tests").rpc(
                f"unlogged-{secrets.token_hex(3)}", "count", 3
            )
            value: int = await asyncio.wait_for(handle.result(), 20)
            return value
        finally:
            await client.stop()

    assert asyncio.run(run()) == sum(range(3))
    log = (server.data_dir / "wal.jsonl").read_bytes()
    assert b'"task.fence"' in log
    assert TOKEN.encode() not in log


def test_without_tokens_the_server_stays_open(start_devserver: DevServerFactory) -> None:
    server = start_devserver()
    promise_id = f"open-{secrets.token_hex(3)}"
    for headers in ({}, _bearer("anything")):
        answer = clients.post(f"{server.url}/", content=_get(promise_id), headers=headers)
        assert answer.status_code == 200
        assert answer.json()["head"]["status"] == 404
        assert clients.get(f"{server.url}/_cookbook/health", headers=headers).status_code == 200


def test_tokens_come_from_flags_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    assert parse_args([])[0].tokens == ()
    assert parse_args([])[0].host == "127.0.0.1"
    assert parse_args(["--token", "a", "--token", "b"])[0].tokens == ("a", "b")
    monkeypatch.setenv(TOKENS_ENV, " c, ,d ")
    assert parse_args(["--token", "a"])[0].tokens == ("a", "c", "d")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "devbox.example"])
def test_a_reachable_host_without_a_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    monkeypatch.delenv(TOKENS_ENV, raising=False)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--host", host])
    assert exited.value.code == 2
    assert f"refusing to listen on {host} without auth" in capsys.readouterr().err
    assert parse_args(["--host", host, "--token", TOKEN])[0].host == host
    assert parse_args(["--host", "localhost"])[0].host == "localhost"


def test_an_embedded_server_on_a_reachable_host_without_a_token_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="without a token"):
        DevServer(DevServerConfig(data_dir=tmp_path, host="0.0.0.0"))
    DevServer(DevServerConfig(data_dir=tmp_path, host="0.0.0.0", tokens=(TOKEN,)))


@pytest.mark.parametrize("key", ["auth", "\\u0061uth"], ids=["plain", "escaped"])
def test_a_nested_token_is_never_logged_however_its_key_is_spelled(
    tmp_path: Path, key: str
) -> None:
    # JSON may spell a key with escapes; the server skips its credential walk for a body with
    # neither the word nor a backslash in it, so an escaped `auth` must still be found.
    body = (
        '{"kind":"promise.create","head":{"corrId":"c-nested","version":"2026-04-01"},'
        '"data":{"id":"nested","timeoutAt":9007199254740992,"tags":{},'
        f'"param":{{"head":{{"{key}":"Bearer {TOKEN}"}}}}}}}}'
    ).encode()

    async def post() -> None:
        server = DevServer(DevServerConfig(data_dir=tmp_path / "data"))
        url = await server.start()
        try:
            async with clients.async_client(base_url=url) as client:
                answer = (await client.post("/", content=body)).json()
            assert answer["head"]["status"] == 201, answer
        finally:
            await server.stop()

    asyncio.run(post())

    written = b"".join(f.read_bytes() for f in (tmp_path / "data").rglob("*") if f.is_file())
    assert b"c-nested" in written
    assert TOKEN.encode() not in written
