"""The log grows with what changes state, not with how often a client polls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cookbook.devserver.state import DurableState


class _Clock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        return self.ms


def _create(promise_id: str, timeout_at: int) -> dict[str, Any]:
    return {
        "kind": "promise.create",
        "corrId": "c",
        "id": promise_id,
        "timeoutAt": timeout_at,
        "param": {},
        "tags": {},
    }


def _get(promise_id: str) -> dict[str, Any]:
    return {"kind": "promise.get", "corrId": "g", "id": promise_id}


def test_polling_a_promise_adds_nothing_to_the_log_until_the_poll_times_it_out(
    tmp_path: Path,
) -> None:
    clock = _Clock()
    state = DurableState(tmp_path, fsync=False, clock=clock)
    state.open()
    state.apply(_create("live", 10**12))
    state.apply(_create("due", 5_000))
    logged = state.wal_seq()
    for _ in range(100):
        state.apply(_get("live"))
        state.apply(_get("due"))
        state.apply(_get("missing"))
    assert state.wal_seq() == logged

    clock.ms = 6_000
    # No tick has run: the read itself times the promise out, so it must be in the log.
    assert state.apply(_get("due")).response["promise"]["state"] == "rejected_timedout"
    assert state.wal_seq() == logged + 1
    state.close()

    clock.ms = 1_000  # a restarted server must not depend on a tick to see the timeout again
    replayed = DurableState(tmp_path, fsync=False, clock=clock)
    replayed.open()
    assert replayed.server.promises["due"].state == "rejected_timedout"
    assert replayed.server.promises["live"].state == "pending"
    replayed.close()


def test_only_a_heartbeat_that_extends_a_lease_is_logged(tmp_path: Path) -> None:
    clock = _Clock()
    state = DurableState(tmp_path, fsync=False, clock=clock)
    state.open()
    action = {
        "kind": "promise.create",
        "head": {"corrId": "c", "version": "v"},
        "data": _create("wf", 10**12) | {"tags": {"resonate:target": "poll://any@w"}},
    }
    state.apply(
        {"kind": "task.create", "corrId": "c", "pid": "w1", "ttl": 10_000, "action": action}
    )
    # A promise that times out after the first lease ran out: its tick is logged, and a replay
    # that missed the heartbeat would release the lease at that tick.
    timer_tags = {"resonate:target": "poll://any@w", "resonate:timer": "true"}
    state.apply(_create("due", 12_000) | {"tags": timer_tags})
    logged = state.wal_seq()
    for pid in ("idle-worker", "w1"):
        state.apply({"kind": "task.heartbeat", "corrId": "h", "pid": pid, "tasks": []})
    state.apply({"kind": "task.heartbeat", "corrId": "h", "pid": "other", "tasks": [{"id": "wf"}]})
    assert state.wal_seq() == logged

    clock.ms = 9_000
    state.apply({"kind": "task.heartbeat", "corrId": "h", "pid": "w1", "tasks": [{"id": "wf"}]})
    assert state.wal_seq() == logged + 1
    clock.ms = 15_000  # past the first lease, inside the extended one
    assert state.tick() is not None
    assert state.server.tasks["wf"].state == "acquired"
    state.close()

    replayed = DurableState(tmp_path, fsync=False, clock=clock)
    replayed.open()
    assert replayed.server.tasks["wf"].state == "acquired"
    replayed.close()
