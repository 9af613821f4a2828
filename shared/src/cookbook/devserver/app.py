"""The dev server's HTTP face: the Resonate protocol on `POST /` and `GET /poll/{group}/{pid}`.

Workers and clients use `Resonate(url=...)` exactly as against the official server. Extra,
cookbook-only endpoints live under `/_cookbook/` (inspection, tripwires); no SDK calls them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from resonate.connections.local import (
    OutgoingMessage,
    unwrap_request_envelope,
    wrap_response_envelope,
)
from resonate.error import ServerError

from cookbook.devserver.auth import BearerAuth, is_loopback, without_credentials
from cookbook.devserver.protocol import touches
from cookbook.devserver.router import Router, Subscriber
from cookbook.devserver.state import DEFAULT_COMPACT_EVERY, Applied, DurableState
from cookbook.devserver.tripwires import Tripwire, TripwireError, Tripwires

log = logging.getLogger("cookbook.devserver")

# SDK 0.8.1 reads SSE with aiohttp's default 300 s total timeout and never recovers from it: a
# stream older than that leaves the worker deaf. Ending each stream well before lets it reconnect.
DEFAULT_SSE_ROTATE_SECONDS = 240.0
# How far back to re-send work written to a stream that then broke (see Subscriber.sent).
RESEND_WINDOW_SECONDS = 5.0
# How long a stopping server lets the requests in flight finish (see `start`).
SHUTDOWN_SECONDS = 1.0


@dataclass(frozen=True)
class DevServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    tick_seconds: float = 0.1
    sse_rotate_seconds: float = DEFAULT_SSE_ROTATE_SECONDS
    sse_ping_seconds: float = 15.0
    # Test mode: a worker whose SSE stream drops (a SIGKILL closes its sockets) loses its leases at
    # once, so its tasks are redelivered without waiting out the ttl.
    release_leases_on_disconnect: bool = False
    fsync: bool = True
    # Bearer tokens a request must present (any one of them); empty: the server is open, and
    # then it may only listen on a loopback address.
    tokens: tuple[str, ...] = ()
    # Opt-in, for tests and demos: when every execution is suspended, fire the earliest pending
    # timer at once (see DurableState.skip_to_next_timer).
    skip_time: bool = False
    # Compact (archive finished executions, snapshot the live state, drop the old log) once this
    # many records were logged since the last compaction.
    compact_every: int = DEFAULT_COMPACT_EVERY


class DevServer:
    def __init__(self, config: DevServerConfig) -> None:
        self.config = config
        self.auth = BearerAuth(config.tokens)
        if not self.auth.enabled and not is_loopback(config.host):
            raise ValueError(
                f"refusing to listen on {config.host} without a token: anyone who can reach it "
                "could read and change every promise; give a token or listen on 127.0.0.1"
            )
        self.state = DurableState(
            config.data_dir, fsync=config.fsync, compact_every=config.compact_every
        )
        self.router = Router()
        self.tripwires = Tripwires(journal_length=lambda: self.state.journal_last_seq)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._journal_grew = asyncio.Event()
        # Each open SSE stream's handler, so that a stalled worker's stream can be cut.
        self._streams: dict[Subscriber, asyncio.Task[Any]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> str:
        owed = self.state.open()
        app = web.Application(
            handler_args={"handler_cancellation": True},
            client_max_size=64 * 1024 * 1024,
            middlewares=[self._require_token],
        )
        app.add_routes(
            [
                web.post("/", self._handle_request),
                web.get("/poll/{group}/{pid}", self._handle_poll),
                web.get("/_cookbook/health", self._handle_health),
                web.get("/_cookbook/state", self._handle_state),
                web.get("/_cookbook/journal", self._handle_journal),
                web.get("/_cookbook/tripwires", self._handle_list_tripwires),
                web.post("/_cookbook/tripwires", self._handle_arm),
                web.delete("/_cookbook/tripwires", self._handle_disarm),
            ]
        )
        # A worker's SSE stream never ends on its own, and aiohttp waits up to 60 s by default
        # for open requests when stopping: with a worker connected, a SIGTERM (a Ctrl-C, a test
        # tearing its stack down) hung until the launcher's SIGKILL. One second lets the short
        # requests in flight finish; the streams are then cut, and workers reconnect elsewhere.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_SECONDS
        )
        await self._runner.setup()
        if sock is None:
            sock = bind(self.config.host, self.config.port)
        site = web.SockSite(self._runner, sock)
        await site.start()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        await self._commit(Applied({}, owed, self.state.wal_seq()))
        self._ticker = asyncio.create_task(self._tick_forever())
        return self.url

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._runner is not None:
            await self._runner.cleanup()
        self.state.close()

    async def _tick_forever(self) -> None:
        while True:
            applied = self.state.tick()
            if applied is not None:
                await self._commit(applied)
            fired = self.state.fire_due_schedules()
            for tick in fired:
                await self._commit(tick)
            if fired:
                self._journal_changed()
            if self.config.skip_time and (skipped := self.state.skip_to_next_timer()) is not None:
                await self._commit(skipped)
            if self.state.should_compact():
                self._compact()
            await asyncio.sleep(self.config.tick_seconds)

    def _compact(self) -> None:
        try:
            done = self.state.compact()
        except (OSError, sqlite3.Error):
            # Every stage leaves a state that recovers whole (see DurableState.compact), and the
            # next attempt comes after as many records again; the tick loop must not die of it.
            log.exception("compaction failed; the server carries on with a longer log")
            return
        log.info(
            "compacted: %d finished promises archived, %d live, log %d (%.3f s)",
            done.archived_promises,
            done.live_promises,
            done.log_generation,
            done.seconds,
        )

    async def _commit(self, applied: Applied) -> None:
        """Wait until a change is on disk, then tell the workers about it - never the reverse."""
        await self.state.wal.durable(applied.log_seq)
        self._publish(applied.outgoing)

    def _journal_changed(self) -> None:
        # Wake every long poll, then re-arm: waiters re-check for entries of their execution.
        self._journal_grew.set()
        self._journal_grew = asyncio.Event()

    def _publish(self, outgoing: list[OutgoingMessage]) -> None:
        for message in outgoing:
            self.router.publish(message.address, msgspec.json.encode(message.message).decode())

    # -- auth --------------------------------------------------------------------------------

    @web.middleware
    async def _require_token(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refuse, before any handler runs, whatever comes without a valid bearer token."""
        reason = self.auth.refusal(request.headers.get("Authorization"))
        if reason is None:
            return await handler(request)
        kind: Any = None
        corr_id: Any = None
        if request.method == "POST" and request.path == "/":
            # Echo kind and corrId, as any answer must, so the SDK surfaces the 401 itself.
            kind, corr_id = _kind_and_corr_id(await request.read())
        log.warning("401 %s %s from %s: %s", request.method, request.path, request.remote, reason)
        response = _envelope_error(kind, corr_id, 401, f"unauthorized: {reason}")
        response.set_status(401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="resonate"'
        return response

    # -- the protocol ------------------------------------------------------------------------

    async def _handle_request(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            envelope = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            return _envelope_error(None, None, 400, f"request body is not JSON: {exc}")
        flat = unwrap_request_envelope(envelope)
        # A key `auth` is spelled out in the body, or escaped (a backslash): without either, there
        # is no credential to take out, and the walk over the whole request can be skipped.
        if b"auth" in body or b"\\" in body:
            flat = without_credentials(flat)
        if not isinstance(flat, dict) or not isinstance(flat.get("kind"), str):
            return _envelope_error(
                None, None, 400, "expected an envelope {kind, head: {corrId}, data}"
            )
        kind, corr_id = flat["kind"], flat.get("corrId")
        touched = touches(flat)

        if (wire := self.tripwires.take(touched, "before")) is not None:
            await self._trip(wire, flat)
        try:
            applied = self.state.apply(flat)
        except ServerError as exc:
            await self.state.wal.durable(self.state.wal_seq())
            return _envelope_error(kind, corr_id, exc.code, exc.message)
        # Shielded: the change is applied, so its pushes must go out even if the caller hangs
        # up (aiohttp then cancels this handler) - or the work it created would wait for the
        # 30 s re-send.
        await asyncio.shield(self._commit(applied))
        if touched:
            self._journal_changed()
        if (wire := self.tripwires.take(touched, "after")) is not None:
            await self._trip(wire, flat)
        return _envelope(applied.response)

    async def _trip(self, wire: Tripwire, request: dict[str, Any]) -> None:
        log.info(
            "tripwire %s: killing the %s at %s %s (%s)",
            wire.id,
            wire.victim,
            wire.operation,
            wire.promise_id,
            wire.when,
        )
        holder = self.state.lease_holder(request)
        wire.fire()
        if wire.action == "stall":
            await self._stall(holder)
            return  # the answer waits in the stopped worker's socket until it is continued
        # The worker is dead and will never read an answer; hold this request until its
        # connection closes (aiohttp then cancels the handler) so nothing is applied for it.
        await asyncio.Event().wait()

    async def _stall(self, holder: str | None) -> None:
        """Let the stopped worker's leases lapse now, and cut its stream, as a real expiry would.

        A stopped process sends no heartbeat, so its leases would lapse after the ttl anyway,
        with exactly this transition (the task back to pending at a new version, its `execute`
        sent again): doing it at once only skips the wait. Its stream is cut because a server
        cannot tell a paused worker from a partitioned one: work pushed into its socket would sit
        unread (the server re-sends an `execute` only after 30 s). When it is continued, its
        writes carry the old task version and must be refused.
        """
        if holder is None:
            log.warning("stall: the request was made under no lease; nothing to let lapse")
            return
        for subscriber, handler in list(self._streams.items()):
            if subscriber.pid == holder:
                self.router.unsubscribe(subscriber, [])
                handler.cancel()
        for applied in self.state.release_leases_of(holder, corr_id="devserver-stall"):
            await self._commit(applied)
        self._journal_changed()

    async def _handle_poll(self, request: web.Request) -> web.StreamResponse:
        group, pid = request.match_info["group"], request.match_info["pid"]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        subscriber = self.router.subscribe(group, pid)
        handler = asyncio.current_task()
        if handler is not None:
            self._streams[subscriber] = handler
        loop = asyncio.get_running_loop()
        rotate_at = loop.time() + self.config.sse_rotate_seconds
        unsent: list[tuple[str, str]] = []
        rotated = False
        try:
            while (remaining := rotate_at - loop.time()) > 0:
                try:
                    async with asyncio.timeout(min(self.config.sse_ping_seconds, remaining)):
                        item = await subscriber.queue.get()
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                unsent = [item]
                await response.write(f"data: {item[1]}\n\n".encode())
                unsent = []
                subscriber.sent.append((loop.time(), *item))
            rotated = True
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._streams.pop(subscriber, None)
            if not rotated:
                # The stream broke: what it was just sent may have died in its socket buffer.
                unsent += [
                    (address, message)
                    for address, message in subscriber.lately_sent_to_the_group(
                        loop.time(), RESEND_WINDOW_SECONDS
                    )
                    if self._still_wanted(message)
                ]
            gone = self.router.unsubscribe(subscriber, unsent)
            if gone and not rotated and self.config.release_leases_on_disconnect:
                self._spawn(self._release_leases(pid))
        return response

    def _still_wanted(self, message: str) -> bool:
        """Whether an `execute` still names a task waiting to be taken, at that version.

        Anything else would only earn the next worker a 409 (and a logged error) when it acts.
        """
        try:
            task_ref = json.loads(message)["data"]["task"]
        except (ValueError, KeyError, TypeError):
            return False
        task = self.state.server.tasks.get(task_ref.get("id"))
        return (
            task is not None and task.state == "pending" and task.version == task_ref.get("version")
        )

    async def _release_leases(self, pid: str) -> None:
        for applied in self.state.release_leases_of(pid):
            await self._commit(applied)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- cookbook endpoints -------------------------------------------------------------------

    async def _handle_health(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "replayed_records": self.state.replayed_records,
                "subscribers": [{"group": g, "pid": p} for g, p in self.router.live()],
                "held_messages": self.router.held_count(),
            }
        )

    async def _handle_state(self, request: web.Request) -> web.Response:
        covered = self.state.wal_seq()
        snapshot = self.state.snapshot(request.query.get("origin"))
        # Like every answer: nothing is shown before it is on disk (a change applied by a request
        # still waiting for its fsync would otherwise be seen, then lost to a crash).
        await self.state.wal.durable(covered)
        return web.json_response(snapshot)

    async def _handle_journal(self, request: web.Request) -> web.Response:
        """Journal entries of one execution; with `after` and `wait`, a long poll for new ones."""
        origin = request.query.get("origin")
        try:
            after = int(request.query.get("after", "0"))
            wait = min(float(request.query.get("wait", "0")), 30.0)
        except ValueError:
            return web.json_response({"error": "after and wait must be numbers"}, status=422)

        def matching() -> list[dict[str, Any]]:
            return [
                msgspec.structs.asdict(e)
                for e in self.state.journal_since(after)
                if origin is None or e.promise_id == origin or e.promise_id.startswith(origin + ":")
            ]

        covered, entries = self.state.wal_seq(), matching()
        if not entries and wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while not entries:
                        await self._journal_grew.wait()
                        covered, entries = self.state.wal_seq(), matching()
        last_seq = self.state.journal_last_seq
        await self.state.wal.durable(covered)  # durable state only, as in _handle_state
        return web.json_response({"entries": entries, "last_seq": last_seq})

    async def _handle_list_tripwires(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "armed": [w.to_json() for w in self.tripwires.armed()],
                "fired": self.tripwires.fired_records(),
            }
        )

    async def _handle_arm(self, request: web.Request) -> web.Response:
        try:
            wire = self.tripwires.arm(await request.json())
        except (json.JSONDecodeError, TripwireError) as exc:
            return web.json_response({"error": str(exc)}, status=422)
        return web.json_response(wire.to_json(), status=201)

    async def _handle_disarm(self, _: web.Request) -> web.Response:
        self.tripwires.disarm_all()
        return web.json_response({"armed": []})


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _envelope(flat: dict[str, Any]) -> web.Response:
    # msgspec, not `json`: the SDK decodes with it too, and it is several times faster.
    return web.Response(
        body=msgspec.json.encode(wrap_response_envelope(flat)), content_type="application/json"
    )


def _kind_and_corr_id(body: bytes) -> tuple[Any, Any]:
    try:
        envelope = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None, None
    if not isinstance(envelope, dict):
        return None, None
    head = envelope.get("head")
    return envelope.get("kind"), head.get("corrId") if isinstance(head, dict) else None


def _envelope_error(kind: Any, corr_id: Any, status: int, message: str) -> web.Response:
    return _envelope({"kind": kind, "corrId": corr_id, "status": status, "error": message})
