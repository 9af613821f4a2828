"""The provider sandbox: fake third-party APIs with Stripe-style idempotency and fault injection."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from starlette.requests import ClientDisconnect

from cookbook.sandbox import model
from cookbook.sandbox.jobs import jobs_router
from cookbook.sandbox.store import (
    IDEMPOTENCY_HEADER,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    REPLAYED_HEADER,
    ActionResult,
    Incoming,
    JSONObject,
    SandboxStore,
    Transaction,
    canonical_json,
    decode_json,
)
from cookbook.sandbox.webhooks import WebhookSender, webhook_router

PROVIDERS: Final[Mapping[str, tuple[str, ...]]] = {
    "flight": ("reserve", "cancel"),
    "hotel": ("reserve", "cancel"),
    "car": ("reserve", "cancel"),
    "inventory": ("reserve", "cancel"),
    "email": ("send",),
    "sms": ("send",),
    "slack": ("send",),
    "push": ("send",),
    "payment": ("charge", "refund"),
    "api": ("call",),
}
# What a fault can target: every provider above, and the stand-ins on routes of their own (the
# jobs service's submission, the model's completions).
FAULT_TARGETS: Final[Mapping[str, tuple[str, ...]]] = {
    **PROVIDERS,
    "jobs": ("submit",),
    model.PROVIDER: (model.ACTION,),
}


# --- fault injection -------------------------------------------------------------------


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    action: str | None = None
    mode: Literal["fail_always", "fail_times", "latency"] = "fail_always"
    times: int = Field(default=1, ge=1)
    latency_ms: int = Field(default=0, ge=0, le=60_000, validate_default=True)
    status: int = Field(default=503, ge=400, le=599)
    key_prefix: str | None = Field(
        default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH
    )

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value not in FAULT_TARGETS:
            raise ValueError(f"unknown provider {value!r}; known: {', '.join(FAULT_TARGETS)}")
        return value

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str | None, info: ValidationInfo) -> str | None:
        actions = FAULT_TARGETS.get(info.data.get("provider", ""))
        if value is not None and actions is not None and value not in actions:
            raise ValueError(f"unknown action {value!r}; known: {', '.join(actions)}")
        return value

    @field_validator("latency_ms")
    @classmethod
    def _latency_mode_needs_latency(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("mode") == "latency" and value == 0:
            raise ValueError("mode 'latency' needs latency_ms > 0")
        return value


class Fault(FaultSpec):
    id: str
    hits: int = Field(description="Matching requests seen so far")


@dataclass(frozen=True, slots=True)
class Injection:
    latency_s: float
    # (status code, attempt number) when the request must fail.
    failure: tuple[int, int] | None


class FaultRegistry:
    """Active faults. In memory on purpose: they are per-test setup, not provider state."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}

    def add(self, spec: FaultSpec) -> Fault:
        fault = Fault(id=f"fault_{secrets.token_hex(6)}", hits=0, **spec.model_dump())
        self._faults[fault.id] = fault
        return fault

    def all(self) -> list[Fault]:
        return list(self._faults.values())

    def remove(self, fault_id: str) -> bool:
        return self._faults.pop(fault_id, None) is not None

    def clear(self) -> int:
        count = len(self._faults)
        self._faults.clear()
        return count

    def on_request(self, provider: str, action: str, key: str | None) -> Injection:
        """Count the request against every matching fault and decide its fate.

        Synchronous, so the hit counters need no lock on the event loop.
        """
        latency_ms = 0
        failure: tuple[int, int] | None = None
        for fault in self._faults.values():
            if fault.provider != provider or fault.action not in (None, action):
                continue
            if fault.key_prefix is not None and not (key or "").startswith(fault.key_prefix):
                continue
            fault.hits += 1
            latency_ms = max(latency_ms, fault.latency_ms)
            fails = fault.mode == "fail_always" or (
                fault.mode == "fail_times" and fault.hits <= fault.times
            )
            if fails and failure is None:
                failure = (fault.status, fault.hits)
        return Injection(latency_ms / 1000, failure)

    async def inject(self, provider: str, action: str, key: str | None) -> tuple[int, int] | None:
        """Apply the matching faults to a request: wait out their latency, then return the
        (status code, attempt number) it must fail with, if it must.

        The wait is a plain sleep outside any lock: calls with different keys must overlap. A
        failure is not stored under the idempotency key: like Stripe, a request that failed
        before executing is run for real when retried with the same key.
        """
        injection = self.on_request(provider, action, key)
        if injection.latency_s > 0:
            await asyncio.sleep(injection.latency_s)
        return injection.failure


