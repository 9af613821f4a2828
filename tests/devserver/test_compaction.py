"""Snapshots and compaction: a bounded history that loses nothing, also when killed midway."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cookbook import clients
from cookbook.devserver.state import (
    ARCHIVE_NAME,
    COMPACTION_STAGES,
    CRASH_AT_ENV,
    SNAPSHOT_NAME,
    DurableState,
    log_generations,
    log_path,
)
from cookbook.devserver.wal import CorruptLogError
from cookbook.stack import devserver_process, url_of

TARGET = "poll://any@workers"
FAR = 10**13


class _Clock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        self.ms += 1  # every request at its own moment, so creation order is unambiguous
        return self.ms


class _SimulatedCrashError(Exception):
    pass


def _crash_at(stage: str | None) -> Any:
    def hook(reached: str) -> None:
        if reached == stage:
            raise _SimulatedCrashError(stage)

    return hook


def _open(data_dir: Path, clock: _Clock, **kwargs: Any) -> DurableState:
    state = DurableState(data_dir, fsync=False, clock=clock, **kwargs)
    state.open()
    return state


def _abandon(state: DurableState) -> None:
    """What a SIGKILL leaves: no clean close, only the lock and file handles dropped."""
    if state.wal._file is not None:
        state.wal._file.close()
    if state.wal._lock is not None:
        state.wal._lock.close()
    if state.archive is not None:
        state.archive.close()


def _envelope(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "head": {"corrId": "c", "version": "v"}, "data": data}


def _ok(state: DurableState, request: dict[str, Any]) -> dict[str, Any]:
    response = state.apply({"corrId": "c"} | request).response
    assert response["status"] < 300, response
    return response


def _start(state: DurableState, wf: str, tags: dict[str, str] | None = None) -> None:
    """A worker creates and holds workflow `wf` (as `resonate.run` does)."""
    root_tags = {"resonate:origin": wf, "resonate:branch": wf, "resonate:parent": wf}
    root_tags |= {"resonate:target": TARGET} | (tags or {})
    action = _envelope(
        "promise.create", {"id": wf, "timeoutAt": FAR, "param": {"n": wf}, "tags": root_tags}
    )
    _ok(state, {"kind": "task.create", "pid": "w1", "ttl": 60_000, "action": action})


def _step(state: DurableState, wf: str, n: int) -> None:
    step = f"{wf}.{n}"
    tags = {"resonate:origin": wf, "resonate:branch": wf, "resonate:parent": wf}
    create = _envelope("promise.create", {"id": step, "timeoutAt": FAR, "param": {}, "tags": tags})
    _ok(state, {"kind": "task.fence", "id": wf, "version": 0, "action": create})
    settle = _envelope("promise.settle", {"id": step, "state": "resolved", "value": {"n": n}})
    _ok(state, {"kind": "task.fence", "id": wf, "version": 0, "action": settle})


def _finish(state: DurableState, wf: str) -> None:
    settle = _envelope("promise.settle", {"id": wf, "state": "resolved", "value": {"done": wf}})
    _ok(state, {"kind": "task.fulfill", "id": wf, "version": 0, "action": settle})


def _workflow(state: DurableState, wf: str, tags: dict[str, str] | None = None) -> None:
    _start(state, wf, tags)
    for n in range(1, 4):
        _step(state, wf, n)
    _finish(state, wf)


def _history(state: DurableState, first: int, last: int) -> None:
    """Finished workflows, one still running, and a client's bare promises."""
    for i in range(first, last):
        _workflow(state, f"wf-{i}", {"batch": str(i % 3)})
    _start(state, f"running-{first}")
    _step(state, f"running-{first}", 1)
    _ok(state, {"kind": "promise.create", "id": f"bare-{first}", "timeoutAt": FAR, "tags": {}})
    _ok(state, {"kind": "promise.create", "id": f"open-{first}", "timeoutAt": FAR, "tags": {}})
    _ok(
        state,
        {"kind": "promise.settle", "id": f"bare-{first}", "state": "resolved", "value": {}},
    )


def _journal(state: DurableState) -> list[dict[str, Any]]:
    return [msgspec.structs.asdict(entry) for entry in state.journal_since(0)]


