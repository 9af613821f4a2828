"""The stand-in's cluster: nodes, pods and PodDisruptionBudgets in SQLite, with apiserver rules.

What it models, as a real kube-apiserver does:
  - cordon: a patch of `spec.unschedulable` (JSON merge patch; a no-op patch changes nothing);
  - the Eviction API: a pod covered by a PodDisruptionBudget whose `disruptionsAllowed` is 0 is
    refused with 429 (cause `DisruptionBudget`); Pending, Succeeded and Failed pods are evicted
    whatever their budget says; a pod covered by two budgets is a 500, as on a real apiserver;
  - a pod delete ignores every budget (that is what makes `kubectl delete --force` dangerous);
  - delete preconditions (a pod's uid or resourceVersion), on deletes and evictions: 409 when
    they do not match, e.g. when a new pod took the old one's name;
  - PDB status, computed as the disruption controller would from the pods that exist now:
    `currentHealthy` (Running and Ready), `desiredHealthy` (from `minAvailable`, a number or a
    percentage of the selected pods), `disruptionsAllowed`, `expectedPods`.

What it leaves out, on purpose:
  - kubelets and controllers. An evicted or deleted pod is gone at once, as if its kubelet
    stopped it instantly (a real cluster takes the pod's grace period; a bare apiserver with no
    kubelets leaves it Terminating until it is deleted with grace period 0), and nothing replaces
    it, so a budget that blocks stays blocked until someone relaxes it (patch `minAvailable`).
  - `maxUnavailable` budgets (they need the controller's replica count), set-based label
    selectors in queries, watches, authentication, every other resource.

Every eviction, delete and patch is recorded, refused ones too, with whether it changed anything:
the receiving system's own account of what a client did to it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

type JSONObject = dict[str, Any]
type Kind = Literal["Node", "Pod", "PodDisruptionBudget"]

# The resource names the apiserver uses in its messages (`pods "web-1" not found`).
RESOURCE: Final[dict[Kind, str]] = {
    "Node": "nodes",
    "Pod": "pods",
    "PodDisruptionBudget": "poddisruptionbudgets.policy",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,  -- '' for nodes
    name TEXT NOT NULL,
    body TEXT NOT NULL,       -- the object as the API serves it (PDB status is computed on read)
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    verb TEXT NOT NULL,       -- patch | evict | delete
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    code INTEGER NOT NULL,    -- the HTTP status the client got
    applied INTEGER NOT NULL, -- 1 if the request changed the cluster
    detail TEXT NOT NULL      -- JSON: what was asked, or why it was refused
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
PERCENT: Final = re.compile(r"^(0|[1-9][0-9]?|100)%$")


class ApiError(Exception):
    """A request the apiserver refuses: becomes a `Status` object with this code and reason."""

    def __init__(
        self, code: int, reason: str, message: str, details: JSONObject | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    @classmethod
    def not_found(cls, kind: Kind, name: str) -> ApiError:
        resource, _, group = RESOURCE[kind].partition(".")
        details: JSONObject = {"name": name, "kind": resource}
        if group:
            details["group"] = group
        return cls(404, "NotFound", f'{RESOURCE[kind]} "{name}" not found', details)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def invalid(cls, kind: Kind, name: str, message: str) -> ApiError:
        details = {"name": name, "kind": kind}
        return cls(422, "Invalid", f'{kind} "{name}" is invalid: {message}', details)


@dataclass(frozen=True)
class Record:
    seq: int
    at: float
    verb: str
    kind: str
    namespace: str
    name: str
    code: int
    applied: bool
    detail: JSONObject


@dataclass(frozen=True)
class Outcome:
    """What a write answered: the HTTP status and the JSON body."""

    code: int
    body: JSONObject


@dataclass
class Seed:
    """A whole cluster, as `POST /_admin/reset` accepts it (already validated)."""

    nodes: list[str] = field(default_factory=list)
    pods: list[JSONObject] = field(default_factory=list)  # name, namespace, node, labels, ...
    pdbs: list[JSONObject] = field(default_factory=list)  # name, namespace, selector, min_available


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def success_status(code: int) -> JSONObject:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code}


def valid_min_available(value: Any) -> bool:
    """A PDB's `minAvailable`: a number of pods, or a percentage of the pods it selects."""
    match value:
        case bool():
            return False
        case int():
            return value >= 0
        case str():
            return PERCENT.match(value) is not None
        case _:
            return False


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (a strategic merge patch of plain fields does the same)."""
    if not isinstance(patch, dict):
        return patch
    merged: JSONObject = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def selects(selector: JSONObject | None, labels: dict[str, str]) -> bool:
    """Whether a `metav1.LabelSelector` selects these labels.

    As in policy/v1 budgets: an empty selector selects every pod, a null one none."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        match operator:
            case "In" if labels.get(key) not in values:
                return False
            case "NotIn" if key in labels and labels[key] in values:
                return False
            case "Exists" if key not in labels:
                return False
            case "DoesNotExist" if key in labels:
                return False
    return True