# --- provider actions ------------------------------------------------------------------


class CancelBody(BaseModel):
    """Cancel by reservation id, or by the Idempotency-Key the reservation was requested with.

    The key is for a caller whose reservation call timed out: it never got the id, and the
    request may yet arrive. If it did arrive, its reservation is cancelled; if not, the key is
    voided, and a reservation request with that key is refused whenever it comes.
    """

    model_config = ConfigDict(extra="allow")
    reservation_id: str | None = Field(default=None, min_length=1)
    reservation_key: str | None = Field(
        default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH
    )

    @model_validator(mode="after")
    def _one_reservation(self) -> CancelBody:
        if (self.reservation_id is None) == (self.reservation_key is None):
            raise ValueError("give either reservation_id or reservation_key")
        return self


class RefundBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    charge_id: str = Field(min_length=1)


_BODY_MODELS: Final[Mapping[str, type[BaseModel]]] = {"cancel": CancelBody, "refund": RefundBody}

type Action = Callable[[Incoming, Transaction], ActionResult]


def _new_id(provider: str) -> str:
    return f"{provider}_{secrets.token_hex(6)}"


def _reply(call: Incoming, resource_id: str, status: str) -> JSONObject:
    reply: JSONObject = {
        "id": resource_id,
        "provider": call.provider,
        "action": call.action,
        "status": status,
    }
    # Echo the caller's fields, but never let them overwrite the provider's own.
    reply.update({k: v for k, v in call.body.items() if k not in reply})
    return reply


def _not_found(call: Incoming, what: str, resource_id: str) -> ActionResult:
    return ActionResult(
        404,
        {
            "error": f"unknown {call.provider} {what} {resource_id!r}",
            "provider": call.provider,
            "action": call.action,
        },
    )


def _reserve(call: Incoming, tx: Transaction) -> ActionResult:
    if call.idempotency_key is not None and tx.void_of(call.idempotency_key) is not None:
        return ActionResult(
            409,
            {
                "error": f"reservation request {call.idempotency_key!r} was cancelled"
                " before it arrived",
                "provider": call.provider,
                "action": call.action,
            },
        )
    reservation_id = _new_id(call.provider)
    tx.create(reservation_id, call.provider, "reservation", "reserved", call.body)
    return ActionResult(200, _reply(call, reservation_id, "reserved"), reservation_id)


def _cancel(call: Incoming, tx: Transaction) -> ActionResult:
    key: str | None = call.body.get("reservation_key")
    if key is None:
        reservation_id: str = call.body["reservation_id"]
    else:
        stored = tx.stored_response(key)
        if stored is None:
            # The request never arrived (or is still on its way): make sure it never acts.
            void_id = tx.void_of(key)
            if void_id is not None:
                return ActionResult(200, _reply(call, void_id, "voided"))
            void_id = _new_id(call.provider)
            tx.void(key, call.provider, void_id)
            return ActionResult(200, _reply(call, void_id, "voided"), void_id)
        provider, action, response = stored
        if (provider, action) != (call.provider, "reserve"):
            return _not_found(call, "reservation request", key)
        reservation_id = response["id"]
    reservation = tx.get(reservation_id)
    if reservation is None or (reservation.provider, reservation.kind) != (
        call.provider,
        "reservation",
    ):
        return _not_found(call, "reservation", reservation_id)
    reply = _reply(call, reservation_id, "cancelled")
    if reservation.status == "cancelled":
        # Compensations get retried; a repeat must succeed without cancelling twice.
        return ActionResult(200, reply)
    tx.update(reservation_id, "cancelled")
    return ActionResult(200, reply, reservation_id)


def _send(call: Incoming, tx: Transaction) -> ActionResult:
    message_id = _new_id(call.provider)
    return ActionResult(200, _reply(call, message_id, "delivered"), message_id)


def _charge(call: Incoming, tx: Transaction) -> ActionResult:
    charge_id = _new_id(call.provider)
    tx.create(charge_id, call.provider, "charge", "succeeded", call.body)
    return ActionResult(200, _reply(call, charge_id, "succeeded"), charge_id)


