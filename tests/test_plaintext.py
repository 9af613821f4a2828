"""cookbook.testing.plaintext: it finds a value wherever the server could hide it (base64 at any
alignment, JSON-escaped, base64 in base64), and finds nothing that is not there."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from typing import Any

import pytest
from cookbook.testing.fixtures import RunningDevServer
from cookbook.testing.plaintext import (
    plaintext_found,
    searchable,
    stored_values,
    what_the_server_holds,
)
from resonate.resonate import Resonate
from resonate.types import Value

NAME, EMAIL = "Zoë Quist", "zoe@example.com"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@pytest.mark.parametrize("before", [b"", b"a", b"ab"], ids=["offset-0", "offset-1", "offset-2"])
@pytest.mark.parametrize("prefix", [b'"', b"A", b"Ab", b"Abc"], ids=["quoted", "1", "2", "3"])
def test_a_value_in_base64_is_found_at_any_alignment(before: bytes, prefix: bytes) -> None:
    # `before` moves the value across the 3-byte groups base64 encodes together; `prefix` puts
    # base64 characters before the string, as msgpack's length byte can in the snapshot.
    blob = b"\x00" + prefix + b64(before + EMAIL.encode() + b'"}') + b'"\n'

    assert plaintext_found(blob, [EMAIL]) == [EMAIL]


@pytest.mark.parametrize("length", range(3), ids=["no-padding", "padding-2", "padding-1"])
def test_a_value_at_the_end_of_base64_is_found(length: int) -> None:
    blob = b'{"data": "' + b64(b"x" * length + EMAIL.encode()) + b'"}'

    assert plaintext_found(blob, [EMAIL]) == [EMAIL]


def test_a_value_is_found_json_escaped_as_it_is_and_in_base64() -> None:
    escaped = json.dumps({"name": NAME}).encode()  # Zo\u00eb Quist
    raw = json.dumps({"name": NAME}, ensure_ascii=False).encode()

    assert b"\\u00eb" in escaped
    assert plaintext_found(escaped, [NAME]) == [NAME]
    assert plaintext_found(raw, [NAME]) == [NAME]
    assert plaintext_found(b'{"data":"' + b64(escaped) + b'"}', [NAME]) == [NAME]


def test_a_short_value_as_json_in_base64_is_found() -> None:
    assert plaintext_found(b'{"data":"' + b64(json.dumps("Zoë").encode()) + b'"}', ["Zoë"])


def test_base64_in_base64_is_found() -> None:
    # A step's error as the SDK stores it: its exception pickled, in base64, in the stored JSON.
    pickled = base64.b64encode(pickle.dumps(ValueError(f"{EMAIL} is not a reference"))).decode()
    stored = json.dumps({"message": "refused", "__py_pickle": pickled})

    assert plaintext_found(
        json.dumps({"data": base64.b64encode(stored.encode()).decode()}).encode(), [EMAIL]
    ) == [EMAIL]


def test_every_blob_is_searched_and_the_values_found_are_named_once_sorted() -> None:
    held = {"wal.jsonl": b"zoe@example.com " + EMAIL.encode(), "state": b64(NAME.encode())}

    assert plaintext_found(held, [NAME, EMAIL, "Grace Hopper"]) == sorted([EMAIL, NAME])


def test_what_is_not_there_is_not_found() -> None:
    held = {
        # The value cut across two blobs: neither holds it.
        "first": b"Zo\xc3\xab",
        "second": b" Quist",
        # Other stored values, a reference and the SDK's routing address.
        "state": b'{"data":"'
        + b64(json.dumps({"customer_id": "cus_5e0b82d4", "name": "Zoe Quist"}).encode())
        + b'", "tags": {"resonate:target": "poll://any@saga"}}',
    }

    assert plaintext_found(held, [NAME, EMAIL, "Quistt"]) == []
    assert plaintext_found(b"", [NAME]) == []


def test_a_value_too_short_to_search_for_is_refused() -> None:
    # "Ada" is in about one 64**3-character stretch of base64 in every 260,000.
    with pytest.raises(ValueError, match=r"too short to search for: \['Ada'\]"):
        plaintext_found(b"", ["Ada Lovelace", "Ada"])


def test_stored_values_are_the_decoded_arguments_and_results_and_nothing_else() -> None:
    def stored(value: object) -> dict[str, str]:
        return {"data": base64.b64encode(json.dumps(value).encode()).decode()}

    answer = {
        "promises": [
            {
                "id": "order-1",
                "param": stored({"customer_id": "cus_5e0b82d4"}),
                "value": stored("done"),
                "tags": {"resonate:target": "poll://any@orders"},
            },
            {"id": "order-1:1", "param": {"data": None}, "value": {}, "tags": {}},
        ]
    }
    journal = [{"operation": "settle", "promise_id": "order-1:2", "value": stored([1, None])}]

    assert stored_values([answer, journal]) == [{"customer_id": "cus_5e0b82d4"}, "done", [1, None]]
    assert stored_values(answer["promises"][0]["value"]) == ["done"]


def test_searchable_is_every_field_decoded_as_written_without_the_routing_address() -> None:
    stored = {"data": base64.b64encode(json.dumps({"name": NAME}).encode()).decode()}
    tags = {"resonate:target": "poll://any@orders", "origin": "order-1"}
    promises: list[dict[str, Any]] = [
        {
            "id": "order-1",
            "state": "resolved",
            "param": stored,
            "value": {"data": None},
            "tags": tags,
        }
    ]

    text = searchable(promises)

    assert NAME in text  # decoded, and not `Zo\\u00eb`
    assert "@" not in text  # the SDK's routing address left out, and only that tag
    assert all(field in text for field in ('"state": "resolved"', '"origin": "order-1"'))
    assert tags["resonate:target"] == "poll://any@orders"  # the answer is left unchanged


def test_what_the_server_holds_is_its_files_its_state_and_the_journals_asked_for(
    devserver: RunningDevServer,
) -> None:
    async def create() -> None:
        client = Resonate(url=devserver.url, group="plaintext-tests")  # no encryptor: base64
        try:
            for promise_id in ("unsealed-1", "unsealed-2"):
                await client.promises.create(promise_id, 2**42, Value(data={"who": EMAIL}), {})
        finally:
            await client.stop()

    asyncio.run(create())

    held = what_the_server_holds(devserver, ["unsealed-1"])

    wal, state, journal = (
        str(devserver.data_dir / "wal.jsonl"),
        "/_cookbook/state",
        "/_cookbook/journal?origin=unsealed-1",
    )
    assert {wal, state, journal} <= set(held)
    assert {where for where, blob in held.items() if plaintext_found(blob, [EMAIL])} == {wal, state}
    # The journal holds ids (which could name someone too), of the origins asked for only.
    assert plaintext_found(held[journal], ["unsealed-1", "unsealed-2"]) == ["unsealed-1"]
    assert plaintext_found(held, [EMAIL]) == [EMAIL]
