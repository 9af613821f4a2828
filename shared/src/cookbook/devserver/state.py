"""The SDK's own server state machine, made durable by a write-ahead log.

`resonate.connections.local.ServerState` is what `Resonate()` runs in-process in local mode. Its
`apply(now, request)` is deterministic given `now`, so logging each request with the `now` it was
applied at (and each tick that changed something) and replaying the log rebuilds the exact state.
This module and its package are the only places in the cookbook that touch SDK internals; pin
resonate-sdk exactly.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from resonate.connections.local import (
    I64_MAX,
    DurablePromise,
    OutgoingMessage,
    PTimeout,
    ScheduleStub,
    Task,
    TTimeout,
    _get,
    _opt_i64,
    require_str,
)
from resonate.error import ServerError

from cookbook.devserver.archive import Archive
from cookbook.devserver.machine import IndexedServerState, Schedule, tick_request
from cookbook.devserver.protocol import READ_ONLY_KINDS, touches
from cookbook.devserver.wal import CorruptLogError, WriteAheadLog, fsync_directory

log = logging.getLogger("cookbook.devserver")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# Compact once this many records have been logged since the last snapshot: restart replays at
# most this many (about 0.3 s on a loaded 2-core machine) on top of the snapshot.
DEFAULT_COMPACT_EVERY = 10_000
# The journal (a test and inspection aid: which request touched which promise) keeps its most
# recent entries across compactions; older ones go. The crash harness reads an execution's
# entries right after it ran, far inside this window.
JOURNAL_RETAINED = 50_000
# Test hook: SIGKILL the server at one stage of a compaction (see DurableState.compact).
CRASH_AT_ENV = "COOKBOOK_DEVSERVER_CRASH_AT"
COMPACTION_STAGES = ("rotated", "archived", "snapshot-written", "snapshot-renamed")

SNAPSHOT_NAME = "snapshot.msgpack"
ARCHIVE_NAME = "archive.sqlite"
_NUMBERED_LOG = re.compile(r"wal-(\d{6})\.jsonl")


def log_path(data_dir: Path, generation: int) -> Path:
    """Generation 0 is the log of a server that never compacted (the name it always had)."""
    return data_dir / ("wal.jsonl" if generation == 0 else f"wal-{generation:06d}.jsonl")


def log_generations(data_dir: Path) -> list[int]:
    found = [0] if (data_dir / "wal.jsonl").exists() else []
    if data_dir.is_dir():
        found += [
            int(m.group(1)) for f in data_dir.iterdir() if (m := _NUMBERED_LOG.fullmatch(f.name))
        ]
    return sorted(found)


class JournalEntry(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One state-changing request, as the harness sees it: which promise, what was done, when.

    A struct without GC tracking, stored as an array: a snapshot keeps tens of thousands, and
    restart decodes them straight into these.
    """

    seq: int
    at_ms: int
    kind: str
    operation: str
    promise_id: str
    # A retried HTTP request keeps its corrId; a re-executed step sends a new one.
    corr_id: str
    # The status the request was answered with: a fenced-off write is refused (409).
    status: int = 200


class _Snapshot(msgspec.Struct, kw_only=True):
    """The live state after a compaction: replay starts here, then reads the logs from
    `log_generation` on; archive rows past `archive_row` are not counted on."""

    format: int = 1
    log_generation: int
    archive_row: int
    last_now: int
    journal_last_seq: int
    journal: list[JournalEntry]
    promises: list[DurablePromise]
    tasks: list[Task]
    p_timeouts: list[PTimeout]
    t_timeouts: list[TTimeout]
    schedules: list[Schedule]
    schedule_stubs: list[ScheduleStub]
    awaited: list[str]


@dataclass(frozen=True)
class Compaction:
    archived_promises: int
    live_promises: int
    log_generation: int
    seconds: float


