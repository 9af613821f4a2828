"""`cookbook bench`: the command line, and the run that measures, prints and writes."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cookbook.bench.chart import chart
from cookbook.bench.concurrency import (
    DBOS_CONFIGS,
    DEVSERVER_CONFIGS,
    LEVELS,
    measure_concurrency,
)
from cookbook.bench.floor import measure_floor
from cookbook.bench.history import HISTORY_SIZES, measure_history
from cookbook.bench.matrix import measure_crash_matrix
from cookbook.bench.recovery import measure_recovery
from cookbook.bench.report import Results, markdown
from cookbook.bench.steps import BACKENDS, STEP_COUNTS, measure_steps

SECTIONS = ("steps", "concurrency", "recovery", "crash", "floor", "history")


def run(
    out: Path,
    rounds: int = 5,
    kills: int = 20,
    only: Sequence[str] = SECTIONS,
    say: Callable[[str], None] = print,
    history_sizes: Sequence[int] = HISTORY_SIZES,
    *,
    concurrency_rounds: int = 2,
    postgres: bool = False,
    concurrency_configs: Sequence[str] | None = None,
) -> Results:
    results = Results(datetime.now(UTC), rounds, kills)
    results.concurrency_rounds = concurrency_rounds
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=out))  # the same disk as the results
    try:
        if "floor" in only:
            say("physical floor ...")
            results.floor = measure_floor(workdir / "floor")
        if "steps" in only:
            say(f"durable step overhead: {rounds} rounds x N in {STEP_COUNTS} x {BACKENDS} ...")
            results.steps = measure_steps(workdir, rounds, say)
        if "concurrency" in only:
            say(
                f"concurrent throughput: {concurrency_rounds} rounds x K in {LEVELS}"
                + (" (with DBOS + Postgres)" if postgres else "")
                + " ..."
            )
            results.concurrency = measure_concurrency(
                workdir, concurrency_rounds, say, postgres=postgres, configs=concurrency_configs
            )
        if "recovery" in only:
            say(f"recovery: {kills} kills per setting ...")
            results.recovery = measure_recovery(workdir, kills, say)
        if "crash" in only:
            say("crash-matrix throughput (saga) ...")
            results.matrix = measure_crash_matrix("saga", say)
        if "history" in only:
            say(f"history: finished 3-step workflows, {sorted(history_sizes)} ...")
            results.history = measure_history(workdir, history_sizes, say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results.seconds = time.perf_counter() - started
    table = markdown(results)
    (out / "bench.md").write_text(table + "\n")
    chart(results, out / "bench.png")
    say("")
    say(table)
    say(f"written: {out / 'bench.md'}, {out / 'bench.png'}")
    return results


@contextlib.contextmanager
def _quiet_sdk_logs() -> Iterator[None]:
    import logging

    # The SDK logs every reconnect; the recovery runs kill workers on purpose.
    logger = logging.getLogger("resonate")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="default: %(default)s"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per step backend (default: %(default)s)"
    )
    parser.add_argument(
        "--kills", type=int, default=20, help="kills per recovery setting (default: %(default)s)"
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--history",
        type=int,
        action="append",
        help="history size in finished workflows (repeatable; default: 1000 and 10000; "
        "100000 takes about half an hour)",
    )
    parser.add_argument(
        "--concurrency-rounds",
        type=int,
        default=2,
        help="rounds of the concurrent-throughput table (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency-config",
        action="append",
        choices=[*DEVSERVER_CONFIGS, *DBOS_CONFIGS],
        help="run only this configuration of the concurrent-throughput table (repeatable)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="add DBOS + Postgres to the concurrent-throughput table (starts a throwaway "
        "PostgreSQL server from /usr/lib/postgresql/15/bin)",
    )


def command(args: argparse.Namespace, say: Callable[[str], None] = print) -> int:
    """`cookbook bench`: run, print and write the figures. Never fails on a number."""
    with _quiet_sdk_logs():
        run(
            args.out,
            args.rounds,
            args.kills,
            args.only or SECTIONS,
            say,
            args.history or HISTORY_SIZES,
            concurrency_rounds=args.concurrency_rounds,
            postgres=args.postgres,
            concurrency_configs=args.concurrency_config,
        )
    return 0
