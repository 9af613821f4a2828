"""The encryptor every process of the chat passes to `Resonate(encryptor=...)`, in process.

Portable: only `resonate`, the `chatbot` package, its own dependencies and pytest. Values go
through the SDK's own codec, as a turn's arguments and reply do on their way to the server.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from chatbot.crypto import (
    AesGcmEncryptor,
    DecryptionError,
    KeyRing,
    KeyRingError,
    _development_key_ring,
    load_key_ring,
)
from chatbot.steps import Reply
from chatbot.workflow import Turn
from resonate.codec import Codec, NoopEncryptor

GREETING = "Hi, I'm Ada. I'm looking for a book about durable execution."
ANSWER = "Welcome to the shop! Shall I recommend one?"


def a_turn() -> dict[str, object]:
    """What a turn's promise holds as its argument: the call, with the conversation so far."""
    turn = Turn(chat_id="c1", number=2, history=[], message=GREETING)
    return {"func": "chat_turn", "args": [turn.model_dump(mode="json")], "version": 1}


def stored_bytes(codec: Codec, value: object) -> bytes:
    """The bytes the server would hold for `value` (its data, base64-decoded)."""
    data = codec.encode(value).data
    assert data is not None
    return base64.b64decode(data)


def test_a_turn_and_its_reply_are_stored_sealed_and_open_with_the_key() -> None:
    codec = Codec(AesGcmEncryptor(KeyRing.new("k1")))
    for value in (a_turn(), Reply(content=ANSWER).model_dump(mode="json")):
        stored = stored_bytes(codec, value)
        assert GREETING.encode() not in stored
        assert ANSWER.encode() not in stored
        assert b"chat_turn" not in stored  # not even which function: nothing readable at all
        assert codec.decode(codec.encode(value)) == value


def test_the_same_value_is_sealed_differently_each_time() -> None:
    # A fresh nonce per value: two turns sending the same message are not seen to be equal.
    codec = Codec(AesGcmEncryptor(KeyRing.new("k1")))
    assert stored_bytes(codec, a_turn()) != stored_bytes(codec, a_turn())


def test_a_tampered_value_is_refused() -> None:
    encryptor = AesGcmEncryptor(KeyRing.new("k1"))
    sealed = encryptor.encrypt(json.dumps(a_turn()).encode())
    flipped = sealed[:-5] + bytes([sealed[-5] ^ 1]) + sealed[-4:]
    with pytest.raises(DecryptionError, match="failed authentication"):
        encryptor.decrypt(flipped)


def test_a_value_sealed_with_another_key_is_refused_naming_it() -> None:
    sealed = AesGcmEncryptor(KeyRing.new("k1")).encrypt(b'{"message": "hello"}')
    with pytest.raises(DecryptionError, match="failed authentication"):
        AesGcmEncryptor(KeyRing.new("k1")).decrypt(sealed)  # same id, another key
    with pytest.raises(DecryptionError, match="'k1', which this process does not have"):
        AesGcmEncryptor(KeyRing.new("k2")).decrypt(sealed)


def test_a_value_stored_without_encryption_is_refused_without_echoing_any_of_it() -> None:
    # A client without the encryptor stores the turn as plain JSON. The error is logged: it must
    # say what is wrong, and nothing of the turn (the old header read a "key id" out of it).
    unsealed = Codec(NoopEncryptor()).encode(a_turn())
    with pytest.raises(DecryptionError, match="not sealed by this encryptor") as refused:
        Codec(AesGcmEncryptor(KeyRing.new("k1"))).decode(unsealed)
    assert "Ada" not in str(refused.value)
    assert "chat_turn" not in str(refused.value)


def test_after_a_rotation_older_turns_still_open_and_new_ones_use_the_new_key() -> None:
    old = KeyRing.new("k1")
    new_key = KeyRing.new("k2").keys["k2"]
    rotated = KeyRing("k2", {**old.keys, "k2": new_key})
    sealed_before = AesGcmEncryptor(old).encrypt(b"turn 1")
    assert AesGcmEncryptor(rotated).decrypt(sealed_before) == b"turn 1"
    sealed_after = AesGcmEncryptor(rotated).encrypt(b"turn 2")
    with pytest.raises(DecryptionError, match="'k2'"):
        AesGcmEncryptor(old).decrypt(sealed_after)


def test_the_key_ring_comes_from_the_environment() -> None:
    ring = KeyRing.new("prod-1")
    assert load_key_ring({"CHAT_ENCRYPTION_KEYS": ring.to_json()}).keys == ring.keys


def test_a_key_ring_file(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_text(KeyRing.new("prod-1").to_json())
    assert load_key_ring({"CHAT_ENCRYPTION_KEYS_FILE": str(path)}).current == "prod-1"
    with pytest.raises(KeyRingError, match="cannot read it"):
        load_key_ring({"CHAT_ENCRYPTION_KEYS_FILE": str(tmp_path / "missing.json")})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not a key ring"),
        ('{"current": "a", "keys": {"a": "c2hvcnQ="}}', "must be 32 bytes"),
        ('{"current": "b", "keys": {}}', "current key 'b' is not in the key ring"),
    ],
)
def test_a_bad_key_ring_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(KeyRingError, match=reason):
        load_key_ring({"CHAT_ENCRYPTION_KEYS": text})


def test_both_variables_set_is_refused() -> None:
    ring = KeyRing.new("a").to_json()
    with pytest.raises(KeyRingError, match="not both"):
        load_key_ring({"CHAT_ENCRYPTION_KEYS": ring, "CHAT_ENCRYPTION_KEYS_FILE": "/x"})


def test_the_development_key_ring_is_created_once_and_shared(tmp_path: Path) -> None:
    path = tmp_path / ".dev-keys" / "key-ring.json"
    first = _development_key_ring(path)
    again = _development_key_ring(path)
    assert first.keys == again.keys
    assert "development key ring" in again.source
    sealed = AesGcmEncryptor(first).encrypt(b"turn")
    assert AesGcmEncryptor(again).decrypt(sealed) == b"turn"