def _unmet(pod: JSONObject, preconditions: JSONObject | None) -> ApiError | None:
    """The conflict a delete's preconditions (the pod's uid, resourceVersion) raise, if any."""
    meta = pod["metadata"]
    for field_name, wanted in (preconditions or {}).items():
        label = {"uid": "UID", "resourceVersion": "ResourceVersion"}.get(field_name)
        if label is not None and wanted is not None and wanted != meta.get(field_name):
            message = (
                f'Operation cannot be fulfilled on pods "{meta["name"]}": Precondition failed: '
                f"{label} in precondition: {wanted}, {label} in object meta: {meta.get(field_name)}"
            )
            return ApiError(409, "Conflict", message, {"name": meta["name"], "kind": "pods"})
    return None


def _healthy(pod: JSONObject) -> bool:
    status = pod.get("status", {})
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    return status.get("phase") == "Running" and ready


class Cluster:
    """The cluster's state and rules. One instance per process; every method is one transaction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except ApiError:
                # A refusal changed nothing but the records, which must keep it.
                self._db.execute("COMMIT")
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reads -----------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str) -> JSONObject:
        with self._transaction() as db:
            found = self._get(db, kind, namespace, name)
            if found is None:
                raise ApiError.not_found(kind, name)
            return self._served(db, found)

    def list_all(self, kind: Kind, namespace: str | None = None) -> tuple[list[JSONObject], str]:
        """The objects (in one namespace, or all) and the list's resourceVersion."""
        with self._transaction() as db:
            items = [self._served(db, o) for o in self._all(db, kind, namespace)]
            return items, str(self._counter(db, "resourceVersion"))

    def records(self) -> list[Record]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM records ORDER BY seq").fetchall()
        return [
            Record(seq, at, verb, kind, ns, name, code, bool(applied), json.loads(detail))
            for seq, at, verb, kind, ns, name, code, applied, detail in rows
        ]

    # -- writes ----------------------------------------------------------------------------

    def reset(self, seed: Seed) -> None:
        """Wipe the cluster and its records, and create the seed's objects."""
        with self._transaction() as db:
            db.execute("DELETE FROM objects")
            db.execute("DELETE FROM records")
            for name in seed.nodes:
                self._put(db, "Node", "", name, self._new_node(db, name))
            for pod in seed.pods:
                self._put(db, "Pod", pod["namespace"], pod["name"], self._new_pod(db, pod))
            for pdb in seed.pdbs:
                self._put(
                    db, "PodDisruptionBudget", pdb["namespace"], pdb["name"], self._new_pdb(db, pdb)
                )

    def patch(self, kind: Kind, namespace: str, name: str, patch: JSONObject) -> JSONObject:
        """A merge patch of a node or a PDB; only `spec`, labels and annotations can change."""
        with self._transaction() as db:
            current = self._get(db, kind, namespace, name)
            try:
                if current is None:
                    raise ApiError.not_found(kind, name)
                candidate = self._patched(kind, name, current, patch)
            except ApiError as refusal:
                raise self._refused(
                    db, "patch", kind, namespace, name, refusal, {"patch": patch}
                ) from None
            changed = candidate != current
            if changed:
                if "generation" in current["metadata"] and candidate["spec"] != current["spec"]:
                    candidate["metadata"]["generation"] = current["metadata"]["generation"] + 1
                candidate["metadata"]["resourceVersion"] = self._next_version(db)
                self._put(db, kind, namespace, name, candidate)
            self._record(db, "patch", kind, namespace, name, 200, changed, {"patch": patch})
            return self._served(db, candidate)

    def _patched(self, kind: Kind, name: str, current: JSONObject, patch: JSONObject) -> JSONObject:
        patched = merge_patch(current, patch)
        if not isinstance(patched, dict):
            raise ApiError.bad_request("a patch must be a JSON object")
        meta = patched.get("metadata") or {}
        if meta.get("name", name) != name:
            raise ApiError.bad_request("metadata.name cannot be changed by a patch")
        # Server-managed fields, and the status subresource, are not the client's to change.
        candidate = {
            **current,
            "metadata": {
                **current["metadata"],
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
            },
            "spec": patched.get("spec") or {},
        }
        self._validate_spec(kind, name, candidate["spec"])
        return candidate

    def evict(self, namespace: str, name: str, preconditions: JSONObject | None = None) -> Outcome:
        """POST pods/{name}/eviction: delete the pod unless its disruption budget forbids it.

        As on a real apiserver, the budget is checked first, then the delete's preconditions."""
        with self._transaction() as db:
            pod = self._get(db, "Pod", namespace, name)
            if pod is None:
                raise self._refused(
                    db, "evict", "Pod", namespace, name, ApiError.not_found("Pod", name)
                )
            budgets = [
                pdb
                for pdb in self._all(db, "PodDisruptionBudget", namespace)
                if selects(pdb["spec"].get("selector"), pod["metadata"].get("labels", {}))
            ]
            if pod["status"].get("phase") in ("Pending", "Succeeded", "Failed"):
                budgets = []  # it serves no one: evicting it disrupts nothing
            if len(budgets) > 1:
                message = (
                    "This pod has more than one PodDisruptionBudget, which the eviction "
                    "subresource does not support."
                )
                refusal = ApiError(500, "InternalError", message)
                raise self._refused(db, "evict", "Pod", namespace, name, refusal)
            if budgets:
                pdb = budgets[0]
                status = self._pdb_status(db, pdb)
                if status["disruptionsAllowed"] <= 0:
                    cause = (
                        f"The disruption budget {pdb['metadata']['name']} needs "
                        f"{status['desiredHealthy']} healthy pods and has "
                        f"{status['currentHealthy']} currently"
                    )
                    refusal = ApiError(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        {"causes": [{"reason": "DisruptionBudget", "message": cause}]},
                    )
                    raise self._refused(
                        db, "evict", "Pod", namespace, name, refusal, {"cause": cause}
                    )
            if conflict := _unmet(pod, preconditions):
                raise self._refused(db, "evict", "Pod", namespace, name, conflict)
            self._remove(db, "Pod", namespace, name)
            self._next_version(db)
            detail = {"budget": budgets[0]["metadata"]["name"] if budgets else None}
            self._record(db, "evict", "Pod", namespace, name, 201, True, detail)
            return Outcome(201, success_status(201))

    def delete_pod(
        self,
        namespace: str,
        name: str,
        grace_period_seconds: int | None,
        preconditions: JSONObject | None = None,
    ) -> Outcome:
        """DELETE a pod. Budgets do not apply: that is what evictions are for."""
        detail = {"grace_period_seconds": grace_period_seconds}
        with self._transaction() as db:
            pod = self._get(db, "Pod", namespace, name)
            if pod is None:
                refusal = ApiError.not_found("Pod", name)
                raise self._refused(db, "delete", "Pod", namespace, name, refusal, detail)
            if conflict := _unmet(pod, preconditions):
                raise self._refused(db, "delete", "Pod", namespace, name, conflict, detail)
            self._remove(db, "Pod", namespace, name)
            pod["metadata"]["deletionTimestamp"] = now_rfc3339()
            pod["metadata"]["deletionGracePeriodSeconds"] = grace_period_seconds or 0
            pod["metadata"]["resourceVersion"] = self._next_version(db)
            self._record(db, "delete", "Pod", namespace, name, 200, True, detail)
            return Outcome(200, pod)

    # -- building objects ------------------------------------------------------------------

    def _meta(self, db: sqlite3.Connection, name: str, namespace: str | None) -> JSONObject:
        meta: JSONObject = {
            "name": name,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_version(db),
            "creationTimestamp": now_rfc3339(),
        }
        if namespace is not None:
            meta["namespace"] = namespace
        return meta

    def _new_node(self, db: sqlite3.Connection, name: str) -> JSONObject:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                **self._meta(db, name, None),
                "labels": {"kubernetes.io/hostname": name},
                "annotations": {},
            },
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]},
        }

    def _new_pod(self, db: sqlite3.Connection, seed: JSONObject) -> JSONObject:
        phase = seed.get("phase", "Running")
        meta = {
            **self._meta(db, seed["name"], seed["namespace"]),
            "labels": seed.get("labels") or {},
            "annotations": {},
        }
        if owner := seed.get("owner"):
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": owner["kind"],
                    "name": owner["name"],
                    "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{owner['kind']}/{owner['name']}")),
                    "controller": True,
                }
            ]
        ready = "True" if phase == "Running" else "False"
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": seed.get("node"),
                "containers": [
                    {"name": "app", "image": seed.get("image", "registry.k8s.io/pause")}
                ],
            },
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
        }

    def _new_pdb(self, db: sqlite3.Connection, seed: JSONObject) -> JSONObject:
        return {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {
                **self._meta(db, seed["name"], seed["namespace"]),
                "generation": 1,
                "labels": {},
                "annotations": {},
            },
            "spec": {
                "minAvailable": seed["min_available"],
                "selector": {"matchLabels": seed.get("selector") or {}},
            },
        }

    def _validate_spec(self, kind: Kind, name: str, spec: JSONObject) -> None:
        if kind == "Node":
            if not isinstance(spec.get("unschedulable", False), bool):
                raise ApiError.invalid(kind, name, "spec.unschedulable: must be a boolean")
        elif kind == "PodDisruptionBudget":
            if "maxUnavailable" in spec:
                raise ApiError.invalid(
                    kind, name, "spec.maxUnavailable: not supported by the cookbook's stand-in"
                )
            if not valid_min_available(spec.get("minAvailable")):
                raise ApiError.invalid(
                    kind, name, "spec.minAvailable: must be a number >= 0 or a percentage"
                )
            if not isinstance(spec.get("selector", {}), dict):
                raise ApiError.invalid(kind, name, "spec.selector: must be a label selector")

    # -- PDB status, as the disruption controller computes it --------------------------------

    def _pdb_status(self, db: sqlite3.Connection, pdb: JSONObject) -> JSONObject:
        namespace = pdb["metadata"]["namespace"]
        selected = [
            pod
            for pod in self._all(db, "Pod", namespace)
            if selects(pdb["spec"].get("selector"), pod["metadata"].get("labels", {}))
        ]
        expected = len(selected)
        healthy = sum(_healthy(pod) for pod in selected)
        min_available = pdb["spec"]["minAvailable"]
        if isinstance(min_available, str):
            desired = math.ceil(int(min_available.rstrip("%")) * expected / 100)
        else:
            desired = min_available
        allowed = max(0, healthy - desired)
        generation = pdb["metadata"].get("generation", 1)
        return {
            "observedGeneration": generation,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "disruptionsAllowed": allowed,
            "expectedPods": expected,
            "conditions": [
                {
                    "type": "DisruptionAllowed",
                    "status": "True" if allowed > 0 else "False",
                    "reason": "SufficientPods" if allowed > 0 else "InsufficientPods",
                    "message": "",
                    "observedGeneration": generation,
                    "lastTransitionTime": pdb["metadata"]["creationTimestamp"],
                }
            ],
        }

    def _served(self, db: sqlite3.Connection, obj: JSONObject) -> JSONObject:
        if obj["kind"] == "PodDisruptionBudget":
            return {**obj, "status": self._pdb_status(db, obj)}
        return obj

    # -- storage ---------------------------------------------------------------------------

    def _get(
        self, db: sqlite3.Connection, kind: Kind, namespace: str, name: str
    ) -> JSONObject | None:
        row = db.execute(
            "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (kind, namespace, name),
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _all(self, db: sqlite3.Connection, kind: Kind, namespace: str | None) -> list[JSONObject]:
        if namespace is None:
            rows = db.execute(
                "SELECT body FROM objects WHERE kind = ? ORDER BY namespace, name", (kind,)
            )
        else:
            rows = db.execute(
                "SELECT body FROM objects WHERE kind = ? AND namespace = ? ORDER BY name",
                (kind, namespace),
            )
        return [json.loads(body) for (body,) in rows.fetchall()]

    def _put(
        self, db: sqlite3.Connection, kind: Kind, namespace: str, name: str, obj: JSONObject
    ) -> None:
        db.execute(
            "INSERT OR REPLACE INTO objects (kind, namespace, name, body) VALUES (?, ?, ?, ?)",
            (kind, namespace, name, json.dumps(obj)),
        )

    def _remove(self, db: sqlite3.Connection, kind: Kind, namespace: str, name: str) -> None:
        db.execute(
            "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (kind, namespace, name),
        )

    def _counter(self, db: sqlite3.Connection, name: str) -> int:
        row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def _next_version(self, db: sqlite3.Connection) -> str:
        value = self._counter(db, "resourceVersion") + 1
        db.execute(
            "INSERT OR REPLACE INTO counters (name, value) VALUES ('resourceVersion', ?)", (value,)
        )
        return str(value)

    def _record(
        self,
        db: sqlite3.Connection,
        verb: str,
        kind: Kind,
        namespace: str,
        name: str,
        code: int,
        applied: bool,
        detail: JSONObject,
    ) -> None:
        db.execute(
            "INSERT INTO records (at, verb, kind, namespace, name, code, applied, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), verb, kind, namespace, name, code, int(applied), json.dumps(detail)),
        )

    def _refused(
        self,
        db: sqlite3.Connection,
        verb: str,
        kind: Kind,
        namespace: str,
        name: str,
        refusal: ApiError,
        detail: JSONObject | None = None,
    ) -> ApiError:
        """Record a refused write; returns the refusal, for the caller to raise."""
        detail = {**(detail or {}), "refused": refusal.message}
        self._record(db, verb, kind, namespace, name, refusal.code, False, detail)
        return refusal
