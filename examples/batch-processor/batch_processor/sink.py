"""The sink: the store the batches write to, a SQLite file in WAL mode that this example owns.

It keeps two tables. `items` holds one row per processed item under the unique key (job, batch,
item): a batch that runs again after a crash inserts nothing it inserted before, so each item is
in the sink exactly once however often its batch ran. `batch_runs` holds one row per attempt at
a batch, with the worker's pid, when it started and when its items were committed, and how many
items that attempt added: the record from which the window (at most four batches at once) and
the resume point (the first unfinished batch) are checked, on the sink's own clock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = ".cookbook/batch-processor"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    job TEXT NOT NULL,
    batch INTEGER NOT NULL,
    item INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (job, batch, item)
);
CREATE TABLE IF NOT EXISTS batch_runs (
    job TEXT NOT NULL,
    batch INTEGER NOT NULL,
    worker INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    added INTEGER
);
"""


@dataclass(frozen=True)
class BatchRun:
    """One attempt at one batch, as the sink recorded it (unfinished if its worker died)."""

    batch: int
    worker: int
    started_at: float
    finished_at: float | None
    added: int | None


def sink_path(environ: Mapping[str, str]) -> Path:
    # Relative to the working directory, so every worker started from the same place (the one
    # that crashed and the one that takes over) and the demo share the same file.
    data_dir = Path(environ.get("BATCH_PROCESSOR_DATA_DIR") or DEFAULT_DATA_DIR)
    return data_dir / "sink.db"


class Sink:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            # WAL: readers (the demo, the tests, the crash harness) never block the writers.
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: the batches write from several threads at once.
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def batch_started(self, job: str, batch: int, worker: int) -> int:
        """Record that an attempt at `batch` started; its id, to finish it with."""
        with closing(self._connect()) as db:
            cursor = db.execute(
                "INSERT INTO batch_runs (job, batch, worker, started_at) VALUES (?, ?, ?, ?)",
                (job, batch, worker, time.time()),
            )
            return cursor.lastrowid or 0

    def record_batch(
        self, job: str, batch: int, results: Sequence[tuple[int, str]], run_id: int
    ) -> int:
        """Write a batch's items and finish its attempt, in one transaction; the items it added.

        An item already there (an earlier attempt at this batch committed, then its worker died
        before the workflow could checkpoint the batch) is left as it is.
        """
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany(
                    "INSERT INTO items (job, batch, item, result) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (job, batch, item) DO NOTHING",
                    [(job, batch, item, result) for item, result in results],
                )
                added = db.total_changes - before
                db.execute(
                    "UPDATE batch_runs SET finished_at = ?, added = ? WHERE rowid = ?",
                    (time.time(), added, run_id),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return added

    def items(self, job: str) -> list[tuple[int, int, str]]:
        """(batch, item, result) for every item of `job` in the sink, in item order."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT batch, item, result FROM items WHERE job = ? ORDER BY item", (job,)
            ).fetchall()
        return [(int(b), int(i), str(r)) for b, i, r in rows]

    def runs(self, job: str) -> list[BatchRun]:
        """Every attempt at a batch of `job`, in the order they started."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT batch, worker, started_at, finished_at, added FROM batch_runs"
                " WHERE job = ? ORDER BY started_at, rowid",
                (job,),
            ).fetchall()
        return [BatchRun(*row) for row in rows]


def most_in_flight(runs: Sequence[BatchRun], ended_at: Mapping[int, float] | None = None) -> int:
    """The most batch attempts in flight at one instant, from their start and finish times.

    An attempt with no finish (its worker died) is taken as running until `ended_at[worker]`,
    when the caller knows when that worker was killed, else until the end of time.
    """
    ends = ended_at or {}
    events: list[tuple[float, int]] = []
    for run in runs:
        end = run.finished_at if run.finished_at is not None else ends.get(run.worker, float("inf"))
        events += [(run.started_at, 1), (end, -1)]
    # A finish sorts before a start at the same instant.
    level = peak = 0
    for _, change in sorted(events):
        level += change
        peak = max(peak, level)
    return peak
