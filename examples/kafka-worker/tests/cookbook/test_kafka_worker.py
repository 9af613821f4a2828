"""kafka-worker end to end: a Kafka-protocol broker, a dev server, worker and consumer processes.

100 deletion requests over 3 partitions, published in waves, while the dev server's tripwires
SIGKILL a process at an exact protocol step:
  - worker-1 mid-deletion: a batch's rows are deleted, its checkpoint is not written yet;
  - consumer-1 as it hands a record over: Resonate has no execution for it yet;
  - consumer-2 before its commit: the execution for a record exists, its offset is not committed;
  - worker-2 between workflows: right after one execution's result became durable.
Then the receiving systems are checked: the data store, the provider sandbox, the dev server's
promises and journal, and the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import os
import secrets
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import msgspec
import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from kafka_worker.consumer import (
    TOPIC,
    DeletionRequest,
    ensure_topics,
    hand_over,
    parse,
    read_dead_letters,
    request_producer,
    send_request,
)
from kafka_worker.demo import execution_result
from kafka_worker.steps import Providers
from kafka_worker.store import UserData
from kafka_worker.workflow import WORKFLOW_RETRY, delete_user_data
from resonate.resonate import Resonate
from resonate.testing import local_resonate

POISON = {
    b"please forget me": "JSON is malformed: invalid character (byte 0)",
    b'{"user_id": "u-1"}': "Object missing required field `id`",
    b'{"id": "a:b", "user_id": "u-1"}': "Expected `str` matching regex '^[^:]+$' - at `$.id`",
    None: "empty record (no value)",
}


@pytest.mark.parametrize(("value", "reason"), POISON.items())
def test_a_poison_record_is_named_by_its_reason(value: bytes | None, reason: str) -> None:
    assert parse(value) == reason


def test_a_valid_record_is_a_request() -> None:
    assert parse(b'{"id": "erase-1", "user_id": "u-1", "extra": 1}') == DeletionRequest(
        "erase-1", "u-1"
    )


# What the service told about a deletion answers, and what the execution makes of it: a refusal
# (a 4xx other than 408 and 429) is asked once and stated in the result; anything that may pass
# next time is retried (instantly here: the test's Resonate sleeps no backoff) until it does.
REPORT_ANSWERS = {
    "refused": ({"mode": "fail_always", "status": 422}, 1, "422 Unprocessable Entity"),
    "forbidden": ({"mode": "fail_always", "status": 403}, 1, "403 Forbidden"),
    "unavailable twice": ({"mode": "fail_times", "times": 2, "status": 503}, 3, None),
    "rate-limited": ({"mode": "fail_times", "times": 1, "status": 429}, 2, None),
    "timed out": ({"mode": "fail_times", "times": 1, "status": 408}, 2, None),
}


@pytest.mark.parametrize(("fault", "calls", "refusal"), REPORT_ANSWERS.values(), ids=REPORT_ANSWERS)
def test_a_refused_report_is_stated_once_and_a_failing_one_is_retried(
    sandbox: RunningSandbox,
    tmp_path: Path,
    fault: dict[str, Any],
    calls: int,
    refusal: str | None,
) -> None:
    execution_id = f"report-{secrets.token_hex(4)}"
    armed = {**fault, "provider": "api", "action": "call", "key_prefix": f"{execution_id}:"}
    clients.post(f"{sandbox.url}/_admin/faults", json=armed).raise_for_status()

    async def run() -> Any:
        resonate = local_resonate()
        async with clients.async_client(base_url=sandbox.url) as client:
            resonate.with_dependency(Providers(client))
            resonate.with_dependency(UserData(tmp_path))
            resonate.register(delete_user_data, retry_policy=WORKFLOW_RETRY)
            try:
                return await resonate.run(execution_id, delete_user_data, "ada").result()
            finally:
                await resonate.stop()

    result = asyncio.run(run())

    requests = sandbox.records.requests(key_prefix=f"{execution_id}:")
    assert len(requests) == calls
    assert result["rows_deleted"] == 80
    if refusal is None:
        [effect] = sandbox.records.effects(key_prefix=f"{execution_id}:")
        assert (result["receipt"], result["report_refused"]) == (effect.resource_id, None)
    else:
        assert result["receipt"] is None
        assert result["report_refused"].startswith(refusal)


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """Notes every module an import statement had to search for (one not in sys.modules)."""

    def __init__(self) -> None:
        self.searched: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.searched.append(name)


def test_a_report_request_searches_sys_path_for_no_module(sandbox: RunningSandbox) -> None:
    # httpcore imports sniffio on every request; were it not installed, every report would
    # search the whole sys.path for it again (a quarter of a worker's CPU time, profiled).
    watcher = _ImportWatcher()
    prefix = f"imports-{secrets.token_hex(4)}"

    async def report(client: httpx.AsyncClient, n: int) -> None:
        response = await client.post(
            "/api/call",
            json={"event": "user-data-deleted", "user_id": "ada", "rows": 80},
            headers={"Idempotency-Key": f"{prefix}:{n}"},
        )
        response.raise_for_status()

    async def reports() -> None:
        async with clients.async_client(base_url=sandbox.url) as client:
            await report(client, 0)  # the first request imports what requests need, once
            sys.meta_path.insert(0, watcher)
            try:
                for n in range(1, 6):
                    await report(client, n)
            finally:
                sys.meta_path.remove(watcher)

    asyncio.run(reports())
    assert watcher.searched == []


def test_the_store_opens_one_connection_per_thread_not_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = UserData(tmp_path)
    opened: list[str] = []
    connect = sqlite3.connect

    def counting_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(threading.current_thread().name)
        connection: sqlite3.Connection = connect(*args, **kwargs)
        return connection

    monkeypatch.setattr(sqlite3, "connect", counting_connect)

    def delete_for(user_id: str) -> None:
        ids = store.row_ids(user_id)
        store.delete_range(user_id, f"{user_id}:2", user_id, ids[0], ids[49])
        store.delete_range(user_id, f"{user_id}:3", user_id, ids[50], ids[-1])
        assert store.rows_left(user_id) == 0

    for n in range(3):
        delete_for(f"ada-{n}")
    worker = threading.Thread(target=delete_for, args=("grace",), name="another-thread")
    worker.start()
    worker.join()

    assert opened == [threading.current_thread().name, "another-thread"]
    assert [e.rows for e in store.erasures("grace")] == [50, 30]


def test_a_failed_transaction_leaves_the_kept_connection_usable(tmp_path: Path) -> None:
    store = UserData(tmp_path)
    ids = store.row_ids("ada")
    # The erasure log refuses its entry after the DELETE ran, inside the same transaction:
    # nothing of it may stay, and the thread's kept connection must not stay in it.
    failing = UserData(tmp_path)
    failing._connection().execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON erasure_log"
        " BEGIN SELECT RAISE(ABORT, 'the log refused'); END"
    )
    with pytest.raises(sqlite3.DatabaseError, match="the log refused"):
        failing.delete_range("erase-1", "erase-1:2", "ada", ids[0], ids[49])
    assert failing.rows_left("ada") == 80
    assert failing.row_ids("ada") == ids  # a new transaction on the same connection


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[Any]:
    ensure_topics(kafka_bootstrap)  # 3 partitions, before anything is published
    producer = request_producer(kafka_bootstrap)
    yield producer
    producer.close()


def _arm(devserver: RunningDevServer, operation: str, promise_id: str, when: str, pid: int) -> None:
    response = clients.post(
        f"{devserver.url}/_cookbook/tripwires",
        json={"operation": operation, "promise_id": promise_id, "when": when, "pid": pid},
    )
    response.raise_for_status()


def _publish(producer: Any, requests: list[DeletionRequest]) -> list[Any]:
    futures = [send_request(producer, r) for r in requests]
    return [f.get(10) for f in futures]


def _publish_poison(producer: Any, values: list[bytes | None]) -> dict[str, bytes | None]:
    """Poison records by their `topic[partition]@offset`."""
    sent = [(producer.send(TOPIC, key=b"poison", value=v), v) for v in values]
    return {f"{m.topic}[{m.partition}]@{m.offset}": v for m, v in ((f.get(10), v) for f, v in sent)}


@dataclass(frozen=True)
class _Record:
    """The fields of a consumed Kafka record that the hand-over reads."""

    offset: int
    value: bytes | None
    key: bytes | None = None
    topic: str = TOPIC
    partition: int = 0


def test_an_id_reused_for_another_user_is_dead_lettered_not_dropped(
    devserver: RunningDevServer, kafka_bootstrap: str, producer: Any
) -> None:
    run = secrets.token_hex(3)
    first = DeletionRequest(f"erase-{run}", f"ada-{run}")
    reused = DeletionRequest(first.id, f"grace-{run}")  # the same id, another user
    polls = [
        [_Record(0, msgspec.json.encode(first))],
        [_Record(1, msgspec.json.encode(reused)), _Record(2, msgspec.json.encode(first))],
    ]

    async def hand_over_each_poll() -> Any:
        client = Resonate(url=devserver.url, group="kafka-worker-tests")
        try:
            for records in polls:
                await hand_over(client.options(target="kafka-worker"), producer, records)
            return (await client.promises.get(first.id)).param.data
        finally:
            await client.stop()

    execution = asyncio.run(hand_over_each_poll())

    letters = read_dead_letters(kafka_bootstrap)
    assert [(letter.source, letter.reason, letter.value) for letter in letters] == [
        (
            f"{TOPIC}[0]@1",
            f"id {first.id!r} is taken by another request; this one was not started",
            msgspec.json.encode(reused),
        )
    ]
    # The execution is still the first request's; its repeat attached to it.
    assert (execution["func"], execution["args"]) == ("delete_user_data", [first.user_id])
    executions = cast(list[dict[str, Any]], devserver.state()["promises"])
    assert [p["id"] for p in executions] == [first.id]


def _creates(devserver: RunningDevServer, execution_id: str) -> int:
    """How many requests created this execution: one per delivery of its record."""
    journal = devserver.journal(execution_id)
    return len(
        {
            e["corr_id"]
            for e in journal
            if e["operation"] == "create" and e["promise_id"] == execution_id
        }
    )


async def _results(url: str, ids: list[str]) -> dict[str, Any]:
    client = Resonate(url=url, group="kafka-worker-tests")
    try:
        async with asyncio.timeout(60):
            return {i: await execution_result(client, i) for i in ids}
    finally:
        await client.stop()


def test_every_request_is_deleted_once_through_consumer_and_worker_crashes(
    devserver: RunningDevServer,
    sandbox: RunningSandbox,
    kafka_bootstrap: str,
    start_worker: ProcessFactory,
    start_process: Callable[[ManagedProcess], ManagedProcess],
    producer: Any,
    tmp_path: Path,
) -> None:
    env = {
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": sandbox.url,
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "KAFKA_WORKER_DATA_DIR": str(tmp_path),
        # A killed consumer's partitions move to the next one after ~2 s instead of ~10 s.
        "KAFKA_SESSION_TIMEOUT_MS": "1500",
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}

    def consumer(name: str) -> ManagedProcess:
        argv = [sys.executable, "-m", "kafka_worker.consumer"]
        process = ManagedProcess(name, argv, ready=r"consumer \d+ ready", env=inherited | env)
        return start_process(process)

    run = secrets.token_hex(3)
    requests = [DeletionRequest(f"erase-{run}-{n:03}", f"user-{run}-{n:03}") for n in range(100)]
    ids = [r.id for r in requests]

    # Wave 1: worker-1 dies after deleting batch 1 of 2 of a request, before checkpointing it.
    worker_1 = start_worker("kafka_worker.worker", env, name="worker-1")
    mid_batch = requests[5]
    _arm(devserver, "settle", f"{mid_batch.id}:2", "before", worker_1.pid)
    metadata = _publish(producer, requests[:40])
    poison = _publish_poison(producer, [b"please forget me", b'{"user_id": "u-1"}'])
    consumer_1 = consumer("consumer-1")
    assert worker_1.wait(30) == -9
    worker_2 = start_worker("kafka_worker.worker", env, name="worker-2")
    # Each wave is complete (handed over, so committed) before the next kill is set up.
    metadata += _publish(producer, requests[40:69])
    asyncio.run(_results(devserver.url, ids[:69]))

    # consumer-1 dies as it hands a record over, before Resonate has it.
    unsaved = requests[69]
    _arm(devserver, "create", unsaved.id, "before", consumer_1.pid)
    metadata += _publish(producer, [unsaved])
    assert consumer_1.wait(30) == -9
    consumer_2 = consumer("consumer-2")  # reads on from consumer-1's last commit
    asyncio.run(_results(devserver.url, [unsaved.id]))

    # A producer retry of a request that already ran: consumer-2 dies right after handing it
    # over (its execution exists), before it could commit the record.
    retried = requests[0]
    _arm(devserver, "create", retried.id, "after", consumer_2.pid)
    metadata += _publish(producer, [retried])
    assert consumer_2.wait(30) == -9

    # Wave 3: worker-2 dies right after one execution's result became durable; consumer-3 gets
    # the retried record again, then more producer retries and more poison.
    between = requests[85]
    _arm(devserver, "settle", between.id, "after", worker_2.pid)
    consumer("consumer-3")
    metadata += _publish(producer, [*requests[70:], *requests[10:13]])
    poison |= _publish_poison(producer, [b'{"id": "a:b", "user_id": "u-1"}', None])
    assert worker_2.wait(30) == -9
    start_worker("kafka_worker.worker", env, name="worker-3")

    results = asyncio.run(_results(devserver.url, ids))

    assert {m.partition for m in metadata} == {0, 1, 2}
    store = UserData(tmp_path)
    for request in requests:
        effects = sandbox.records.effects(key_prefix=request.id + ":")
        assert [(e.idempotency_key, e.provider, e.action) for e in effects] == [
            (f"{request.id}:4", "api", "call")
        ]
        assert results[request.id] == {
            "user_id": request.user_id,
            "rows_deleted": 80,
            "batches": 2,
            "receipt": effects[0].resource_id,
            "report_refused": None,
        }
        # Each batch deleted its rows exactly once, as the store itself recorded it.
        erasures = store.erasures(request.id)
        assert [(e.step_id, e.rows) for e in erasures] == [
            (f"{request.id}:2", 50),
            (f"{request.id}:3", 30),
        ]
        assert store.rows_left(request.user_id) == 0
    # ... although every kill hit its exact point, and records were delivered more than once.
    fired = clients.get(f"{devserver.url}/_cookbook/tripwires").json()["fired"]
    assert [(w["operation"], w["promise_id"]) for w in fired] == [
        ("settle", f"{mid_batch.id}:2"),
        ("create", unsaved.id),
        ("create", retried.id),
        ("settle", between.id),
    ]
    assert _creates(devserver, retried.id) == 3  # consumer-1, then consumer-2, then consumer-3
    assert [_creates(devserver, r.id) for r in requests[10:13]] == [2, 2, 2]
    # No record started a second execution: the only executions are the records' own ids.
    promises = cast(list[dict[str, Any]], devserver.state()["promises"])
    assert sorted(p["id"] for p in promises if ":" not in p["id"]) == ids
    # The poison records are on the dead-letter topic, each with its reason.
    letters = {(letter.source, letter.reason) for letter in read_dead_letters(kafka_bootstrap)}
    assert letters == {(source, POISON[value]) for source, value in poison.items()}