def _refund(call: Incoming, tx: Transaction) -> ActionResult:
    charge_id: str = call.body["charge_id"]
    charge = tx.get(charge_id)
    if charge is None or charge.kind != "charge":
        return _not_found(call, "charge", charge_id)
    if charge.status == "refunded" and charge.related_id is not None:
        return ActionResult(200, _reply(call, charge.related_id, "refunded"))
    refund_id = _new_id(call.provider)
    tx.create(refund_id, call.provider, "refund", "refunded", call.body)
    tx.update(charge_id, "refunded", related_id=refund_id)
    return ActionResult(200, _reply(call, refund_id, "refunded"), refund_id)


def _call(call: Incoming, tx: Transaction) -> ActionResult:
    call_id = _new_id(call.provider)
    return ActionResult(200, _reply(call, call_id, "ok"), call_id)


_ACTIONS: Final[Mapping[str, Action]] = {
    "reserve": _reserve,
    "cancel": _cancel,
    "send": _send,
    "charge": _charge,
    "refund": _refund,
    "call": _call,
}


_JSON_TYPE_NAMES: Final[Mapping[type, str]] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


# --- the app ---------------------------------------------------------------------------


class KillSwitch(BaseModel):
    """Kill a worker right after this provider applied an effect, before it answers.

    Used by the live crash demo (`make run-saga CRASH=hotel`): the booking is made, and the
    worker that asked for it dies before it can checkpoint the result.
    """

    model_config = ConfigDict(extra="forbid")
    provider: str
    action: str | None = None
    pid: int = Field(gt=1)
    nth: int = Field(default=1, ge=1, description="fire on the nth matching effect")
    body: dict[str, Any] | None = Field(
        default=None,
        description="match only effects whose request body has these fields with these values"
        " (a worker's pid it sends, say: the victim's own call, not the nth of any worker's)",
    )

    def matches(self, provider: str, action: str, body: Any) -> bool:
        if self.provider != provider or self.action not in (None, action):
            return False
        fields = self.body or {}
        return all(isinstance(body, dict) and body.get(k) == v for k, v in fields.items())


def _fire_kill_switch(
    kill_switches: list[KillSwitch], provider: str, action: str, body: Any = None
) -> None:
    for i, switch in enumerate(kill_switches):
        if switch.matches(provider, action, body):
            if switch.nth > 1:
                kill_switches[i] = switch.model_copy(update={"nth": switch.nth - 1})
                return
            kill_switches.remove(switch)
            # SIGKILL is acted on before the caller runs another instruction: it never
            # reads this answer, and the step's result is never checkpointed.
            os.kill(switch.pid, signal.SIGKILL)
            return


