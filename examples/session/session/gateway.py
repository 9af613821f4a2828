"""`python -m session.gateway`: the HTTP API. Log in, report activity, log out, look a session up.

The session id is the execution id. At login the gateway mints the bearer token, answers it to
the caller once, and starts the session with its SHA-256 digest only: no copy of the token is
kept anywhere, so neither the Resonate server's log nor anything it shows holds it. Every later
request presents the token (`Authorization: Bearer ...`), and the gateway compares its digest
with the one the session was started with.

An activity or a logout is delivered by resolving the promise the session is waiting on, which the
session names in a round record under an id of the example's own (`<session id>.round.<n>`);
everything `GET` shows is read back from the execution (its argument, its round records and the
promises they name, its result). The gateway keeps nothing of its own, so any number of gateways
can serve the same sessions and a restart loses nothing.
  RESONATE_URL                  the Resonate server (required)
  RESONATE_GROUP                the worker group that runs sessions (default: session)
  SESSION_IDLE_TIMEOUT_SECONDS  the idle timeout of a login that asks for none (default 1800)
  GATEWAY_HOST                  the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT                  the port to serve on (default 0: any free port)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value

from session.steps import ROUND_TAG
from session.workflow import Activity, SessionEnded

MAX_BODY_BYTES = 4 * 1024
# A session runs for at most this long, active or not (the execution's own timeout; see README).
MAX_SESSION_LIFETIME = timedelta(days=30)
# Between two waits (while an activity is being recorded, or before login completed) there is no
# promise to deliver into; a request waits this long for the next one, then gets a 503.
DELIVERY_WAIT_SECONDS = 10.0
DELIVERY_POLL_SECONDS = 0.05
# 256 random bits: a digest of it cannot be reversed by guessing, so an unsalted SHA-256 is enough.
TOKEN_BYTES = 32

# The session id becomes the execution id. Resonate ids may not contain ':' (it names steps), and
# '.' is kept out too: the example names a session's round records `<session id>.round.<n>`.
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
# Visible text: no control or format characters, no leading or trailing whitespace.
Text = Annotated[
    str,
    StringConstraints(max_length=200, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"),
]


_SESSION_ENDED = TypeAdapter(SessionEnded)

type Delivery = Literal["delivered", "ended", "timed-out"]
REFUSED = {
    "ended": "the session has ended",
    "timed-out": "the session timed out: it was idle past its deadline",
}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Login(_Strict):
    session_id: SessionId
    user: Text
    idle_timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] | None = None


class ActivityRequest(_Strict):
    action: Text


class LoginAccepted(BaseModel):
    session_id: str
    status_url: str
    token: str = Field(description="the bearer token: shown once, here, and stored nowhere")


class Accepted(BaseModel):
    session_id: str
    status_url: str


class ActivityAccepted(BaseModel):
    session_id: str
    activity_id: str
    action: str


class SessionView(BaseModel):
    session_id: str
    user: str
    state: Literal["starting", "active", "ended", "failed"]
    idle_timeout_seconds: int
    idle_deadline: datetime | None = None  # active: when it ends unless the user does something
    ended_by: Literal["logout", "idle-timeout", "refused", "provider-unavailable"] | None = None
    problem: str | None = None  # ended: what the identity provider refused, or why unreachable
    reason: str | None = None  # failed: why
    activities: list[Activity]


class Error(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldErrors(BaseModel):
    detail: list[FieldError]


@dataclass(frozen=True)
class StartedWith:
    """What a session was started with, read back from its execution."""

    user: str
    idle_timeout_seconds: int
    token_sha256: str


@dataclass(frozen=True)
class Round:
    number: int
    move_id: str  # the promise this round's move goes into, as the session named it


@dataclass(frozen=True)
class Sessions:
    """How the gateway reaches the sessions: a Resonate client and the worker group."""

    resonate: Resonate
    group: str
    default_idle_timeout_seconds: int

    async def started_with(self, session_id: str) -> StartedWith | None:
        """What a session was started with; None if there is no such session."""
        root = await self._root(session_id)
        return None if root is None else _login_of(root)

    async def deliver(self, session_id: str, move: dict[str, str]) -> Delivery:
        """Resolve the promise of the session's current round with `move`.

        Another request may resolve the same promise first (the server keeps the first value),
        and between two rounds there is no promise to resolve: either way, try the next round.
        """
        give_up = time.monotonic() + DELIVERY_WAIT_SECONDS
        while time.monotonic() < give_up:
            if (await self.resonate.promises.get(session_id)).state != "pending":
                return "ended"
            rounds = await self._rounds(session_id)
            current = None if not rounds else await self.resonate.promises.get(rounds[-1].move_id)
            if current is None or current.state == "resolved":  # the next round is not open yet
                await asyncio.sleep(DELIVERY_POLL_SECONDS)
                continue
            if current.state != "pending":  # the server timed it out at its deadline
                return "timed-out"
            settled = await self.resonate.promises.resolve(current.id, Value(data=move))
            if settled.state != "resolved":  # too late: the server timed the promise out instead
                return "timed-out"
            if settled.value.data == move:
                return "delivered"
            # Another request's move got there first; this one goes into the next round.
        raise HTTPException(503, "the session is busy; try again", headers={"Retry-After": "1"})

    async def view(self, session_id: str, login: StartedWith) -> SessionView:
        root = await self.resonate.promises.get(session_id)
        view = SessionView(
            session_id=session_id,
            user=login.user,
            state="starting",
            idle_timeout_seconds=login.idle_timeout_seconds,
            activities=[],
        )
        match root.state:
            case "resolved":
                ended = _SESSION_ENDED.validate_python(root.value.data)
                return view.model_copy(
                    update={
                        "state": "ended",
                        "ended_by": ended.ended_by,
                        "problem": ended.problem,
                        "activities": ended.activities,
                    }
                )
            case "pending":
                rounds = await self._rounds(session_id)
                if not rounds:  # the login has not completed yet
                    return view
                moves = [await self.resonate.promises.get(r.move_id) for r in rounds]
                # None for a moment between two rounds, while an activity is being recorded.
                waiting = moves[-1].timeout_at / 1000 if moves[-1].state == "pending" else None
                return view.model_copy(
                    update={
                        "state": "active",
                        "idle_deadline": None
                        if waiting is None
                        else datetime.fromtimestamp(waiting, UTC),
                        "activities": [a for p in moves if (a := _activity_of(p)) is not None],
                    }
                )
            case _:  # e.g. a provider that kept failing: a human must look
                try:
                    await (await self.resonate.get(session_id)).result()
                except Exception as exc:
                    return view.model_copy(update={"state": "failed", "reason": str(exc)})
                return view.model_copy(update={"state": "failed", "reason": root.state})

    async def _root(self, session_id: str) -> PromiseRecord | None:
        try:
            return await self.resonate.promises.get(session_id)
        except ServerError as exc:
            if exc.code != 404:
                raise
            return None

    async def _rounds(self, session_id: str) -> list[Round]:
        """The session's round records, oldest first: found by the tag the session gives them."""
        found: list[Round] = []
        cursor: str | None = None
        while True:
            page = await self.resonate.promises.search(None, {ROUND_TAG: session_id}, 100, cursor)
            found += [r for p in page.promises if (r := _round_of(p)) is not None]
            cursor = page.cursor
            if cursor is None:
                return sorted(found, key=lambda r: r.number)


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


