"""token-auth end to end: a dev server that requires a bearer token, worker processes, the sandbox.

Every refusal is checked where it would show: the SDK's error, the server's state and journal
(nothing created, nothing changed), the provider's records (nothing paid), and for a worker, the
server's list of live event streams (it never gets one, so it never gets work).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.processes import ProcessStartError
from cookbook.stack import worker_process
from cookbook.testing.fixtures import (
    DevServerFactory,
    ProcessFactory,
    RunningDevServer,
    RunningSandbox,
)
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.retry import Constant, Never
from resonate.types import Value
from token_auth import workflow
from token_auth.steps import Providers
from token_auth.workflow import payout

GROUP = "token-auth"
PAYOUT = ("acme-supplies", 125_000, "EUR", "INV-2041")
# What a client or a worker that was not let in presents: no token at all, or a wrong one.
NOT_LET_IN = [pytest.param(None, id="no-token"), pytest.param("not-the-token", id="wrong-token")]


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def server(start_devserver: DevServerFactory, token: str) -> RunningDevServer:
    return start_devserver(tokens=[token])


def worker_env(
    server: RunningDevServer, sandbox: RunningSandbox, token: str | None
) -> dict[str, str]:
    env = {"RESONATE_URL": server.url, "PROVIDER_API_URL": sandbox.url}
    return env | ({"RESONATE_TOKEN": token} if token is not None else {})


@pytest.fixture
def worker(
    server: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory, token: str
) -> None:
    start_worker("token_auth.worker", worker_env(server, sandbox, token))


def new_id() -> str:
    return f"payout-test-{secrets.token_hex(4)}"


def client(server: RunningDevServer, token: str | None) -> Resonate:
    # env={}: a client given exactly this token, whatever RESONATE_TOKEN the test process has.
    return Resonate(url=server.url, group="token-auth-tests", token=token, env={})


def pay(server: RunningDevServer, token: str, execution_id: str, *args: Any) -> Any:
    async def go() -> Any:
        resonate = client(server, token)
        try:
            handle = resonate.options(target=GROUP).rpc(execution_id, "payout", *args)
            return await asyncio.wait_for(handle.result(), 30)
        finally:
            await resonate.stop()

    return asyncio.run(go())


def refusal_of_start(server: RunningDevServer, token: str | None, execution_id: str) -> ServerError:
    """Start a payout with this token; the error the SDK raised (the test fails if none)."""

    async def go() -> ServerError:
        resonate = client(server, token)
        try:
            handle = resonate.options(target=GROUP).rpc(execution_id, "payout", *PAYOUT)
            with pytest.raises(ServerError) as refused:
                await asyncio.wait_for(handle.id(), 10)
            return refused.value
        finally:
            await resonate.stop()

    return asyncio.run(go())


def promise_ids(server: RunningDevServer) -> set[str]:
    state = clients.get(f"{server.url}/_cookbook/state", headers=server.headers).json()
    return {p["id"] for p in state["promises"]}


def health(server: RunningDevServer) -> dict[str, Any]:
    """The dev server's live event streams (`subscribers`) and the messages it holds."""
    response = clients.get(f"{server.url}/_cookbook/health", headers=server.headers)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def live_streams(server: RunningDevServer) -> list[dict[str, str]]:
    streams: list[dict[str, str]] = health(server)["subscribers"]
    return streams


def add_fault(sandbox: RunningSandbox, key_prefix: str, provider: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults",
        json={"provider": provider, "key_prefix": key_prefix, **spec},
    )
    response.raise_for_status()


# -- the right token ------------------------------------------------------------------------------


def test_the_right_token_pays_once_and_tells_finance(
    server: RunningDevServer, sandbox: RunningSandbox, worker: None, token: str
) -> None:
    execution_id = new_id()

    result = pay(server, token, execution_id, *PAYOUT)

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [(e.provider, e.action, e.idempotency_key) for e in effects] == [
        ("payment", "charge", f"{execution_id}:1"),
        ("slack", "send", f"{execution_id}:2"),
    ]
    assert effects[0].body == {
        "payee": "acme-supplies",
        "amount_cents": 125_000,
        "currency": "EUR",
        "invoice": "INV-2041",
    }
    payout_id, message_id = effects[0].resource_id, effects[1].resource_id
    assert effects[1].body["text"] == (
        f"paid 1250.00 EUR to acme-supplies for INV-2041 ({payout_id})"
    )
    assert result == {
        "status": "paid",
        "payout_id": payout_id,
        "reason": None,
        "payout_key": None,
        "notification": message_id,
    }


