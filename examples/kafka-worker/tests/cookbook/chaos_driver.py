"""How `cookbook chaos kafka-worker` drives deletions: records published to the request topic.

Each request is published as the application would; some, drawn from the seed, twice (a
producer retry: the second delivery must attach to the first execution). The consumer is one of
the processes killed at random, with the workers and the dev server. Every request must end
deleted: 80 rows in two batches (50 + 30), reported once to the service (one `api.call` effect).
The store's erasure log must hold exactly those two batches for each user, and no rows of any
user may be left.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import closing
from typing import Any

from cookbook.chaos import Driver, Entry, Execution
from cookbook.crash import receivers
from kafka_worker.consumer import DeletionRequest, request_producer, send_request

DELETED = "deleted 80 rows in 2 batches, reported"
STORE = "user-data store"  # the receiver pyproject.toml declares: the store's erasure log


class KafkaDriver(Driver):
    processes = ("kafka_worker.consumer",)
    # A killed consumer's partitions move to a fresh one after ~2 s instead of ~10 s.
    env: Mapping[str, str] = {"KAFKA_SESSION_TIMEOUT_MS": "1500"}

    def __init__(self) -> None:
        self._producer: Any = None

    def plan(self, i: int, rng: random.Random) -> Execution:
        kind = "published twice" if rng.random() < 0.25 else "published"
        return Execution(
            f"erase-{i:03d}", kind, DELETED, {"api.call": 1}, details={"user": f"user-{i:03d}"}
        )

    async def prepare(self, entry: Entry, plans: Sequence[Execution]) -> None:
        self._producer = await asyncio.to_thread(request_producer, entry.stack.kafka_bootstrap)

    async def drive(self, entry: Entry, plan: Execution) -> None:
        request = DeletionRequest(plan.id, plan.details["user"])
        for _ in range(2 if plan.kind == "published twice" else 1):
            sent = send_request(self._producer, request)
            await asyncio.to_thread(sent.get, 30)  # acknowledged by the broker

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        record = await entry.execution(plan.id)
        if record is None or record.state == "pending":
            return None
        if record.state != "resolved" or not isinstance(record.value.data, dict):
            return f"{record.state}: {record.value.data!r}"[:200]
        done = record.value.data
        reported = "reported" if done.get("receipt") else f"report refused: {done}"
        return (
            f"deleted {done.get('rows_deleted')} rows in {done.get('batches')} batches, {reported}"
        )

    async def check(
        self, entry: Entry, plans: Sequence[Execution], recorded: receivers.Recorded
    ) -> list[str]:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close)
        users = {plan.details["user"] for plan in plans}
        batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
        problems = []
        for erasure in recorded.get(STORE, []):
            if erasure["user_id"] in users:
                batches[erasure["user_id"]].append(erasure)
            else:
                problems.append(f"{STORE}: an erasure of unknown user {erasure['user_id']!r}")
        for user in sorted(users):
            rows = sorted(e["rows"] for e in batches[user])
            steps = {e["step_id"] for e in batches[user]}
            if rows != [30, 50] or len(steps) != 2:
                problems.append(
                    f"{STORE}: {user}'s erasures are {rows} rows under {len(steps)} step ids:"
                    " expected 50 and 30, each once"
                )
        left = await asyncio.to_thread(_rows_left, entry, users)
        problems += [f"{STORE}: {n} rows of {user} left" for user, n in sorted(left.items()) if n]
        return problems


def _rows_left(entry: Entry, users: set[str]) -> dict[str, int]:
    path = entry.worker_dir / "kafka-worker-data" / "users.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        counts = dict(db.execute("SELECT user_id, count(*) FROM user_rows GROUP BY user_id"))
    return {user: counts.get(user, 0) for user in users}


DRIVER = KafkaDriver()
