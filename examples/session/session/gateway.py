"""`python -m session.gateway`: the HTTP API. Log in, report activity, log out, look a session up.

The session id is the execution id. An activity or a logout is delivered by resolving the latent
promise the session is waiting on; everything `GET` shows is read back from the execution (its
argument, its steps, its promises, its result). The gateway keeps nothing of its own, so any
number of gateways can serve the same sessions and a restart loses nothing.
  RESONATE_URL                  the Resonate server (required)
  RESONATE_GROUP                the worker group that runs sessions (default: session)
  SESSION_IDLE_TIMEOUT_SECONDS  the idle timeout of a login that asks for none (default 1800)
  GATEWAY_HOST                  the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT                  the port to serve on (default 0: any free port)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value

from session.workflow import Activity, SessionEnded

MAX_BODY_BYTES = 4 * 1024
# A session runs for at most this long, active or not (the execution's own timeout; see README).
MAX_SESSION_LIFETIME = timedelta(days=30)
# Between two waits (while an activity is being recorded, or before login completed) there is no
# promise to deliver into; a request waits this long for the next one, then gets a 503.
DELIVERY_WAIT_SECONDS = 10.0
DELIVERY_POLL_SECONDS = 0.05

# The session id becomes the execution id, and Resonate ids may not contain ':' (it names steps).
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Login(_Strict):
    session_id: SessionId
    user: Text
    idle_timeout_seconds: Annotated[int, Field(ge=1, le=86_400)] | None = None


class ActivityRequest(_Strict):
    action: Text


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
    token: str | None = None  # once issued
    idle_deadline: datetime | None = None  # active: when it ends unless the user does something
    ended_by: Literal["logout", "idle-timeout"] | None = None
    reason: str | None = None  # failed: why
    activities: list[Activity]


@dataclass(frozen=True)
class Sessions:
    """How the gateway reaches the sessions: a Resonate client and the worker group."""

    resonate: Resonate
    group: str
    default_idle_timeout_seconds: int

    async def started_with(self, session_id: str) -> tuple[str, int] | None:
        """The (user, idle timeout) a session was started with; None if there is no such session."""
        root = await self._root(session_id)
        return None if root is None else _login_of(root)

    async def deliver(self, session_id: str, move: dict[str, str]) -> Delivery:
        """Resolve the latent promise the session is waiting on with `move`.

        Another request may resolve the same promise first (the server keeps the first value),
        and between two rounds there is no promise to resolve: either way, try the next round.
        """
        give_up = time.monotonic() + DELIVERY_WAIT_SECONDS
        while time.monotonic() < give_up:
            if (await self.resonate.promises.get(session_id)).state != "pending":
                return "ended"
            waiting = await self.resonate.promises.search("pending", _latent(session_id), 10, None)
            if not waiting.promises:
                await asyncio.sleep(DELIVERY_POLL_SECONDS)
                continue
            newest = max(waiting.promises, key=_step)
            settled = await self.resonate.promises.resolve(newest.id, Value(data=move))
            if settled.state != "resolved":  # too late: the server timed the promise out instead
                return "timed-out"
            if settled.value.data == move:
                return "delivered"
            # Another request's move got there first; this one goes into the next round.
        raise HTTPException(503, "the session is busy; try again", headers={"Retry-After": "1"})

    async def view(self, session_id: str) -> SessionView | None:
        root = await self._root(session_id)
        login = None if root is None else _login_of(root)
        if root is None or login is None:
            return None
        user, idle_timeout_seconds = login
        view = SessionView(
            session_id=session_id,
            user=user,
            state="starting",
            idle_timeout_seconds=idle_timeout_seconds,
            activities=[],
        )
        match root.state:
            case "resolved":
                ended = _SESSION_ENDED.validate_python(root.value.data)
                return view.model_copy(
                    update={
                        "state": "ended",
                        "token": ended.token,
                        "ended_by": ended.ended_by,
                        "activities": ended.activities,
                    }
                )
            case "pending":
                token = await self._login_step_result(session_id)
                if token is None:
                    return view
                moves = await self._moves(session_id)
                # None for a moment between two rounds, while an activity is being recorded.
                waiting = [p.timeout_at / 1000 for p in moves if p.state == "pending"]
                return view.model_copy(
                    update={
                        "state": "active",
                        "token": token,
                        "idle_deadline": datetime.fromtimestamp(waiting[-1], UTC)
                        if waiting
                        else None,
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

    async def _login_step_result(self, session_id: str) -> str | None:
        # The login is the workflow's first durable call, so its step id is `<session id>:1`.
        try:
            step = await self.resonate.promises.get(f"{session_id}:1")
        except ServerError as exc:
            if exc.code != 404:
                raise
            return None
        return str(step.value.data) if step.state == "resolved" else None

    async def _moves(self, session_id: str) -> list[PromiseRecord]:
        """The session's latent promises (one per round, `<session id>:<step>`), oldest first."""
        found: list[PromiseRecord] = []
        cursor: str | None = None
        while True:
            page = await self.resonate.promises.search(None, _latent(session_id), 100, cursor)
            found += page.promises
            cursor = page.cursor
            if cursor is None:
                return sorted(found, key=_step)


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