def _sigkill_self_at(stage: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Applied:
    """The outcome of one request: the flat response, the pushes it caused, and its log position."""

    response: dict[str, Any]
    outgoing: list[OutgoingMessage]
    log_seq: int


class DurableState:
    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: bool = True,
        clock: Callable[[], int] = wall_clock_ms,
        compact_every: int = DEFAULT_COMPACT_EVERY,
        at_compaction_stage: Callable[[str], None] = _sigkill_self_at,
    ) -> None:
        self.data_dir = data_dir
        self.server = IndexedServerState()
        self.wal = WriteAheadLog(log_path(data_dir, 0), fsync=fsync)
        self.archive: Archive | None = None
        self.journal: deque[JournalEntry] = deque()
        self.journal_last_seq = 0
        self._fsync = fsync
        self._clock = clock
        self._last_now = 0
        self.replayed_records = 0
        self.log_generation = 0
        self.compact_every = compact_every
        self._at_compaction_stage = at_compaction_stage
        self._appended_at_compaction = 0
        self.compactions = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> list[OutgoingMessage]:
        """Replay the log, then make the recovered state live again.

        Returns the pushes a freshly started server owes: an `execute` for every pending task,
        because the messages that were only in memory died with the previous process.
        """
        self.wal.lock()
        collecting = gc.isenabled()
        # Replay builds millions of long-lived objects: the cyclic collector would walk them all
        # again and again (its full passes made a 100,000-workflow replay superlinear).
        gc.disable()
        try:
            self._recover()
        finally:
            if collecting:
                gc.enable()
        self.server.outgoing.clear()
        self.wal.open()
        # A big log left by a server that never compacted is compacted at the first chance.
        self._appended_at_compaction = -self.replayed_records
        self._renew_leases()
        return self._owed_executes()

    def _recover(self) -> None:
        """Load the snapshot (if any), make the archive match it, replay the logs after it."""
        snapshot = self._load_snapshot()
        self.archive = Archive(self.data_dir / ARCHIVE_NAME, fsync=self._fsync)
        # Rows a compaction wrote before it was killed, its snapshot never renamed into place:
        # the logs replayed below rebuild those promises in memory.
        dropped = self.archive.truncate_after(snapshot.archive_row if snapshot else 0)
        if dropped:
            log.warning("archive: dropped %d rows of an unfinished compaction", dropped)
        self.server.attach_archive(self.archive)
        first = 0
        if snapshot is not None:
            self._restore(snapshot)
            first = snapshot.log_generation
        generations = log_generations(self.data_dir)
        for stale in [g for g in generations if g < first]:
            # Compacted into the snapshot; the compaction was killed before deleting them.
            log_path(self.data_dir, stale).unlink()
        generations = [g for g in generations if g >= first] or [first]
        for generation in generations:
            replayed = WriteAheadLog(log_path(self.data_dir, generation), fsync=self._fsync)
            for record in replayed.replay(last=generation == generations[-1]):
                self._replay_record(record)
        self.log_generation = generations[-1]
        self.wal.path = log_path(self.data_dir, self.log_generation)

    def _replay_record(self, record: dict[str, Any]) -> None:
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

    def close(self) -> None:
        self.wal.close()
        if self.archive is not None:
            self.archive.close()
            self.archive = None

    # -- snapshots and compaction ----------------------------------------------------------
    #
    # A compaction moves finished branches to the archive and writes the live state to a
    # snapshot, so that restart time and memory follow what is live, not all that ever happened.
    # Each step leaves the data directory in a state that recovers to everything acknowledged:
    #
    #   1. rotate: the current log is fsynced to its end, and logging goes on in a new file
    #      (generation g+1; the directory is fsynced). The snapshot will stand for everything up
    #      to the end of generation g.
    #   2. archive: finished branches are committed to SQLite (synchronous=FULL), under rows past
    #      the ones the current snapshot counts on, and dropped from memory.
    #   3. snapshot: the live state is written to a new file, fsynced, renamed over the old
    #      snapshot, and the directory fsynced. Only now does recovery start from it.
    #   4. the logs before g+1 are deleted.
    #
    # Killed before 3 completes, recovery loads the old snapshot, deletes the archive rows it
    # does not count on, and replays every log from its generation on (g and g+1 included).
    # Killed after, it loads the new one and deletes the old logs itself. The whole compaction
    # runs on the event loop between two requests, so the state it saves is one consistent
    # moment.

    def should_compact(self) -> bool:
        return self.wal.appended - self._appended_at_compaction >= self.compact_every

    def compact(self) -> Compaction:
        started = time.perf_counter()
        archive = self.archive
        assert archive is not None, "open() first"
        generation = self.log_generation + 1
        self.wal.rotate(log_path(self.data_dir, generation))
        self.log_generation = generation
        self._appended_at_compaction = self.wal.appended
        self._at_compaction_stage("rotated")

        units = self.server.finished_branches()
        archived = sum(len(ids) for _, ids in units)
        archive_row = archive.add(self.server.archived_unit(ids) for _, ids in units)
        for branch, ids in units:
            self.server.evict(branch, ids)
        self._at_compaction_stage("archived")

        while len(self.journal) > JOURNAL_RETAINED:
            self.journal.popleft()
        self._write_snapshot(self._snapshot_now(archive_row))
        self._at_compaction_stage("snapshot-renamed")

        for stale in log_generations(self.data_dir):
            if stale < generation:
                log_path(self.data_dir, stale).unlink()
        self.compactions += 1
        return Compaction(
            archived, len(self.server.promises), generation, time.perf_counter() - started
        )

    def _snapshot_now(self, archive_row: int) -> _Snapshot:
        server = self.server
        schedules = list(server.schedules.values())
        return _Snapshot(
            log_generation=self.log_generation,
            archive_row=archive_row,
            last_now=self._last_now,
            journal_last_seq=self.journal_last_seq,
            journal=list(self.journal),
            promises=list(dict.values(server.promises)),
            tasks=list(dict.values(server.tasks)),
            p_timeouts=list(server.p_timeouts.by_id.values()),
            t_timeouts=list(server.t_timeouts.by_id.values()),
            schedules=[s for s in schedules if isinstance(s, Schedule)],
            schedule_stubs=[
                ScheduleStub(**msgspec.structs.asdict(s))
                for s in schedules
                if not isinstance(s, Schedule)
            ],
            awaited=sorted(server.awaited_ids()),
        )

    def _write_snapshot(self, snapshot: _Snapshot) -> None:
        path = self.data_dir / SNAPSHOT_NAME
        partial = path.with_suffix(".partial")
        with partial.open("wb") as f:
            f.write(msgspec.msgpack.encode(snapshot))
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        self._at_compaction_stage("snapshot-written")
        os.replace(partial, path)
        if self._fsync:
            fsync_directory(self.data_dir)

    def _load_snapshot(self) -> _Snapshot | None:
        path = self.data_dir / SNAPSHOT_NAME
        partial = path.with_suffix(".partial")
        if partial.exists():
            partial.unlink()  # a compaction was killed before renaming it: never counted on
        if not path.exists():
            return None
        try:
            return msgspec.msgpack.decode(path.read_bytes(), type=_Snapshot)
        except msgspec.DecodeError as exc:
            # It was fsynced before it was renamed into place: damage, not a crash.
            raise CorruptLogError(
                f"{path}: unreadable snapshot ({exc}); the dev server will not start on it (the "
                "file is left untouched)"
            ) from exc

    def _restore(self, snapshot: _Snapshot) -> None:
        server = self.server
        for promise in snapshot.promises:
            server.promises[promise.id] = promise
        for task in snapshot.tasks:
            server.tasks[task.id] = task
        for pt in snapshot.p_timeouts:
            server.p_timeouts.by_id[pt.id] = pt
        for tt in snapshot.t_timeouts:
            server.t_timeouts.by_id[tt.id] = tt
        for schedule in [*snapshot.schedules, *snapshot.schedule_stubs]:
            server.schedules[schedule.id] = schedule
        server.restore_awaited(snapshot.awaited)
        self._last_now = max(self._last_now, snapshot.last_now)
        self.journal = deque(snapshot.journal)
        self.journal_last_seq = snapshot.journal_last_seq

    # -- the journal -----------------------------------------------------------------------

    def journal_since(self, after: int) -> list[JournalEntry]:
        """The retained entries with a seq greater than `after`, oldest first."""
        newer = []
        for entry in reversed(self.journal):
            if entry.seq <= after:
                break
            newer.append(entry)
        newer.reverse()
        return newer

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
            self.journal_last_seq += 1
            self.journal.append(
                JournalEntry(
                    self.journal_last_seq,
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
        """`promise.search`, which ServerState lacks: state and exact tag filters, offset cursor.

        Live promises come from memory (narrowed by the application-tag index), finished ones
        from the archive (narrowed by an application tag or `resonate:origin`; a search with
        neither reads the whole archive).
        """
        state = request.get("state")
        raw_tags, raw_limit, cursor = (
            request.get("tags"),
            request.get("limit"),
            request.get("cursor"),
        )
        tags: dict[str, Any] = raw_tags if isinstance(raw_tags, dict) else {}
        limit = raw_limit if isinstance(raw_limit, int) and raw_limit > 0 else 100
        offset = int(cursor) if isinstance(cursor, str) and cursor.isdigit() else 0

        def wanted(p: DurablePromise) -> bool:
            return (
                state is None
                or p.state == state
                or (state == "rejected" and p.state.startswith("rejected"))
            ) and all(p.tags.get(k) == v for k, v in tags.items())

        candidates = self.server.promises.tagged(tags)
        live = self.server.promises.values() if candidates is None else candidates
        matches = [p for p in live if wanted(p)]
        if state != "pending":  # nothing pending is ever archived
            seen = {p.id for p in matches}
            matches += [
                p for p in self._archived_candidates(tags) if p.id not in seen and wanted(p)
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

    def _archived_candidates(self, tags: dict[str, Any]) -> Iterable[DurablePromise]:
        """A superset of the archived promises carrying `tags`."""
        if self.archive is None:
            return []
        for key, value in tags.items():
            if not key.startswith("resonate:") and isinstance(value, str):
                return self.archive.tagged(key, value)
        origin = tags.get("resonate:origin")
        branches = (
            self.archive.of_origin(origin) if isinstance(origin, str) else self.archive.everything()
        )
        return (p for branch in branches for p in branch.promises)

    def snapshot(self, origin: str | None = None) -> dict[str, Any]:
        """Promises and tasks, optionally only one execution's, for tree views and tests
        (without `origin`, every archived execution too)."""

        def belongs(promise_id: str) -> bool:
            if origin is None:
                return True
            promise = self.server.promises.get(promise_id)
            return promise_id == origin or (
                promise is not None and promise.tags.get("resonate:origin") == origin
            )

        promises = [p for p in self.server.promises.values() if belongs(p.id)]
        tasks = [t for t in self.server.tasks.values() if belongs(t.id)]
        if self.archive is not None:
            branches = (
                self.archive.everything() if origin is None else self.archive.of_origin(origin)
            )
            for branch in branches:
                promises += branch.promises
                tasks += branch.tasks
        return {
            "promises": [
                {**p.to_record(), "awaiters": sorted(p.awaiters)}
                for p in sorted(promises, key=lambda p: (p.created_at, p.id))
            ],
            "tasks": [t.to_record() for t in sorted(tasks, key=lambda t: t.id)],
        }


def _status(response: dict[str, Any]) -> int:
    status = response.get("status", 200)
    return status if isinstance(status, int) else 200
