"""The harness's own logic: checkpoints from a journal, crash points, and the re-run detector."""

from __future__ import annotations

from typing import Any

from cookbook.crash.harness import Outcome, rerun_after_kill
from cookbook.crash.plan import Checkpoint, CrashPoint, checkpoints, crash_points

X = "trip-1"


def entry(operation: str, promise: str, corr: str) -> dict[str, Any]:
    return {"operation": operation, "promise_id": promise, "corr_id": corr}


def promise(suffix: str, **tags: str) -> dict[str, Any]:
    return {"id": X + suffix, "tags": {"resonate:scope": "local", **tags}, "param": {}}


def test_checkpoints_are_named_by_the_effect_they_applied_in_creation_order() -> None:
    journal = [
        entry("create", X, "a"),
        entry("create", X + ":1", "b"),
        entry("settle", X + ":1", "c"),
        entry("create", X + ":2", "d"),
        entry("suspend", X + ":2", "e"),
        entry("create", X + ":3", "f"),
    ]
    promises = [
        promise(":1"),
        promise(":2", **{"resonate:timer": "true", "resonate:scope": "global"}),
        promise(":3"),
    ]
    effects = [
        {"idempotency_key": X + ":1", "provider": "hotel", "action": "reserve"},
        {"idempotency_key": X + ":3", "provider": "hotel", "action": "reserve"},
    ]

    found = checkpoints(X, journal, promises, effects)

    assert found == [
        Checkpoint(":1", "step", "hotel.reserve#1", False),
        Checkpoint(":2", "sleep", "sleep", True),
        Checkpoint(":3", "step", "hotel.reserve#2", False),
    ]
    phases = [(p.checkpoint.suffix, p.phase) for p in crash_points("s", found)]
    assert phases == [
        (":1", "before"),
        (":1", "after-effect"),
        (":1", "server-kill"),
        (":2", "suspended"),
        (":2", "server-kill"),
        (":3", "before"),
        (":3", "after-effect"),
        (":3", "server-kill"),
        (":1", "stall"),
        (":3", "stall"),
    ]


def test_a_step_settled_before_the_kill_and_touched_again_is_a_rerun() -> None:
    point = CrashPoint("s", Checkpoint(":2", "step", "car.reserve", False), "before")
    wire = point.tripwire(X, worker_pid=4242)
    journal = [
        entry("create", X + ":1", "a"),
        entry("settle", X + ":1", "b"),
        # the kill: the create of :2 was never applied; the new worker starts here
        entry("create", X + ":2", "c"),
        entry("create", X + ":1", "z"),
    ]
    assert rerun_after_kill(journal, wire, local_steps={X + ":1", X + ":2"}) == [X + ":1"]


def numbered(journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries as the dev server serves them: each with its position in the journal."""
    return [{**e, "seq": seq} for seq, e in enumerate(journal, start=1)]


def test_a_step_re_run_before_reaching_a_before_wire_is_a_rerun() -> None:
    # Killed as it asked to create :2: that request was never applied. The new worker then ran
    # the finished step :1 again (new corrIds) before it created :2 itself.
    point = CrashPoint("s", Checkpoint(":2", "step", "car.reserve", False), "before")
    wire = point.tripwire(X, worker_pid=4242)
    journal = numbered(
        [
            entry("create", X + ":1", "a"),
            entry("settle", X + ":1", "b"),
            entry("create", X + ":1", "c"),
            entry("settle", X + ":1", "d"),
            entry("create", X + ":2", "e"),
        ]
    )
    local = {X + ":1", X + ":2"}
    assert rerun_after_kill(journal, wire, local, kill_seq=2) == [X + ":1"]


def test_an_after_effect_kill_splits_where_the_wire_fired_too() -> None:
    point = CrashPoint("s", Checkpoint(":2", "step", "car.reserve", False), "after-effect")
    wire = point.tripwire(X, worker_pid=4242)
    journal = numbered(
        [
            entry("create", X + ":1", "a"),
            entry("settle", X + ":1", "b"),
            entry("create", X + ":2", "c"),
            # killed as it asked to settle :2; the new worker settles :1 again, then :2
            entry("settle", X + ":1", "d"),
            entry("settle", X + ":2", "e"),
        ]
    )
    assert rerun_after_kill(journal, wire, {X + ":1", X + ":2"}, kill_seq=3) == [X + ":1"]


def test_a_recovery_that_replays_from_the_journal_is_no_rerun_wherever_the_wire_fired() -> None:
    point = CrashPoint("s", Checkpoint(":2", "step", "car.reserve", False), "before")
    wire = point.tripwire(X, worker_pid=4242)
    journal = numbered(
        [
            entry("create", X + ":1", "a"),
            entry("settle", X + ":1", "b"),
            entry("create", X + ":3", "c"),  # a remote call: re-created on every replay
            # killed at the create of :2; the new worker re-creates the global :3, retries
            # its own request once (same corrId), and goes on
            entry("create", X + ":3", "d"),
            entry("create", X + ":2", "e"),
            entry("create", X + ":2", "e"),
            entry("settle", X + ":2", "f"),
        ]
    )
    assert rerun_after_kill(journal, wire, {X + ":1", X + ":2"}, kill_seq=3) == []


def test_a_retried_request_after_a_server_kill_is_not_a_rerun() -> None:
    point = CrashPoint("s", Checkpoint(":1", "step", "car.reserve", False), "server-kill")
    wire = point.tripwire(X, worker_pid=4242)
    journal = [
        entry("create", X + ":1", "a"),
        entry("settle", X + ":1", "b"),
        entry("settle", X + ":1", "b"),
        entry("create", X + ":2", "c"),
    ]
    assert rerun_after_kill(journal, wire, local_steps={X + ":1", X + ":2"}) == []


def test_outcomes_compare_by_the_step_that_issued_each_id() -> None:
    effects = [{"idempotency_key": "run-1:2", "resource_id": "car_abc"}]
    outcome = Outcome("resolved", "{'car': 'car_abc', 'trip': 'run-1'}").normalized(
        "run-1", effects
    )
    assert outcome == Outcome("resolved", "{'car': '<effect:2>', 'trip': '<id>'}")


def test_re_creating_a_settled_promise_on_replay_is_not_a_rerun_but_settling_it_is() -> None:
    point = CrashPoint("s", Checkpoint(":3", "sleep", "sleep", True), "suspended")
    wire = point.tripwire(X, worker_pid=4242)
    journal = [
        entry("create", X + ":2", "a"),
        entry("settle", X + ":2", "signal"),
        entry("suspend", X + ":3", "b"),
        # after the kill, the replay re-creates the latent promise :2 (idempotent, no work)
        entry("create", X + ":2", "c"),
    ]
    assert rerun_after_kill(journal, wire, local_steps=set()) == []
    settled_again = [*journal, entry("settle", X + ":2", "d")]
    assert rerun_after_kill(settled_again, wire, local_steps=set()) == [X + ":2"]
