"""`payout` and the worker's token check in process: the SDK's own `resonate.testing`, fake
providers on `httpx.MockTransport`.

The server's token checks need the real server (tests/cookbook/, cookbook only); what the worker
makes of the server's answer (`check_token`) and the payout workflow do not. These tests need only
the SDK, this package and pytest: they run in a copy of this folder outside the cookbook
(`make copy-out-token-auth`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.retry import Never
from resonate.testing import local_resonate
from token_auth.steps import Providers
from token_auth.worker import check_token
from token_auth.workflow import RETRIES, PayoutResult, payout


@dataclass
class FakeProviders:
    """Answer by rule: `answer(path, attempt) -> (status, body)` or a whole response, attempt
    counting that path."""

    answer: Callable[[str, int], tuple[int, dict[str, Any]] | httpx.Response]
    calls: list[tuple[str, str, bytes]] = field(default_factory=list)  # path, key, body

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.url.path, request.headers["Idempotency-Key"], request.content))
        answer = self.answer(request.url.path, self.paths().count(request.url.path))
        if isinstance(answer, httpx.Response):
            return answer
        status, body = answer
        return httpx.Response(status, json=body)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]

    def keys(self, path: str) -> list[str]:
        return [key for called, key, _ in self.calls if called == path]

    def finance_was_told(self) -> str:
        [text] = [body for path, _, body in self.calls if path == "/slack/send"][:1]
        return text.decode()


def acted(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": "po_1" if path == "/payment/charge" else "msg_1"}


def pay(providers: FakeProviders, amount_cents: int = 1234) -> PayoutResult:
    """A payout on an in-process Resonate registered as the worker does."""

    async def go() -> PayoutResult:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.register(payout, retry_policy=Never())
                handle = resonate.run("payout-1", payout, "acme", amount_cents, "EUR", "INV-7")
                result: PayoutResult = await asyncio.wait_for(handle.result(), 30)
                return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_a_payout_is_paid_once_and_finance_told_each_under_its_own_key() -> None:
    providers = FakeProviders(acted)

    result = pay(providers)

    assert result == PayoutResult("paid", payout_id="po_1", notification="msg_1")
    assert providers.paths() == ["/payment/charge", "/slack/send"]
    assert len({key for _, key, _ in providers.calls}) == 2
    assert "paid 12.34 EUR to acme for INV-7 (po_1)" in providers.finance_was_told()


def test_a_refused_payout_is_a_value_asked_once_and_finance_told_why() -> None:
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (422, {"error": "unknown payee"}) if path == "/payment/charge" else acted(path, 1)

    providers = FakeProviders(answer)

    result = pay(providers)

    assert result == PayoutResult("refused", reason="422 unknown payee", notification="msg_1")
    assert providers.paths() == ["/payment/charge", "/slack/send"]
    assert "refused: 422 unknown payee" in providers.finance_was_told()


def test_a_provider_down_through_every_retry_is_outcome_unknown_with_the_key_to_ask() -> None:
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (503, {}) if path == "/payment/charge" else acted(path, 1)

    providers = FakeProviders(answer)

    result = pay(providers)

    keys = providers.keys("/payment/charge")
    assert len(keys) == 1 + RETRIES.max_retries
    assert set(keys) == {keys[0]}  # every attempt the same request: it may have paid once
    assert result.status == "unknown"
    assert result.payout_key == keys[0]
    assert f"outcome unknown, ask the provider about {keys[0]}" in providers.finance_was_told()


@pytest.mark.parametrize(
    "answer",
    [
        lambda: httpx.Response(200, html="<html>Bad Gateway</html>"),
        lambda: httpx.Response(200, json={"status": "ok"}),
        # httpx decodes the body as it builds the response, and raises DecodingError
        lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_payout_answered_without_its_id_is_outcome_unknown_with_the_key_to_ask(
    answer: Callable[[], httpx.Response],
) -> None:
    # A 2xx that is not the provider's answer says nothing of whether it paid: not a bug in the
    # step, but a payout that may have landed, asked again under its key, then reported unknown.
    def answers(path: str, attempt: int) -> tuple[int, dict[str, Any]] | httpx.Response:
        return answer() if path == "/payment/charge" else acted(path, 1)

    providers = FakeProviders(answers)

    result = pay(providers)

    keys = providers.keys("/payment/charge")
    assert len(keys) == 1 + RETRIES.max_retries
    assert set(keys) == {keys[0]}
    assert (result.status, result.payout_key) == ("unknown", keys[0])


def test_finance_unreachable_leaves_the_payouts_result_standing() -> None:
    def answer(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (503, {}) if path == "/slack/send" else acted(path, 1)

    providers = FakeProviders(answer)

    result = pay(providers)

    assert result == PayoutResult("paid", payout_id="po_1")
    assert providers.paths().count("/payment/charge") == 1


def test_a_non_positive_amount_fails_before_anything_is_paid() -> None:
    providers = FakeProviders(acted)

    with pytest.raises(Exception, match="amount_cents must be a positive number of cents"):
        pay(providers, amount_cents=0)

    assert providers.calls == []


@dataclass
class ServerAnswering:
    """A stand-in for the worker's `Resonate` whose server answers every read with `code`."""

    code: int

    @property
    def promises(self) -> ServerAnswering:
        return self

    async def get(self, promise_id: str) -> None:
        raise ServerError(self.code, f"answered {self.code}")


def test_the_worker_is_let_in_unless_the_server_refuses_its_token() -> None:
    async def let_in_by_a_server_without_auth() -> str | None:
        resonate = local_resonate()  # answers 404: no such promise, and no auth to refuse
        try:
            return await check_token(resonate)
        finally:
            await resonate.stop()

    def check(code: int) -> str | None:
        return asyncio.run(check_token(cast(Resonate, ServerAnswering(code))))

    assert asyncio.run(let_in_by_a_server_without_auth()) is None
    assert check(401) == "answered 401"  # the token is missing or wrong
    assert check(403) is None  # a valid token whose prefix does not cover the check's id
    with pytest.raises(ServerError):
        check(500)  # not an answer about the token
