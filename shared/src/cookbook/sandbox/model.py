"""The "model" provider: a STAND-IN for an OpenAI-compatible chat model. It is not a model.

No model is reachable where the cookbook is built and tested, so the AI examples talk to this
instead, through the official `openai` client, configured only by `OPENAI_BASE_URL`,
`OPENAI_API_KEY` and `OPENAI_MODEL` (the cookbook sets them to point here; set them yourself to
use OpenAI, vLLM, Ollama, LiteLLM...). It speaks the Chat Completions wire format, non-streaming:

    POST /v1/chat/completions     a `chat.completion`, with `content` or `tool_calls`
    GET  /v1/models               the model names it answers for (it accepts any name)
    PUT  /_admin/model/script     replace the script (the body is the script's TOML text)
    GET  /_admin/model/script     the script in use, as JSON

Replies are deterministic and scripted: a script is an ordered list of rules, and the first rule
whose conditions all hold answers (see `When` and `Reply`). No rule matching, a default reply
labelled "[stand-in model]" quotes the last user message. The same request gets the same reply,
byte for byte: ids derive from the request, and `created` is fixed. An example's script:

    [[rules]]
    name = "look it up"
    when = { last_user_contains = "weather", tool_offered = "get_weather" }
    reply = { tool_calls = [{ name = "get_weather", arguments = { city = "Paris" } }] }

    [[rules]]
    when = { last_message_role = "tool" }
    reply = { content = "It is {last_tool_result} in Paris." }

The cookbook loads an example's script (`[tool.cookbook.model] script`) when it starts the
sandbox for it (`python -m cookbook.sandbox --model-script PATH`); a test that shares a sandbox
loads it with `load_script` and gives its processes `cookbook.stack.stand_in_model_env(url)`.

Every completion is billed: recorded in the sandbox's records like any provider call (provider
"model", action "complete": an effect whose response holds the model and its `usage`). Tokens
are counted as whitespace-separated words, an approximation of a real tokenizer. A request with
an `Idempotency-Key` header is billed once: the same key and body replays the stored completion
(`Idempotent-Replayed: true`), the same key with another body is a 409. THE REAL OPENAI API HAS
NO IDEMPOTENCY KEYS: against it, a crash between the response and the step's checkpoint pays
for the completion again. The key is here so the cookbook can count, per step, what was billed.

The sandbox's fault injection applies (`provider = "model", action = "complete"`): failures
are answered with OpenAI-style error bodies, so the client raises `RateLimitError` (429),
`InternalServerError` (5xx) or `APITimeoutError` (latency past its timeout) as against the real
API. The `openai` client retries by itself (`max_retries=2` by default): the examples construct
it with `max_retries=0`, so that Resonate's retry policy, chosen on purpose, owns retries.
"""

from __future__ import annotations

import hashlib
import json
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import ClientDisconnect

from cookbook import clients
from cookbook.sandbox.store import (
    IDEMPOTENCY_HEADER,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    REPLAYED_HEADER,
    ActionResult,
    Incoming,
    JSONObject,
    SandboxStore,
    canonical_json,
    decode_json,
)

if TYPE_CHECKING:
    from cookbook.sandbox.app import FaultRegistry

PROVIDER: Final = "model"
ACTION: Final = "complete"
DEFAULT_MODEL: Final = "stand-in-1"
# Fixed, so that equal requests get equal bytes back (a real API puts the time here).
CREATED: Final = 1_767_225_600
QUOTE_CHARS: Final = 60

# --- the script ------------------------------------------------------------------------


