"""The dev server's state machine answers like the SDK's, but for what a fence preloads.

`IndexedServerState` must store exactly what `ServerState` stores (a log written by either replays
into the other) and answer the same, except that `task.fence` answers with an empty preload.
Random request sequences over a few workflows, their steps and a remote child check both.
"""

from __future__ import annotations

from typing import Any

from cookbook.devserver.machine import IndexedServerState
from hypothesis import given, settings
from hypothesis import strategies as st
from resonate.connections.local import ServerState
from resonate.error import ServerError

ROOTS = ("r1", "r2")
TARGET = "poll://any@workers"


def _promise(promise_id: str, timeout_at: int) -> dict[str, Any]:
    root, _, child = promise_id.partition(":")
    if not child:  # a workflow: the root of its own branch, dispatched to a worker
        tags = {"resonate:branch": root, "resonate:target": TARGET}
    elif child.startswith("g"):  # an rpc child: a branch (and a task) of its own
        tags = {
            "resonate:branch": promise_id,
            "resonate:target": TARGET,
            "resonate:scope": "global",
        }
    else:  # a ctx.run step: in its parent's branch
        tags = {"resonate:branch": root, "resonate:scope": "local"}
    return {"id": promise_id, "timeoutAt": timeout_at, "param": {"data": "e30="}, "tags": tags}


def _action(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "head": {"corrId": "sub", "version": "v"}, "data": data}


def _settle(promise_id: str) -> dict[str, Any]:
    return {"id": promise_id, "state": "resolved", "value": {"data": "MQ=="}}


# Mostly workflow r1 and its steps, so that its branch grows and its task changes hands.
promise_ids = st.sampled_from([*ROOTS, "r1:1", "r1:2", "r1:3", "r1:4", "r2:1", "r1:g1", "r2:g1"])
roots = st.sampled_from(["r1", "r1", "r1", "r2", "r1:g1"])
# Mostly the task's version at the time (a live lease), sometimes a stale or a future one.
CURRENT = -1
versions = st.sampled_from([CURRENT, CURRENT, CURRENT, 0, 1])
timeouts = st.sampled_from([50, 10_000, 10**12])


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "promise.create",
                "promise.settle",
                "task.create",
                "task.acquire",
                "task.acquire",
                "task.fence",
                "task.fence",
                "task.fence",
                "task.fence",
                "task.suspend",
                "task.release",
                "task.release",
                "task.release",
                "task.fulfill",
                "task.heartbeat",
                "tick",
            ]
        )
    )
    request: dict[str, Any] = {"kind": kind, "corrId": "c"}
    match kind:
        case "promise.create":
            request |= _promise(draw(promise_ids), draw(timeouts))
        case "promise.settle":
            request |= _settle(draw(promise_ids))
        case "task.create":
            root = draw(roots)
            request |= {
                "pid": "p",
                "ttl": 1000,
                "action": _action("promise.create", _promise(root, draw(timeouts))),
            }
        case "task.acquire":
            request |= {"id": draw(roots), "version": draw(versions), "pid": "p", "ttl": 1000}
        case "task.fence":
            child = draw(promise_ids)
            action = (
                _action("promise.create", _promise(child, draw(timeouts)))
                if draw(st.booleans())
                else _action("promise.settle", _settle(child))
            )
            request |= {"id": draw(roots), "version": draw(versions), "action": action}
        case "task.suspend":
            root = draw(roots)
            # One or two awaited promises: the awaiter index must follow each of them.
            awaited_ids = draw(st.lists(promise_ids, min_size=1, max_size=2))
            request |= {
                "id": root,
                "version": draw(versions),
                "actions": [
                    _action("promise.register_callback", {"awaited": awaited, "awaiter": root})
                    for awaited in awaited_ids
                ],
            }
        case "task.release":
            request |= {"id": draw(roots), "version": draw(versions)}
        case "task.fulfill":
            root = draw(roots)
            request |= {
                "id": root,
                "version": draw(versions),
                "action": _action("promise.settle", _settle(root)),
            }
        case "task.heartbeat":
            request |= {"pid": "p", "tasks": [{"id": draw(roots), "version": draw(versions)}]}
    return request


def _resolve_versions(request: dict[str, Any], machine: ServerState) -> None:
    for ref in [request, *request.get("tasks", ())]:
        if ref.get("version") == CURRENT:
            task = machine.tasks.get(ref["id"])
            ref["version"] = task.version if task is not None else 0


