"""What a dev server holds, for a test that proves no personal data sits in it in plaintext.

A plain search of the server is not enough: the SDK stores a promise's argument and result as
`{"data": <base64 of JSON>}` (of ciphertext, with an encryptor), and JSON escapes what is not
ASCII ("Zoë" is `Zo\\u00eb`), so a name would hide from it in either. This module reads what the
server keeps and answers, and searches it with both undone.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cookbook import clients
from cookbook.testing.fixtures import RunningDevServer

# A run of base64 characters long enough to hold a value (8 characters are 6 bytes: `"Zoë"` as
# JSON). Padding is left out of the match and put back when decoding.
_BASE64 = re.compile(rb"[A-Za-z0-9+/]{8,}")
# A shorter value is found by chance: in a run of base64 characters (1 in 64**3 places spells
# "Ada") or in the bytes a run decodes to where it holds no base64 at all.
_SHORTEST = 4


def what_the_server_holds(
    devserver: RunningDevServer, origins: Iterable[str] = ()
) -> dict[str, bytes]:
    """Everything `devserver` keeps or shows, by where it is: every file of its data directory
    (its log, snapshot and archive), its whole `/_cookbook/state` answer (which has the
    archive's rows unpacked: the file has them compressed), and the journal of each of `origins`.
    """
    files = sorted(p for p in devserver.data_dir.rglob("*") if p.is_file())
    held = {str(path): path.read_bytes() for path in files}
    state = clients.get(f"{devserver.url}/_cookbook/state", headers=devserver.headers)
    held["/_cookbook/state"] = state.raise_for_status().content
    for origin in origins:
        held[f"/_cookbook/journal?origin={origin}"] = json.dumps(devserver.journal(origin)).encode()
    return held


def plaintext_found(held: bytes | Mapping[str, bytes], values: Iterable[str]) -> list[str]:
    """Which of `values` appear in `held` (bytes, or `what_the_server_holds`), sorted: as they
    are, JSON-escaped, or inside a base64 string, however deep (a pickled error in a stored
    value is base64 in base64).

    Raises ValueError for a value under 4 bytes: it turns up by chance in base64 and in what
    base64 decodes to, so a test searching for it would fail at random (see `_SHORTEST`).
    """
    values = list(values)
    if short := [v for v in values if len(v.encode()) < _SHORTEST]:
        raise ValueError(f"too short to search for: {short} (found by chance)")
    blobs = [held] if isinstance(held, bytes) else list(held.values())
    texts = [text for blob in blobs for text in _with_base64_decoded(blob)]
    return sorted({v for v in values for form in _forms(v) if any(form in text for text in texts)})


def stored_values(answer: Any) -> list[Any]:
    """Every argument and result stored in a dev server answer (`devserver.state(id)`,
    `devserver.journal(id)`, a promise, or a list of them), decoded from base64 to JSON.

    For a test to assert on what was stored ("the reference is there", "no '@' in any stored
    value") without the rest of the answer: the SDK's own tags hold an '@' that names no one,
    its routing address `poll://any@<group>`.
    """
    if isinstance(answer, list):
        return [value for item in answer for value in stored_values(item)]
    if not isinstance(answer, dict):
        return []
    found: list[Any] = []
    for key, value in answer.items():
        if key == "data" and isinstance(value, str):
            found.append(_decoded(value))
        else:
            found.extend(stored_values(value))
    return found


def searchable(promises: Iterable[Mapping[str, Any]]) -> str:
    """Promises the server holds (`devserver.state(id)["promises"]`) as one text to search: every
    field, each stored argument and result decoded, nothing ASCII-escaped ("Zoë" as written, not
    `Zo\\u00eb`), and without the SDK's routing address (the tag `resonate:target`,
    `poll://any@<group>`), the one '@' in them that names no one."""
    return "\n".join(
        json.dumps(_with_data_decoded({**p, "tags": _without_routing(p)}), ensure_ascii=False)
        for p in promises
    )


def _decoded(data: str) -> Any:
    """A stored value (base64 of JSON), decoded."""
    return json.loads(base64.b64decode(data, validate=True))


def _with_data_decoded(held: Any) -> Any:
    """A copy of `held` with every stored value (`{"data": <base64>}`) decoded."""
    if isinstance(held, list):
        return [_with_data_decoded(item) for item in held]
    if not isinstance(held, dict):
        return held
    return {
        key: _decoded(value)
        if key == "data" and isinstance(value, str)
        else _with_data_decoded(value)
        for key, value in held.items()
    }


def _without_routing(promise: Mapping[str, Any]) -> dict[str, Any]:
    tags: Mapping[str, Any] = promise.get("tags") or {}
    return {key: value for key, value in tags.items() if key != "resonate:target"}


def _forms(value: str) -> list[bytes]:
    """`value` as it is written raw (UTF-8) and inside a JSON string (escaped)."""
    return [value.encode(), json.dumps(value)[1:-1].encode()]


def _with_base64_decoded(blob: bytes) -> list[bytes]:
    """`blob`, and what every run of base64 characters in it decodes to, recursively.

    Each run is decoded from each of its first four characters: where the run starts is not
    always where the base64 starts (in the snapshot, msgpack writes a string's length before
    it, and a length can be a letter), and only the right start decodes to the text.
    """
    found = [blob]
    for run in _BASE64.finditer(blob):
        for start in range(4):
            chunk = run.group()[start:]
            chunk = chunk[: len(chunk) - (len(chunk) % 4 == 1)]  # 1 character is no whole byte
            # Padded, only base64 characters: this decodes (to garbage, from a wrong start).
            found.extend(_with_base64_decoded(base64.b64decode(chunk + b"=" * (-len(chunk) % 4))))
    return found