SessionsDep = Annotated[Sessions, Depends(_sessions)]
_BEARER = HTTPBearer(auto_error=False, description="the token the login answered")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


async def _authorized(sessions: Sessions, session_id: str, bearer: BearerDep) -> StartedWith:
    """The session's login, if the request presents its token; else 401 or 404.

    An unknown session and a wrong token get the same 404: a token holder cannot probe which
    other session ids exist. The digests are compared in constant time.
    """
    if bearer is None:
        raise HTTPException(
            401,
            "send the login's token: Authorization: Bearer <token>",
            {"WWW-Authenticate": "Bearer"},
        )
    login = await sessions.started_with(session_id)
    presented = token_digest(bearer.credentials)
    if login is None or not hmac.compare_digest(presented, login.token_sha256):
        raise HTTPException(404, f"no session {session_id!r} with this token")
    return login


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the error answers an operation gives, each with its body."""
    descriptions = {
        400: "the body is not JSON",
        401: "no token sent",
        404: "no such session with this token",
        409: "the session exists with another login, or has ended",
        413: f"the body is over {MAX_BODY_BYTES} bytes",
        503: "the session is between two rounds for too long; try again",
    }
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": Error, "description": descriptions[status]} for status in statuses
    }
    responses[422] = {"model": FieldErrors, "description": "which fields are wrong, and why"}
    return responses


router = APIRouter()


@router.post("/sessions", status_code=202, responses=_errors(400, 409, 413))
async def login(body: Login, response: Response, sessions: SessionsDep) -> LoginAccepted:
    # Starting an id that exists attaches to that execution without comparing arguments, so the
    # stored login is compared afterwards. Each login mints its own token, so of two POSTs with
    # the same session id only one started the session: the other gets 409, never a token that
    # would not work (the first one's is stored nowhere to hand out again).
    idle_timeout = body.idle_timeout_seconds or sessions.default_idle_timeout_seconds
    token = secrets.token_urlsafe(TOKEN_BYTES)
    wanted = StartedWith(body.user, idle_timeout, token_digest(token))
    started = sessions.resonate.options(target=sessions.group, timeout=MAX_SESSION_LIFETIME).rpc(
        body.session_id, "session", wanted.user, idle_timeout, wanted.token_sha256
    )
    await started.id()
    if await sessions.started_with(body.session_id) != wanted:
        raise HTTPException(409, f"session {body.session_id!r} exists: log in with a new id")
    response.headers["Location"] = status_url = f"/sessions/{body.session_id}"
    response.headers["Cache-Control"] = "no-store"  # the answer holds a credential
    return LoginAccepted(session_id=body.session_id, status_url=status_url, token=token)


@router.post(
    "/sessions/{session_id}/activity",
    status_code=202,
    responses=_errors(400, 401, 404, 409, 413, 503),
)
async def activity(
    session_id: SessionId, body: ActivityRequest, sessions: SessionsDep, bearer: BearerDep
) -> ActivityAccepted:
    await _authorized(sessions, session_id, bearer)
    activity_id = secrets.token_hex(8)
    move = {"type": "activity", "activity_id": activity_id, "action": body.action}
    if (delivery := await sessions.deliver(session_id, move)) != "delivered":
        raise HTTPException(409, REFUSED[delivery])
    return ActivityAccepted(session_id=session_id, activity_id=activity_id, action=body.action)


@router.post(
    "/sessions/{session_id}/logout", status_code=202, responses=_errors(401, 404, 409, 503)
)
async def logout(session_id: SessionId, sessions: SessionsDep, bearer: BearerDep) -> Accepted:
    await _authorized(sessions, session_id, bearer)
    if (delivery := await sessions.deliver(session_id, {"type": "logout"})) != "delivered":
        raise HTTPException(409, REFUSED[delivery])
    return Accepted(session_id=session_id, status_url=f"/sessions/{session_id}")


@router.get("/sessions/{session_id}", response_model_exclude_none=True, responses=_errors(401, 404))
async def status(session_id: SessionId, sessions: SessionsDep, bearer: BearerDep) -> SessionView:
    return await sessions.view(session_id, await _authorized(sessions, session_id, bearer))


type Message = MutableMapping[str, Any]
type Receive = Callable[[], Awaitable[Message]]
type Send = Callable[[Message], Awaitable[None]]
type ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class LimitBody:
    """A body over MAX_BODY_BYTES is a 413 shaped like every other refusal, `{"detail": ...}`.

    (FastAPI's own `max_body_size` answers a declared Content-Length over it in plain text, a body
    the OpenAPI document could not declare.) A body is at most MAX_BODY_BYTES, so it is read whole
    before the app sees it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse({"detail": f"the body is over {MAX_BODY_BYTES} bytes"}, 413)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                await too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