def _search(
    state: DurableState, tags: dict[str, str], state_filter: str | None = None
) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        request = {"kind": "promise.search", "corrId": "s", "tags": tags, "limit": 7}
        request |= {"cursor": cursor} if cursor else {}
        request |= {"state": state_filter} if state_filter else {}
        page = state.apply(request).response
        ids += [p["id"] for p in page["promises"]]
        if (cursor := page["cursor"]) is None:
            return ids


def test_compaction_keeps_only_live_state_in_memory_and_every_promise_readable(
    tmp_path: Path,
) -> None:
    clock = _Clock()
    state = _open(tmp_path, clock)
    _history(state, 0, 20)
    schedule: dict[str, Any] = {"kind": "schedule.create", "id": "nightly", "cron": "0 3 * * *"}
    schedule |= {"promiseId": "{{.id}}-{{.timestamp}}", "promiseTimeout": 60_000}
    schedule |= {"promiseTags": {"resonate:target": TARGET}}
    next_run_at = _ok(state, schedule)["schedule"]["nextRunAt"]
    _start(state, "waiting-0")
    awaits = _envelope("promise.register_callback", {"awaited": "open-0", "awaiter": "waiting-0"})
    suspended = {"kind": "task.suspend", "id": "waiting-0", "version": 0, "actions": [awaits]}
    assert _ok(state, suspended)["status"] == 200
    everything = state.snapshot()
    searched = _search(state, {"batch": "1"})
    journal = [e.seq for e in state.journal_since(0)]

    done = state.compact()

    assert done.archived_promises == 20 * 4 + 1  # the finished workflows and the settled bare one
    live = ["open-0", "running-0", "running-0.1", "waiting-0"]
    assert sorted(dict.keys(state.server.promises)) == live
    assert sorted(dict.keys(state.server.tasks)) == ["running-0", "waiting-0"]
    assert state.snapshot() == everything
    assert _search(state, {"batch": "1"}) == searched
    assert len(_search(state, {"resonate:origin": "wf-7"}, "resolved")) == 4
    assert [e.seq for e in state.journal_since(0)] == journal
    got = state.apply({"kind": "promise.get", "corrId": "g", "id": "wf-7.2"}).response
    assert got["promise"]["value"] == {"n": 2}

    # Re-running a finished workflow finds it, with its steps preloaded, as before compaction.
    again = _envelope("promise.create", {"id": "wf-3", "timeoutAt": FAR, "tags": {}})
    rerun = _ok(state, {"kind": "task.create", "pid": "w2", "ttl": 1_000, "action": again})
    assert rerun["task"]["state"] == "fulfilled"
    assert [p["id"] for p in rerun["preload"]] == ["wf-3.1", "wf-3.2", "wf-3.3"]
    state.close()

    assert log_generations(tmp_path) == [1]  # the compacted log is gone
    restarted = _open(tmp_path, clock)
    assert restarted.snapshot() == everything
    kept = _ok(restarted, {"kind": "schedule.get", "id": "nightly"})
    assert kept["schedule"]["nextRunAt"] == next_run_at
    # The suspended workflow still awaits the open promise: settling it resumes the workflow.
    waiting = restarted.server.tasks["waiting-0"]
    assert (waiting.state, waiting.version) == ("suspended", 0)
    _ok(restarted, {"kind": "promise.settle", "id": "open-0", "state": "resolved", "value": {}})
    assert (waiting.state, waiting.version) == ("pending", 1)  # resumed
    # The running workflow carries on where it was, its finished step preloaded.
    _step(restarted, "running-0", 2)
    _finish(restarted, "running-0")
    assert (
        restarted.apply({"kind": "promise.get", "corrId": "g", "id": "running-0"}).response[
            "promise"
        ]["state"]
        == "resolved"
    )
    restarted.close()


def test_restart_replays_only_the_log_written_since_the_last_compaction(tmp_path: Path) -> None:
    clock = _Clock()
    state = _open(tmp_path, clock, compact_every=50)
    for i in range(30):
        _workflow(state, f"wf-{i}")
        if state.should_compact():
            state.compact()
    assert state.compactions >= 4
    tail = state.wal_seq() - state._appended_at_compaction
    everything = state.snapshot()
    state.close()

    restarted = _open(tmp_path, clock)
    assert restarted.replayed_records == tail < 50
    assert restarted.snapshot() == everything
    assert len(dict.keys(restarted.server.promises)) <= 4 * 6  # at most the uncompacted tail
    restarted.close()


