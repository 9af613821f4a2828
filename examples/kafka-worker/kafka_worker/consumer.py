"""`python -m kafka_worker.consumer`: read deletion requests from Kafka, start one workflow each.

At-least-once in, exactly-once out. A record's offset is committed only after Resonate confirmed
that the execution for it exists, so a crash never loses a record. A record delivered again (the
consumer died before its commit, or the producer retried) names the same execution id - the
record's id - and Resonate attaches it to the existing execution instead of starting a second
one. The consumer never waits for a workflow to finish, so a slow deletion holds up nothing
queued behind it on its partition.

A record that is not a valid request (not JSON, no id, ...) goes to the dead-letter topic with
the reason in its `error` header, and the partition moves on.

  KAFKA_BOOTSTRAP           the Kafka brokers (required), e.g. 127.0.0.1:9092
  RESONATE_URL              the Resonate server (required)
  KAFKA_GROUP_ID            the consumer group (default: kafka-worker)
  KAFKA_SESSION_TIMEOUT_MS  how long a dead consumer keeps its partitions (default: 6000)
  RESONATE_TARGET           the worker group that runs the workflows (default: kafka-worker)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from kafka import (
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.admin import NewTopic
from kafka.errors import CommitFailedError, TopicAlreadyExistsError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord

TOPIC = "user-deletions"
DEAD_LETTER_TOPIC = "user-deletions.dead-letter"
PARTITIONS = 3
WORKFLOW = "delete_user_data"


class DeletionRequest(msgspec.Struct, frozen=True):
    """A record's value: `{"id": ..., "user_id": ...}`. The id names the execution."""

    # ":" separates a Resonate execution id from its steps' ids, so it cannot be in one.
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern="^[^:]+$")]
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


_decode_request = msgspec.json.Decoder(DeletionRequest).decode


def parse(value: bytes | None) -> DeletionRequest | str:
    """The request in a record's value, or why there is none (the dead-letter reason)."""
    if value is None:
        return "empty record (no value)"
    try:
        return _decode_request(value)
    except msgspec.DecodeError as exc:  # malformed JSON and failed validation alike
        return str(exc)


def ensure_topics(bootstrap: str) -> None:
    """Create the topics if they are missing (a broker may not auto-create them)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        # Replication factor 1 suits a one-broker development cluster; production topics are
        # usually created by whoever runs the cluster, and then this finds them present.
        for topic in (NewTopic(TOPIC, PARTITIONS, 1), NewTopic(DEAD_LETTER_TOPIC, 1, 1)):
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([topic])
    finally:
        admin.close()


def request_producer(bootstrap: str) -> Any:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)


def send_request(producer: Any, request: DeletionRequest) -> Any:
    """Publish a request keyed by its user, so one user's requests stay in order."""
    return producer.send(TOPIC, key=request.user_id.encode(), value=msgspec.json.encode(request))


@dataclass(frozen=True)
class DeadLetter:
    source: str  # topic[partition]@offset of the original record
    reason: str
    value: bytes | None