def test_the_server_keeps_no_copy_of_the_token(
    server: RunningDevServer, sandbox: RunningSandbox, worker: None, token: str
) -> None:
    execution_id = new_id()
    pay(server, token, execution_id, *PAYOUT)

    stored = b"".join(f.read_bytes() for f in server.data_dir.rglob("*") if f.is_file())
    assert stored
    assert token.encode() not in stored
    assert token not in clients.get(f"{server.url}/_cookbook/state", headers=server.headers).text
    assert token not in str(server.journal(execution_id))


# -- requests: no token, a wrong token ------------------------------------------------------------


@pytest.mark.parametrize("presented", NOT_LET_IN)
def test_a_client_not_let_in_is_refused_and_creates_nothing(
    server: RunningDevServer,
    sandbox: RunningSandbox,
    worker: None,
    token: str,
    presented: str | None,
) -> None:
    execution_id = new_id()

    refused = refusal_of_start(server, presented, execution_id)

    assert refused.code == 401
    expected = "missing Authorization header" if presented is None else "invalid bearer token"
    assert expected in refused.message
    assert execution_id not in promise_ids(server)
    assert server.journal(execution_id) == []
    assert sandbox.records.requests(key_prefix=execution_id) == []
    # The same id is still free: the right token starts it, and it is paid once.
    assert pay(server, token, execution_id, *PAYOUT)["status"] == "paid"
    assert len(sandbox.records.effects(key_prefix=f"{execution_id}:1")) == 1


@pytest.mark.parametrize("presented", NOT_LET_IN)
def test_a_client_not_let_in_can_neither_read_nor_settle_a_promise(
    server: RunningDevServer, token: str, presented: str | None
) -> None:
    approval = f"approval-test-{secrets.token_hex(4)}"

    async def go() -> list[int]:
        finance, outsider = client(server, token), client(server, presented)
        try:
            in_an_hour = int((time.time() + 3600) * 1000)
            await finance.promises.create(approval, in_an_hour, Value(), {})
            codes = []
            for attempt in (
                outsider.promises.get(approval),
                outsider.promises.resolve(approval, Value(data="approved")),
                outsider.promises.create(f"{approval}.forged", in_an_hour, Value(), {}),
            ):
                with pytest.raises(ServerError) as refused:
                    await attempt
                codes.append(refused.value.code)
            assert (await finance.promises.get(approval)).state == "pending"
            return codes
        finally:
            await finance.stop()
            await outsider.stop()

    assert asyncio.run(go()) == [401, 401, 401]
    assert [e["operation"] for e in server.journal(approval)] == ["create"]
    assert f"{approval}.forged" not in promise_ids(server)


# -- the workers' stream: no token, a wrong token -------------------------------------------------