def create_app(resonate_url: str, group: str, default_idle_timeout_seconds: int) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="session-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="session gateway", lifespan=lifespan)
    app.add_middleware(LimitBody)
    app.state.sessions = Sessions(resonate, group, default_idle_timeout_seconds)
    app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    return app


def _round_of(record: PromiseRecord) -> Round | None:
    match record.param.data:
        case {"round": int(number), "move": str(move_id)}:
            return Round(number, move_id)
        case _:
            return None


def _activity_of(move: PromiseRecord) -> Activity | None:
    match move.value.data if move.state == "resolved" else None:
        case {"type": "activity", "activity_id": str(activity_id), "action": str(action)}:
            return Activity(activity_id, action)
        case _:
            return None


def _login_of(record: PromiseRecord) -> StartedWith | None:
    """What an execution was started with; None if it is not a session."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "session":
        return None
    match param.get("args"):
        case [str(user), int(idle_timeout_seconds), str(token_sha256)]:
            return StartedWith(user, idle_timeout_seconds, token_sha256)
        case _:
            return None


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"session gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit(
            "session.gateway: RESONATE_URL is not set (start a server, or use `make run-session`)"
        )
    idle_timeout = int(os.environ.get("SESSION_IDLE_TIMEOUT_SECONDS", "1800"))
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "session"), idle_timeout)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
