"""recursive-factorial end to end: a real dev server and worker processes of one group."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer
from recursive_factorial.steps import MAX_N, InvalidInputError, level_id, validate
from recursive_factorial.workflow import ask
from resonate.resonate import Resonate


@pytest.fixture
def resonate_url(devserver: RunningDevServer, start_worker: ProcessFactory) -> str:
    # Two workers in the group: a level and the one below it may run on either.
    for name in ("worker-1", "worker-2"):
        start_worker("recursive_factorial.worker", {"RESONATE_URL": devserver.url}, name=name)
    return devserver.url


def with_client[T](url: str, body: Callable[[Resonate], Awaitable[T]]) -> T:
    async def go() -> T:
        client = Resonate(url=url, group="recursive-factorial-tests")
        try:
            return await asyncio.wait_for(body(client), 60)
        finally:
            await client.stop()

    return asyncio.run(go())


def factorial_of(url: str, n: int) -> str:
    async def body(client: Resonate) -> str:
        return await ask(client, n)

    return with_client(url, body)


def journal_since(devserver: RunningDevServer, origin: str, after: int) -> list[dict[str, Any]]:
    return [e for e in devserver.journal(origin) if int(str(e["seq"])) > after]


def last_seq(devserver: RunningDevServer) -> int:
    page = clients.get(f"{devserver.url}/_cookbook/journal", params={"after": 0}).json()
    return int(page["last_seq"])


def test_a_second_request_reuses_the_levels_below_from_the_store(
    resonate_url: str, devserver: RunningDevServer
) -> None:
    assert factorial_of(resonate_url, 10) == str(math.factorial(10))
    before_twelve = last_seq(devserver)

    assert factorial_of(resonate_url, 12) == str(math.factorial(12))

    # Every level ran its step once in all: one ask for the level below, one result.
    for n in range(2, 13):
        entries = devserver.journal(level_id(n))
        asks = [
            e
            for e in entries
            if e["operation"] == "create" and e["promise_id"] == f"{level_id(n)}:1"
        ]
        settles = [
            e for e in entries if e["operation"] == "settle" and e["promise_id"] == level_id(n)
        ]
        assert (len(asks), len(settles)) == (1, 1), (n, entries)
    # 12! computed 12 and 11; level 11 attached to 10! (one create answered from the store), and
    # nothing below 10 was touched at all.
    attached = journal_since(devserver, level_id(10), before_twelve)
    assert [(e["operation"], e["promise_id"]) for e in attached] == [("create", level_id(10))]
    for n in range(1, 10):
        assert journal_since(devserver, level_id(n), before_twelve) == [], n


def test_200_factorial_is_exact_and_stored_as_a_decimal_string(
    resonate_url: str, devserver: RunningDevServer
) -> None:
    result = factorial_of(resonate_url, 200)

    # The stored bytes, read the way a reader that parses JSON numbers as doubles would
    # (JavaScript, jq): a JSON number of 375 digits reads as inf; a decimal string keeps them all.
    assert stored_as_a_double_reader_sees_it(devserver, level_id(200)) == str(math.factorial(200))
    assert result == str(math.factorial(200))


def stored_as_a_double_reader_sees_it(devserver: RunningDevServer, promise_id: str) -> object:
    promises = devserver.state(promise_id)["promises"]
    assert isinstance(promises, list)
    (record,) = (p for p in promises if p["id"] == promise_id)
    return json.loads(base64.b64decode(record["value"]["data"]), parse_int=float)


@pytest.mark.parametrize(
    ("n", "reason"),
    [
        (-1, "n: must be 0 or more, got -1"),
        (2.5, "n: must be a whole number, got 2.5"),
        ("7", "n: must be a whole number, got '7'"),
        (True, "n: must be a whole number, got True"),
        (MAX_N + 1, f"n: at most {MAX_N}"),
    ],
)
def test_a_bad_n_is_refused_before_anything_is_created(
    devserver: RunningDevServer, n: object, reason: str
) -> None:
    async def body(client: Resonate) -> None:
        with pytest.raises(InvalidInputError, match=reason):
            await ask(client, n)

    with_client(devserver.url, body)

    # Not one state-changing request reached the server: no promise, no task.
    assert last_seq(devserver) == 0


def test_validate_accepts_the_edges() -> None:
    assert validate(0) == 0
    assert validate(MAX_N) == MAX_N


def test_a_worker_killed_mid_chain_loses_no_level(
    devserver: RunningDevServer, start_worker: ProcessFactory
) -> None:
    # A short lease, so the survivor takes the dead worker's levels over in seconds.
    env = {"RESONATE_URL": devserver.url, "RESONATE_TTL_SECONDS": "2"}
    doomed = start_worker("recursive_factorial.worker", env, name="worker-1")
    # Killed as level 6 asks for 5: levels 10..7 are waiting on it, 5..1 do not exist yet.
    devserver.kill_at("create", f"{level_id(6)}:1", pid=doomed.pid)

    async def body(client: Resonate) -> str:
        pending = asyncio.ensure_future(ask(client, 10))
        await asyncio.to_thread(devserver.wait_for, "create", level_id(6))
        await asyncio.to_thread(doomed.wait, 30)
        start_worker("recursive_factorial.worker", env, name="worker-2")
        return await pending

    assert with_client(devserver.url, body) == str(math.factorial(10))
    for n in range(1, 11):
        settles = [
            e
            for e in devserver.journal(level_id(n))
            if e["operation"] == "settle" and e["promise_id"] == level_id(n)
        ]
        assert len(settles) == 1, n
