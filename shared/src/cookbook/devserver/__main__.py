"""`python -m cookbook.devserver`: run the embedded Resonate dev server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path

from cookbook.devserver.app import DEFAULT_SSE_ROTATE_SECONDS, DevServer, DevServerConfig
from cookbook.devserver.auth import TOKENS_ENV, is_loopback, tokens_from_env
from cookbook.devserver.state import DEFAULT_COMPACT_EVERY
from cookbook.devserver.wal import CorruptLogError, LogInUseError


def parse_args(argv: list[str] | None = None) -> tuple[DevServerConfig, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m cookbook.devserver",
        description="A standalone Resonate dev server: the SDK's server state machine behind "
        "the official HTTP+SSE protocol, with a write-ahead log so it survives its own SIGKILL.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; anything but loopback needs a token (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on every request, stream and cookbook "
        f"endpoint (repeatable; also {TOKENS_ENV}, comma-separated, which keeps tokens out "
        "of the process list)",
    )
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".cookbook/devserver"),
        help="where the write-ahead log lives (default: %(default)s)",
    )
    parser.add_argument(
        "--tick-ms", type=int, default=100, help="how often timers and leases are checked"
    )
    parser.add_argument(
        "--sse-rotate-seconds",
        type=float,
        default=DEFAULT_SSE_ROTATE_SECONDS,
        help="end each SSE stream after this long (must stay below 300)",
    )
    parser.add_argument(
        "--release-leases-on-disconnect",
        action="store_true",
        help="test mode: a worker whose stream drops loses its leases at once",
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="skip fsync (faster, loses the tail of the log on a machine crash)",
    )
    parser.add_argument(
        "--skip-time",
        action="store_true",
        help="for tests and demos: when every execution is suspended, fire the earliest "
        "pending timer (a durable sleep, a promise timeout) at once",
    )
    parser.add_argument(
        "--compact-every",
        type=int,
        default=DEFAULT_COMPACT_EVERY,
        metavar="RECORDS",
        help="archive finished executions and snapshot the live state once this many records "
        "were logged since the last time (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    tokens = tuple(dict.fromkeys([*args.token, *tokens_from_env(os.environ)]))
    if any(not t.strip() or t != t.strip() or "," in t for t in tokens):
        parser.error("--token must be non-empty, without spaces at either end or commas")
    if not tokens and not is_loopback(args.host):
        parser.error(
            f"refusing to listen on {args.host} without auth: give --token (or {TOKENS_ENV}) "
            "or listen on 127.0.0.1"
        )
    if args.compact_every < 1:
        parser.error("--compact-every must be at least 1")
    if not 0 < args.sse_rotate_seconds < 300:
        parser.error("--sse-rotate-seconds must be between 0 and 300 (SDK 0.8.1 times out at 300)")
    return DevServerConfig(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        tick_seconds=args.tick_ms / 1000,
        sse_rotate_seconds=args.sse_rotate_seconds,
        release_leases_on_disconnect=args.release_leases_on_disconnect,
        fsync=not args.no_fsync,
        tokens=tokens,
        skip_time=args.skip_time,
        compact_every=args.compact_every,
    ), args.quiet


async def serve(config: DevServerConfig, quiet: bool) -> None:
    started = time.perf_counter()
    server = DevServer(config)
    url = await server.start()
    # What recovery built lives as long as the process: keep the cyclic collector off it.
    gc.freeze()
    # One parseable line: launchers and tests wait for it to learn the port.
    print(f"devserver listening on {url}", flush=True)
    if not quiet:
        auth = f"bearer token required ({len(config.tokens)} accepted)" if config.tokens else "off"
        print(f"  auth: {auth}", flush=True)
        print(
            f"  data: {config.data_dir} ({server.state.replayed_records} log records replayed "
            f"on top of the snapshot, ready in {time.perf_counter() - started:.2f}s)",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    config, quiet = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="devserver %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(config, quiet))
    except (LogInUseError, CorruptLogError) as exc:
        sys.exit(f"devserver: {exc}")
    except OSError as exc:
        sys.exit(f"devserver: cannot listen on {config.host}:{config.port}: {exc.strerror}")


if __name__ == "__main__":
    main()
