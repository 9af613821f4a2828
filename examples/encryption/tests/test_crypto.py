"""The encryptor alone: sealing, opening, rotation, wrong keys, tampering, loading the key ring."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from encryption.crypto import (
    AesGcmEncryptor,
    DecryptionError,
    KeyRing,
    KeyRingError,
    load_key_ring,
    main,
)

PLAINTEXT = b'{"name":"Ada Lovelace","email":"ada@example.com"}'


def test_a_value_opens_with_the_key_that_sealed_it_and_says_which_key() -> None:
    encryptor = AesGcmEncryptor(KeyRing.new("k1"))

    sealed = encryptor.encrypt(PLAINTEXT)

    assert b"Ada" not in sealed
    assert sealed[2 : 2 + sealed[1]] == b"k1"
    assert encryptor.decrypt(sealed) == PLAINTEXT


def test_every_value_gets_its_own_nonce() -> None:
    encryptor = AesGcmEncryptor(KeyRing.new("k1"))

    assert encryptor.encrypt(PLAINTEXT) != encryptor.encrypt(PLAINTEXT)


def test_after_a_rotation_new_values_use_the_new_key_and_old_ones_still_open() -> None:
    before = KeyRing.new("k1")
    after = before.rotated("k2")
    old_value = AesGcmEncryptor(before).encrypt(PLAINTEXT)

    new_value = AesGcmEncryptor(after).encrypt(PLAINTEXT)

    assert new_value[2 : 2 + new_value[1]] == b"k2"
    assert AesGcmEncryptor(after).decrypt(old_value) == PLAINTEXT
    with pytest.raises(DecryptionError, match="sealed with key 'k2', which this process does not"):
        AesGcmEncryptor(before).decrypt(new_value)


def test_a_wrong_key_under_the_right_id_fails_loudly() -> None:
    sealed = AesGcmEncryptor(KeyRing.new("k1")).encrypt(PLAINTEXT)

    with pytest.raises(DecryptionError, match="'k1' failed authentication"):
        AesGcmEncryptor(KeyRing.new("k1")).decrypt(sealed)


@pytest.mark.parametrize("position", [0, 1, 5, 20, -1], ids=lambda p: f"byte {p}")
def test_a_tampered_value_is_rejected(position: int) -> None:
    encryptor = AesGcmEncryptor(KeyRing.new("k1"))
    sealed = bytearray(encryptor.encrypt(PLAINTEXT))

    sealed[position] ^= 0x01

    with pytest.raises(DecryptionError):
        encryptor.decrypt(bytes(sealed))


def test_the_key_id_is_authenticated_with_the_value() -> None:
    # Two ids for one key (an alias kept while a key is renamed): only the header tells them
    # apart, and a value relabelled from one to the other is refused.
    key = KeyRing.new("k1").keys["k1"]
    ring = KeyRing("k2", {"k1": key, "k2": key})
    sealed = AesGcmEncryptor(ring).encrypt(PLAINTEXT)

    relabelled = sealed.replace(b"k2", b"k1", 1)

    with pytest.raises(DecryptionError, match="'k1' failed authentication"):
        AesGcmEncryptor(ring).decrypt(relabelled)


def test_a_value_that_was_never_sealed_is_refused_not_passed_through() -> None:
    with pytest.raises(DecryptionError, match="not sealed by this encryptor"):
        AesGcmEncryptor(KeyRing.new("k1")).decrypt(PLAINTEXT)


def test_the_key_ring_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    ring = KeyRing.new("k1").rotated("k2")
    key_file = tmp_path / "ring.json"
    key_file.write_text(ring.to_json())

    from_env = load_key_ring({"ENCRYPTION_KEYS": ring.to_json()})
    from_file = load_key_ring({"ENCRYPTION_KEYS_FILE": str(key_file)})

    assert (from_env.current, dict(from_env.keys)) == ("k2", dict(ring.keys))
    assert (from_file.current, dict(from_file.keys)) == ("k2", dict(ring.keys))
    assert "ENCRYPTION_KEYS_FILE" in from_file.source
    # An empty variable is an unset one (compose sets ENCRYPTION_KEYS="" beside the file).
    unset_inline = load_key_ring({"ENCRYPTION_KEYS": "", "ENCRYPTION_KEYS_FILE": str(key_file)})
    assert dict(unset_inline.keys) == dict(ring.keys)


def test_the_command_line_makes_and_rotates_key_rings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    main(["new-key-ring", "2026-01"])
    first = KeyRing.from_json(capsys.readouterr().out, "new-key-ring")
    monkeypatch.setattr("sys.stdin", io.StringIO(first.to_json()))
    main(["rotate", "2026-07"])
    second = KeyRing.from_json(capsys.readouterr().out, "rotate")

    assert second.current == "2026-07"
    assert second.keys["2026-01"] == first.keys["2026-01"]
    assert sorted(second.keys) == ["2026-01", "2026-07"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ENCRYPTION_KEYS": "{}", "ENCRYPTION_KEYS_FILE": "x"}, "not both"),
        ({"ENCRYPTION_KEYS_FILE": "/nonexistent/ring.json"}, "cannot read it"),
        ({"ENCRYPTION_KEYS": "not json"}, "ENCRYPTION_KEYS: not a key ring"),
        ({"ENCRYPTION_KEYS": '{"current": "k1", "keys": {}}'}, "'k1' is not in the key ring"),
        ({"ENCRYPTION_KEYS": '{"current": "k1", "keys": {"k1": "c2hvcnQ="}}'}, "must be 32"),
    ],
    ids=["both", "missing file", "malformed", "unknown current", "short key"],
)
def test_a_bad_key_ring_is_refused_with_the_reason(environ: dict[str, str], message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        load_key_ring(environ)


def test_a_key_ring_never_prints_its_keys() -> None:
    ring = KeyRing.new("k1")
    encoded = json.loads(ring.to_json())["keys"]["k1"]

    assert encoded not in repr(ring)
    assert repr(ring.keys["k1"]) not in repr(ring)