class When(BaseModel):
    """A rule's conditions; all must hold. Substrings are matched case-insensitively."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    system_contains: str | None = None
    last_user_contains: str | None = None
    last_message_role: Literal["user", "tool", "assistant"] | None = None
    any_message_contains: str | None = None
    tool_offered: str | None = Field(default=None, description="a function name in `tools`")
    tool_result_contains: str | None = Field(default=None, description="in the last tool message")
    assistant_turns: int | None = Field(default=None, ge=0, description="assistant messages so far")


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Reply(BaseModel):
    """Either `content` (`{last_user}` and `{last_tool_result}` are substituted) or `tool_calls`.

    A `tool_calls` reply answers only when every tool it calls is offered in the request's
    `tools` (and `tool_choice` is not "none"): a model cannot call a tool it was not given.
    """

    model_config = ConfigDict(extra="forbid")
    content: str | None = None
    tool_calls: list[ScriptedToolCall] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Reply:
        if (self.content is None) == (self.tool_calls is None):
            raise ValueError("give either content or tool_calls")
        return self


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, description="shown in the sandbox's narration")
    when: When = Field(default_factory=When)
    reply: Reply


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = Field(default_factory=list)


class ScriptError(ValueError):
    pass


def parse_script(text: str) -> Script:
    """A script from its TOML text; a ScriptError names what is wrong (`rules[1].when.x: ...`)."""
    try:
        return Script.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ScriptError(f"not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ScriptError("; ".join(_describe(e) for e in exc.errors())) from exc


def load_script(sandbox_url: str, path: Path) -> None:
    """Load a script file into a running sandbox (`PUT /_admin/model/script`)."""
    response = clients.put(f"{sandbox_url}/_admin/model/script", content=path.read_bytes())
    if response.status_code != 200:
        raise ScriptError(f"{path}: {response.json()['error']['message']}")


# --- the request -----------------------------------------------------------------------


class _Lenient(BaseModel):
    # Unknown fields are ignored, as a compatible server must (clients add fields over time).
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Lenient):
    name: str
    arguments: str


class ToolCall(_Lenient):
    id: str
    type: Literal["function"]
    function: FunctionCall


class TextPart(_Lenient):
    type: str
    text: str | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_result_names_its_call(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content)
        return self.content or ""

    @property
    def billed_text(self) -> str:
        calls = " ".join(f"{c.function.name} {c.function.arguments}" for c in self.tool_calls or [])
        return f"{self.text} {calls}"


class FunctionSpec(_Lenient):
    name: str = Field(min_length=1)


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionSpec


class ChatRequest(_Lenient):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Any = None
    stream: bool | None = None
    n: int | None = Field(default=None, ge=1)

    def last(self, role: str) -> str:
        return next((m.text for m in reversed(self.messages) if m.role == role), "")

    @property
    def offered(self) -> set[str]:
        return {tool.function.name for tool in self.tools or []}


def _describe(error: Any) -> str:
    return f"{_param(error['loc'])}: {error['msg']}"


def _param(loc: tuple[Any, ...]) -> str:
    """`messages[1].content` for pydantic's `("messages", 1, "content")`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in ("str", "bool") and "[" not in part:
            # (Those are the members of a union pydantic tried, such as `list[TextPart]`.)
            text += f".{part}" if text else part
    return text


# --- answering -------------------------------------------------------------------------


def _matches(when: When, reply: Reply, request: ChatRequest) -> bool:
    def has(needle: str | None, haystack: str) -> bool:
        return needle is None or needle.lower() in haystack.lower()

    everything = "\n".join(m.text for m in request.messages)
    system = "\n".join(m.text for m in request.messages if m.role in ("system", "developer"))
    turns = sum(1 for m in request.messages if m.role == "assistant")
    if reply.tool_calls is not None and (
        request.tool_choice == "none"
        or any(c.name not in request.offered for c in reply.tool_calls)
    ):
        return False
    return (
        has(when.model, request.model)
        and has(when.system_contains, system)
        and has(when.last_user_contains, request.last("user"))
        and when.last_message_role in (None, request.messages[-1].role)
        and has(when.any_message_contains, everything)
        and when.tool_offered in (None, *request.offered)
        and has(when.tool_result_contains, request.last("tool"))
        and when.assistant_turns in (None, turns)
    )


def _words(text: str) -> int:
    return len(text.split())


