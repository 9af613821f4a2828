"""encryption end to end: a real dev server, worker processes, the provider sandbox.

What the server holds is read where it lands: the dev server's data directory (its write-ahead
log) and its inspection endpoints, searched with every base64 string in them decoded too (the SDK
stores values as base64, so plaintext would hide there from a naive search; see
cookbook.testing.plaintext).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import threading
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.stack import worker_process
from cookbook.testing.fixtures import (
    ProcessFactory,
    RunningDevServer,
    RunningSandbox,
)
from cookbook.testing.plaintext import plaintext_found, what_the_server_holds
from encryption.crypto import AesGcmEncryptor, DecryptionError, KeyRing
from resonate.resonate import Resonate
from resonate.types import Value

CUSTOMER = {
    "name": "Grace Brewster Hopper",
    "email": "grace.hopper@navy.example",
    "address": "1 Arlington Ridge Road, Arlington VA",
    "card_fingerprint": "fp_7e3b90c2d51a",
}


def customer() -> dict[str, str]:
    """A customer whose every field is unique to this test, so any find is this test's."""
    marker = secrets.token_hex(3)
    return {field: f"{value} {marker}" for field, value in CUSTOMER.items()}


def execution_id() -> str:
    # An opaque account reference: ids are stored in plaintext, so they must not name anyone.
    return f"onboarding-{secrets.token_hex(4)}"


def worker_env(
    devserver: RunningDevServer, sandbox: RunningSandbox, ring: KeyRing
) -> dict[str, str]:
    return {
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": sandbox.url,
        "RESONATE_TTL_SECONDS": "2",
        "ENCRYPTION_KEYS": ring.to_json(),
    }


def with_client[T](url: str, ring: KeyRing, use: Callable[[Resonate], Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        client = Resonate(url=url, group="encryption-tests", encryptor=AesGcmEncryptor(ring))
        try:
            return await asyncio.wait_for(use(client), 30)
        finally:
            await client.stop()

    return asyncio.run(go())


def onboard(url: str, ring: KeyRing, eid: str, who: dict[str, str], delay: int = 0) -> Any:
    async def use(client: Resonate) -> Any:
        return await client.options(target="encryption").rpc(eid, "onboard", who, delay).result()

    return with_client(url, ring, use)


def promises_held(devserver: RunningDevServer) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], devserver.state()["promises"])


def key_id_of(value: dict[str, Any] | None) -> str | None:
    """The key id a stored value names (see crypto.py for the layout)."""
    data = (value or {}).get("data")
    if not data:
        return None
    sealed = base64.b64decode(data)
    return sealed[2 : 2 + sealed[1]].decode()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.new("2026-01")


@pytest.fixture
def resonate_url(
    devserver: RunningDevServer,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    ring: KeyRing,
) -> str:
    start_worker("encryption.worker", worker_env(devserver, sandbox, ring))
    return devserver.url


def test_no_personal_data_reaches_the_server_in_plaintext(
    resonate_url: str, devserver: RunningDevServer, sandbox: RunningSandbox, ring: KeyRing
) -> None:
    onboarded, refused, invalid = customer(), customer(), customer()
    invalid["email"] = invalid["email"].replace("@", " at ")
    ids = [execution_id() for _ in range(3)]
    response = clients.post(
        f"{sandbox.url}/_admin/faults",
        json={"provider": "api", "mode": "fail_always", "status": 422, "key_prefix": ids[1] + ":"},
    )
    response.raise_for_status()

    results = [
        onboard(resonate_url, ring, ids[0], onboarded),
        onboard(resonate_url, ring, ids[1], refused),
    ]
    with pytest.raises(ValueError, match="is not an email address") as error:
        onboard(resonate_url, ring, ids[2], invalid)

    # The client, which has the key, reads everything back: a result, a refusal, an error.
    assert [r["status"] for r in results] == ["onboarded", "refused"]
    assert results[0]["customer"] == onboarded
    assert invalid["email"] in str(error.value)
    # The server holds none of it: not in its log, not in what it answers.
    personal = [*onboarded.values(), *refused.values(), *invalid.values()]
    assert plaintext_found(what_the_server_holds(devserver, ids), personal) == []
    # ... and it did hold these executions, with their steps' values, all sealed.
    promises = [p for p in promises_held(devserver) if p["id"].startswith(tuple(ids))]
    sealed = [v for p in promises for v in (p["param"], p["value"]) if key_id_of(v)]
    assert len(promises) >= 6
    assert {key_id_of(v) for v in sealed} == {"2026-01"}


def test_the_search_finds_what_a_client_without_the_encryptor_leaves(
    devserver: RunningDevServer,
) -> None:
    """The check above is worth something: it finds plaintext under the SDK's base64."""
    who = customer()

    async def create_unsealed() -> None:
        client = Resonate(url=devserver.url, group="encryption-tests")  # no encryptor
        try:
            await client.promises.create("unsealed-1", 2**42, Value(data=who), {})
        finally:
            await client.stop()

    asyncio.run(create_unsealed())

    held = what_the_server_holds(devserver, ["unsealed-1"])
    assert plaintext_found(held, who.values()) == sorted(who.values())


