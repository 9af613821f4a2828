"""What a protocol request does to which promise, read off the flat request the SDK sends.

One reading of the wire format serves three readers: the tripwires (kill a worker when it creates
or settles a given promise), the journal (which checkpoints did a run touch, and when), and the
write-ahead log (which requests change state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

type Operation = Literal["create", "settle", "suspend", "acquire", "release", "other"]

# Reads that can never change state; everything else is logged before it is answered.
READ_ONLY_KINDS = frozenset({"schedule.get", "schedule.search", "promise.search"})


@dataclass(frozen=True)
class Touch:
    operation: Operation
    promise_id: str


def _data(action: Any) -> Any:
    if isinstance(action, dict) and "kind" in action and "data" in action:
        return action["data"]
    return action


def _id(obj: Any, key: str = "id") -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else ""


def touches(request: Any) -> list[Touch]:
    """The promises a flat request creates, settles or suspends on, in the order it does so."""
    if not isinstance(request, dict):
        return []
    kind = request.get("kind")
    match kind:
        case "promise.create":
            return [Touch("create", _id(request))]
        case "promise.settle":
            return [Touch("settle", _id(request))]
        case "task.create":
            return [Touch("create", _id(_data(request.get("action"))))]
        case "task.fence":
            action = request.get("action")
            sub_kind = action.get("kind") if isinstance(action, dict) else None
            operation: Operation = "create" if sub_kind == "promise.create" else "settle"
            return [Touch(operation, _id(_data(action)))]
        case "task.fulfill":
            settled = _id(_data(request.get("action"))) or _id(request)
            return [Touch("settle", settled)]
        case "task.suspend":
            # A suspension is about the promises the workflow now waits on (a sleep, a latent
            # promise, a remote call), so that is what a tripwire or the journal names.
            actions = request.get("actions")
            awaited = [_id(_data(a), "awaited") for a in actions or () if isinstance(a, dict)]
            return [Touch("suspend", p) for p in awaited if p]
        case "task.acquire":
            return [Touch("acquire", _id(request))]
        case "task.release":
            return [Touch("release", _id(request))]
        case _:
            return []