def complete(script: Script, request: ChatRequest, digest: str) -> tuple[JSONObject, str | None]:
    """The `chat.completion` for a request, and which rule answered (None: the default reply)."""
    index, rule = next(
        ((i, r) for i, r in enumerate(script.rules) if _matches(r.when, r.reply, request)),
        (None, None),
    )
    message: JSONObject = {"role": "assistant", "content": None, "refusal": None}
    if rule is not None and rule.reply.tool_calls is not None:
        message["tool_calls"] = [
            {
                "id": f"call_{hashlib.sha256(f'{digest}/{i}'.encode()).hexdigest()[:24]}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for i, call in enumerate(rule.reply.tool_calls)
        ]
        answer = " ".join(f"{c.name} {json.dumps(c.arguments)}" for c in rule.reply.tool_calls)
    elif rule is not None and rule.reply.content is not None:
        answer = rule.reply.content.replace("{last_user}", request.last("user")).replace(
            "{last_tool_result}", request.last("tool")
        )
        message["content"] = answer
    else:
        quoted = request.last("user")[:QUOTE_CHARS]
        answer = f'[stand-in model] No scripted reply; answer {digest[:8]} to "{quoted}".'
        message["content"] = answer
    prompt_tokens = sum(_words(m.billed_text) for m in request.messages)
    completion_tokens = _words(answer)
    completion: JSONObject = {
        "id": f"chatcmpl-{digest[:24]}",
        "object": "chat.completion",
        "created": CREATED,
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if "tool_calls" in message else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return completion, None if rule is None else (rule.name or f"rules[{index}]")


# --- the routes ------------------------------------------------------------------------


def openai_error(
    message: str, *, kind: str, param: str | None = None, code: str | None = None
) -> JSONObject:
    """The error body OpenAI sends (the client raises the exception class for the status)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_FAULT_KINDS: Final = {429: ("requests", "rate_limit_exceeded")}


def model_router(
    store: SandboxStore,
    faults: FaultRegistry,
    *,
    script: Script,
    on_effect: Callable[[str, str], None],
    narrate: bool = False,
) -> APIRouter:
    """The stand-in's routes. `on_effect(provider, action)` runs after each billed completion
    (the sandbox's kill switches)."""
    router = APIRouter()
    current = [script]  # replaced whole by PUT /_admin/model/script

    @router.put("/_admin/model/script", tags=["admin"])
    async def replace_script(request: Request) -> JSONResponse:
        try:
            current[0] = parse_script((await request.body()).decode("utf-8", "replace"))
        except ScriptError as exc:
            return JSONResponse(openai_error(str(exc), kind="invalid_request_error"), 400)
        return JSONResponse({"rules": len(current[0].rules)})

    @router.get("/_admin/model/script", tags=["admin"])
    async def show_script() -> Script:
        return current[0]

    @router.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        if not _has_key(request):
            return _no_key()
        names = dict.fromkeys([DEFAULT_MODEL, *(r.when.model for r in current[0].rules)])
        data = [
            {"id": n, "object": "model", "created": CREATED, "owned_by": "cookbook-stand-in"}
            for n in names
            if n
        ]
        return JSONResponse({"object": "list", "data": data})

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started_at = time.time()
        try:
            raw = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        body, parse_error = decode_json(raw)
        # As the sandbox records any request: its JSON, or its text when it is not JSON.
        recorded = canonical_json(raw.decode("utf-8", "replace") if parse_error else body)

        def reject(status: int, error: JSONObject, *, injected: bool = False) -> JSONResponse:
            store.record_request(
                provider=PROVIDER,
                action=ACTION,
                idempotency_key=key,
                body_text=recorded,
                status_code=status,
                started_at=started_at,
                injected_fault=injected,
            )
            return JSONResponse(error, status)

        def bad(message: str, param: str | None) -> JSONResponse:
            return reject(400, openai_error(message, kind="invalid_request_error", param=param))

        if not _has_key(request):
            return reject(401, _no_key_body())
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            limit = f"1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            return bad(f"{IDEMPOTENCY_HEADER} must be {limit}, got {len(key)}", None)
        if parse_error is not None:
            return bad(f"the request body is not valid JSON: {parse_error}", None)
        if not isinstance(body, dict):
            return bad("the request body must be a JSON object", None)
        try:
            chat = ChatRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            return bad(f"invalid request: {_describe(first)}", _param(first["loc"]))
        if chat.stream:
            return bad("the stand-in model does not stream: send stream=false", "stream")
        if chat.n not in (None, 1):
            return bad("the stand-in model gives one choice: send n=1", "n")

        failure = await faults.inject(PROVIDER, ACTION, key)
        if failure is not None:
            status, attempt = failure
            other = ("server_error" if status >= 500 else "invalid_request_error", None)
            kind, code = _FAULT_KINDS.get(status, other)
            message = f"injected failure (attempt {attempt}): the stand-in model answered {status}"
            return reject(status, openai_error(message, kind=kind, code=code), injected=True)

        digest = hashlib.sha256(recorded.encode()).hexdigest()
        completion, rule = complete(current[0], chat, digest)
        call = Incoming(PROVIDER, ACTION, key, body, started_at)
        outcome = store.execute(call, lambda tx: ActionResult(200, completion, completion["id"]))
        if narrate:
            how = {
                "executed": f"billed, answered by {rule or 'the default reply'}",
                "replayed": "replayed from its Idempotency-Key, not billed again",
                "conflict": "rejected",
            }[outcome.kind]
            print(f"model.complete {outcome.status_code}: {how}  (key {key})", flush=True)
        if outcome.kind == "conflict":
            message = f"Idempotency-Key {key!r} was used with a different request"
            error = openai_error(message, kind="invalid_request_error", code="key_reused")
            return JSONResponse(error, 409)
        if outcome.kind == "executed":
            on_effect(PROVIDER, ACTION)
        headers = {REPLAYED_HEADER: "true"} if outcome.kind == "replayed" else None
        return Response(outcome.body, outcome.status_code, headers, "application/json")

    return router


def _has_key(request: Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _no_key_body() -> JSONObject:
    message = "No API key: send `Authorization: Bearer <key>` (the stand-in accepts any key)."
    return openai_error(message, kind="invalid_request_error")


def _no_key() -> JSONResponse:
    return JSONResponse(_no_key_body(), 401)
