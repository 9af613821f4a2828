"""`python -m kafka_worker.demo`: publish deletion requests to Kafka and watch each one complete.

The demo plays the application that publishes the requests, runs the consumer as a child process
(in production it is a service of its own), and then waits for each request's execution through
Resonate. One request is published twice, as a producer retry would; two records are poison, and
one reuses a request's id for another user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from resonate.error import ServerError
from resonate.resonate import Resonate

from kafka_worker.consumer import (
    TOPIC,
    DeletionRequest,
    read_dead_letters,
    request_producer,
    send_request,
)
from kafka_worker.store import UserData, data_dir

USERS = ("ada", "grace", "alan", "edsger", "barbara")


async def execution_result(resonate: Resonate, execution_id: str) -> Any:
    """The result of the execution a record started, waiting for the consumer to start it."""
    while True:
        try:
            handle = await resonate.get(execution_id)
        except ServerError as exc:
            if exc.code != 404:
                raise
            await asyncio.sleep(0.1)  # not consumed yet
            continue
        return await handle.result()


@contextlib.asynccontextmanager
async def running_consumer() -> AsyncIterator[None]:
    """`python -m kafka_worker.consumer` as a child process, its output relayed; stopped at exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kafka_worker.consumer",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ready = asyncio.Event()

    async def relay() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            text = line.decode().rstrip()
            print(f"  consumer | {text}", flush=True)
            if text.startswith("kafka-worker consumer") and text.endswith("ready"):
                ready.set()

    relaying = asyncio.create_task(relay())
    try:
        joined = asyncio.create_task(ready.wait())
        await asyncio.wait({joined, relaying}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            joined.cancel()
            sys.exit("kafka_worker.demo: the consumer did not get its partitions")
        print(f"· consumer (pid {process.pid}) owns the partitions of '{TOPIC}'", flush=True)
        yield
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        await relaying


async def main() -> None:
    bootstrap, url = os.environ["KAFKA_BOOTSTRAP"], os.environ["RESONATE_URL"]
    run = int(time.time())
    requests = [DeletionRequest(f"erase-{user}-{run}", user) for user in USERS]
    async with running_consumer():
        producer = request_producer(bootstrap)
        for request in requests:
            send_request(producer, request)
        send_request(producer, requests[0])  # a producer retry: the same record once more
        # A buggy producer reuses an id for another user (on the first one's partition, so it
        # comes second): it is dead-lettered, never silently dropped.
        reused = DeletionRequest(requests[1].id, f"mallory-{run}")
        producer.send(TOPIC, key=requests[1].user_id.encode(), value=msgspec.json.encode(reused))
        producer.send(TOPIC, key=b"nobody", value=f"please forget user nobody-{run}".encode())
        producer.send(TOPIC, key=b"ghost", value=json.dumps({"user_id": f"ghost-{run}"}).encode())
        producer.flush()
        producer.close()
        print(
            f"→ published {len(requests)} deletion requests, {requests[0].id} twice, "
            f"{requests[1].id} once more for another user, and 2 poison records",
            flush=True,
        )
        # A client, not a worker: its own group, so it is never handed workflow work.
        resonate = Resonate(url=url, group="kafka-worker-clients")
        try:
            for request in requests:
                async with asyncio.timeout(60):
                    result = await execution_result(resonate, request.id)
                print(
                    f"✓ {request.id}: {result['rows_deleted']} rows of {request.user_id} deleted "
                    f"in {result['batches']} batches, receipt {result['receipt']}",
                    flush=True,
                )
        finally:
            await resonate.stop()

    store = UserData(data_dir())
    twice = requests[0]
    batches = ", ".join(f"{e.step_id} ({e.rows} rows)" for e in store.erasures(twice.id))
    print(f"✓ {twice.id} was delivered twice and ran once: erasure log {batches}")
    left = sum(store.rows_left(r.user_id) for r in requests)
    print(f"✓ rows left for {', '.join(USERS)}: {left}")
    for letter in read_dead_letters(bootstrap):
        if letter.value is not None and str(run).encode() in letter.value:
            print(f"✓ dead letter from {letter.source}: {letter.reason}")


if __name__ == "__main__":
    asyncio.run(main())
