"""The two versions of `renewal` in process: the SDK's own `resonate.testing` (its manual clock
for the renewal's sleep), fake providers on `httpx.MockTransport`.

Both versions are registered under the one name as the worker does (`register_versions`), and
the version markers live on the in-process server (which has no promise search: `in_flight`
itself is tested against a dev server in tests/cookbook/). These tests need
only the SDK, this package and pytest: they run in a copy of this folder outside the cookbook
(`make copy-out-versioning`). The tests that deploy real workers with chosen versions on a dev
server are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import pytest
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.error import SerializationError, ServerError
from resonate.observability import PromiseCreateReturned
from resonate.resonate import Resonate
from resonate.testing import (
    FakeClock,
    instant_sleeper,
    local_resonate,
    resolved_promise,
    root_context,
)
from resonate.types import Value
from versioning.steps import (
    VERSION_TAG,
    Providers,
    ProviderUnavailableError,
    Server,
    Subscription,
    charge_card,
    marker_id,
)
from versioning.worker import register_versions
from versioning.workflow import NAME, STEP_RETRIES, Renewal, renewal_v1, renewal_v2

SUBSCRIPTION = Subscription("sub-1", "cus_7c41e9a2", "pro", 1900, "EUR", 3600)


@dataclass
class FakeProviders:
    """Answer by rule: `answer(what, attempt)`; `what` is an email's template, "fraud_check" or
    "charge". Every call is recorded with the subscription or address it is for."""

    answer: Callable[[str, int], tuple[int, dict[str, Any]]]
    calls: list[tuple[str, str]] = field(default_factory=list)  # (what, idempotency key)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        what = {"/payment/charge": "charge", "/api/call": "fraud_check"}.get(
            request.url.path, body.get("template", "")
        )
        self.calls.append(
            (
                f"{what} {body.get('subscription', body.get('to'))}",
                request.headers["Idempotency-Key"],
            )
        )
        status, reply = self.answer(what, [w for w, _ in self.calls].count(self.calls[-1][0]))
        return httpx.Response(status, json=reply)

    def sent(self) -> list[str]:
        return [what.split()[0] for what, _ in self.calls]


def yes(what: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"{what}_{attempt}"}


async def markers(resonate: Resonate) -> list[tuple[str, str]]:
    """Each renewal's version marker: (its state, the version it names)."""
    records = [await resonate.promises.get(marker_id(r)) for r in ("ren-1", "ren-2")]
    return [(record.state, record.tags[VERSION_TAG]) for record in records]


def test_both_versions_run_side_by_side_each_on_the_body_it_started_with() -> None:
    providers = FakeProviders(yes)
    on_v1 = Subscription("sub-1", "cus_one00001", "pro", 1900, "EUR", 3600)
    on_v2 = Subscription("sub-2", "cus_two00002", "pro", 1900, "EUR", 3600)

    async def go() -> tuple[list[tuple[str, str]], list[Renewal], list[tuple[str, str]]]:
        clock = FakeClock(1_800_000_000_000)
        sleeps = {"ren-1:3", "ren-2:3"}  # each renewal's sleep until it falls due
        asleep_both = asyncio.Event()

        def observe(event: object) -> None:
            if isinstance(event, PromiseCreateReturned):
                sleeps.discard(event.id)
                if not sleeps:
                    asleep_both.set()

        resonate = local_resonate(clock=clock, observer=observe)
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.with_dependency(Server(resonate))
                register_versions(resonate, [1, 2])
                handles = [
                    resonate.options(version=1).run("ren-1", NAME, on_v1),
                    resonate.options(version=2).run("ren-2", NAME, on_v2),
                ]
                await asyncio.wait_for(asleep_both.wait(), 10)
                asleep = await markers(resonate)
                clock.advance(seconds=3600)
                done = [await asyncio.wait_for(h.result(), 10) for h in handles]
                after = await markers(resonate)
                return asleep, done, after
        finally:
            await resonate.stop()

    asleep, done, after = asyncio.run(go())

    assert asleep == [("pending", "1"), ("pending", "2")]  # in flight, each on its version
    assert [renewal.version for renewal in done] == [1, 2]
    assert [renewal.outcome for renewal in done] == ["renewed", "renewed"]
    checked = [what for what, _ in providers.calls if what.startswith("fraud_check")]
    assert checked == ["fraud_check sub-2"]  # only version 2 checks for fraud
    # The email provider is sent the customer's reference, and resolves it to an address.
    emailed = sorted(what for what, _ in providers.calls if what.startswith(("renewal", "receipt")))
    assert emailed == [
        "receipt cus_one00001",
        "receipt cus_two00002",
        "renewal-notice cus_one00001",
        "renewal-notice cus_two00002",
    ]
    assert after == [("resolved", "1"), ("resolved", "2")]  # done: no version kept alive


REFUSAL = "customer_id: not a customer reference like 'cus_4f9a01c2'"
NOT_REFERENCES = [
    "ada@example.com",
    "Ada Lovelace",
    "ada",
    "cus_ada@example.com",
    "cus_ada 1815",
    "cus_ad",
    "cus_7c41e9a2\n",
    "",
]


