"""The SDK's own server state machine, made durable by a write-ahead log.

`resonate.connections.local.ServerState` is what `Resonate()` runs in-process in local mode. Its
`apply(now, request)` is deterministic given `now`, so logging each request with the `now` it was
applied at (and each tick that changed something) and replaying the log rebuilds the exact state.
This module and its package are the only places in the cookbook that touch SDK internals; pin
resonate-sdk exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resonate.connections.local import I64_MAX, OutgoingMessage, _get, _opt_i64, require_str
from resonate.error import ServerError

from cookbook.devserver.machine import IndexedServerState, Schedule, tick_request
from cookbook.devserver.protocol import READ_ONLY_KINDS, touches
from cookbook.devserver.wal import WriteAheadLog

log = logging.getLogger("cookbook.devserver")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class JournalEntry:
    """One state-changing request, as the harness sees it: which promise, what was done, when."""

    seq: int
    at_ms: int
    kind: str
    operation: str
    promise_id: str
    # A retried HTTP request keeps its corrId; a re-executed step sends a new one.
    corr_id: str
    # The status the request was answered with: a fenced-off write is refused (409).
    status: int = 200


@dataclass
class Applied:
    """The outcome of one request: the flat response, the pushes it caused, and its log position."""

    response: dict[str, Any]
    outgoing: list[OutgoingMessage]
    log_seq: int


class DurableState:
    def __init__(
        self, data_dir: Path, *, fsync: bool = True, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.server = IndexedServerState()
        self.wal = WriteAheadLog(data_dir / "wal.jsonl", fsync=fsync)
        self.journal: list[JournalEntry] = []
        self._clock = clock
        self._last_now = 0
        self.replayed_records = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> list[OutgoingMessage]:
        """Replay the log, then make the recovered state live again.

        Returns the pushes a freshly started server owes: an `execute` for every pending task,
        because the messages that were only in memory died with the previous process.
        """
        self.wal.lock()
        for record in self.wal.replay():
            now = int(record["now"])
            self._last_now = max(self._last_now, now)
            if "req" in record:
                replayed = self._apply_unlogged(now, record["req"])
                self._journal(now, record["req"], _status(replayed))
            elif "skip_ms" in record:
                self._skip_unlogged(now, int(record["skip_ms"]))
            else:
                self._tick_unlogged(now)
            self.replayed_records += 1
        self.server.outgoing.clear()
        self.wal.open()
        self._renew_leases()
        return self._owed_executes()

    def close(self) -> None:
        self.wal.close()

    def wal_seq(self) -> int:
        """The position of the last record appended: waiting for it covers everything before."""
        return self.wal.appended

    def _renew_leases(self) -> None:
        # Leases kept running on the wall clock while the server was down. The workers holding
        # them are probably alive and mid-step; renewing spares them a needless re-run.
        holders: dict[str, list[dict[str, Any]]] = {}
        for task in self.server.tasks.values():
            if task.state == "acquired" and task.pid is not None:
                holders.setdefault(task.pid, []).append({"id": task.id, "version": task.version})
        for pid, tasks in sorted(holders.items()):
            self.apply(
                {"kind": "task.heartbeat", "corrId": "devserver-replay", "pid": pid, "tasks": tasks}
            )

    def _owed_executes(self) -> list[OutgoingMessage]:
        owed = []
        for task in self.server.tasks.values():
            promise = self.server.promises.get(task.id)
            if task.state == "pending" and promise is not None:
                address = promise.tags.get("resonate:target")
                if address is not None:
                    message = {
                        "kind": "execute",
                        "data": {"task": {"id": task.id, "version": task.version}},
                    }
                    owed.append(OutgoingMessage(address=address, message=message))
        return owed

    # -- requests and ticks -------------------------------------------------------------------

    def now(self) -> int:
        # Never let time run backwards relative to the log: timeouts computed before a restart
        # must not un-expire.
        self._last_now = max(self._last_now, self._clock())
        return self._last_now

    def apply(self, request: dict[str, Any]) -> Applied:
        """Apply one flat request and append it to the log (not yet durable: see `wal.durable`).

        Raises `ServerError` for a malformed request, after logging it: `apply` may have changed
        state before it noticed, and replay must make the same partial change.
        """
        return self._apply_at(self.now(), request)

    def _apply_at(self, now: int, request: dict[str, Any]) -> Applied:
        kind = request.get("kind")
        if kind == "promise.search":
            # A read answers only once everything it may show is on disk (DevServer._commit waits).
            return Applied(self._search(request), [], self.wal.appended)
        # A `promise.get` changes state only when it times out the promise it reads; logging
        # every poll (and fsyncing it) made the log grow with time, not with work.
        get_times_out = kind == "promise.get" and self._times_out(now, request.get("id"))
        # Likewise a heartbeat that extends no lease (a worker with nothing leased beats too).
        heartbeat_extends = kind == "task.heartbeat" and self._heartbeat_extends(request)
        status = 500
        try:
            response = self._apply_unlogged(now, request, raise_errors=True)
            status = _status(response)
        except ServerError as exc:
            status = exc.code
            raise
        finally:
            # A read is not logged, but waits for what it read to be durable.
            seq = self.wal.appended
            if (
                kind not in READ_ONLY_KINDS
                and (kind != "promise.get" or get_times_out)
                and (kind != "task.heartbeat" or heartbeat_extends)
            ):
                seq = self.wal.append({"now": now, "req": request})
                self._journal(now, request, status)
        outgoing = self.server.outgoing
        self.server.outgoing = []
        return Applied(response, outgoing, seq)

    def _times_out(self, now: int, promise_id: Any) -> bool:
        """Whether a request touching `promise_id` now makes ServerState time it out."""
        promise = self.server.promises.get(promise_id) if isinstance(promise_id, str) else None
        return promise is not None and promise.state == "pending" and now >= promise.timeout_at

    def _heartbeat_extends(self, request: dict[str, Any]) -> bool:
        """Whether `ServerState.task_heartbeat` would extend a lease (or fail part-way: log it)."""
        pid, refs = request.get("pid"), request.get("tasks")
        if not isinstance(pid, str):
            return True
        if not isinstance(refs, list):
            return False
        try:
            for ref in refs:
                task = self.server.tasks.get(require_str(ref, "id"))
                version = _opt_i64(_get(ref, "version"))
                if (
                    task is not None
                    and task.state == "acquired"
                    and task.pid == pid
                    and (version is None or version == task.version)
                ):
                    return True
        except ServerError:
            return True
        return False

    def tick(self) -> Applied | None:
        """Advance time; log the tick only when it changes something (it usually does not)."""
        now = self.now()
        if not self._tick_changes_state(now):
            return None
        self._tick_unlogged(now)
        seq = self.wal.append({"now": now, "tick": True})
        outgoing = self.server.outgoing
        self.server.outgoing = []
        return Applied({}, outgoing, seq)

    def fire_due_schedules(self) -> list[Applied]:
        """Create the promise of every schedule tick that is due, as a client's create would be.

        Each is an ordinary logged `promise.create` (its `resonate:target` tag makes the task
        and the `execute`); applying it moves the schedule to its next tick. Its id depends only
        on the schedule and the tick, so a create repeated after a crash finds the promise there
        and the tick does not run twice.
        """
        now = self.now()
        fired = []
        for schedule, tick in self.server.due_schedules(now):
            try:
                fired.append(self._apply_at(now, tick_request(schedule, tick)))
            except ServerError as exc:
                # Only a template that expands to no valid id gets here; it would fail again
                # at every turn of the tick loop, so say so rather than stop the loop.
                log.warning("schedule %s: its tick at %d was refused: %s", schedule.id, tick, exc)
        return fired

    # -- time skipping (opt-in: `--skip-time`) -----------------------------------------------
    #
    # Skipping moves every pending deadline earlier instead of the server's clock later. The two
    # are the same to the state machine, but not to the SDK: a worker computes `timeoutAt` on its
    # own clock (`now + 1 day` for a step), so a server clock 30 days ahead would see every
    # promise created after the jump born timed out. Shifting the stored deadlines keeps both
    # clocks equal, needs no offset to persist, and replays from the log like any tick.

    def skip_to_next_timer(self) -> Applied | None:
        """When every execution is suspended, fire the earliest pending timer now.

        A durable sleep, a promise timeout or a schedule's tick fires exactly as if its
        deadline had passed: every pending promise deadline and every schedule's next tick
        moves `deadline - now` earlier, then an ordinary tick settles what fell due (and the
        tick loop's `fire_due_schedules` fires a schedule's tick, stamped with the skipped-to
        time). Nothing
        happens while a task waits for a worker or is leased to one, so a live worker's lease
        is never cut short, and lease and re-send timers keep running on the wall clock.
        """
        if self._any_execution_active():
            return None
        now = self.now()
        deadlines = self._timer_deadlines()
        if not deadlines or min(deadlines) <= now:
            return None  # nothing to skip to, or the ordinary tick fires it
        shift = min(deadlines) - now
        self._skip_unlogged(now, shift)
        seq = self.wal.append({"now": now, "skip_ms": shift})
        outgoing = self.server.outgoing
        self.server.outgoing = []
        return Applied({}, outgoing, seq)

    def _timer_deadlines(self) -> list[int]:
        """The deadlines the tick loop acts on by itself: pending promises with a timeout entry,
        every schedule's next tick, and the earliest timeout of a promise without a target (a
        `ctx.promise` awaiting a person times out at once when everything else is suspended, as
        its deadline passing would do).

        Anything else the tick loop learns to fire by itself belongs here too, or skipping stops
        short of it.
        """
        deadlines = [
            pt.timeout
            for pt in self.server.p_timeouts
            if (promise := self.server.promises.get(pt.id)) is not None
            and promise.state == "pending"
        ] + [s.next_run_at for s in self.server.schedules.values() if isinstance(s, Schedule)]
        if (latent := self.server.next_latent_deadline()) is not None:
            deadlines.append(latent)
        return deadlines

    def _any_execution_active(self) -> bool:
        """Whether some task other than a timer's is waiting for a worker or leased to one.

        A sleep's own task does not count: a worker acquires it and drops it unreleased.
        """
        for task in self.server.tasks.values():
            if task.state in ("pending", "acquired"):
                promise = self.server.promises.get(task.id)
                if promise is None or promise.tags.get("resonate:timer") != "true":
                    return True
        return False

    def _skip_unlogged(self, now: int, shift: int) -> None:
        for promise in self.server.promises.values():
            # A promise without a timeout carries I64_MAX; it stays "never".
            if promise.state == "pending" and promise.timeout_at < I64_MAX:
                promise.timeout_at -= shift
        for pt in self.server.p_timeouts:
            if pt.timeout < I64_MAX:
                pt.timeout -= shift
        for schedule in self.server.schedules.values():
            if isinstance(schedule, Schedule):
                schedule.next_run_at -= shift
        self.server.shift_latent_deadlines(shift)
        self._tick_unlogged(now)

    # -- end of time skipping ------------------------------------------------------------------

    def _apply_unlogged(
        self, now: int, request: dict[str, Any], *, raise_errors: bool = False
    ) -> dict[str, Any]:
        try:
            return self.server.apply(now, request)
        except ServerError:
            if raise_errors:
                raise
            return {}
        except Exception as exc:
            # A request shape ServerState did not anticipate. Replay must survive it too, or one
            # hostile request would keep the server from ever starting again.
            if raise_errors:
                raise ServerError(400, f"malformed request: {exc!r}") from exc
            return {}

    def _tick_unlogged(self, now: int) -> None:
        """ServerState's tick, then the timeouts of promises without a target, which it skips.

        A tick record replays through here too, so the latent timeouts it fired fire again.
        """
        self.server.outgoing.clear()
        self.server.tick(now)
        self.server.expire_latent(now)

    def _tick_changes_state(self, now: int) -> bool:
        # Mirrors the conditions under which ServerState.tick and expire_latent act.
        latent = self.server.next_latent_deadline()
        if latent is not None and latent <= now:
            return True
        promises, tasks = self.server.promises, self.server.tasks
        for pt in self.server.p_timeouts:
            promise = promises.get(pt.id)
            if now >= pt.timeout and promise is not None and promise.state == "pending":
                return True
        for tt in self.server.t_timeouts:
            task = tasks.get(tt.id)
            if now < tt.timeout or task is None:
                continue
            if (tt.typ == 1 and task.state == "acquired") or (
                tt.typ == 0 and task.state == "pending"
            ):
                return True
        return False

    def _journal(self, now: int, request: Any, status: int) -> None:
        if not isinstance(request, dict):
            return
        kind, corr_id = str(request.get("kind", "")), str(request.get("corrId", ""))
        for touch in touches(request):
            self.journal.append(
                JournalEntry(
                    len(self.journal) + 1,
                    now,
                    kind,
                    touch.operation,
                    touch.promise_id,
                    corr_id,
                    status,
                )
            )

    # -- leases ---------------------------------------------------------------------------------

    def release_leases_of(self, pid: str, corr_id: str = "devserver") -> list[Applied]:
        """Release every task leased to `pid`, as if its lease had lapsed right now."""
        released = []
        for task in sorted(self.server.tasks.values(), key=lambda t: t.id):
            if task.state == "acquired" and task.pid == pid:
                released.append(
                    self.apply(
                        {
                            "kind": "task.release",
                            "corrId": corr_id,
                            "id": task.id,
                            "version": task.version,
                        }
                    )
                )
        return released

    def lease_holder(self, request: dict[str, Any]) -> str | None:
        """The worker (its Resonate pid) holding the lease a task request was made under."""
        task_id = request.get("id")
        task = self.server.tasks.get(task_id) if isinstance(task_id, str) else None
        return task.pid if task is not None and task.state == "acquired" else None

    # -- reads -------------------------------------------------------------------------------------

    def _search(self, request: dict[str, Any]) -> dict[str, Any]:
        """`promise.search`, which ServerState lacks: state and exact tag filters, offset cursor."""
        state = request.get("state")
        raw_tags, raw_limit, cursor = (
            request.get("tags"),
            request.get("limit"),
            request.get("cursor"),
        )
        tags: dict[str, Any] = raw_tags if isinstance(raw_tags, dict) else {}
        limit = raw_limit if isinstance(raw_limit, int) and raw_limit > 0 else 100
        offset = int(cursor) if isinstance(cursor, str) and cursor.isdigit() else 0
        candidates = self.server.promises.tagged(tags)
        matches = [
            p
            for p in (self.server.promises.values() if candidates is None else candidates)
            if (
                state is None
                or p.state == state
                or (state == "rejected" and p.state.startswith("rejected"))
            )
            and all(p.tags.get(k) == v for k, v in tags.items())
        ]
        matches.sort(key=lambda p: (p.created_at, p.id))
        page = matches[offset : offset + limit]
        next_cursor = str(offset + limit) if offset + limit < len(matches) else None
        return {
            "kind": "promise.search",
            "corrId": request.get("corrId"),
            "status": 200,
            "promises": [p.to_record() for p in page],
            "cursor": next_cursor,
        }

    def snapshot(self, origin: str | None = None) -> dict[str, Any]:
        """Promises and tasks, optionally only one execution's, for tree views and tests."""

        def belongs(promise_id: str) -> bool:
            if origin is None:
                return True
            promise = self.server.promises.get(promise_id)
            return promise_id == origin or (
                promise is not None and promise.tags.get("resonate:origin") == origin
            )

        promises = [
            {**p.to_record(), "awaiters": sorted(p.awaiters)}
            for p in sorted(self.server.promises.values(), key=lambda p: (p.created_at, p.id))
            if belongs(p.id)
        ]
        tasks = [
            t.to_record()
            for t in sorted(self.server.tasks.values(), key=lambda t: t.id)
            if belongs(t.id)
        ]
        return {"promises": promises, "tasks": tasks}


def _status(response: dict[str, Any]) -> int:
    status = response.get("status", 200)
    return status if isinstance(status, int) else 200
