"""`python -m chatbot.gateway`: the chat's HTTP API.

`POST /chats/{chat_id}/turns` sends the user's message as turn n and answers with the model's
reply once the turn is done: 200 within ANSWER_WITHIN_SECONDS, which a turn takes unless the model
is failing and being retried; past that, 202 and the turn's URL, to poll with
`GET /chats/{chat_id}/turns/{n}`. A chat user waits for the answer anyway, so the common case is
one request; a turn riding out a provider outage must not hold a connection past the timeouts of
the proxies in between, so it degrades to 202 and poll.

Turns are numbered by the client: turn n may start once turn n-1 has settled (409 otherwise),
and sending turn n again attaches to it (the same message: its answer; a different one: 409).
The gateway keeps nothing of its own: each turn is an execution on the Resonate server, started
from the previous one, so any number of gateways serve the same chats.
  RESONATE_URL            the Resonate server (required)
  RESONATE_GROUP          the worker group that answers turns (default: chatbot)
  ANSWER_WITHIN_SECONDS   how long a POST waits for the reply before answering 202 (default 10)
  GATEWAY_HOST            the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT            the port to serve on (default 0: any free port)
  CHAT_ENCRYPTION_KEYS    the key ring the worker has, as JSON, or
  CHAT_ENCRYPTION_KEYS_FILE  the path of a file holding it (see crypto.py)
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot.crypto import AesGcmEncryptor, KeyRing, KeyRingError, load_key_ring
from chatbot.steps import Message as ChatMessage
from chatbot.steps import Reply
from chatbot.workflow import ChatId, Turn, TurnNumber, UserText, history_after, turn_id

MAX_BODY_BYTES = 32 * 1024  # a message is at most 4,000 characters; anything bigger is a 413


class NewTurn(BaseModel):
    """What the client sends: the turn's number (1, 2, ...) and the user's message."""

    model_config = ConfigDict(extra="forbid", strict=True)

    turn: TurnNumber
    message: UserText


# answered: `reply` is the model's; refused: the model would not answer (`reason`); failed: the
# model stayed unavailable through every retry (`reason`).
TurnState = Literal["pending", "answered", "refused", "failed"]


class TurnStatus(BaseModel):
    chat_id: str
    turn: int
    status: TurnState
    reply: str | None = None
    reason: str | None = None
    status_url: str


class Problem(BaseModel):
    """A 4xx answer: what is wrong."""

    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class FieldProblems(BaseModel):
    """A 422 answer: one entry per wrong field, the input not echoed."""

    detail: list[FieldProblem]


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The answers an operation gives besides its 200, with their bodies, for OpenAPI."""
    described: dict[int, tuple[type[BaseModel], str]] = {
        202: (TurnStatus, "the turn is still being answered: poll `status_url`"),
        400: (Problem, "the body could not be read"),
        404: (Problem, "no such turn"),
        409: (Problem, "the turn is out of order, or was sent with a different message"),
        413: (Problem, f"the body is over {MAX_BODY_BYTES // 1024} KiB"),
        422: (FieldProblems, "the request does not match the schema: which fields, and why"),
    }
    return {
        code: {"model": described[code][0], "description": described[code][1]} for code in codes
    }


@dataclass(frozen=True)
class Workers:
    """How the gateway reaches the turns: a Resonate client, the group, the wait for a reply."""

    resonate: Resonate
    group: str
    answer_within: float


def _workers(request: Request) -> Workers:
    workers: Workers = request.app.state.workers
    return workers


WorkersDep = Annotated[Workers, Depends(_workers)]
ChatIdPath = Annotated[ChatId, Path(description="the chat, chosen by the client")]

router = APIRouter()


@router.post(
    "/chats/{chat_id}/turns",
    response_model_exclude_none=True,
    responses=_answers(202, 400, 409, 413, 422),
)
async def send(
    chat_id: ChatIdPath, new: NewTurn, response: Response, workers: WorkersDep
) -> TurnStatus:
    resonate = workers.resonate
    execution_id = turn_id(chat_id, new.turn)
    existing = await _record(resonate, execution_id)
    if existing is None:
        turn = Turn(
            chat_id=chat_id,
            number=new.turn,
            history=await _history_before(resonate, chat_id, new.turn),
            message=new.message,
        )
        started = resonate.options(target=workers.group).rpc(
            execution_id, "chat_turn", turn.model_dump(mode="json")
        )
        await started.id()
        # Starting an id that exists attaches to it without comparing arguments: of two racing
        # POSTs of this turn with different messages, one started it and the other is a 409.
        existing = await _record(resonate, execution_id)
    stored = _turn_of(existing)
    if stored is None or stored.message != new.message:
        raise HTTPException(409, f"turn {new.turn} of chat {chat_id!r} has a different message")
    await _settled_within(resonate, execution_id, workers.answer_within)
    status = await _status(resonate, stored)
    if status.status == "pending":
        response.status_code = 202
        response.headers["Location"] = status.status_url
    return status


@router.get(
    "/chats/{chat_id}/turns/{number}",
    response_model_exclude_none=True,
    responses=_answers(404, 422),
)
async def get_turn(chat_id: ChatIdPath, number: TurnNumber, workers: WorkersDep) -> TurnStatus:
    turn = _turn_of(await _record(workers.resonate, turn_id(chat_id, number)))
    if turn is None:
        raise HTTPException(404, f"chat {chat_id!r} has no turn {number}")
    return await _status(workers.resonate, turn)


