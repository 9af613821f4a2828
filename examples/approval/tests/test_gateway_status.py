"""`GET /claims/{id}` of a failed claim, in process: the gateway on an in-process Resonate.

A failed claim shows what its workflow raised; a Resonate server that fails to answer is the
server's failure (a 5xx), never shown as the reason the claim failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from approval.gateway import Claims, create_app
from approval.links import LinkSigner
from flask.testing import FlaskClient
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.testing import local_resonate
from resonate.types import Value

ID = "c-1"
CLAIM = {
    "claim_id": ID,
    "employee_id": "usr_4f1c9a7e",
    "approver_id": "usr_b82d06c3",
    "category": "travel",
    "amount_cents": 42_000,
    "currency": "EUR",
    "description": "Train to Lyon",
}


class LocalClaims(Claims):
    @staticmethod
    async def _connect(resonate_url: str) -> Resonate:
        return local_resonate()


@pytest.fixture
def claims() -> Iterator[Claims]:
    claims = LocalClaims("local", "approval", LinkSigner(b"k" * 32, "test"), 3600)
    try:
        yield claims
    finally:
        claims.close()


@pytest.fixture
def failed_claim(claims: Claims) -> FlaskClient:
    """A claim whose execution failed with a bug (stored as the worker stores it)."""

    async def fail() -> None:
        param = {"func": "expense_claim", "args": [CLAIM, 3600, "https://approvals.example.com"]}
        timeout_at = int(time.time() * 1000) + 3_600_000
        await claims.resonate.promises.create(ID, timeout_at, Value(data=param), {})
        await claims.resonate.promises.reject(ID, Value(data=RuntimeError("the workflow raised")))

    claims.call(fail())
    return create_app(claims).test_client()


def test_a_failed_claim_shows_what_the_workflow_raised(failed_claim: FlaskClient) -> None:
    response = failed_claim.get(f"/claims/{ID}")

    assert response.status_code == 200
    assert response.json is not None
    assert (response.json["state"], response.json["reason"]) == ("failed", "the workflow raised")


def test_a_server_failing_to_answer_is_not_the_reason_the_claim_failed(
    claims: Claims, failed_claim: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(id: str) -> None:
        raise ServerError(503, "unavailable")

    monkeypatch.setattr(claims.resonate, "get", unavailable)

    response = failed_claim.get(f"/claims/{ID}")

    assert response.status_code == 502
    assert response.json is not None
    assert "failed" not in response.json.values()
