"""Building hostile request bodies for gateway tests: bodies that are not the object an endpoint
takes, and one field of a valid body changed."""

from __future__ import annotations

import copy
import json
from typing import Any


class _Removed:
    """As a value for `changed`: remove the field instead of setting it.

    Its repr is the same in every process: pytest-xdist's workers must collect the same test ids,
    and a test id made with `{value!r}` from a bare `object()` carries a memory address."""

    def __repr__(self) -> str:
        return "<removed>"


REMOVED: Any = _Removed()


def changed(valid: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `valid` with the field at `path` (`a.b`, `items.0.sku`) set to `value`.

    With `value=REMOVED` the field is removed, so one table can name both kinds of bad body.
    """
    body = copy.deepcopy(valid)
    *parents, leaf = path.split(".")
    target: Any = body
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is REMOVED:
        del target[leaf]
    else:
        target[leaf] = value
    return body


def as_json(value: Any) -> bytes:
    """Encoded as a client would send it: ASCII-escaped, so a lone surrogate or a NaN survives."""
    return json.dumps(value).encode()


def malformed_bodies(valid: dict[str, Any]) -> dict[str, bytes]:
    """Bodies that are not the JSON object an endpoint takes, by name (a test id each): an empty
    object, `valid` in an array, null, a string, a number, `valid` cut off halfway, no body."""
    whole = as_json(valid)
    return {
        "empty object": as_json({}),
        "array": as_json([valid]),
        "null": as_json(None),
        "string": as_json("text"),
        "number": as_json(42),
        "truncated json": whole[: len(whole) // 2],
        "empty body": b"",
    }
