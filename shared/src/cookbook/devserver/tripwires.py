"""Armed crash points: SIGKILL a worker (or this server) at an exact protocol boundary.

The dev server sees every durable step's create and settle, so it can kill the process that sent
one precisely while that process waits for the answer - no timing, and no code in the examples.
A tripwire fires once, on the first request that touches its promise with its operation. A fired
tripwire records how long the journal was when it fired: a `before` wire's request is never
applied, so only that position tells the requests the victim made from those of the process that
recovered after it.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from cookbook.devserver.protocol import Touch

type When = Literal["before", "after"]
type Victim = Literal["worker", "server"]
# kill: SIGKILL, a crash. stall: SIGSTOP, a worker that stops (a GC pause, a partition) and may
# come back later; the server then lets its lease lapse at once (see DevServer._stall).
type Action = Literal["kill", "stall"]

OPERATIONS = ("create", "settle", "suspend")


class TripwireError(ValueError):
    """A tripwire definition that cannot be armed; the message names the field and the reason."""


@dataclass(frozen=True)
class Tripwire:
    id: int
    operation: str  # create | settle | suspend
    promise_id: str
    when: When  # before the request is applied, or after it is durable but before the answer
    victim: Victim
    pid: int | None  # the worker's OS pid when victim == "worker"
    action: Action = "kill"

    def matches(self, touch: Touch) -> bool:
        return touch.operation == self.operation and touch.promise_id == self.promise_id

    def fire(self) -> None:
        pid = os.getpid() if self.victim == "server" else self.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP if self.action == "stall" else signal.SIGKILL)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Tripwires:
    def __init__(self, journal_length: Callable[[], int] = lambda: 0) -> None:
        self._armed: list[Tripwire] = []
        self.fired: list[Tripwire] = []
        self._ids = itertools.count(1)
        self._journal_length = journal_length
        # By tripwire id: the journal's length when it fired. Entries with a greater seq came after.
        self._fired_at: dict[int, int] = {}

    def arm(self, spec: Any) -> Tripwire:
        if not isinstance(spec, dict):
            raise TripwireError("body: expected a JSON object")
        operation = spec.get("operation")
        if operation not in OPERATIONS:
            raise TripwireError(f"operation: must be one of {', '.join(OPERATIONS)}")
        promise_id = spec.get("promise_id")
        if not isinstance(promise_id, str) or not promise_id:
            raise TripwireError("promise_id: must be a non-empty string")
        when = spec.get("when", "before")
        if when not in ("before", "after"):
            raise TripwireError("when: must be 'before' or 'after'")
        victim = spec.get("victim", "worker")
        if victim not in ("worker", "server"):
            raise TripwireError("victim: must be 'worker' or 'server'")
        pid = spec.get("pid")
        if victim == "worker" and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1):
            raise TripwireError("pid: the worker's OS process id is required (an int > 1)")
        action = spec.get("action", "kill")
        if action not in ("kill", "stall"):
            raise TripwireError("action: must be 'kill' or 'stall'")
        if action == "stall" and victim != "worker":
            raise TripwireError("action: only a worker can be stalled")
        wire = Tripwire(
            next(self._ids),
            operation,
            promise_id,
            when,
            victim,
            pid if victim == "worker" else None,
            action,
        )
        self._armed.append(wire)
        return wire

    def take(self, touches: list[Touch], when: When) -> Tripwire | None:
        """Disarm and return the first tripwire this request sets off at `when`, if any."""
        for wire in self._armed:
            if wire.when == when and any(wire.matches(t) for t in touches):
                self._armed.remove(wire)
                self.fired.append(wire)
                self._fired_at[wire.id] = self._journal_length()
                return wire
        return None

    def fired_records(self) -> list[dict[str, Any]]:
        """The tripwires that fired, each with `journal_seq`: the journal's length when it did."""
        return [{**w.to_json(), "journal_seq": self._fired_at[w.id]} for w in self.fired]

    def disarm_all(self) -> None:
        self._armed.clear()

    def armed(self) -> list[Tripwire]:
        return list(self._armed)
