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

from collections.abc import Iterator
from typing import Any

from resonate.connections.local import (
    DurablePromise,
    PTimeout,
    ServerState,
    Task,
    TTimeout,
    _get,
    extract_action_data,
)


class _BranchIndexedPromises(dict[str, DurablePromise]):
    """`ServerState.promises`, also indexed by the `resonate:branch` tag.

    ServerState only ever inserts promises (by item assignment, once per id) and never removes
    one, and a promise's tags never change, so the index cannot go stale.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_branch: dict[str, list[str]] = {}
        # Application tags (not the SDK's `resonate:*` bookkeeping, which has a value per
        # execution): what `promise.search` filters on, polled by gateways every 50-100 ms.
        self.by_tag: dict[tuple[str, str], list[str]] = {}

    def __setitem__(self, key: str, value: DurablePromise) -> None:
        if key not in self:
            branch = value.tags.get("resonate:branch")
            if branch is not None:
                self.by_branch.setdefault(branch, []).append(key)
            for tag, tag_value in value.tags.items():
                if not tag.startswith("resonate:"):
                    self.by_tag.setdefault((tag, tag_value), []).append(key)
        super().__setitem__(key, value)

    def tagged(self, tags: dict[str, Any]) -> list[DurablePromise] | None:
        """The promises carrying one of `tags`' application tags (a superset of the matches),
        or None when no application tag narrows the search."""
        keys = [(k, v) for k, v in tags.items() if not k.startswith("resonate:")]
        if not keys or not all(isinstance(v, str) for _, v in keys):
            return None
        narrowest = min((self.by_tag.get(key, []) for key in keys), key=len)
        return [self[promise_id] for promise_id in narrowest]


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


class IndexedServerState(ServerState):
    def __init__(self) -> None:
        super().__init__()
        self.promises: _BranchIndexedPromises = _BranchIndexedPromises()
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
        return [
            self.promises[other].to_record()
            for other in self.promises.by_branch.get(branch, ())
            if other != promise_id
        ]

    def task_fence(self, now: int, corr_id: Any, req: Any) -> dict[str, Any]:
        # See the module docstring: the worker already knows everything a preload would say.
        self._fencing = True
        try:
            return super().task_fence(now, corr_id, req)
        finally:
            self._fencing = False
