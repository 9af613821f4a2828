"""Run the Kubernetes API stand-in: ``python -m cookbook.kube_standin --port P --state PATH``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from types import FrameType

import uvicorn

from cookbook.kube_standin.app import create_app


class _AnnouncingServer(uvicorn.Server):
    """Prints the listening line only once uvicorn accepts connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            # Parents block on this exact line to learn the port chosen for --port 0.
            print(f"kube stand-in listening on http://{host}:{port}", flush=True)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cookbook.kube_standin", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--state", default="kube.db", help="SQLite file: the cluster and records")
    args = parser.parse_args(argv)

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again: exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    print(
        "kube stand-in: a cookbook stand-in for a few Kubernetes API calls, NOT Kubernetes "
        "(responses carry X-Stand-In: cookbook)",
        flush=True,
    )
    # Bound here rather than by uvicorn, so that --port 0 turns into a port we can announce.
    sock = socket.create_server((args.host, args.port))
    # Nagle off (the accepted connections inherit it): asyncio turns it off only on sockets
    # made with proto IPPROTO_TCP, and without it every answer on a kept-alive connection
    # waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = _AnnouncingServer(uvicorn.Config(create_app(args.state), log_level="warning"))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