def _apply(machine: ServerState, now: int, request: dict[str, Any]) -> Any:
    machine.outgoing.clear()
    if request["kind"] == "tick":
        machine.tick(now)
        return ("tick", [(m.address, m.message) for m in machine.outgoing])
    try:
        response = machine.apply(now, request)
    except ServerError as exc:
        return ("error", exc.code, exc.message)
    return (response, [(m.address, m.message) for m in machine.outgoing])


def _stored(machine: ServerState) -> Any:
    return (
        [
            (p.to_record(), sorted(p.awaiters), sorted(p.subscribers))
            for p in machine.promises.values()
        ],
        [(t.to_record(), sorted(t.resumes)) for t in machine.tasks.values()],
        [(t.id, t.timeout) for t in machine.p_timeouts],
        [(t.id, t.typ, t.timeout) for t in machine.t_timeouts],
    )


@settings(max_examples=300, deadline=None, derandomize=True)  # the same cases on every run
@given(st.lists(st.tuples(st.integers(0, 300), requests()), max_size=60))
def test_stores_what_the_sdk_stores_and_answers_the_same_but_fence_preloads(
    steps: list[tuple[int, dict[str, Any]]],
) -> None:
    sdk, ours = ServerState(), IndexedServerState()
    # Start every workflow (and the remote child) so that most requests find a task to act on.
    started = [
        (0, {"kind": "task.create", "corrId": "c", "pid": "p", "ttl": 1000, "action": action})
        for action in (_action("promise.create", _promise(r, 10**12)) for r in [*ROOTS, "r1:g1"])
    ]
    now = 0
    for advance, request in [*started, *steps]:
        now += advance
        _resolve_versions(request, sdk)
        expected, got = _apply(sdk, now, request), _apply(ours, now, request)
        if request["kind"] == "task.fence" and isinstance(expected[0], dict):
            assert got[0].get("preload", []) == []
            expected[0].pop("preload", None)
            got[0].pop("preload", None)
        assert got == expected, request
        assert _stored(ours) == _stored(sdk)


def test_a_fence_answers_without_the_branch_and_an_acquire_with_it() -> None:
    machine = IndexedServerState()
    create = {
        "pid": "p",
        "ttl": 60_000,
        "action": _action("promise.create", _promise("r1", 10**12)),
    }
    machine.apply(0, {"kind": "task.create", "corrId": "c", **create})
    for step in ("r1:1", "r1:2"):
        fenced = machine.apply(
            1,
            {
                "kind": "task.fence",
                "corrId": "c",
                "id": "r1",
                "version": 0,
                "action": _action("promise.create", _promise(step, 10**12)),
            },
        )
        assert fenced["status"] == 200
        assert fenced["action"]["data"]["promise"]["id"] == step
        assert fenced["preload"] == []
    machine.apply(2, {"kind": "task.release", "corrId": "c", "id": "r1", "version": 0})
    acquired = machine.apply(
        3, {"kind": "task.acquire", "corrId": "c", "id": "r1", "version": 1, "pid": "q", "ttl": 1}
    )
    assert [p["id"] for p in acquired["preload"]] == ["r1:1", "r1:2"]


def test_a_settled_workflow_stops_awaiting_what_it_was_suspended_on() -> None:
    # The awaiter index must forget a workflow settled from outside while it was suspended, as
    # ServerState's scan of every promise does; otherwise a later settle would resume a
    # finished task.
    script: list[dict[str, Any]] = [
        {
            "kind": "task.create",
            "corrId": "c",
            "pid": "p",
            "ttl": 1000,
            "action": _action("promise.create", _promise("r1", 10**12)),
        },
        {
            "kind": "task.fence",
            "corrId": "c",
            "id": "r1",
            "version": 0,
            "action": _action("promise.create", _promise("r1:g1", 10**12)),
        },
        {
            "kind": "task.suspend",
            "corrId": "c",
            "id": "r1",
            "version": 0,
            "actions": [
                _action("promise.register_callback", {"awaited": "r1:g1", "awaiter": "r1"})
            ],
        },
        {"kind": "promise.settle", "corrId": "c", **_settle("r1")},
        {"kind": "promise.settle", "corrId": "c", **_settle("r1:g1")},
    ]
    sdk, ours = ServerState(), IndexedServerState()
    for now, request in enumerate(script):
        assert _apply(ours, now, request) == _apply(sdk, now, request), request
        assert _stored(ours) == _stored(sdk), request
    assert ours.promises["r1:g1"].awaiters == set()
