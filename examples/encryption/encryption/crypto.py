"""AES-GCM encryption of everything the SDK stores in the Resonate server, with rotatable keys.

The SDK hands an encryptor the bytes of every value it is about to store (a workflow's or a
step's arguments, its result, its error, a value given to `resonate.promises.*`) and gets back
the bytes it stores instead; it hands the stored bytes back to `decrypt` when it reads them.

Each stored value is sealed on its own, as
    version (1 byte) | key id length (1 byte) | key id | nonce (12 bytes) | ciphertext + tag
with a fresh random nonce per value and the version and key id authenticated with it, so a value
says which key sealed it: after a rotation, new values are sealed with the new key and old ones
still open with the old key, as long as the key ring keeps it.

The keys never sit in code. They come from the environment:
    ENCRYPTION_KEYS       the key ring as JSON (from a secret manager, a Kubernetes secret)
    ENCRYPTION_KEYS_FILE  or the path of a file holding that JSON
The JSON: {"current": "<key id>", "keys": {"<key id>": "<32 bytes, base64>", ...}}.
With neither set, a development key ring is used (created on first use, never committed), and
every worker names it when it starts. `python -m encryption.crypto new-key-ring` prints a new
key ring.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
NONCE_BYTES = 12  # 96 bits, the size GCM is specified for; random, so never reused in practice
KEY_BYTES = 32  # AES-256
MAX_KEY_ID_BYTES = 255

# Where the development key ring lives when no key ring is configured: beside this package, so
# that every process of the example on this machine (worker, demo, tests) finds the same one.
# Ignored by git (see .gitignore); never used when ENCRYPTION_KEYS or ENCRYPTION_KEYS_FILE is set.
DEV_KEY_RING = Path(__file__).resolve().parent.parent / ".dev-keys" / "key-ring.json"


class KeyRingError(ValueError):
    """The key ring cannot be loaded: missing, malformed, or naming a key it does not have."""


class DecryptionError(Exception):
    """A stored value cannot be opened with this process's keys.

    Deliberately not a `resonate.error.ResonateError`: SDK 0.8.1 releases a task at once when
    its arguments fail to decode with one of those (it is sent again at once, to this worker or
    another, and fails the same way: a hot loop), and drops a stored step result that fails with
    one from what the replay knows. Any other exception keeps the task where it is, logged,
    until its lease lapses; then another worker tries, and one that has the key opens it.
    """


@dataclass(frozen=True)
class KeyRing:
    """The keys a process can open values with, and the one it seals new values with."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)  # a log line must never print a key
    source: str = "generated"  # where it was loaded from, to say so (never the keys themselves)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            known = ", ".join(sorted(self.keys)) or "none"
            raise KeyRingError(f"current key {self.current!r} is not in the key ring ({known})")
        for key_id, key in self.keys.items():
            if not key_id or len(key_id.encode()) > MAX_KEY_ID_BYTES:
                raise KeyRingError(f"key id {key_id!r}: must be 1 to 255 bytes long")
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {key_id!r}: must be {KEY_BYTES} bytes, got {len(key)}")

    @classmethod
    def from_json(cls, text: str, source: str) -> KeyRing:
        try:
            document = json.loads(text)
            current = document["current"]
            encoded = document["keys"]
            if not isinstance(current, str) or not isinstance(encoded, dict):
                raise TypeError("current must be a string and keys an object")
            keys = {
                str(key_id): base64.b64decode(key, validate=True) for key_id, key in encoded.items()
            }
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise KeyRingError(
                f"{source}: not a key ring ({type(exc).__name__}: {exc}); expected"
                ' {"current": "<key id>", "keys": {"<key id>": "<32 bytes, base64>"}}'
            ) from exc
        return cls(current, keys, source)

    def to_json(self) -> str:
        keys = {key_id: base64.b64encode(key).decode() for key_id, key in self.keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, indent=2)

    @classmethod
    def new(cls, key_id: str) -> KeyRing:
        return cls(key_id, {key_id: AESGCM.generate_key(bit_length=8 * KEY_BYTES)})

    def rotated(self, new_key_id: str) -> KeyRing:
        """This key ring with a new current key; the old keys stay, to open what they sealed."""
        if new_key_id in self.keys:
            raise KeyRingError(f"key id {new_key_id!r} is already in the key ring")
        new_key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
        return KeyRing(new_key_id, {**self.keys, new_key_id: new_key}, self.source)


