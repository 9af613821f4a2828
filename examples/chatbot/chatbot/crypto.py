"""AES-GCM encryption of every value a chat turn stores in the Resonate server.

A turn's arguments are the conversation so far and its result is the model's reply: personal
data. The SDK hands an encryptor the bytes of every value it is about to store and stores what it
gets back; it hands the stored bytes to `decrypt` when it reads them. Each value is sealed on its
own, as the encryption example seals it:
    version (1 byte) | key id length (1 byte) | key id | nonce (12 bytes) | ciphertext + tag
with a fresh random nonce and the version and key id authenticated with it, so a value names the
key that sealed it: after a rotation, new turns are sealed with the new key and older ones still
open with an older key the ring keeps. (The encryption example shows rotation with turns in flight
in full.)

The keys never sit in code. Every process that reads or writes a turn (the worker, the gateway)
takes them from the environment:
    CHAT_ENCRYPTION_KEYS       the key ring as JSON (from a secret manager, a Kubernetes secret)
    CHAT_ENCRYPTION_KEYS_FILE  or the path of a file holding that JSON
The JSON: {"current": "<key id>", "keys": {"<key id>": "<32 bytes, base64>", ...}}.
With neither set, a development key ring is used (created on first use, never committed) and each
process names it when it starts. `python -m chatbot.crypto` prints a new key ring.
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

# The development key ring, when none is configured: beside this package rather than in the temp
# directory, so that every process of the example on this machine finds the same one, whatever
# TMPDIR each was given (the cookbook's crash harness gives workers a private one). Ignored by
# git (see .gitignore); never used when a key ring is configured.
DEV_KEY_RING = Path(__file__).resolve().parent.parent / ".dev-keys" / "key-ring.json"


class KeyRingError(ValueError):
    """The key ring cannot be loaded: missing, malformed, or naming a key it does not have."""


class DecryptionError(Exception):
    """A stored value cannot be opened with this process's keys.

    Deliberately not a `resonate.error.ResonateError`: SDK 0.8.1 releases a task whose arguments
    fail to decode with one of those at once, to fail the same way again (a hot loop). Any other
    exception keeps the task until its lease lapses, for a worker that has the key.
    """


@dataclass(frozen=True)
class KeyRing:
    """The key new values are sealed with, and every key stored values may be opened with."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)  # a log line must never print a key
    source: str = "generated"  # where it came from, to say so (never the keys themselves)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise KeyRingError(f"current key {self.current!r} is not in the key ring")
        for key_id, key in self.keys.items():
            if not 1 <= len(key_id.encode()) <= 255:
                raise KeyRingError(f"key id {key_id!r}: must be 1 to 255 bytes long")
            if len(key) != KEY_BYTES:
                raise KeyRingError(f"key {key_id!r}: must be {KEY_BYTES} bytes, got {len(key)}")

    @classmethod
    def from_json(cls, text: str, source: str) -> KeyRing:
        try:
            document = json.loads(text)
            current, encoded = document["current"], document["keys"]
            if not isinstance(current, str) or not isinstance(encoded, dict):
                raise TypeError("current must be a string and keys an object")
            keys = {str(k): base64.b64decode(v, validate=True) for k, v in encoded.items()}
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise KeyRingError(
                f"{source}: not a key ring ({type(exc).__name__}: {exc}); expected"
                ' {"current": "<key id>", "keys": {"<key id>": "<32 bytes, base64>"}}'
            ) from exc
        return cls(current, keys, source)

    @classmethod
    def new(cls, key_id: str) -> KeyRing:
        return cls(key_id, {key_id: AESGCM.generate_key(bit_length=8 * KEY_BYTES)})

    def to_json(self) -> str:
        keys = {key_id: base64.b64encode(key).decode() for key_id, key in self.keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, indent=2)

    def describe(self) -> str:
        """What a process says when it starts: which key seals, which open, and from where."""
        keys = ", ".join(sorted(self.keys))
        return f"sealing turns with key {self.current!r}, opening {keys}: {self.source}"


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
        # Checked before anything is read as a key id: a value stored without encryption is the
        # plaintext turn, and a key id read out of it would put the user's message in the error.
        if len(data) < 2 or data[0] != FORMAT_VERSION:
            raise DecryptionError(
                "a stored value is not sealed by this encryptor (no version-1 header): written by"
                " a client or worker without encryption, or not a value of this application"
            )
        header_end = 2 + data[1]
        key_id = data[2:header_end].decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                f"a stored value is sealed with key {key_id!r}, which this process does not have:"
                " give it the key ring that includes it"
            )
        nonce = data[header_end : header_end + NONCE_BYTES]
        try:
            return cipher.decrypt(nonce, data[header_end + NONCE_BYTES :], data[:header_end])
        except InvalidTag:
            raise DecryptionError(
                f"a stored value sealed with key {key_id!r} failed authentication: the key is"
                " not the one that sealed it, or the stored bytes were altered"
            ) from None


def load_key_ring(environ: Mapping[str, str] | None = None) -> KeyRing:
    """The key ring from CHAT_ENCRYPTION_KEYS or CHAT_ENCRYPTION_KEYS_FILE, else the dev one."""
    env = os.environ if environ is None else environ
    inline, path = env.get("CHAT_ENCRYPTION_KEYS"), env.get("CHAT_ENCRYPTION_KEYS_FILE")
    if inline and path:
        raise KeyRingError("set CHAT_ENCRYPTION_KEYS or CHAT_ENCRYPTION_KEYS_FILE, not both")
    if inline:
        return KeyRing.from_json(inline, "CHAT_ENCRYPTION_KEYS")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KeyRingError(f"CHAT_ENCRYPTION_KEYS_FILE={path}: cannot read it: {exc}") from exc
        return KeyRing.from_json(text, f"CHAT_ENCRYPTION_KEYS_FILE={path}")
    return _development_key_ring(DEV_KEY_RING)


def _development_key_ring(path: Path) -> KeyRing:
    """Read the development key ring, creating it first if no process has yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as draft:
            draft.write(KeyRing.new("dev-1").to_json())
        try:
            # Atomic, and refused if another process created it meanwhile: every process keeps
            # the first one, so none seals turns with a key the others do not have.
            os.link(draft.name, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft.name)
    shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    source = f"the development key ring {shown} (CHAT_ENCRYPTION_KEYS(_FILE) unset)"
    return KeyRing.from_json(path.read_text(), source)


def encryptor_from_environment() -> AesGcmEncryptor:
    """The encryptor every process reading or writing turns needs (the crash harness's client
    gets it through `encryptor =` in this example's `[tool.cookbook]`)."""
    return AesGcmEncryptor(load_key_ring())


if __name__ == "__main__":
    # `python -m chatbot.crypto [KEY_ID]`: a new key ring, to store in your secret manager.
    print(KeyRing.new(sys.argv[1] if len(sys.argv) > 1 else "key-1").to_json())
