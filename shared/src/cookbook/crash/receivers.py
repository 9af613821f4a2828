"""Receiving systems: what each system an example writes to recorded during one run.

Exactly-once is judged by the system that received the effect, not by the workflow: the harness
reads each receiving system's records before a run starts (a watermark) and after its verdict,
and compares what was recorded in between with what the golden run recorded, as a multiset of
declared, normalised fields. Runs on one harness stack are serial, so what a system recorded
between a run's start and its verdict belongs to that run, whatever key (or no key) it carries.

An example declares its receiving systems as data in `[tool.cookbook]`, in one of two forms:

    [[tool.cookbook.receivers]]            # a stack service that lists its records as JSON
    name = "kubernetes"
    service = "kubernetes"                 # a service of the stack (Stack.service_url)
    path = "/_admin/records"               # GET; a JSON list of objects
    watermark = "seq"                      # a field that grows with every new record
    fields = ["verb", "kind", "namespace", "name", "code"]
    where = { applied = true }             # optional: count only records with these values

    [[tool.cookbook.receivers]]            # a SQLite file a worker writes, opened read-only
    name = "reference store"
    sqlite = ".cookbook/wlrf/reference.db" # relative to the directory the workers run in
    table = "accounts"                     # its rowid is the watermark
    fields = ["request_id", "account_id", "holder", "status"]

The provider sandbox is always a receiving system when the stack has one: every effect it
applied, with an idempotency key or without.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cookbook import clients

# A record as compared: its declared fields, normalised, as canonical JSON.
type Normaliser = Callable[[str], str]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HTTP_KEYS = {"name", "service", "path", "watermark", "fields", "where"}
_SQLITE_KEYS = {"name", "sqlite", "table", "fields", "where"}


class ReceiverError(ValueError):
    """A receiver declaration that cannot be used; the message names the example and the key."""


@dataclass(frozen=True)
class Receiver:
    """One receiving system: where its records are and which of their fields are compared."""

    name: str
    fields: tuple[str, ...]
    where: Mapping[str, Any] = field(default_factory=dict)
    # HTTP form
    service: str = ""
    path: str = ""
    watermark: str = ""
    # SQLite form
    sqlite: str = ""
    table: str = ""

    def _selected(self, record: Mapping[str, Any]) -> bool:
        return all(record.get(k) == v for k, v in self.where.items())

    def _shape(self, record: Mapping[str, Any], normalise: Normaliser) -> str:
        fields = {name: record.get(name) for name in self.fields}
        return normalise(json.dumps(fields, sort_keys=True, ensure_ascii=False))


SANDBOX = Receiver(
    name="sandbox",
    service="sandbox",
    path="/_admin/effects",
    watermark="id",
    fields=("provider", "action", "idempotency_key"),
)


@dataclass(frozen=True)
class Place:
    """Where the harness finds the stack's services and the workers' files."""

    service_url: Callable[[str], str]
    worker_dir: Path
    has_sandbox: bool


def declared(example_name: str, table: Mapping[str, Any]) -> list[Receiver]:
    """The receivers an example's `[tool.cookbook]` table declares, validated."""
    raw = table.get("receivers", [])
    where = f"{example_name}: [tool.cookbook] receivers"
    if not isinstance(raw, list):
        raise ReceiverError(f"{where}: must be a list of tables ([[tool.cookbook.receivers]])")
    found: list[Receiver] = []
    for i, entry in enumerate(raw):
        receiver = _receiver(f"{where}[{i}]", entry)
        if receiver.name in {SANDBOX.name, *(r.name for r in found)}:
            raise ReceiverError(
                f"{where}[{i}].name: {receiver.name!r} is taken (the sandbox is built in)"
            )
        found.append(receiver)
    return found


def declared_by(example_path: Path, example_name: str) -> list[Receiver]:
    """The receivers declared in an example folder's pyproject.toml (none if it has none)."""
    pyproject = example_path / "pyproject.toml"
    if not pyproject.is_file():
        return []
    table = tomllib.loads(pyproject.read_text()).get("tool", {}).get("cookbook", {})
    return declared(example_name, table)


def _receiver(where: str, entry: Any) -> Receiver:
    if not isinstance(entry, dict):
        raise ReceiverError(f"{where}: must be a table")
    required: tuple[str, ...]
    if "sqlite" in entry:
        allowed, required = _SQLITE_KEYS, ("name", "sqlite", "table", "fields")
    elif "service" in entry:
        allowed, required = _HTTP_KEYS, ("name", "service", "path", "watermark", "fields")
    else:
        raise ReceiverError(f"{where}: needs `service` (HTTP records) or `sqlite` (a file)")
    for key in sorted(entry):
        if key not in allowed:
            raise ReceiverError(
                f"{where}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})"
            )
    for key in required:
        if key not in entry:
            raise ReceiverError(f"{where}.{key}: missing")
    for key in ("name", "service", "path", "watermark", "sqlite", "table"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key]):
            raise ReceiverError(f"{where}.{key}: must be a non-empty string")
    fields = entry["fields"]
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise ReceiverError(f"{where}.fields: must be a non-empty list of field names")
    condition = entry.get("where", {})
    if not isinstance(condition, dict) or not all(
        isinstance(v, str | int | float | bool) for v in condition.values()
    ):
        raise ReceiverError(f"{where}.where: must be a table of field = plain value")
    if "sqlite" in entry:
        for key, names in (("table", [entry["table"]]), ("fields", fields), ("where", condition)):
            if bad := [n for n in names if not _IDENTIFIER.match(n)]:
                raise ReceiverError(f"{where}.{key}: {bad[0]!r} is not a plain SQL identifier")
        if Path(entry["sqlite"]).is_absolute() or ".." in Path(entry["sqlite"]).parts:
            raise ReceiverError(f"{where}.sqlite: must be relative to the workers' directory")
    elif not entry["path"].startswith("/"):
        raise ReceiverError(f"{where}.path: must start with '/'")
    return Receiver(
        name=entry["name"],
        fields=tuple(fields),
        where=dict(condition),
        service=entry.get("service", ""),
        path=entry.get("path", ""),
        watermark=entry.get("watermark", ""),
        sqlite=entry.get("sqlite", ""),
        table=entry.get("table", ""),
    )