class AesGcmEncryptor:
    """The SDK's `Encryptor` (`Resonate(encryptor=...)`): seals and opens each stored value."""

    def __init__(self, key_ring: KeyRing) -> None:
        self.key_ring = key_ring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in key_ring.keys.items()}

    def encrypt(self, data: bytes) -> bytes:
        key_id = self.key_ring.current.encode()
        header = bytes([FORMAT_VERSION, len(key_id)]) + key_id
        nonce = secrets.token_bytes(NONCE_BYTES)
        # The header is authenticated too: a value cannot be relabelled with another key id.
        return header + nonce + self._ciphers[self.key_ring.current].encrypt(nonce, data, header)

    def decrypt(self, data: bytes) -> bytes:
        if len(data) < 2 or data[0] != FORMAT_VERSION:
            raise DecryptionError(
                "stored value is not sealed by this encryptor (no version-1 header): written by"
                " a client or worker without encryption, or not a value of this application"
            )
        header_end = 2 + data[1]
        key_id = data[2:header_end].decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            known = ", ".join(sorted(self.key_ring.keys))
            raise DecryptionError(
                f"stored value is sealed with key {key_id!r}, which this process does not have"
                f" (its key ring: {known}); give it the key ring that includes {key_id!r}"
            )
        nonce = data[header_end : header_end + NONCE_BYTES]
        try:
            return cipher.decrypt(nonce, data[header_end + NONCE_BYTES :], data[:header_end])
        except InvalidTag:
            raise DecryptionError(
                f"stored value sealed with key {key_id!r} failed authentication: this process's"
                f" key {key_id!r} is not the one that sealed it, or the stored bytes were altered"
            ) from None


def load_key_ring(environ: Mapping[str, str] | None = None) -> KeyRing:
    """The key ring from ENCRYPTION_KEYS or ENCRYPTION_KEYS_FILE, else the development one."""
    env = os.environ if environ is None else environ
    inline, path = env.get("ENCRYPTION_KEYS"), env.get("ENCRYPTION_KEYS_FILE")
    if inline and path:
        raise KeyRingError("set ENCRYPTION_KEYS or ENCRYPTION_KEYS_FILE, not both")
    if inline:
        return KeyRing.from_json(inline, "ENCRYPTION_KEYS")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KeyRingError(f"ENCRYPTION_KEYS_FILE={path}: cannot read it: {exc}") from exc
        return KeyRing.from_json(text, f"ENCRYPTION_KEYS_FILE={path}")
    return _development_key_ring(DEV_KEY_RING)


def _development_key_ring(path: Path) -> KeyRing:
    """Read the development key ring, creating it first if no process has yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as draft:
            draft.write(KeyRing.new("dev-1").to_json())
        try:
            # Atomic, and refused if another process created it meanwhile: everyone keeps the
            # first one, so no process ever seals values with a key the others do not have.
            os.link(draft.name, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft.name)
    shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    source = f"the development key ring {shown} (ENCRYPTION_KEYS(_FILE) unset)"
    return KeyRing.from_json(path.read_text(), source)


def encryptor_from_environment() -> AesGcmEncryptor:
    """The encryptor a client of this example's workers needs (the crash harness's client gets
    it through `encryptor =` in the example's `[tool.cookbook]`)."""
    return AesGcmEncryptor(load_key_ring())


def main(argv: list[str]) -> None:
    """`python -m encryption.crypto new-key-ring [KEY_ID]` or `rotate NEW_KEY_ID < ring.json`."""
    match argv:
        case ["new-key-ring"] | ["new-key-ring", _]:
            print(KeyRing.new(argv[1] if len(argv) > 1 else "key-1").to_json())
        case ["rotate", new_key_id]:
            print(KeyRing.from_json(sys.stdin.read(), "stdin").rotated(new_key_id).to_json())
        case _:
            sys.exit("usage: python -m encryption.crypto new-key-ring [KEY_ID] | rotate NEW_KEY_ID")


if __name__ == "__main__":
    main(sys.argv[1:])