class _Refusals(logging.Handler):
    """Notes the SDK's warning that the server refused its event stream."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "SSE endpoint returned 401" in record.getMessage():
            self.seen.set()


@pytest.fixture
def stream_refusals() -> Iterator[_Refusals]:
    handler = _Refusals()
    logger = logging.getLogger("resonate.connections.sse")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("presented", NOT_LET_IN)
def test_a_worker_not_let_in_gets_no_stream_and_no_work(
    server: RunningDevServer,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    stream_refusals: _Refusals,
    token: str,
    presented: str | None,
) -> None:
    execution_id = new_id()

    async def go() -> dict[str, Any]:
        async with clients.async_client(base_url=sandbox.url) as http:
            # A worker of the group with everything but the token (in this process, so that the
            # SDK's refused stream can be seen; the worker module would exit, see below).
            shut_out = Resonate(
                url=server.url,
                group=GROUP,
                pid="shut-out-worker",
                token=presented,
                env={},
                ttl=timedelta(seconds=5),
            )
            shut_out.with_dependency(Providers(http))
            shut_out.register(payout, retry_policy=Never())
            finance = client(server, token)
            try:
                await asyncio.wait_for(stream_refusals.seen.wait(), 10)
                handle = finance.options(target=GROUP).rpc(execution_id, "payout", *PAYOUT)
                await handle.id()
                # Created, and its task is waiting for a worker of the group: no stream of the
                # shut-out worker is open, so the server holds the task for a worker that has one.
                now = await asyncio.to_thread(health, server)
                assert GROUP not in {s["group"] for s in now["subscribers"]}
                assert now["held_messages"] == 1
                assert sandbox.records.requests(key_prefix=execution_id) == []
                await asyncio.to_thread(
                    start_worker, "token_auth.worker", worker_env(server, sandbox, token)
                )
                result: dict[str, Any] = await asyncio.wait_for(handle.result(), 30)
                return result
            finally:
                await finance.stop()
                await shut_out.stop()

    result = asyncio.run(go())

    assert result["status"] == "paid"
    assert len(sandbox.records.effects(key_prefix=execution_id + ":")) == 2
    assert "shut-out-worker" not in {s["pid"] for s in live_streams(server)}


def test_a_worker_with_the_right_token_has_a_stream(
    server: RunningDevServer, sandbox: RunningSandbox, worker: None
) -> None:
    assert [s["group"] for s in live_streams(server)] == [GROUP]


@pytest.mark.parametrize("presented", NOT_LET_IN)
def test_the_worker_exits_when_it_is_not_let_in(
    server: RunningDevServer, sandbox: RunningSandbox, presented: str | None
) -> None:
    process = worker_process("token_auth.worker", worker_env(server, sandbox, presented))

    with pytest.raises(ProcessStartError, match="exited with code 1") as failed:
        process.start()

    given = "no token" if presented is None else "a token"
    assert f"token_auth.worker: the server refused {given} (RESONATE_TOKEN)" in str(failed.value)
    assert "not-the-token" not in str(
        failed.value
    )  # a token is never printed, not even a wrong one


# -- the workflow's failure model (with the right token) -------------------------------------------


def test_a_refused_payout_is_a_value_and_is_not_retried(
    server: RunningDevServer, sandbox: RunningSandbox, worker: None, token: str
) -> None:
    execution_id = new_id()
    add_fault(sandbox, f"{execution_id}:1", "payment", mode="fail_always", status=422)

    result = pay(server, token, execution_id, "closed-account-ltd", 9900, "EUR", "INV-2042")

    assert result["status"] == "refused"
    assert result["reason"] == "422 injected failure"
    assert len(sandbox.records.requests(key_prefix=f"{execution_id}:1")) == 1
    [told] = sandbox.records.effects(key_prefix=execution_id + ":")
    assert told.body["text"] == (
        "payout of 99.00 EUR to closed-account-ltd for INV-2042 refused: 422 injected failure"
    )


def test_a_payment_provider_that_is_down_is_asked_again_under_the_same_key(
    server: RunningDevServer, sandbox: RunningSandbox, worker: None, token: str
) -> None:
    execution_id = new_id()
    add_fault(sandbox, f"{execution_id}:1", "payment", mode="fail_times", times=1, status=503)

    result = pay(server, token, execution_id, *PAYOUT)

    calls = sandbox.records.requests(key_prefix=f"{execution_id}:1")
    assert [c.status_code for c in calls] == [503, 200]
    [paid] = sandbox.records.effects(key_prefix=f"{execution_id}:1")
    assert result["payout_id"] == paid.resource_id


def test_a_bad_amount_fails_the_payout_before_anything_is_paid(
    server: RunningDevServer, sandbox: RunningSandbox, worker: None, token: str
) -> None:
    execution_id = new_id()

    with pytest.raises(ValueError, match="amount_cents must be a positive number of cents, got 0"):
        pay(server, token, execution_id, "acme-supplies", 0, "EUR", "INV-2043")

    assert sandbox.records.requests(key_prefix=execution_id) == []


def test_a_payout_whose_outcome_is_unknown_says_so_with_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of retries, the payout may have landed: finance is told to ask by its key.

    In the SDK's in-process mode, with the retries made instant and a provider always down.
    """
    monkeypatch.setattr(workflow, "RETRIES", Constant(delay=0, max_retries=2))
    sent: list[tuple[str, str]] = []

    def provider(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, request.headers["Idempotency-Key"]))
        if request.url.path == "/payment/charge":
            return httpx.Response(503)
        return httpx.Response(200, json={"id": "slack_1"})

    async def go() -> Any:
        async with httpx.AsyncClient(
            base_url="http://provider", transport=httpx.MockTransport(provider)
        ) as http:
            local = Resonate(env={})
            local.with_dependency(Providers(http))
            local.register(payout, retry_policy=Never())
            try:
                return await local.run("payout-unknown", payout, *PAYOUT).result()
            finally:
                await local.stop()

    result = asyncio.run(go())

    assert sent == [("/payment/charge", "payout-unknown:1")] * 3 + [
        ("/slack/send", "payout-unknown:2")
    ]
    assert result == workflow.PayoutResult(
        "unknown",
        reason="/payment/charge: answered 503",
        payout_key="payout-unknown:1",
        notification="slack_1",
    )
