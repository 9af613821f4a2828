"""`python -m k8s_drain.gateway`: the operators' HTTP API (Flask, served by waitress).

  POST /drains                  {"drain_id", "nodes": [...]}: start a drain; 202 and a status URL
  GET  /drains/{id}             draining, blocked (which pod, which budget, why), or the report
  POST /drains/{id}/decision    {"decision": "retry" | "skip" | "force" | "abort", "pod"?: ...}

It keeps nothing of its own; everything is read from the Resonate server, through ids and tags
the example chooses. A drain that waits for an operator has written the question down (a
promise tagged with the drain's id, under an id of the drain's choosing): what is blocked and
why, and the id of the promise the drain waits on. A decision resolves that promise, and the
workflow, suspended until then, goes on.
  RESONATE_URL     the Resonate server (required)
  RESONATE_GROUP   the worker group that drains nodes (default: k8s-drain)
  GATEWAY_HOST     the address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  GATEWAY_PORT     the port to serve on (default 0: any free port)

Flask views are synchronous and run on waitress's threads; the Resonate client is asyncio and
lives on the event loop that started it (its connection, its background tasks). So the gateway
runs one event loop on a thread of its own for the life of the process, with one client on it,
and each request hands its coroutine to that loop and waits for the answer. (A fresh
`asyncio.run` per request would need a fresh client, and a connection, per request.)
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import waitress
from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value
from werkzeug.exceptions import HTTPException

from k8s_drain.steps import QUESTION_OF_DRAIN
from k8s_drain.workflow import DEADLINE, Decision

GROUP = "k8s-drain"
MAX_BODY_BYTES = 16 * 1024
RESONATE_TIMEOUT = 10.0  # seconds a request waits for the Resonate server before a 503

# The drain id becomes the execution id, and Resonate ids may not contain ':' (it names steps).
DRAIN_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
DrainId = Annotated[str, StringConstraints(pattern=f"^{DRAIN_ID}$")]
NodeName = Annotated[
    str,
    StringConstraints(
        max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ),
]
PodName = Annotated[
    str, StringConstraints(max_length=317, pattern=r"^[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DrainRequest(_Strict):
    drain_id: DrainId
    nodes: Annotated[list[NodeName], Field(min_length=1, max_length=100)]

    @field_validator("nodes")
    @classmethod
    def _each_node_once(cls, nodes: list[str]) -> list[str]:
        # A node's questions are named after it (steps.Question.id_for): one drain per node.
        if len(set(nodes)) != len(nodes):
            raise ValueError("each node may be named once")
        return nodes


class DecisionRequest(_Strict):
    decision: Decision
    pod: PodName | None = None  # if given, the decision is taken only if this pod is the one


@dataclass(frozen=True)
class Question:
    """A drain waiting for an operator: the promise to resolve, and what it is about."""

    promise_id: str
    blocked: dict[str, Any]  # a `Blocked`, as stored: pod, node, budget, message
    since_ms: int


class Workers:
    """A Resonate client on an event loop of its own, for synchronous Flask views to use."""

    def __init__(self, resonate_url: str, group: str) -> None:
        self.group = group
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="resonate", daemon=True)
        self._thread.start()
        self.resonate = self.call(self._connect(resonate_url))

    @staticmethod
    async def _connect(resonate_url: str) -> Resonate:
        # A client in a group of its own: the server never hands it workflow work.
        return Resonate(url=resonate_url, group="k8s-drain-gateway")

    def call[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop; TimeoutError if the server does not answer."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(RESONATE_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.call(self.resonate.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# -- reading a drain from the Resonate server ---------------------------------------------------


def _nodes_of(record: PromiseRecord) -> list[str] | None:
    """The nodes an execution drains; None if the execution is not a drain."""
    param = record.param.data
    if not isinstance(param, dict) or param.get("func") != "drain":
        return None
    try:
        nodes = param["args"][0]
    except (LookupError, TypeError):
        return None
    return nodes if isinstance(nodes, list) else None


async def _search(
    resonate: Resonate, state: str | None, tags: dict[str, str]
) -> AsyncIterator[PromiseRecord]:
    cursor = None
    while True:
        page = await resonate.promises.search(state, tags, 100, cursor)
        for promise in page.promises:
            yield promise
        if (cursor := page.cursor) is None:
            return


def _as_question(record: PromiseRecord) -> Question | None:
    """A question the drain wrote down (see steps.ask_operator); None if it is not one."""
    match record.param.data:
        case {"decision_id": str(decision_id), "blocked": dict(blocked)}:
            return Question(decision_id, blocked, record.created_at)
        case _:
            return None


async def open_question(resonate: Resonate, drain_id: str) -> Question | None:
    """The decision a drain waits for, if it waits for one (it waits for one at a time)."""
    # The drain writes each question down under an id of its own choosing, tagged with the
    # drain's id; the open one is the one whose decision promise is still pending.
    asked = [p async for p in _search(resonate, None, {QUESTION_OF_DRAIN: drain_id})]
    for record in sorted(asked, key=lambda p: p.created_at, reverse=True):
        question = _as_question(record)
        if question is None:
            continue
        decision = await resonate.promises.get(question.promise_id)
        if decision.state == "pending":
            return question
    return None


async def drain_status(resonate: Resonate, drain_id: str) -> dict[str, Any] | None:
    try:
        record = await resonate.promises.get(drain_id)
    except ServerError as exc:
        if exc.code != 404:
            raise
        return None
    nodes = _nodes_of(record)
    if nodes is None:
        return None
    status: dict[str, Any] = {"drain_id": drain_id, "nodes": nodes}
    match record.state:
        case "resolved":
            report = record.value.data  # a DrainReport, as JSON
            assert isinstance(report, dict)
            return {**status, "status": report["status"], "report": report["nodes"]}
        case "pending":
            question = await open_question(resonate, drain_id)
            if question is None:
                return {**status, "status": "draining"}
            return {
                **status,
                "status": "blocked",
                "blocked": question.blocked,
                "waiting_since_ms": question.since_ms,
                "decide": f"POST /drains/{drain_id}/decision",
            }
        case _:  # rejected or timed out: the error says why
            error: str = record.state
            try:
                await (await resonate.get(drain_id)).result()
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            return {**status, "status": "failed", "error": error}


# -- the API ------------------------------------------------------------------------------------


class _AsWritten(DefaultJSONProvider):
    sort_keys = False  # the status first, as written


MAX_REPORTED_ERRORS = 10
MAX_LOCATION_LENGTH = 40


def _shortened(part: int | str) -> int | str:
    if isinstance(part, str) and len(part) > MAX_LOCATION_LENGTH:
        return part[:MAX_LOCATION_LENGTH] + "…"
    return part


def create_app(workers: Workers) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json = _AsWritten(app)
    # `/drains//x` is no drain: a 404, not werkzeug's HTML redirect to `/drains/x`.
    app.url_map.merge_slashes = False
    resonate = workers.resonate

    @app.post("/drains")
    def start() -> tuple[Response, int]:
        drain = _body(DrainRequest)

        async def start_or_attach() -> list[str] | None:
            # Starting an id that exists attaches to that execution without comparing
            # arguments, so the stored request is compared afterwards.
            handle = resonate.options(target=workers.group, timeout=DEADLINE).rpc(
                drain.drain_id, "drain", drain.nodes
            )
            await handle.id()
            return _nodes_of(await resonate.promises.get(drain.drain_id))

        if workers.call(start_or_attach()) != drain.nodes:
            return _error(409, f"drain {drain.drain_id!r} exists with different nodes")
        status_url = f"/drains/{drain.drain_id}"
        response = jsonify(drain_id=drain.drain_id, status_url=status_url)
        response.headers["Location"] = status_url
        return response, 202

    @app.get("/drains/<drain_id>")
    def status(drain_id: str) -> tuple[Response, int]:
        _check_id(drain_id)
        found = workers.call(drain_status(resonate, drain_id))
        if found is None:
            return _error(404, f"no drain {drain_id!r}")
        return jsonify(found), 200

    @app.post("/drains/<drain_id>/decision")
    def decide(drain_id: str) -> tuple[Response, int]:
        _check_id(drain_id)
        decision = _body(DecisionRequest)

        async def resolve() -> tuple[int, dict[str, Any]]:
            drain = await drain_status(resonate, drain_id)
            if drain is None:
                return 404, {"error": f"no drain {drain_id!r}"}
            question = await open_question(resonate, drain_id)
            if question is None:
                message = f"drain {drain_id!r} is not waiting for a decision ({drain['status']})"
                return 409, {"error": message}
            pod = question.blocked.get("pod")
            if decision.pod is not None and decision.pod != pod:
                return 409, {
                    "error": f"the drain waits for a decision about {pod}, not {decision.pod}"
                }
            value = {"decision": decision.decision}
            settled = await resonate.promises.resolve(question.promise_id, Value(data=value))
            if settled.value.data != value:  # another operator was first
                return 409, {"error": f"another decision was taken first: {settled.value.data}"}
            return 202, {
                "drain_id": drain_id,
                "decision": decision.decision,
                "pod": pod,
                "status_url": f"/drains/{drain_id}",
            }

        code, body = workers.call(resolve())
        return jsonify(body), code

    @app.errorhandler(ValidationError)
    def invalid(exc: ValidationError) -> tuple[Response, int]:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        # An unknown key is its own location, so locations are cut short, and so is the list.
        wrong = [
            {"loc": [_shortened(part) for part in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()[:MAX_REPORTED_ERRORS]
        ]
        return jsonify(error="invalid request", detail=wrong), 422

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(TimeoutError)
    def resonate_down(_: TimeoutError) -> tuple[Response, int]:
        return _error(503, "the Resonate server did not answer in time; try again")

    @app.errorhandler(ServerError)
    def resonate_refused(exc: ServerError) -> tuple[Response, int]:
        return _error(502, f"the Resonate server refused a request: {exc}")

    return app


def _body[M: BaseModel](model: type[M]) -> M:
    if not request.is_json:
        raise _MalformedBody("the body must be JSON, sent with Content-Type: application/json")
    # pydantic's own JSON parser, not `request.get_json`: it bounds how deep a document may
    # nest, where json.loads recurses until Python's stack runs out (a RecursionError, a 500,
    # from a 3 KB body of 1,500 brackets).
    try:
        return model.model_validate_json(request.get_data(cache=False))
    except ValidationError as exc:
        for error in exc.errors():
            if error["type"] == "json_invalid":
                reason = str(error["msg"]).removeprefix("Invalid JSON: ")
                raise _MalformedBody(f"the body is not valid JSON: {reason}") from None
        raise


class _MalformedBody(HTTPException):
    code = 400


class _ValidationProblem(HTTPException):
    code = 422


def _check_id(drain_id: str) -> None:
    if re.fullmatch(DRAIN_ID, drain_id) is None:
        raise _ValidationProblem(f"not a drain id: {drain_id[:80]!r}")


def _error(code: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), code


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit("k8s_drain.gateway: RESONATE_URL is not set (or use `make run-k8s-drain`)")
    workers = Workers(resonate_url, os.environ.get("RESONATE_GROUP", GROUP))
    server = waitress.create_server(
        create_app(workers),
        host=os.environ.get("GATEWAY_HOST", "127.0.0.1"),
        port=int(os.environ.get("GATEWAY_PORT", "0")),
    )
    # waitress runs until interrupted: turn SIGTERM and SIGINT into a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    where = f"{server.effective_host}:{server.effective_port}"
    print(f"k8s-drain gateway listening on http://{where}", flush=True)
    try:
        server.run()
    finally:
        server.close()
        workers.close()


if __name__ == "__main__":
    main()