# -- reading ------------------------------------------------------------------------------------

type Watermarks = dict[str, int]
# What one run recorded: by receiver, the raw records since the watermark.
type Recorded = dict[str, list[dict[str, Any]]]
# What one run recorded, compared form: by receiver, normalised record -> how many times.
type Received = dict[str, Counter[str]]


def active(receivers: Sequence[Receiver], place: Place) -> list[Receiver]:
    return ([SANDBOX] if place.has_sandbox else []) + list(receivers)


async def watermarks(receivers: Sequence[Receiver], place: Place) -> Watermarks:
    """Where each system's records stand now: what comes after belongs to the next run."""
    marks = {}
    for receiver in receivers:
        records = await _read(receiver, place, after=None)
        marks[receiver.name] = max((mark for mark, _ in records), default=0)
    return marks


async def recorded_since(
    receivers: Sequence[Receiver], place: Place, marks: Watermarks
) -> Recorded:
    """Every record each system made after its watermark, selected by its `where`."""
    found: Recorded = {}
    for receiver in receivers:
        records = await _read(receiver, place, after=marks.get(receiver.name, 0))
        found[receiver.name] = [r for _, r in records if receiver._selected(r)]
    return found


def received(receivers: Sequence[Receiver], recorded: Recorded, normalise: Normaliser) -> Received:
    by_name = {r.name: r for r in receivers}
    return {
        name: Counter(by_name[name]._shape(record, normalise) for record in records)
        for name, records in recorded.items()
        if name in by_name
    }


def differences(golden: Received, run: Received) -> list[str]:
    """One message per receiving system whose records differ from the golden run's."""
    problems = []
    for name in sorted(golden.keys() | run.keys()):
        expected, got = golden.get(name, Counter()), run.get(name, Counter())
        if expected == got:
            continue
        missing, extra = expected - got, got - expected
        parts = [
            f"{label} {count}x {record}"
            for label, diff in (("extra", extra), ("missing", missing))
            for record, count in sorted(diff.items())
        ]
        problems.append(
            f"receiving system {name!r} recorded other effects than in the golden run: "
            + "; ".join(parts)
        )
    return problems


def received_to_json(value: Received) -> dict[str, list[list[Any]]]:
    return {name: [[record, n] for record, n in sorted(c.items())] for name, c in value.items()}


def received_from_json(data: Mapping[str, Any]) -> Received:
    return {name: Counter(dict(rows)) for name, rows in data.items()}


async def _read(
    receiver: Receiver, place: Place, *, after: int | None
) -> list[tuple[int, dict[str, Any]]]:
    """(watermark, record) pairs, oldest first; only those after `after` unless it is None."""
    if receiver.sqlite:
        path = place.worker_dir / receiver.sqlite
        return await asyncio.to_thread(_read_sqlite, receiver, path, after or 0)
    async with clients.async_client(base_url=place.service_url(receiver.service)) as http:
        response = await http.get(receiver.path)
        response.raise_for_status()
        rows = response.json()
    if not isinstance(rows, list):
        raise ReceiverError(f"{receiver.name}: GET {receiver.path} did not answer a JSON list")
    records = []
    for row in rows:
        mark = row.get(receiver.watermark) if isinstance(row, dict) else None
        if not isinstance(mark, int):
            raise ReceiverError(
                f"{receiver.name}: a record of GET {receiver.path} has no integer"
                f" {receiver.watermark!r}: {row!r}"
            )
        if after is None or mark > after:
            records.append((mark, row))
    return sorted(records, key=lambda pair: pair[0])


def _read_sqlite(receiver: Receiver, path: Path, after: int) -> list[tuple[int, dict[str, Any]]]:
    if not path.exists():  # no worker has written to it yet
        return []
    columns = [*receiver.fields, *(k for k in receiver.where if k not in receiver.fields)]
    query = (
        f"SELECT rowid, {', '.join(columns)} FROM {receiver.table} WHERE rowid > ? ORDER BY rowid"
    )
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        try:
            rows = db.execute(query, (after,)).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise ReceiverError(f"{receiver.name}: {query} on {path}: {exc}") from exc
    return [(row[0], dict(zip(columns, row[1:], strict=True))) for row in rows]
