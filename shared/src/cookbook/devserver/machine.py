"""The SDK's server state machine, minus two costs that grow with a workflow's length.

`ServerState` answers every request that concerns a task with a "preload": every promise of the
task's branch (the task's own promise and the `ctx.run` steps under it), found by scanning every
promise the server has ever held. That is right for a task that is just starting (`task.acquire`,
`task.create`, a suspend that redirects): the worker replays the workflow from the top and gets
the finished steps from the preload instead of running them again. But `task.fence` - the
create or settle of one step - answers with the whole branch too, so a workflow of N steps sends
and decodes O(N^2) records (a 1000-step workflow: half a million), and the SDK spends most of its
time re-reading what it already knows. This subclass changes what is *answered*, never what is
*stored*, so replaying a log written by plain `ServerState` rebuilds the same state:

- Preloads come from a per-branch index instead of a scan of every promise.
- `task.fence` answers with an empty preload. That is safe because the SDK reads a fence's
  preload only to warm the per-attempt cache of `resonate.effects.ResonateEffects`, and that
  cache already holds all a fence preload could say: it starts from the acquire's preload and
  takes in the promise of every create and settle of the attempt. A branch's promises are made
  only under the task's lease (`ctx.run` steps carry their parent's branch; rpc, sleep, promise
  and detached children root branches of their own), and a stale lease is fenced off with a 409.
  The one thing a fence preload could add is a step promise that timed out meanwhile; the SDK
  then learns it from the settle of that step, which returns the stored (timed-out) record, as
  it does today when a step outlives its timeout. The protocol allows an empty list: the SDK's
  decoder defaults the field to `[]`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from resonate.connections.local import (
    I64_MAX,
    DurablePromise,
    PTimeout,
    ScheduleStub,
    ServerState,
    Task,
    TTimeout,
    _get,
    extract_action_data,
)

from cookbook.devserver.archive import Archive, ArchivedBranch
from cookbook.devserver.cron import cron_error, latest_tick_at_or_before, next_tick_after


class _BranchIndexedPromises(dict[str, DurablePromise]):
    """`ServerState.promises`, also indexed by the `resonate:branch` tag, backed by the archive.

    ServerState only ever inserts promises (by item assignment, once per id) and never removes
    one, and a promise's tags never change, so the index cannot go stale. Compaction removes
    finished branches (`evict`) once they are in the archive; a lookup by id that misses memory
    falls through to it. Iteration (`values()`) covers memory only: the live state.
    """

    def __init__(self) -> None:
        super().__init__()
        self.archive: Archive | None = None
        self.by_branch: dict[str, list[str]] = {}
        # Application tags (not the SDK's `resonate:*` bookkeeping, which has a value per
        # execution): what `promise.search` filters on, polled by gateways every 50-100 ms.
        # Ordered dicts as sets: eviction removes an id in O(1), and order stays creation order.
        self.by_tag: dict[tuple[str, str], dict[str, None]] = {}

    def __setitem__(self, key: str, value: DurablePromise) -> None:
        if not dict.__contains__(self, key):
            branch = value.tags.get("resonate:branch")
            if branch is not None:
                self.by_branch.setdefault(branch, []).append(key)
            for tag, tag_value in value.tags.items():
                if not tag.startswith("resonate:"):
                    self.by_tag.setdefault((tag, tag_value), {})[key] = None
        super().__setitem__(key, value)

    # -- lookups fall through to the archive -----------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        found = dict.get(self, key)
        if found is not None:
            return found
        if self.archive is not None and isinstance(key, str):
            archived = self.archive.promise(key)
            if archived is not None:
                return archived
        return default

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (
            self.archive is not None
            and isinstance(key, str)
            and self.archive.promise(key) is not None
        )

    def __missing__(self, key: str) -> DurablePromise:
        archived = self.archive.promise(key) if self.archive is not None else None
        if archived is None:
            raise KeyError(key)
        return archived

    def evict(self, branch_key: str | None, promise_ids: list[str]) -> None:
        """Drop promises that are now in the archive from memory and from the indexes."""
        for promise_id in promise_ids:
            promise = dict.pop(self, promise_id)
            for tag, tag_value in promise.tags.items():
                if not tag.startswith("resonate:"):
                    ids = self.by_tag.get((tag, tag_value))
                    if ids is not None:
                        ids.pop(promise_id, None)
                        if not ids:
                            del self.by_tag[(tag, tag_value)]
        if branch_key is not None:
            members = self.by_branch.get(branch_key, [])
            gone = set(promise_ids)
            members[:] = [m for m in members if m not in gone]
            if not members:
                self.by_branch.pop(branch_key, None)

    def tagged(self, tags: dict[str, Any]) -> list[DurablePromise] | None:
        """The promises in memory carrying one of `tags`' application tags (a superset of the
        matches), or None when no application tag narrows the search."""
        keys = [(k, v) for k, v in tags.items() if not k.startswith("resonate:")]
        if not keys or not all(isinstance(v, str) for _, v in keys):
            return None
        narrowest = min((self.by_tag.get(key, {}) for key in keys), key=len)
        return [dict.__getitem__(self, promise_id) for promise_id in narrowest]


class _ArchivedTasks(dict[str, Task]):
    """`ServerState.tasks`; a lookup that misses memory falls through to the archive, where the
    fulfilled tasks of finished branches are. Iteration covers memory only."""

    def __init__(self) -> None:
        super().__init__()
        self.archive: Archive | None = None

    def get(self, key: str, default: Any = None) -> Any:
        found = dict.get(self, key)
        if found is not None:
            return found
        if self.archive is not None and isinstance(key, str):
            archived = self.archive.task(key)
            if archived is not None:
                return archived
        return default

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (
            self.archive is not None and isinstance(key, str) and self.archive.task(key) is not None
        )

    def __missing__(self, key: str) -> Task:
        archived = self.archive.task(key) if self.archive is not None else None
        if archived is None:
            raise KeyError(key)
        return archived


class _TimeoutTable[T: (PTimeout, TTimeout)]:
    """`ServerState.p_timeouts` / `t_timeouts`: iterates like the SDK's list, keyed by id.

    The SDK keeps each list in a plain list and finds an entry by scanning it, so every set and
    delete costs O(entries) and creating N timed promises costs O(N^2) (20k queued workflows: 12 s).
    A dict keeps the list's order exactly (an update keeps its place, a new entry goes last, a
    delete closes the gap) with O(1) set and delete; the tick still walks the live entries.
    """

    def __init__(self) -> None:
        self.by_id: dict[str, T] = {}

    def __iter__(self) -> Iterator[T]:
        return iter(list(self.by_id.values()))

    def __len__(self) -> int:
        return len(self.by_id)


class Schedule(ScheduleStub, kw_only=True):
    """A stored schedule that knows when it fires next (ServerState's stub never fires)."""

    next_run_at: int
    last_run_at: int | None = None

    def to_record(self) -> dict[str, Any]:
        return super().to_record() | {"nextRunAt": self.next_run_at, "lastRunAt": self.last_run_at}

    def due_tick(self, now: int) -> int | None:
        """The tick to fire at `now`, if one is due: only the latest, when several fell due.

        A server that was down for a week fires an every-minute schedule once on restart, not
        10,080 times. A tick never precedes `next_run_at`: time skipping moves that earlier than
        any cron instant, and the skipped-to moment is then the tick.
        """
        if now < self.next_run_at:
            return None
        return max(self.next_run_at, latest_tick_at_or_before(self.cron, now))

    def promise_id_at(self, tick: int) -> str:
        """The tick's promise id, from the template as the official server expands it."""
        return self.promise_id.replace("{{.id}}", self.id).replace("{{.timestamp}}", str(tick))


# -- latent promise timeouts (issue 12, item 6) -----------------------------------------------


class _LatentDeadlinePromises(_BranchIndexedPromises):
    """Also keeps the deadlines of latent promises (pending, no `resonate:target`) in a heap.

    ServerState's tick times out only promises with a target (their `p_timeouts` entry is made
    with their task); the official server times out every promise in the background. The heap
    lets the tick loop find the due ones without a scan. Entries are removed lazily: one whose
    promise settled, or whose deadline time skipping moved, is dropped when it reaches the top.
    """

    # Below this many entries the heap is never compacted.
    COMPACT_FLOOR = 1024

    def __init__(self) -> None:
        super().__init__()
        self.latent_deadlines: list[tuple[int, str]] = []
        self._compact_above = self.COMPACT_FLOOR

    def __setitem__(self, key: str, value: DurablePromise) -> None:
        if (
            not dict.__contains__(self, key)
            and value.state == "pending"
            and value.timeout_at < I64_MAX
            and "resonate:target" not in value.tags
        ):
            heapq.heappush(self.latent_deadlines, (value.timeout_at, key))
            if len(self.latent_deadlines) > self._compact_above:
                self._compact()
        super().__setitem__(key, value)

    def _compact(self) -> None:
        # Every `ctx.run` step is such a promise, settled long before its deadline reaches the
        # top: without this the heap would hold every step ever made. Rebuilding once it has
        # doubled since the last rebuild keeps it within twice the live entries, at O(1) each.
        self.latent_deadlines = [e for e in self.latent_deadlines if self.is_live(e)]
        heapq.heapify(self.latent_deadlines)
        self._compact_above = max(self.COMPACT_FLOOR, 2 * len(self.latent_deadlines))

    def is_live(self, entry: tuple[int, str]) -> bool:
        # Memory only: an archived promise is settled, so never live.
        promise = dict.get(self, entry[1])
        return promise is not None and promise.state == "pending" and promise.timeout_at == entry[0]

    def next_latent_deadline(self) -> int | None:
        heap = self.latent_deadlines
        while heap and not self.is_live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None


# -- end of latent promise timeouts -------------------------------------------------------------


class IndexedServerState(ServerState):
    def __init__(self) -> None:
        super().__init__()
        self.promises: _LatentDeadlinePromises = _LatentDeadlinePromises()
        self.tasks: _ArchivedTasks = _ArchivedTasks()
        self._fencing = False
        self.p_timeouts: _TimeoutTable[PTimeout] = _TimeoutTable()  # type: ignore[assignment]
        self.t_timeouts: _TimeoutTable[TTimeout] = _TimeoutTable()  # type: ignore[assignment]
        # The promises whose awaiters may be non-empty: `task.suspend` is the only place the SDK
        # adds an awaiter, so this is a superset of the promises anyone awaits, pruned lazily.
        self._awaited: set[str] = set()

    # -- timeouts: O(1) instead of a scan of every entry ---------------------------------------

    def set_p_timeout(self, promise_id: str, timeout: int) -> None:
        entry = self.p_timeouts.by_id.get(promise_id)
        if entry is not None:
            entry.timeout = timeout
        else:
            self.p_timeouts.by_id[promise_id] = PTimeout(id=promise_id, timeout=timeout)

    def del_p_timeout(self, promise_id: str) -> None:
        self.p_timeouts.by_id.pop(promise_id, None)

    def set_t_timeout(self, task_id: str, typ: int, timeout: int) -> None:
        entry = self.t_timeouts.by_id.get(task_id)
        if entry is not None:
            entry.typ = typ
            entry.timeout = timeout
        else:
            self.t_timeouts.by_id[task_id] = TTimeout(id=task_id, typ=typ, timeout=timeout)

    def del_t_timeout(self, task_id: str) -> None:
        self.t_timeouts.by_id.pop(task_id, None)

    # -- awaiters: a fulfil visits the awaited promises, not every promise ever held -----------

    def task_suspend(self, now: int, corr_id: Any, req: Any) -> dict[str, Any]:
        try:
            return super().task_suspend(now, corr_id, req)
        finally:
            actions = _get(req, "actions")
            if isinstance(actions, list):
                for action in actions:
                    awaited = _get(extract_action_data(action), "awaited")
                    if isinstance(awaited, str):
                        self._awaited.add(awaited)

    def enqueue_settle(self, promise_id: str) -> None:
        """`ServerState.enqueue_settle`, with the scan of every promise narrowed to the awaited."""
        task = self.tasks.get(promise_id)
        if task is None:
            promise = self.promises.get(promise_id)
            if promise is not None and "resonate:target" in promise.tags:
                self.tasks[promise_id] = Task(
                    id=promise_id, state="fulfilled", version=0, pid=None, ttl=None, resumes=set()
                )
            return
        if task.state == "fulfilled":
            return
        task.state = "fulfilled"
        task.pid = None
        task.ttl = None
        task.resumes.clear()
        self.del_t_timeout(promise_id)
        for awaited_id in list(self._awaited):
            awaited = self.promises.get(awaited_id)
            if awaited is None:
                self._awaited.discard(awaited_id)
                continue
            awaited.awaiters.discard(promise_id)
            if not awaited.awaiters:
                self._awaited.discard(awaited_id)

    def preload(self, promise_id: str) -> list[dict[str, Any]]:
        """The promises of `promise_id`'s branch but itself, in creation order (as ServerState)."""
        if self._fencing:
            return []
        promise = self.promises.get(promise_id)
        branch = promise.tags.get("resonate:branch") if promise is not None else None
        if branch is None:
            return []
        archived: list[DurablePromise] = []
        archive = self.promises.archive
        if archive is not None and not dict.__contains__(self.promises, branch):
            # A finished branch (its root archived): a client re-running a finished execution.
            found = archive.branch_of(branch)
            archived = list(found.promises) if found is not None else []
        live = [
            dict.__getitem__(self.promises, other)
            for other in self.promises.by_branch.get(branch, ())
        ]
        return [p.to_record() for p in archived + live if p.id != promise_id]

    # -- compaction: what can move to the archive ----------------------------------------------

    def attach_archive(self, archive: Archive) -> None:
        self.promises.archive = archive
        self.tasks.archive = archive

    def _finished(self, promise_id: str) -> bool:
        """Whether the promise can never change again (see cookbook.devserver.archive)."""
        promise = dict.get(self.promises, promise_id)
        if promise is None or promise.state == "pending" or promise.awaiters or promise.subscribers:
            return False
        task = dict.get(self.tasks, promise_id)
        return (
            (task is None or task.state == "fulfilled")
            and promise_id not in self.p_timeouts.by_id
            and promise_id not in self.t_timeouts.by_id
        )

    def finished_branches(self) -> list[tuple[str | None, list[str]]]:
        """Every unit that can move to the archive: a branch whose promises are all finished,
        its root included (until the root's task is fulfilled it may add steps, and its next
        acquire reads them all back), or a finished promise outside any branch. Each unit's ids
        in creation order."""
        units: list[tuple[str | None, list[str]]] = [
            (branch, list(members))
            for branch, members in self.promises.by_branch.items()
            if all(self._finished(member) for member in members)
            and (not dict.__contains__(self.promises, branch) or self._finished(branch))
        ]
        units += [
            (None, [promise_id])
            for promise_id, promise in dict.items(self.promises)
            if "resonate:branch" not in promise.tags and self._finished(promise_id)
        ]
        return units

    def archived_unit(self, promise_ids: list[str]) -> ArchivedBranch:
        promises = tuple(dict.__getitem__(self.promises, i) for i in promise_ids)
        tasks = tuple(t for i in promise_ids if (t := dict.get(self.tasks, i)) is not None)
        return ArchivedBranch(promises, tasks)

    def awaited_ids(self) -> set[str]:
        return set(self._awaited)

    def restore_awaited(self, promise_ids: list[str]) -> None:
        self._awaited = set(promise_ids)

    def evict(self, branch: str | None, promise_ids: list[str]) -> None:
        """Forget a unit that is now in the archive (lookups by id find it there)."""
        self.promises.evict(branch, promise_ids)
        for promise_id in promise_ids:
            dict.pop(self.tasks, promise_id, None)
            self._awaited.discard(promise_id)

    def task_fence(self, now: int, corr_id: Any, req: Any) -> dict[str, Any]:
        # See the module docstring: the worker already knows everything a preload would say.
        self._fencing = True
        try:
            return super().task_fence(now, corr_id, req)
        finally:
            self._fencing = False

    # -- latent promise timeouts (issue 12, item 6) -------------------------------------------

    def next_latent_deadline(self) -> int | None:
        """The earliest deadline of a pending promise without a target, if any."""
        return self.promises.next_latent_deadline()

    def expire_latent(self, now: int) -> list[str]:
        """Time out every promise without a target whose deadline has passed, as the tick does
        those with one: it settles (`rejected_timedout`), its awaiters resume, its listeners hear.

        Deterministic given `now` (ties in id order), so a logged tick replays to the same state.
        """
        expired = []
        heap = self.promises.latent_deadlines
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if self.promises.is_live(entry):
                expired.append(entry[1])
        for promise_id in expired:
            # The same transition a request touching the expired promise makes.
            self.try_auto_timeout(now, promise_id)
        return expired

    def shift_latent_deadlines(self, shift: int) -> None:
        """Time skipping moved every pending deadline `shift` earlier: so do the heap's keys.

        A uniform shift keeps the heap ordered.
        """
        self.promises.latent_deadlines = [
            (deadline - shift, promise_id)
            for deadline, promise_id in self.promises.latent_deadlines
        ]

    def notify_subscribers(self, promise_id: str) -> None:
        """Tell listeners a promise settled, with a value object even when it timed out.

        ServerState times a promise out with `value = None`, which the SDK's push decoder
        rejects (`Expected object, got null at $.data.promise.value`: it drops nulls from
        responses, not from pushes), so a client awaiting a timed-out workflow would not hear
        of it. The official server's timed-out promise carries a value object; so does the
        push. What is stored stays ServerState's, so that either replays the other's log.
        """
        already = len(self.outgoing)
        super().notify_subscribers(promise_id)
        for message in self.outgoing[already:]:
            data = message.message.get("data")
            record = data.get("promise") if isinstance(data, dict) else None
            if isinstance(record, dict):
                for field in ("param", "value"):
                    if record.get(field) is None:
                        record[field] = {}

    # -- end of latent promise timeouts --------------------------------------------------------

    # -- schedules -------------------------------------------------------------------------------
    #
    # A tick is fired by an ordinary `promise.create` (DurableState.fire_due_schedules), logged
    # like any other. The schedule moves on when that create is applied, here, so replaying the
    # log moves it on at the same `now`, and a tick whose create was never logged fires again,
    # under the same id, after a restart.

    def schedule_create(self, now: int, corr_id: Any, req: Any) -> dict[str, Any]:
        cron = req.get("cron") if isinstance(req, dict) else None
        if (reason := cron_error(cron)) is not None:
            return {
                "kind": "schedule.create",
                "corrId": corr_id,
                "status": 400,
                "error": f"invalid field 'cron': {reason}",
            }
        response = super().schedule_create(now, corr_id, req)
        stub = self.schedules.get(str(req.get("id")))
        if response.get("status") == 201 and stub is not None and not isinstance(stub, Schedule):
            schedule = Schedule(
                id=stub.id,
                cron=stub.cron,
                promise_id=stub.promise_id,
                promise_timeout=stub.promise_timeout,
                promise_param=stub.promise_param,
                promise_tags=stub.promise_tags,
                created_at=stub.created_at,
                next_run_at=next_tick_after(stub.cron, now),
            )
            self.schedules[stub.id] = schedule
            response["schedule"] = schedule.to_record()
        return response

    def schedule_search(self, corr_id: Any, req: Any) -> dict[str, Any]:
        """All schedules by id, a page of `limit` at a time (ServerState ignores the paging)."""
        raw_limit = req.get("limit") if isinstance(req, dict) else None
        raw_cursor = req.get("cursor") if isinstance(req, dict) else None
        limit = raw_limit if isinstance(raw_limit, int) and raw_limit > 0 else 100
        offset = int(raw_cursor) if isinstance(raw_cursor, str) and raw_cursor.isdigit() else 0
        ordered = sorted(self.schedules.values(), key=lambda s: s.id)
        page = ordered[offset : offset + limit]
        return {
            "kind": "schedule.search",
            "corrId": corr_id,
            "status": 200,
            "schedules": [s.to_record() for s in page],
            "cursor": str(offset + limit) if offset + limit < len(ordered) else None,
        }

    def due_schedules(self, now: int) -> list[tuple[Schedule, int]]:
        """Every schedule with a tick due at `now`, and that tick, in id order."""
        due = []
        for schedule_id in sorted(self.schedules):
            schedule = self.schedules[schedule_id]
            if isinstance(schedule, Schedule) and (tick := schedule.due_tick(now)) is not None:
                due.append((schedule, tick))
        return due

    def promise_create(self, now: int, corr_id: Any, req: Any) -> dict[str, Any]:
        response = super().promise_create(now, corr_id, req)
        tags = req.get("tags") if isinstance(req, dict) else None
        schedule_id = tags.get("resonate:schedule") if isinstance(tags, dict) else None
        schedule = self.schedules.get(schedule_id) if isinstance(schedule_id, str) else None
        if (
            isinstance(schedule, Schedule)
            and (tick := schedule.due_tick(now)) is not None
            and req.get("id") == schedule.promise_id_at(tick)
        ):
            schedule.last_run_at = tick
            schedule.next_run_at = next_tick_after(schedule.cron, now)
        return response


def tick_request(schedule: Schedule, tick: int) -> dict[str, Any]:
    """The `promise.create` of a schedule's tick, tagged as the official server tags it."""
    promise_id = schedule.promise_id_at(tick)
    tags = dict(schedule.promise_tags) if isinstance(schedule.promise_tags, dict) else {}
    tags |= {
        "resonate:schedule": schedule.id,
        "resonate:origin": promise_id,
        "resonate:branch": promise_id,
        "resonate:parent": promise_id,
        "resonate:prefix": promise_id,
    }
    return {
        "kind": "promise.create",
        "corrId": f"devserver-schedule-{schedule.id}",
        "id": promise_id,
        "param": schedule.promise_param,
        "tags": tags,
        "timeoutAt": tick + schedule.promise_timeout,
    }
