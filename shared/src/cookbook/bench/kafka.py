"""`make bench-kafka`: kafka-worker's throughput end to end, beside DBOS's Kafka consumer.

Both sides do the same job for the same records: N deletion requests (the example's record
format, keyed by user) are published to a 3-partition topic on the embedded Tansu broker, and
every one runs the same per-record workflow (plan the deletion, delete it batch by batch in the
example's SQLite store, report it to the provider sandbox's `api/call` with an Idempotency-Key).
The figure is records per second from the first publish to the last completed deletion.

- Resonate: examples/kafka-worker as it ships - its consumer (a process), its worker(s) (a
  process each) and the embedded dev server, with `python -m kafka_worker.bench` publishing and
  waiting for every execution.
- DBOS: `@DBOS.kafka_consumer` (confluent-kafka) starting the same workflow, written with DBOS
  steps, on DBOS's SQLite system database, in one process (consumer and workflows are one DBOS
  application). The execution id is the record's id, as in the example.

Each side gets a fresh broker and sandbox of its own, and the CPU seconds of every process over
the measured window are reported, so the table says where the time went. A benchmark: it prints
what it measured and never fails on a number.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cookbook.processes import ManagedProcess, stopping
from cookbook.stack import Stack, kafka_process, sandbox_process, url_of, worker_process

RECORDS = 1000
OURS = "Resonate (kafka-worker, dev server)"
PEER = "DBOS + SQLite (@DBOS.kafka_consumer)"
# DBOS runs as many workflows at once as it has executor threads, and has no limit by default.
# 64 is what one Resonate worker runs at once (the SDK's max_concurrent_tasks), and DBOS's best
# figure measured here: with no limit it ran 5.5 records/s, with 8 threads 3.2, with 64 5.3-7.3.
DBOS_THREADS = 64


@dataclass(frozen=True)
class KafkaFigures:
    system: str
    records: int
    seconds: float  # first publish -> last deletion completed
    cpu_seconds: dict[str, float]  # per process, over the same window

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds


def _cpu_seconds(pid: int) -> float:
    # utime and stime, fields 14 and 15 of /proc/<pid>/stat (after the parenthesised name).
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_ours(records: int, workers: int = 1) -> KafkaFigures:
    """examples/kafka-worker on the embedded dev server and broker: consumer + worker(s)."""
    with Stack(sandbox=True, kafka=True) as stack:
        env = stack.env(KAFKA_WORKER_DATA_DIR=str(stack.workdir / "store"))
        processes: list[ManagedProcess] = []
        with stopping(processes):
            for n in range(1, workers + 1):
                processes.append(worker_process("kafka_worker.worker", env, name=f"worker-{n}"))
                processes[-1].start()
            consumer = ManagedProcess(
                "consumer",
                [sys.executable, "-m", "kafka_worker.consumer"],
                ready=r"consumer \d+ ready",
                env=env,
            )
            processes.append(consumer.start())
            assert stack.devserver is not None
            assert stack.sandbox is not None
            measured = [stack.devserver, stack.sandbox, *processes]
            before = {p.name: _cpu_seconds(p.pid) for p in measured}
            bench = subprocess.run(
                [sys.executable, "-m", "kafka_worker.bench", str(records)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            cpu = {p.name: _cpu_seconds(p.pid) - before[p.name] for p in measured}
    if bench.returncode != 0:
        raise RuntimeError(f"kafka_worker.bench failed:\n{bench.stdout}{bench.stderr}")
    completed = re.search(r"every deletion completed after ([0-9.]+)s", bench.stdout)
    if completed is None:
        raise RuntimeError(f"kafka_worker.bench said no time:\n{bench.stdout}")
    label = OURS if workers == 1 else f"{OURS}, {workers} workers"
    return KafkaFigures(label, records, float(completed.group(1)), cpu)


def measure_dbos(records: int, threads: int | None = None) -> KafkaFigures:
    """The same job through DBOS's Kafka consumer, in a child process of its own."""
    workdir = Path(tempfile.mkdtemp(prefix="cookbook-kafka-peer-"))
    try:
        kafka, bootstrap = kafka_process()
        sandbox = sandbox_process(workdir / "sandbox.db")
        with stopping([kafka, sandbox]):
            kafka.start()
            sandbox.start()
            argv = [sys.executable, "-m", "cookbook.bench.kafka", "_dbos", bootstrap]
            argv += [url_of(sandbox), str(workdir / "dbos"), str(records), str(threads or 0)]
            sandbox_before = _cpu_seconds(sandbox.pid)
            child = subprocess.run(argv, capture_output=True, text=True, check=False)
            sandbox_cpu = _cpu_seconds(sandbox.pid) - sandbox_before
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if child.returncode != 0:
        raise RuntimeError(f"the DBOS peer failed:\n{child.stdout}{child.stderr}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    cpu = {"dbos (consumer + workflows)": result["cpu_seconds"], "sandbox": sandbox_cpu}
    return KafkaFigures(PEER, records, result["seconds"], cpu)


# The DBOS application, in its own process: the sqlite3 swap and DBOS's global state stay there.


def _dbos_child(
    bootstrap: str, provider_url: str, workdir: Path, records: int, threads: int | None
) -> None:
    # DBOS's SQLite schema needs SQLite >= 3.42; the system library may be older. pysqlite3-binary
    # bundles a current one.
    pysqlite3 = _optional("pysqlite3")
    sys.modules["sqlite3"] = pysqlite3
    sys.modules["sqlite3.dbapi2"] = pysqlite3.dbapi2
    dbos_module = _optional("dbos")
    _optional("confluent_kafka")
    import httpx

    # The example's own record format, store and step types: only the durability layer differs.
    from kafka_worker.consumer import (
        DeletionRequest,
        ensure_topics,
        parse,
        request_producer,
        send_request,
    )
    from kafka_worker.steps import BATCH_SIZE, TRANSIENT, Batch, DeletionPlan, Report
    from kafka_worker.store import UserData

    dbos: Any = dbos_module.DBOS
    set_workflow_id: Any = dbos_module.SetWorkflowID
    workdir.mkdir(parents=True, exist_ok=True)
    store = UserData(workdir / "store")
    client = httpx.Client(base_url=provider_url, timeout=10)
    dbos(
        config={
            "name": "cookbook-kafka-peer",
            "system_database_url": f"sqlite:///{workdir / 'dbos.sqlite'}",
            "log_level": "WARNING",
            # The internal Kafka queue is polled every second by default; a user after throughput
            # lowers it, and so does this bench.
            "kafka_queue_polling_interval_sec": 0.05,
            "max_executor_threads": threads,
        }
    )
    # The example's step retry policy: 6 retries, 2 s doubling to at most 10 s (DBOS has no cap,
    # so the delays are 1, 2, 4, 8, 16, 32 s: the same count of attempts).
    retried = {"retries_allowed": True, "max_attempts": 7, "interval_seconds": 1.0}

    @dbos.step(**retried)  # type: ignore[untyped-decorator]
    def plan_deletion(user_id: str) -> DeletionPlan:
        ids = store.row_ids(user_id)
        chunks = [ids[i : i + BATCH_SIZE] for i in range(0, len(ids), BATCH_SIZE)]
        return DeletionPlan(len(ids), [Batch(c[0], c[-1], len(c)) for c in chunks])

    @dbos.step(**retried)  # type: ignore[untyped-decorator]
    def delete_batch(user_id: str, batch: Batch) -> int:
        step_id = f"{dbos.workflow_id}:{dbos.step_id}"
        deleted: int = store.delete_range(
            dbos.workflow_id, step_id, user_id, batch.first_id, batch.last_id
        )
        return deleted

    @dbos.step(**retried)  # type: ignore[untyped-decorator]
    def report_deletion(user_id: str, rows: int) -> Report:
        response = client.post(
            "/api/call",
            json={"event": "user-data-deleted", "user_id": user_id, "rows": rows},
            headers={"Idempotency-Key": f"{dbos.workflow_id}:{dbos.step_id}"},
        )
        if response.status_code in TRANSIENT or response.is_server_error:
            response.raise_for_status()
        if response.is_client_error:
            return Report(receipt=None, refused=f"{response.status_code} {response.text[:200]}")
        return Report(receipt=response.json()["id"])

    @dbos.workflow()  # type: ignore[untyped-decorator]
    def delete_user_data(user_id: str) -> dict[str, str | int | None]:
        plan = plan_deletion(user_id)
        for batch in plan.batches:
            delete_batch(user_id, batch)
        report = report_deletion(user_id, plan.rows)
        return {
            "user_id": user_id,
            "rows_deleted": plan.rows,
            "batches": len(plan.batches),
            "receipt": report.receipt,
            "report_refused": report.refused,
        }

    consumer_config = {
        "bootstrap.servers": bootstrap,
        "group.id": "kafka-peer",
        # As the example's consumer in its tests: a small session timeout for a one-broker setup.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 2000,
    }

    @dbos.kafka_consumer(consumer_config, ["user-deletions"])  # type: ignore[untyped-decorator]
    @dbos.workflow()  # type: ignore[untyped-decorator]
    def on_record(message: Any) -> None:
        request = parse(message.value)
        if isinstance(request, str):
            return  # the bench publishes no poison records
        # The record's id is the execution id, as in the example: a redelivery finds it done.
        with set_workflow_id(request.id):
            delete_user_data(request.user_id)

    ensure_topics(bootstrap)
    dbos.launch()
    producer = request_producer(bootstrap)
    try:
        # One record first, through to its end: the consumer group's first join (seconds with
        # librdkafka) is not part of the figure, as the example's consumer is ready before too.
        run = int(time.time())
        warmup = DeletionRequest(f"warmup-{run}", f"warmup-{run}")
        send_request(producer, warmup)
        producer.flush()
        dbos.retrieve_workflow(warmup.id, existing_workflow=False).get_result(
            polling_interval_sec=0.05
        )
        requests = [DeletionRequest(f"dbos-{run}-{n:05}", f"user-{n:05}") for n in range(records)]
        cpu_started = time.process_time()
        started = time.perf_counter()
        for request in requests:
            send_request(producer, request)
        producer.flush()
        for request in requests:
            handle = dbos.retrieve_workflow(request.id, existing_workflow=False)
            result = handle.get_result(polling_interval_sec=0.05)
            if not result["receipt"]:
                raise RuntimeError(f"{request.id}: the report did not go through: {result}")
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    finally:
        producer.close()
        dbos.destroy()
        client.close()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds}), flush=True)