SessionsDep = Annotated[Sessions, Depends(_sessions)]

router = APIRouter()


@router.post("/sessions", status_code=202, responses={409: {"description": "session id taken"}})
async def login(body: Login, response: Response, sessions: SessionsDep) -> Accepted:
    # Starting an id that exists attaches to that execution without comparing arguments, so the
    # stored login is compared afterwards: of two racing POSTs with different bodies, one is 409.
    idle_timeout = body.idle_timeout_seconds or sessions.default_idle_timeout_seconds
    started = sessions.resonate.options(target=sessions.group, timeout=MAX_SESSION_LIFETIME).rpc(
        body.session_id, "session", body.user, idle_timeout
    )
    await started.id()
    if await sessions.started_with(body.session_id) != (body.user, idle_timeout):
        raise HTTPException(409, f"session {body.session_id!r} exists with a different login")
    response.headers["Location"] = status_url = f"/sessions/{body.session_id}"
    return Accepted(session_id=body.session_id, status_url=status_url)


@router.post(
    "/sessions/{session_id}/activity",
    status_code=202,
    responses={404: {"description": "no such session"}, 409: {"description": "session ended"}},
)
async def activity(
    session_id: SessionId, body: ActivityRequest, sessions: SessionsDep
) -> ActivityAccepted:
    if await sessions.started_with(session_id) is None:
        raise HTTPException(404, f"no session {session_id!r}")
    activity_id = secrets.token_hex(8)
    move = {"type": "activity", "activity_id": activity_id, "action": body.action}
    if (delivery := await sessions.deliver(session_id, move)) != "delivered":
        raise HTTPException(409, REFUSED[delivery])
    return ActivityAccepted(session_id=session_id, activity_id=activity_id, action=body.action)


@router.post(
    "/sessions/{session_id}/logout",
    status_code=202,
    responses={404: {"description": "no such session"}, 409: {"description": "session ended"}},
)
async def logout(session_id: SessionId, sessions: SessionsDep) -> Accepted:
    if await sessions.started_with(session_id) is None:
        raise HTTPException(404, f"no session {session_id!r}")
    if (delivery := await sessions.deliver(session_id, {"type": "logout"})) != "delivered":
        raise HTTPException(409, REFUSED[delivery])
    return Accepted(session_id=session_id, status_url=f"/sessions/{session_id}")


@router.get("/sessions/{session_id}", response_model_exclude_none=True)
async def status(session_id: SessionId, sessions: SessionsDep) -> SessionView:
    view = await sessions.view(session_id)
    if view is None:
        raise HTTPException(404, f"no session {session_id!r}")
    return view


def create_app(resonate_url: str, group: str, default_idle_timeout_seconds: int) -> FastAPI:
    # A client in a group of its own: the server never hands it workflow work.
    resonate = Resonate(url=resonate_url, group="session-gateway", autostart=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="session gateway", lifespan=lifespan, max_body_size=MAX_BODY_BYTES)
    app.state.sessions = Sessions(resonate, group, default_idle_timeout_seconds)
    app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    return app


def _latent(session_id: str) -> dict[str, str]:
    """Search tags for the session's latent promises: the ones the gateway delivers moves into."""
    return {"resonate:origin": session_id, "resonate:external": "true"}


def _step(record: PromiseRecord) -> int:
    return int(record.id.rsplit(":", 1)[1])


def _activity_of(move: PromiseRecord) -> Activity | None:
    match move.value.data if move.state == "resolved" else None:
        case {"type": "activity", "activity_id": str(activity_id), "action": str(action)}:
            return Activity(activity_id, action)
        case _:
            return None


def _login_of(record: PromiseRecord) -> tuple[str, int] | None:
    """The (user, idle timeout) an execution was started with; None if it is not a session."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "session":
        return None
    match param.get("args"):
        case [str(user), int(idle_timeout_seconds)]:
            return user, idle_timeout_seconds
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
    app = create_app(resonate_url, os.environ.get("RESONATE_GROUP", "session"), idle_timeout)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