@pytest.mark.parametrize("customer_id", NOT_REFERENCES)
def test_a_subscription_refuses_anything_but_a_customer_reference(customer_id: str) -> None:
    # Naming the field, and not repeating the value: the server keeps a refused renewal's error.
    with pytest.raises(ValueError, match=f"^{re.escape(REFUSAL)}$"):
        Subscription("sub-1", customer_id, "pro", 1900, "EUR", 3600)


def test_a_worker_refuses_a_renewal_whose_argument_carries_an_email_address() -> None:
    # A starter that bypassed the class (a raw dict, another language): the worker decodes the
    # argument into a Subscription, which refuses it before the first step.
    providers = FakeProviders(yes)
    argument = {**asdict(SUBSCRIPTION), "customer_id": "ada@example.com"}

    async def go() -> None:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                resonate.with_dependency(Providers(c))
                resonate.with_dependency(Server(resonate))
                register_versions(resonate, [1, 2])
                handle = resonate.options(version=2).run("ren-1", NAME, argument)
                with pytest.raises(SerializationError, match=re.escape(REFUSAL)) as refused:
                    await asyncio.wait_for(handle.result(), 10)
                assert "ada@example.com" not in str(refused.value)
                with pytest.raises(ServerError, match="not found"):  # no marker: no step ran
                    await resonate.promises.get(marker_id("ren-1"))
        finally:
            await resonate.stop()

    asyncio.run(go())

    assert providers.calls == []  # no email, no fraud check, no charge


def replay_after_the_sleep(
    providers: FakeProviders, body: Callable[..., Any], version: int
) -> tuple[Renewal, str]:
    """The body over a journal: marked, notice sent, the due date reached. The marker's state
    afterwards (it lives on an in-process server)."""
    journal = [
        resolved_promise("ren-1:1", None),  # the version marked
        resolved_promise("ren-1:2", {"receipt": "notice_1", "refusal": None}),
        resolved_promise("ren-1:3", None),  # the sleep until the renewal falls due
    ]

    async def go() -> tuple[Renewal, str]:
        server: Resonate = local_resonate()
        try:
            await server.promises.create(
                marker_id("ren-1"), 1 << 62, Value(data={"version": version}), {}
            )
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
                deps = DependencyMap()
                deps.insert(Providers(c))
                deps.insert(Server(server))
                ctx: Context = root_context(
                    id="ren-1", preload=journal, deps=deps, sleeper=instant_sleeper
                )
                renewal: Renewal = await body(ctx, SUBSCRIPTION)
            return renewal, (await server.promises.get(marker_id("ren-1"))).state
        finally:
            await server.stop()

    return asyncio.run(go())


def test_a_fraud_hold_in_version_2_charges_nothing_and_tells_the_customer() -> None:
    providers = FakeProviders(
        lambda what, attempt: (403, {"error": "hold"}) if what == "fraud_check" else yes(what, 1)
    )

    renewal, marker = replay_after_the_sleep(providers, renewal_v2, 2)

    assert renewal == Renewal(2, "held", reason="403 hold")
    assert providers.sent() == ["fraud_check", "renewal-on-hold"]  # the notice is not resent
    assert marker == "resolved"


def test_a_declined_card_in_version_1_is_an_outcome_asked_once() -> None:
    providers = FakeProviders(
        lambda what, attempt: (402, {"error": "declined"}) if what == "charge" else yes(what, 1)
    )

    renewal, marker = replay_after_the_sleep(providers, renewal_v1, 1)

    assert renewal == Renewal(1, "declined", reason="402 declined")
    assert providers.sent() == ["charge", "card-declined"]  # no fraud check in version 1
    assert marker == "resolved"


def test_a_payment_provider_that_is_down_is_asked_again_under_the_same_key() -> None:
    providers = FakeProviders(
        lambda what, attempt: (503, {}) if what == "charge" and attempt <= 2 else yes(what, attempt)
    )

    renewal, _ = replay_after_the_sleep(providers, renewal_v2, 2)

    assert renewal == Renewal(2, "renewed", charge="charge_3")
    charge_keys = [key for what, key in providers.calls if what.startswith("charge")]
    assert len(charge_keys) == 3
    assert set(charge_keys) == {charge_keys[0]}
    assert STEP_RETRIES.max_retries >= 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda _: httpx.Response(200, html="<html>Bad Gateway</html>"), "without a readable"),
        (lambda _: httpx.Response(200, json={"ok": True}), "HTTP 200 without a readable 'id'"),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda _: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "DecodingError",
        ),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_charge_answered_without_its_id_may_have_landed(
    answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    # A 2xx that is not the provider's answer says nothing of whether it charged: not a bug in
    # the step, but a charge to retry under the same key, like a timeout.
    async def go() -> None:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as c:
            deps = DependencyMap()
            deps.insert(Providers(c))
            await charge_card(root_context(id="ren-1:5", deps=deps), SUBSCRIPTION)

    with pytest.raises(ProviderUnavailableError, match=reason):
        asyncio.run(go())