async def _history_before(resonate: Resonate, chat_id: str, number: int) -> list[ChatMessage]:
    """The conversation before turn `number`, from turn number-1 once it has settled; or 409."""
    if number == 1:
        return []
    previous = await _record(resonate, turn_id(chat_id, number - 1))
    previous_turn = _turn_of(previous)
    if previous is None or previous_turn is None:
        raise HTTPException(409, f"chat {chat_id!r} has no turn {number - 1}: send it first")
    if previous.state == "pending":
        raise HTTPException(409, f"turn {number - 1} of chat {chat_id!r} is still being answered")
    if previous.state != "resolved":  # the turn failed: it adds nothing to the conversation
        return history_after(previous_turn, None)
    return history_after(previous_turn, await _reply(resonate, previous.id))


async def _status(resonate: Resonate, turn: Turn) -> TurnStatus:
    execution_id = turn_id(turn.chat_id, turn.number)

    def status(state: TurnState, **outcome: str | None) -> TurnStatus:
        url = f"/chats/{turn.chat_id}/turns/{turn.number}"
        return TurnStatus(
            chat_id=turn.chat_id, turn=turn.number, status=state, status_url=url, **outcome
        )

    record = await _record(resonate, execution_id)
    if record is None or record.state == "pending":
        return status("pending")
    if record.state != "resolved":
        return status("failed", reason=await _failure(resonate, execution_id))
    reply = await _reply(resonate, execution_id)
    if reply.content is None:
        return status("refused", reason=reply.refusal)
    return status("answered", reply=reply.content)


async def _reply(resonate: Resonate, execution_id: str) -> Reply:
    """The reply of a turn that has been answered (its execution resolved)."""
    return Reply.model_validate(await (await resonate.get(execution_id)).result())


async def _failure(resonate: Resonate, execution_id: str) -> str:
    """Why a turn failed (its execution rejected): what it raised, as the SDK decodes it."""
    try:
        await (await resonate.get(execution_id)).result()
    except Exception as exc:  # the model down past every retry, or a bug
        return str(exc) or type(exc).__name__
    return "unknown"


async def _record(resonate: Resonate, execution_id: str) -> PromiseRecord | None:
    try:
        return await resonate.promises.get(execution_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        return None


async def _settled_within(resonate: Resonate, execution_id: str, seconds: float) -> None:
    """Wait for the turn to settle, up to `seconds`: the server tells this gateway when it does.

    Giving up on the wait cancels only this request's wait, never the turn.
    """
    handle = await resonate.get(execution_id)

    async def settled() -> None:
        with suppress(Exception):  # a failed turn has settled too; its reason is read after
            await handle.result()

    with suppress(TimeoutError):
        await asyncio.wait_for(settled(), seconds)


def _turn_of(record: PromiseRecord | None) -> Turn | None:
    """The turn an execution was started with; None if it is not a chat turn."""
    if record is None:
        return None
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "chat_turn":
        return None
    try:
        return Turn.model_validate(param["args"][0])
    except (LookupError, TypeError, ValidationError):
        return None


def create_app(resonate_url: str, group: str, answer_within: float, key_ring: KeyRing) -> FastAPI:
    resonate = Resonate(
        url=resonate_url,
        # A client in a group of its own: the server never hands it workflow work.
        group="chatbot-gateway",
        autostart=False,
        # The gateway writes a turn's message and reads its reply: sealed with the worker's keys.
        encryptor=AesGcmEncryptor(key_ring),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resonate.start()
        yield
        await resonate.stop()

    app = FastAPI(title="chatbot gateway", lifespan=lifespan)
    app.state.workers = Workers(resonate, group, answer_within)
    app.include_router(router)
    app.add_middleware(_BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def field_errors(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        fields = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": fields}, status_code=422)

    return app


class _BodyLimit:
    """Refuses a body over MAX_BODY_BYTES: a 413 with the same JSON body as every other error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = JSONResponse(
            Problem(detail=f"the body is over {MAX_BODY_BYTES // 1024} KiB").model_dump(), 413
        )
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await too_large(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        whole: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)


class _Server(uvicorn.Server):
    """Announces its URL once it accepts connections (the launcher and tests wait for it)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            print(f"chatbot gateway listening on http://{host}:{port}", flush=True)


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit("chatbot.gateway: RESONATE_URL is not set (start a server, or `make run-chatbot`)")
    # Bound here rather than by uvicorn, so that port 0 turns into a port we can announce.
    try:
        key_ring = load_key_ring()
    except KeyRingError as exc:
        sys.exit(f"chatbot.gateway: {exc}")
    print(key_ring.describe(), flush=True)
    host = os.environ.get("GATEWAY_HOST", "127.0.0.1")
    sock = socket.create_server((host, int(os.environ.get("GATEWAY_PORT", "0"))))
    # Nagle off, which asyncio does only for sockets made with proto IPPROTO_TCP (these have 0):
    # without it each answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    app = create_app(
        resonate_url,
        os.environ.get("RESONATE_GROUP", "chatbot"),
        float(os.environ.get("ANSWER_WITHIN_SECONDS", "10")),
        key_ring,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again: exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    asyncio.run(_Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
