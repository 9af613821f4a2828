"""observability end to end: a real dev server, a worker process, the provider sandbox."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.resonate import Resonate


@pytest.fixture
def resonate_url(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> str:
    start_worker(
        "observability.worker",
        {
            "RESONATE_URL": devserver.url,
            "PROVIDER_API_URL": sandbox.url,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
        },
    )
    return devserver.url


def place_order(url: str, execution_id: str) -> Any:
    async def go() -> Any:
        client = Resonate(url=url, group="observability-tests")
        order = {"order_id": execution_id, "customer_id": "customer-7", "amount_cents": 999}
        try:
            handle = client.options(target="observability").rpc(execution_id, "place_order", order)
            return await asyncio.wait_for(handle.result(), 30)
        finally:
            await client.stop()

    return asyncio.run(go())


def add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> None:
    response = clients.post(f"{sandbox.url}/_admin/faults", json={**spec, "key_prefix": key_prefix})
    response.raise_for_status()


def new_execution_id() -> str:
    return f"order-test-{secrets.token_hex(4)}"


def test_each_step_acts_once(resonate_url: str, sandbox: RunningSandbox) -> None:
    execution_id = new_execution_id()

    result = place_order(resonate_url, execution_id)

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [(e.provider, e.action) for e in effects] == [
        ("payment", "charge"),
        ("slack", "send"),
        ("email", "send"),
        ("sms", "send"),
    ]
    assert result == {
        step: {"receipt": effect.resource_id, "refusal": None, "unconfirmed": None}
        for step, effect in zip(["charge", "warehouse", "receipt", "sms"], effects, strict=True)
    }
    assert effects[0].body == {"customer": "customer-7", "amount": 999}


def test_a_declined_charge_is_a_value_and_nothing_follows_it(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_execution_id()
    add_fault(sandbox, execution_id + ":", provider="payment", mode="fail_always", status=402)

    result = place_order(resonate_url, execution_id)

    assert result == {
        "charge": {"receipt": None, "refusal": "402 injected failure", "unconfirmed": None}
    }
    assert len(sandbox.records.requests(key_prefix=execution_id + ":")) == 1


def test_a_provider_that_is_down_is_asked_again_with_the_same_key(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_execution_id()
    add_fault(sandbox, execution_id + ":", provider="email", mode="fail_times", status=503)

    result = place_order(resonate_url, execution_id)

    calls = sandbox.records.requests(key_prefix=f"{execution_id}:3")
    assert [c.status_code for c in calls] == [503, 200]
    assert len({c.idempotency_key for c in calls}) == 1
    assert result["receipt"]["receipt"] is not None