def test_a_client_with_a_wrong_key_gets_a_clear_error_not_garbage(
    resonate_url: str, ring: KeyRing
) -> None:
    eid = execution_id()
    onboard(resonate_url, ring, eid, customer())
    same_id_other_bytes = KeyRing.new(ring.current)

    async def read(client: Resonate) -> Any:
        return await (await client.get(eid)).result()

    with pytest.raises(DecryptionError, match="'2026-01' failed authentication"):
        with_client(resonate_url, same_id_other_bytes, read)
    with pytest.raises(DecryptionError, match="sealed with key '2026-01', which this process"):
        with_client(resonate_url, KeyRing.new("2025-07"), read)


def test_a_tampered_value_in_the_server_is_rejected(
    devserver: RunningDevServer, ring: KeyRing
) -> None:
    class Tampering(AesGcmEncryptor):
        def encrypt(self, data: bytes) -> bytes:
            sealed = bytearray(super().encrypt(data))
            sealed[-1] ^= 0x01  # one bit of the authentication tag, on its way to the server
            return bytes(sealed)

    async def write(client: Resonate) -> None:
        await client.promises.create("tampered-1", 2**42, Value(data=customer()), {})

    async def read(client: Resonate) -> Any:
        return await client.promises.get("tampered-1")

    async def tampering_write() -> None:
        client = Resonate(url=devserver.url, group="encryption-tests", encryptor=Tampering(ring))
        try:
            with contextlib.suppress(DecryptionError):  # it reads back what it wrote: refused too
                await write(client)
        finally:
            await client.stop()

    asyncio.run(tampering_write())

    with pytest.raises(DecryptionError, match="or the stored bytes were altered"):
        with_client(devserver.url, ring, read)


def test_a_worker_with_a_wrong_key_refuses_the_work_loudly_and_a_right_one_finishes_it(
    devserver: RunningDevServer,
    sandbox: RunningSandbox,
    start_process: Callable[[ManagedProcess], ManagedProcess],
    start_worker: ProcessFactory,
    ring: KeyRing,
) -> None:
    refused = threading.Event()

    def watch(line: str) -> None:
        if "failed authentication" in line:
            refused.set()

    wrong = worker_env(devserver, sandbox, KeyRing.new(ring.current))
    wrong_worker = start_process(
        worker_process("encryption.worker", wrong, name="wrong-key", on_line=watch)
    )
    eid = execution_id()
    who = customer()

    async def start(client: Resonate) -> None:
        await client.options(target="encryption").rpc(eid, "onboard", who, 0).id()

    with_client(devserver.url, ring, start)

    assert refused.wait(20), "the wrong-key worker said nothing"
    assert sandbox.records.requests(key_prefix=eid + ":") == []  # it ran nothing on garbage
    wrong_worker.stop()  # still holding the task: the right worker gets it when its lease lapses
    start_worker("encryption.worker", worker_env(devserver, sandbox, ring), name="right-key")
    result = onboard(devserver.url, ring, eid, who)
    assert result["status"] == "onboarded"
    assert len(sandbox.records.effects(key_prefix=eid + ":")) == 2


def test_rotation_across_a_worker_restart_with_executions_in_flight(
    devserver: RunningDevServer,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    ring: KeyRing,
) -> None:
    rotated = ring.rotated("2026-07")
    before = start_worker("encryption.worker", worker_env(devserver, sandbox, ring), name="before")
    in_flight = {execution_id(): customer() for _ in range(2)}

    async def start(client: Resonate) -> None:
        for eid, who in in_flight.items():
            # Suspended on their welcome delay when the worker is replaced (well before it ends).
            await client.options(target="encryption").rpc(eid, "onboard", who, 5).id()

    with_client(devserver.url, ring, start)
    for eid in in_flight:
        devserver.wait_for("suspend", f"{eid}:2")  # on its sleep
    before.stop()
    assert not any(p["id"].endswith(":3") for p in promises_held(devserver)), "replaced too late"
    start_worker("encryption.worker", worker_env(devserver, sandbox, rotated), name="after")
    after_rotation = execution_id()

    results = {eid: onboard(devserver.url, rotated, eid, who) for eid, who in in_flight.items()}
    results[after_rotation] = onboard(devserver.url, rotated, after_rotation, customer())

    assert {eid: r["status"] for eid, r in results.items()} == dict.fromkeys(results, "onboarded")
    for eid, who in in_flight.items():
        assert results[eid]["customer"] == who
    promises = {p["id"]: p for p in promises_held(devserver)}
    for eid in in_flight:
        # Sealed before the rotation: the arguments and the verification; after it: the rest.
        assert key_id_of(promises[eid]["param"]) == "2026-01"
        assert key_id_of(promises[f"{eid}:1"]["value"]) == "2026-01"
        assert key_id_of(promises[f"{eid}:3"]["value"]) == "2026-07"
        assert key_id_of(promises[eid]["value"]) == "2026-07"
    assert key_id_of(promises[after_rotation]["param"]) == "2026-07"
