"""Crash points: where, in a workflow's recorded checkpoints, the harness kills a process.

A golden run yields the ordered checkpoints (each durable step, remote call, sleep and promise the
execution created). Every checkpoint gives crash points, each one a tripwire on the dev server:

  before        the worker dies as it asks to create the step's promise; the step never started
  after-effect  the worker dies as it asks to store the step's result; the effect is done, the
                checkpoint is not, so the step runs again and must be deduplicated downstream
  suspended     the worker dies right after the workflow suspended on a sleep, promise or call
  server-kill   the dev server dies right after the checkpoint is durable, before it answers
  stall         the worker stops (SIGSTOP) as the step starts, its lease lapses and another
                worker finishes the run; then it is continued, and its late writes must be
                refused and its late effect deduplicated (see `stall_points`)
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

type CheckpointKind = Literal["step", "rpc", "sleep", "promise"]
type Phase = Literal["before", "after-effect", "suspended", "server-kill", "stall"]


@dataclass(frozen=True)
class Checkpoint:
    suffix: str  # the promise id relative to the execution id, e.g. ":2"
    kind: CheckpointKind
    label: str  # readable: the effect it applied ("car.reserve"), the function it called, ...
    suspended_on: bool  # the workflow suspended waiting for it in the golden run


@dataclass(frozen=True)
class CrashPoint:
    scenario: str
    checkpoint: Checkpoint
    phase: Phase

    @property
    def id(self) -> str:
        return f"{self.scenario}:{self.checkpoint.label}/{self.phase}"

    def tripwire(self, execution_id: str, worker_pid: int) -> dict[str, Any]:
        promise_id = execution_id + self.checkpoint.suffix
        match self.phase:
            case "before":
                return _wire("create", promise_id, "before", worker_pid)
            case "after-effect":
                return _wire("settle", promise_id, "before", worker_pid)
            case "suspended":
                return _wire("suspend", promise_id, "after", worker_pid)
            case "stall":
                # After the step's promise is created, before the worker hears so: continued,
                # it runs the step's effect late, then tries to store the result.
                return {**_wire("create", promise_id, "after", worker_pid), "action": "stall"}
            case "server-kill":
                operation = "settle" if self.checkpoint.kind in ("step", "rpc") else "suspend"
                return {
                    "operation": operation,
                    "promise_id": promise_id,
                    "when": "after",
                    "victim": "server",
                }

    @property
    def kills_server(self) -> bool:
        return self.phase == "server-kill"


def _wire(operation: str, promise_id: str, when: str, pid: int) -> dict[str, Any]:
    return {
        "operation": operation,
        "promise_id": promise_id,
        "when": when,
        "victim": "worker",
        "pid": pid,
    }


def classify(tags: dict[str, str]) -> CheckpointKind:
    if tags.get("resonate:timer") == "true":
        return "sleep"
    if tags.get("resonate:external") == "true":
        return "promise"
    if tags.get("resonate:scope") == "local":
        return "step"
    return "rpc"


def _called_function(param: Any) -> str:
    # A remote call's param is base64 JSON naming the function: {"func": ..., "args": ...}.
    try:
        data = json.loads(base64.b64decode(param["data"]))
        return str(data["func"])
    except (KeyError, TypeError, ValueError):
        return "call"


def checkpoints(
    execution_id: str,
    journal: list[dict[str, Any]],
    promises: list[dict[str, Any]],
    effects: list[dict[str, Any]],
    requests: Sequence[dict[str, Any]] = (),
) -> list[Checkpoint]:
    """The checkpoints of one recorded execution, in the order they were created.

    A step is named by the effect it applied in the sandbox (`car.reserve`), else by the last
    request it made there (`car.reserve(409)`: refused, no effect), else plainly `step`.
    """
    by_id = {p["id"]: p for p in promises}
    effect_of = {
        r["idempotency_key"]: f"{r['provider']}.{r['action']}({r['status_code']})" for r in requests
    }
    effect_of |= {e["idempotency_key"]: f"{e['provider']}.{e['action']}" for e in effects}
    suspended = {e["promise_id"] for e in journal if e["operation"] == "suspend"}
    created: list[str] = []
    for entry in journal:
        pid = entry["promise_id"]
        if entry["operation"] == "create" and pid != execution_id and pid not in created:
            created.append(pid)
    # In the order the workflow made them (the SDK numbers them), not the order their requests
    # happened to arrive in: parallel steps race, and crash-point ids must be the same every run.
    created.sort(key=lambda pid: _sequence(pid.removeprefix(execution_id)))
    result: list[Checkpoint] = []
    for pid in created:
        promise = by_id[pid]
        kind = classify(promise.get("tags", {}))
        if kind == "rpc":
            label = _called_function(promise.get("param"))
        elif kind == "step":
            label = effect_of.get(pid, "step")
        else:
            label = kind
        result.append(Checkpoint(pid.removeprefix(execution_id), kind, label, pid in suspended))
    return _unique_labels(result)


def _sequence(suffix: str) -> tuple[int, ...]:
    """`:2.1` -> (2, 1); detached children (`:d<hex>`) after every numbered one."""
    parts = suffix.lstrip(":").replace(":", ".").split(".")
    return tuple(int(p) if p.isdigit() else 1 << 62 for p in parts)


def _unique_labels(found: list[Checkpoint]) -> list[Checkpoint]:
    totals = Counter(c.label for c in found)
    seen: Counter[str] = Counter()
    unique = []
    for c in found:
        seen[c.label] += 1
        label = c.label if totals[c.label] == 1 else f"{c.label}#{seen[c.label]}"
        unique.append(Checkpoint(c.suffix, c.kind, label, c.suspended_on))
    return unique


def crash_points(scenario: str, found: list[Checkpoint]) -> list[CrashPoint]:
    points: list[CrashPoint] = []
    for c in found:
        phases: list[Phase] = []
        if c.kind in ("step", "rpc"):
            phases += ["before", "after-effect"]
        if c.suspended_on:
            phases.append("suspended")
        if c.kind in ("step", "rpc") or c.suspended_on:
            phases.append("server-kill")
        points += [CrashPoint(scenario, c, phase) for phase in phases]
    return points + stall_points(scenario, found)


def stall_points(scenario: str, found: list[Checkpoint]) -> list[CrashPoint]:
    """Where a worker is stalled: as it starts the first and the last step of the scenario.

    A lease can lapse wherever a worker holds one, i.e. while it runs a step; but what a stall
    adds to the kill phases (every step's effect is already repeated at its after-effect point)
    is the order: the stalled worker's late effect and writes arrive after the whole run has
    finished elsewhere. Stalling at the first step lets the rest of the run happen in between;
    at the last, the late write is the one right before completion. Two points per scenario,
    rather than one per step, keep the matrix's growth near a fifth.
    """
    steps = [c for c in found if c.kind == "step"]
    chosen = steps[:1] + steps[1:][-1:]
    return [CrashPoint(scenario, c, "stall") for c in chosen]