def read_dead_letters(bootstrap: str) -> list[DeadLetter]:
    """Every record on the dead-letter topic so far (for the demo and the tests)."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [
            TopicPartition(DEAD_LETTER_TOPIC, p)
            for p in sorted(reader.partitions_for_topic(DEAD_LETTER_TOPIC) or ())
        ]
        reader.assign(partitions)
        reader.seek_to_beginning()
        end = reader.end_offsets(partitions)
        letters: list[DeadLetter] = []
        while any(reader.position(p) < end[p] for p in partitions):
            for records in reader.poll(timeout_ms=500).values():
                for record in records:
                    headers = {k: v.decode() for k, v in record.headers}
                    letters.append(DeadLetter(headers["source"], headers["error"], record.value))
        return letters
    finally:
        reader.close()


def _where(record: Any) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


async def consume(kafka: Any, workers: Resonate, dead_letters: Any, stop: asyncio.Event) -> None:
    """Poll a batch of records, hand it over, commit it; again, until `stop` is set."""
    ready = False
    while not stop.is_set():
        # kafka-python blocks; a thread keeps the event loop (and Resonate) running meanwhile.
        polled: dict[Any, list[Any]] = await asyncio.to_thread(kafka.poll, 500)
        if not ready and kafka.assignment():
            ready = True
            print(f"kafka-worker consumer {os.getpid()} ready", flush=True)
        if polled:
            await hand_over(workers, dead_letters, [r for rs in polled.values() for r in rs])
            await commit(kafka, polled)


async def hand_over(workers: Resonate, dead_letters: Any, records: list[Any]) -> None:
    """Start each record's execution (or dead-letter it); return once every one is durable.

    Only the creation of each execution is awaited, never its result. If a creation fails, the
    exception stops the consumer before the commit, and the batch is delivered again.
    """
    started = []
    dead_lettered = []
    for record in records:
        request = parse(record.value)
        if isinstance(request, str):
            dead_lettered.append(dead_letter(dead_letters, record, request))
            continue
        # The record's id is the execution's id: a second delivery attaches to the first.
        handle = workers.rpc(request.id, WORKFLOW, request.user_id)
        started.append((record, request, handle))
    for record, request, handle in started:
        await handle.id()  # the execution exists: from here on the record cannot be lost
        # Attaching ignores the arguments: an id reused for another user's request would be
        # dropped here without a trace, so the request is compared with the execution's own.
        existing = await workers.promises.get(request.id)
        if requested_user(existing) != request.user_id:
            reason = f"id {request.id!r} is taken by another request; this one was not started"
            dead_lettered.append(dead_letter(dead_letters, record, reason))
            continue
        print(f"{_where(record)}: execution {request.id} for user {request.user_id}")
    for sent in dead_lettered:
        await asyncio.to_thread(sent.get, 30)  # raises if the dead-letter topic refused it
    sys.stdout.flush()


def requested_user(execution: PromiseRecord) -> str | None:
    """The user an execution deletes the data of; None if it is not a deletion."""
    match execution.param.data:
        case {"func": func, "args": [str(user_id)]} if func == WORKFLOW:
            return user_id
        case _:
            return None


def dead_letter(dead_letters: Any, record: Any, reason: str) -> Any:
    """Send the record, as it came, to the dead-letter topic with the reason; the send's future."""
    print(f"{_where(record)}: dead-lettered: {reason}", flush=True)
    headers = [("error", reason.encode()), ("source", _where(record).encode())]
    return dead_letters.send(DEAD_LETTER_TOPIC, key=record.key, value=record.value, headers=headers)


async def commit(kafka: Any, polled: dict[Any, list[Any]]) -> None:
    offsets = {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in polled.items()}
    try:
        await asyncio.to_thread(kafka.commit, offsets)
    except CommitFailedError:
        # The group gave these partitions to another consumer, which reads the records again
        # and attaches them to the executions that already exist: nothing is lost.
        print("commit refused after a rebalance; the new owner delivers again", flush=True)
        return
    committed = " ".join(f"{tp.topic}[{tp.partition}]@{o.offset}" for tp, o in offsets.items())
    print(f"committed {committed}", flush=True)


async def main() -> None:
    bootstrap, url = os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("RESONATE_URL")
    if not bootstrap or not url:
        sys.exit(
            "kafka_worker.consumer: KAFKA_BOOTSTRAP and RESONATE_URL must be set "
            "(or use `make run-kafka-worker`)"
        )
    ensure_topics(bootstrap)
    session_timeout_ms = int(os.environ.get("KAFKA_SESSION_TIMEOUT_MS", "6000"))
    kafka = KafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=os.environ.get("KAFKA_GROUP_ID", "kafka-worker"),
        enable_auto_commit=False,  # committed by hand, after the hand-over
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=session_timeout_ms // 3,
    )
    dead_letters = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    # A client, not a worker: its own group, so it is never handed workflow work.
    resonate = Resonate(url=url, group="kafka-worker-consumer")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        workers = resonate.options(target=os.environ.get("RESONATE_TARGET", "kafka-worker"))
        await consume(kafka, workers, dead_letters, stop)
    finally:
        kafka.close()  # leaves the group: the partitions move on at once, not after the timeout
        dead_letters.close()
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