def _optional(module: str) -> Any:
    """Import one of the `bench` dependency group's packages, saying how to get it if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(
            f"cookbook.bench.kafka: {module} is not installed; run `make bench-kafka`, which "
            "installs the `bench` dependency group"
        ) from exc


# =================================================================================================
# The table


def markdown(figures: Sequence[KafkaFigures]) -> str:
    peer = next((f for f in figures if f.system == PEER), None)
    lines = [
        f"| {figures[0].records:,} records, produced -> every deletion completed "
        "| seconds | records/s | vs DBOS | CPU seconds (per process) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for f in figures:
        ratio = f"{f.records_per_second / peer.records_per_second:.2f}x" if peer else "-"
        cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in f.cpu_seconds.items())
        lines.append(
            f"| {f.system} | {f.seconds:.1f} | {f.records_per_second:.1f} | {ratio} | {cpu} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if argv and argv[0] == "_dbos":
        bootstrap, provider_url, workdir, records, threads = argv[1:6]
        _dbos_child(bootstrap, provider_url, Path(workdir), int(records), int(threads) or None)
        return
    parser = argparse.ArgumentParser(prog="python -m cookbook.bench.kafka", description=__doc__)
    parser.add_argument("--records", type=int, default=RECORDS)
    parser.add_argument(
        "--workers", type=int, default=1, help="kafka-worker worker processes (default 1)"
    )
    parser.add_argument(
        "--dbos-threads",
        type=int,
        default=DBOS_THREADS,
        help=f"DBOS's max_executor_threads, workflows running at once (default {DBOS_THREADS}; "
        "0: DBOS's own default, no limit)",
    )
    parser.add_argument("--only", choices=("ours", "dbos"), help="measure one side only")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"kafka bench: {args.records} records each side; load average {load:.1f}", flush=True)
    figures = []
    if args.only != "dbos":
        figures.append(measure_ours(args.records, args.workers))
        print(f"  {figures[-1].system}: {figures[-1].records_per_second:.1f} records/s", flush=True)
    if args.only != "ours":
        figures.append(measure_dbos(args.records, args.dbos_threads))
        print(f"  {figures[-1].system}: {figures[-1].records_per_second:.1f} records/s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    print(markdown(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