def create_app(
    db_path: str | os.PathLike[str],
    *,
    narrate: bool = False,
    model_script: model.Script | None = None,
) -> FastAPI:
    """Build a sandbox app recording into the SQLite database at ``db_path``.

    With ``narrate``, print one line per provider call, so a demo can show what the outside
    world saw: which calls acted, and which were answered from the idempotency store.
    ``model_script`` is what the stand-in model answers from (cookbook.sandbox.model).
    """
    # Opened here rather than in the lifespan so in-process clients that skip lifespan
    # events (httpx.ASGITransport) work too.
    store = SandboxStore(db_path)
    faults = FaultRegistry()
    webhooks = WebhookSender(narrate=narrate)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await webhooks.close()
        store.close()

    app = FastAPI(title="Resonate cookbook provider sandbox", lifespan=lifespan)
    app.state.store = store
    app.state.faults = faults
    app.state.webhooks = webhooks
    kill_switches: list[KillSwitch] = []
    app.state.kill_switches = kill_switches  # the jobs stand-in fires them too

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # ctx holds the raised exception objects, which add nothing once msg is rendered.
        errors = [{k: v for k, v in e.items() if k != "ctx"} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "detail": jsonable_encoder(errors)}, 422)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    admin = APIRouter(prefix="/_admin", tags=["admin"])

    @admin.post("/faults", status_code=201)
    async def add_fault(spec: FaultSpec) -> Fault:
        return faults.add(spec)

    @admin.get("/faults")
    async def list_faults() -> list[Fault]:
        return faults.all()

    @admin.delete("/faults")
    async def clear_faults() -> dict[str, int]:
        return {"cleared": faults.clear()}

    @admin.delete("/faults/{fault_id}")
    async def remove_fault(fault_id: str) -> JSONResponse:
        if not faults.remove(fault_id):
            return JSONResponse({"error": f"unknown fault {fault_id!r}"}, 404)
        return JSONResponse({"removed": fault_id})

    @admin.post("/kill-switches", status_code=201)
    async def arm_kill_switch(switch: KillSwitch) -> KillSwitch:
        kill_switches.append(switch)
        return switch

    @admin.get("/requests")
    async def list_requests(key_prefix: str | None = None) -> list[dict[str, Any]]:
        return [asdict(r) for r in store.requests(key_prefix)]

    @admin.get("/effects")
    async def list_effects(key_prefix: str | None = None) -> list[dict[str, Any]]:
        return [asdict(e) for e in store.effects(key_prefix)]

    @admin.delete("/records")
    async def wipe_records() -> dict[str, str]:
        store.wipe()
        return {"status": "wiped"}

    # Registered before the catch-all provider route so /_admin/... is never a provider.
    app.include_router(admin)
    app.include_router(webhook_router(webhooks))
    # The jobs stand-in (cookbook.sandbox.jobs): its own routes, before the catch-all.
    app.include_router(jobs_router(store, db_path, narrate=narrate))
    # The stand-in model (cookbook.sandbox.model): OpenAI-compatible routes under /v1.
    app.include_router(
        model.model_router(
            store,
            faults,
            script=model_script or model.Script(),
            on_effect=lambda provider, action: _fire_kill_switch(kill_switches, provider, action),
            narrate=narrate,
        )
    )

    @app.post("/{provider}/{action}")
    async def provider_call(provider: str, action: str, request: Request) -> Response:
        started_at = time.time()
        try:
            raw = await request.body()
        except ClientDisconnect:
            # The caller died mid-request (a crash test SIGKILLs workers while they talk to us):
            # nothing was done and nobody is left to answer, which is not a server error.
            if narrate:
                print(f"{provider}.{action}: caller gone before its request was whole", flush=True)
            return Response(status_code=499)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        decoded, parse_error = decode_json(raw)
        # Not JSON: recorded as a JSON string, so the requests.body column always holds JSON.
        body_text = canonical_json(raw.decode("utf-8", "replace") if parse_error else decoded)

        def reject(status: int, payload: JSONObject, *, injected: bool = False) -> JSONResponse:
            store.record_request(
                provider=provider,
                action=action,
                idempotency_key=key,
                body_text=body_text,
                status_code=status,
                started_at=started_at,
                injected_fault=injected,
            )
            return JSONResponse(payload, status)

        actions = PROVIDERS.get(provider)
        if actions is None:
            return reject(
                404, {"error": f"unknown provider {provider!r}", "providers": list(PROVIDERS)}
            )
        if action not in actions:
            return reject(
                404,
                {
                    "error": f"unknown action {action!r} for provider {provider!r}",
                    "actions": list(actions),
                },
            )
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
            return reject(
                400,
                {
                    "error": f"{IDEMPOTENCY_HEADER} must be 1 to"
                    f" {MAX_IDEMPOTENCY_KEY_LENGTH} characters, got {len(key)}"
                },
            )
        if parse_error is not None:
            return reject(422, {"error": f"request body is not valid JSON: {parse_error}"})
        if not isinstance(decoded, dict):
            kind = _JSON_TYPE_NAMES.get(type(decoded), type(decoded).__name__)
            return reject(422, {"error": f"request body must be a JSON object, got {kind}"})
        body: JSONObject = decoded
        model = _BODY_MODELS.get(action)
        if model is not None:
            try:
                model.model_validate(body)
            except ValidationError as exc:
                return reject(
                    422,
                    {
                        "error": f"invalid body for {provider}/{action}",
                        "detail": jsonable_encoder(
                            exc.errors(include_url=False, include_context=False)
                        ),
                    },
                )

        failure = await faults.inject(provider, action, key)
        if failure is not None:
            status, attempt = failure
            return reject(
                status,
                {
                    "error": "injected failure",
                    "provider": provider,
                    "action": action,
                    "attempt": attempt,
                },
                injected=True,
            )

        call = Incoming(provider, action, key, body, started_at)
        handler = _ACTIONS[action]
        outcome = store.execute(call, lambda tx: handler(call, tx))
        headers = {REPLAYED_HEADER: "true"} if outcome.kind == "replayed" else None
        if narrate:
            how = {
                "executed": "done",
                "replayed": "replayed from its Idempotency-Key, not done again",
                "conflict": "rejected",
            }[outcome.kind]
            print(f"{provider}.{action} {outcome.status_code}: {how}  (key {key})", flush=True)
        if outcome.kind == "executed":
            _fire_kill_switch(kill_switches, provider, action, body)
        return Response(outcome.body, outcome.status_code, headers, "application/json")

    return app
