"""Run the provider sandbox: ``python -m cookbook.sandbox --host H --port P --db PATH``.

``--model-script PATH`` loads the stand-in model's script (cookbook.sandbox.model) at start.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from types import FrameType

import uvicorn

from cookbook.sandbox.app import create_app
from cookbook.sandbox.model import ScriptError, parse_script


class _AnnouncingServer(uvicorn.Server):
    """Prints the listening line only once uvicorn is actually accepting connections."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            # Parents block on this exact line to learn the port chosen for --port 0.
            print(f"sandbox listening on http://{shown}:{port}", flush=True)


def _bind(host: str, port: int) -> socket.socket:
    # Binding ourselves (rather than letting uvicorn do it) is what lets --port 0 report
    # the port the kernel picked.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    # Without it every answer on a kept-alive connection waits 40 ms (Nagle against delayed
    # ACKs): asyncio turns Nagle off only on sockets made with proto IPPROTO_TCP, and
    # create_server's have proto 0. The connections accepted inherit it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cookbook.sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--db", default="sandbox.db", help="SQLite file for the records")
    parser.add_argument("--narrate", action="store_true", help="print one line per provider call")
    parser.add_argument(
        "--model-script", help="TOML file of scripted replies for the stand-in model"
    )
    args = parser.parse_args(argv)
    script = None
    if args.model_script:
        try:
            with open(args.model_script, encoding="utf-8") as file:
                script = parse_script(file.read())
        except (OSError, ScriptError) as exc:
            parser.error(f"--model-script {args.model_script}: {exc}")

    # uvicorn handles SIGTERM/SIGINT itself while serving (graceful shutdown), then
    # re-raises the signal against whatever handler was installed before; this one turns
    # that into exit status 0 instead of death by signal, and also covers a signal that
    # arrives before uvicorn's own handlers are in place.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)

    sock = _bind(args.host, args.port)
    config = uvicorn.Config(
        create_app(args.db, narrate=args.narrate, model_script=script),
        log_level="warning",
        lifespan="on",
    )
    server = _AnnouncingServer(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
