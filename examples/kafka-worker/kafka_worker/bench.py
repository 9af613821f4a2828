"""`python -m kafka_worker.bench [records]`: throughput end to end, produced -> deletion completed.

It measures a running system: a Resonate server (RESONATE_URL), a Kafka broker (KAFKA_BOOTSTRAP),
workers and a consumer. It publishes the requests (default 1000, one user each), then waits for
every execution through Resonate, and prints records per second from the first publish to the
last completed deletion.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from resonate.resonate import Resonate

from kafka_worker.consumer import DeletionRequest, ensure_topics, request_producer, send_request
from kafka_worker.demo import execution_result


async def main(count: int) -> None:
    bootstrap, url = os.environ["KAFKA_BOOTSTRAP"], os.environ["RESONATE_URL"]
    run = int(time.time())
    requests = [DeletionRequest(f"bench-{run}-{n:05}", f"bench-{run}-{n:05}") for n in range(count)]
    ensure_topics(bootstrap)
    producer = request_producer(bootstrap)
    resonate = Resonate(url=url, group="kafka-worker-bench")
    try:
        started = time.perf_counter()
        for request in requests:
            send_request(producer, request)
        producer.flush()
        published = time.perf_counter() - started
        # In publish order: by the time the last one is done most are, and each costs one lookup.
        for request in requests:
            await execution_result(resonate, request.id)
        elapsed = time.perf_counter() - started
    finally:
        producer.close()
        await resonate.stop()
    print(
        f"{count} records published in {published:.2f}s, every deletion completed after "
        f"{elapsed:.2f}s: {count / elapsed:.1f} records/s end to end"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