@pytest.mark.parametrize("stage", COMPACTION_STAGES)
def test_a_compaction_killed_at_any_stage_loses_nothing(tmp_path: Path, stage: str) -> None:
    clock = _Clock()
    state = _open(tmp_path, clock, at_compaction_stage=_crash_at(stage))
    _history(state, 0, 10)
    # One compaction that lands, so the killed one has a snapshot and archive rows to go back to.
    state._at_compaction_stage = _crash_at(None)
    state.compact()
    _history(state, 10, 20)
    acknowledged = state.snapshot()
    journal = _journal(state)
    state._at_compaction_stage = _crash_at(stage)

    with pytest.raises(_SimulatedCrashError):
        state.compact()
    _abandon(state)

    restarted = _open(tmp_path, clock)
    assert restarted.snapshot() == acknowledged
    # Every request replays as it was answered (a fence is not refused by a task it never saw).
    assert _journal(restarted) == journal
    assert not (tmp_path / SNAPSHOT_NAME).with_suffix(".partial").exists()
    # It carries on, and compacts again, from whatever the kill left.
    _history(restarted, 20, 25)
    now = restarted.snapshot()
    restarted.compact()
    restarted.close()
    again = _open(tmp_path, clock)
    assert again.snapshot() == now
    assert again.archive is not None
    # Nothing archived twice: every finished workflow, and the three settled bare promises.
    assert again.archive.counts()["promises"] == 25 * 4 + 3
    again.close()


def test_a_damaged_record_in_a_closed_log_refuses_to_start(tmp_path: Path) -> None:
    clock = _Clock()
    state = _open(tmp_path, clock, at_compaction_stage=_crash_at("archived"))
    _history(state, 0, 3)
    with pytest.raises(_SimulatedCrashError):
        state.compact()  # the old log stays: the new snapshot never landed
    _abandon(state)
    closed = log_path(tmp_path, 0)
    closed.write_bytes(closed.read_bytes() + b"garbage\n")  # a bad record, at its very end

    with pytest.raises(CorruptLogError) as refused:
        _open(tmp_path, clock)
    assert str(closed) in str(refused.value)


@pytest.mark.parametrize("stage", COMPACTION_STAGES)
def test_a_server_sigkilled_during_a_compaction_comes_back_with_every_promise(
    tmp_path: Path, stage: str
) -> None:
    data = tmp_path / "data"
    server = devserver_process(data)
    server.argv += ["--compact-every", "100", "--tick-ms", "20"]
    server.env[CRASH_AT_ENV] = stage
    server.start()
    settled: dict[str, Any] = {}
    try:
        with clients.client(base_url=url_of(server), timeout=10) as client:

            def send(kind: str, data: dict[str, Any]) -> None:
                reply = client.post("/", json=_envelope(kind, data)).json()
                assert reply["head"]["status"] < 300, reply

            send("promise.create", {"id": "pending", "timeoutAt": FAR, "tags": {}})
            # Creates and settles until the server kills itself in the compaction they cause
            # (past 100 records, at its next 20 ms tick); what was answered must survive.
            for i in range(5_000):
                try:
                    send("promise.create", {"id": f"p-{i}", "timeoutAt": FAR, "tags": {"k": "v"}})
                    send("promise.settle", {"id": f"p-{i}", "state": "resolved", "value": {"i": i}})
                except httpx.TransportError:
                    break
                settled[f"p-{i}"] = {"i": i}
        assert server._popen is not None
        assert server._popen.wait(timeout=30) == -signal.SIGKILL  # by itself, at that stage
    finally:
        server.stop()
    assert len(settled) >= 45  # the compaction came after about 100 records

    restarted = devserver_process(data).start()
    try:
        with clients.client(base_url=url_of(restarted), timeout=10) as client:
            for promise_id, value in settled.items():
                got = client.post("/", json=_envelope("promise.get", {"id": promise_id})).json()
                assert got["data"]["promise"]["state"] == "resolved", promise_id
                assert got["data"]["promise"]["value"] == value
            got = client.post("/", json=_envelope("promise.get", {"id": "pending"})).json()
            assert got["data"]["promise"]["state"] == "pending"
            found = client.post(
                "/", json=_envelope("promise.search", {"tags": {"k": "v"}, "limit": 1000})
            ).json()
            assert len(found["data"]["promises"]) >= len(settled)
    finally:
        restarted.stop()
    assert (data / ARCHIVE_NAME).exists()
