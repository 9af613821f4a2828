"""Which way a replay goes: the workflow body run over a given journal, with no server or worker.

The branch depends only on the decision promise, which the server settles once: resolved by the
approver's click (approve or reject), or timed out at the deadline (escalated). The providers
are an in-process fake that notes each call and its key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from approval.links import LinkSigner
from approval.steps import Providers
from approval.workflow import Claim, ClaimEnded, expense_claim
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.error import Suspended
from resonate.testing import RecordingSleeper, pending_promise, resolved_promise, root_context
from resonate.types import PromiseRecord

ID = "c-1"
CLAIM = Claim.model_validate(
    {
        "claim_id": ID,
        "employee_id": "usr_4f1c9a7e",
        "approver_id": "usr_b82d06c3",
        "category": "travel",
        "amount_cents": 42_000,
        "currency": "EUR",
        "description": "Train to Lyon",
    }
)


# Answers that are not a provider's JSON: a proxy's page, JSON without the id, and a body httpx
# cannot decode (it decodes as it builds the response, and raises DecodingError).
NOT_THE_ANSWER: dict[str, Callable[[int], httpx.Response]] = {
    "an HTML page": lambda status: httpx.Response(status, html="<html><h1>Gateway</h1></html>"),
    "JSON without the id": lambda status: httpx.Response(status, json={"status": "ok"}),
    "a body that cannot be decoded": lambda status: httpx.Response(
        status, content=b"garbled", headers={"Content-Encoding": "gzip"}
    ),
}


@dataclass
class FakeProviders:
    """The providers, in process: the payment answered with `payment_status` (in the form
    `payment_body` gives it, if any), the paths in `down` with 503 every time, those in `refusing`
    with 422, all else 200."""

    payment_status: int = 200
    payment_body: Callable[[int], httpx.Response] | None = None
    down: tuple[str, ...] = ()
    refusing: tuple[str, ...] = ()
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def dependencies(self) -> DependencyMap:
        def answer(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            self.calls.append((request.headers["Idempotency-Key"], request.url.path, body))
            if request.url.path in self.down:
                return httpx.Response(503, json={"error": "down"})
            if request.url.path in self.refusing:
                return httpx.Response(422, json={"error": "no address on file"})
            if request.url.path == "/payment/charge" and self.payment_body is not None:
                return self.payment_body(self.payment_status)
            if request.url.path == "/payment/charge" and self.payment_status != 200:
                return httpx.Response(self.payment_status, json={"error": "no"})
            return httpx.Response(200, json={"id": f"id_{len(self.calls)}"})

        client = httpx.AsyncClient(
            base_url="http://providers", transport=httpx.MockTransport(answer)
        )
        deps = DependencyMap()
        deps.insert(Providers(client))
        deps.insert(LinkSigner(b"k" * 32, "test"))
        return deps


def timed_out(promise_id: str) -> PromiseRecord:
    """A latent promise the server timed out at its deadline (what it stores: no value)."""
    return PromiseRecord(id=promise_id, state="rejected_timedout", timeout_at=1, settled_at=1)


def replay(
    journal: list[PromiseRecord], providers: FakeProviders | None = None, claim: Claim = CLAIM
) -> ClaimEnded | list[str]:
    """Run the body over `journal`: its result, or the promises it suspended on."""
    providers = providers or FakeProviders()

    async def run() -> ClaimEnded | list[str]:
        ctx: Context = root_context(
            id=ID, preload=journal, deps=providers.dependencies(), sleeper=RecordingSleeper()
        )
        try:
            return await expense_claim(ctx, claim, 3600, "https://approvals.example.com")
        except Suspended:
            await ctx.flush_local_work()
            return ctx.take_remote_todos()

    return asyncio.run(run())


def assert_handed_to_finance_unconfirmed(
    ended: ClaimEnded | list[str], providers: FakeProviders
) -> None:
    """A payment that may have landed: asked under its one key only (the first attempt and 8
    retries, never a new key), then finance handed that key to check."""
    assert isinstance(ended, ClaimEnded)
    assert ended.state == "payment-unconfirmed"
    *attempts, escalation = providers.calls
    assert {(key, path) for key, path, _ in attempts} == {(f"{ID}:4", "/payment/charge")}
    assert len(attempts) == 9  # the first attempt and 8 retries
    assert escalation[:2] == (f"{ID}:5", "/slack/send")
    assert f"check key {ID}:4" in escalation[2]["text"]


# Step ids: the policy check `:1`, the decision promise `:2`, the approver's email `:3`, then the
# payment (or the escalation) `:4` and the employee's email `:5`.
CHECKED = resolved_promise(f"{ID}:1", [])
ASKED = resolved_promise(f"{ID}:3", "email_1")


def test_while_nobody_decides_the_claim_waits_for_the_decision_alone() -> None:
    assert replay([CHECKED, pending_promise(f"{ID}:2"), ASKED]) == [f"{ID}:2"]


def test_nobody_approves_their_own_claim() -> None:
    providers = FakeProviders()
    own = CLAIM.model_copy(update={"approver_id": CLAIM.employee_id})

    ended = replay([], providers, own)

    assert isinstance(ended, ClaimEnded)
    assert (ended.state, ended.reason) == ("refused", "nobody approves their own claim")
    # Only the employee is told why: no approver asked, nothing paid.
    assert [path for _, path, _ in providers.calls] == ["/email/send"]


def test_an_approval_pays_with_the_payment_steps_key() -> None:
    providers = FakeProviders()
    decided = resolved_promise(f"{ID}:2", {"decision": "approve", "note": "ok", "attempt": "a"})

    ended = replay([CHECKED, decided, ASKED], providers)

    assert ended == ClaimEnded("paid", payment_id="id_1", note="ok")
    assert [(key, path) for key, path, _ in providers.calls] == [
        (f"{ID}:4", "/payment/charge"),
        (f"{ID}:5", "/email/send"),
    ]


def test_at_the_deadline_the_claim_goes_to_finance_and_nothing_is_paid() -> None:
    providers = FakeProviders()

    ended = replay([CHECKED, timed_out(f"{ID}:2"), ASKED], providers)

    assert ended == ClaimEnded("escalated", reason="no decision before the deadline")
    assert [(key, path) for key, path, _ in providers.calls] == [(f"{ID}:4", "/slack/send")]


def test_a_decision_the_workflow_cannot_read_is_escalated_never_paid() -> None:
    providers = FakeProviders()
    garbage = resolved_promise(f"{ID}:2", {"decision": "APPROVE!!"})

    ended = replay([CHECKED, garbage, ASKED], providers)

    assert ended == ClaimEnded("escalated", reason="the decision could not be read")
    assert [path for _, path, _ in providers.calls] == ["/slack/send"]


def test_a_payment_the_provider_refuses_is_not_retried_and_the_employee_is_told() -> None:
    providers = FakeProviders(payment_status=422)
    decided = resolved_promise(f"{ID}:2", {"decision": "approve", "note": "", "attempt": "a"})

    ended = replay([CHECKED, decided, ASKED], providers)

    reason = "/payment/charge refused: 422 no"
    assert ended == ClaimEnded("payment-refused", reason=reason)
    assert [path for _, path, _ in providers.calls] == ["/payment/charge", "/email/send"]
    assert reason in providers.calls[1][2]["text"]


def test_a_payment_out_of_retries_is_never_made_again_but_handed_to_finance() -> None:
    # Every attempt answers 503 (the sleeper makes the backoff instant): the payment may have
    # landed, so it is not tried again under a new key; finance gets the key to check.
    providers = FakeProviders(payment_status=503)
    decided = resolved_promise(f"{ID}:2", {"decision": "approve", "note": "", "attempt": "a"})

    ended = replay([CHECKED, decided, ASKED], providers)

    assert_handed_to_finance_unconfirmed(ended, providers)


@pytest.mark.parametrize("body", NOT_THE_ANSWER.values(), ids=NOT_THE_ANSWER.keys())
def test_a_payment_answered_without_its_answer_may_have_paid(
    body: Callable[[int], httpx.Response],
) -> None:
    # A 200 that is not the provider's answer says nothing about what it did: not a bug, but a
    # payment that may have landed, retried under its key and then handed to finance to check.
    providers = FakeProviders(payment_body=body)
    decided = resolved_promise(f"{ID}:2", {"decision": "approve", "note": "", "attempt": "a"})

    ended = replay([CHECKED, decided, ASKED], providers)

    assert_handed_to_finance_unconfirmed(ended, providers)


def test_a_payment_refused_with_a_page_instead_of_json_is_still_a_refusal() -> None:
    providers = FakeProviders(payment_status=403, payment_body=NOT_THE_ANSWER["an HTML page"])
    decided = resolved_promise(f"{ID}:2", {"decision": "approve", "note": "", "attempt": "a"})

    ended = replay([CHECKED, decided, ASKED], providers)

    reason = "/payment/charge refused: 403 Forbidden"
    assert ended == ClaimEnded("payment-refused", reason=reason)
    assert [path for _, path, _ in providers.calls] == ["/payment/charge", "/email/send"]


def test_an_approver_who_cannot_be_emailed_is_not_waited_for() -> None:
    refused = resolved_promise(f"{ID}:3", {"status": 422, "reason": "bad address"})
    providers = FakeProviders()

    ended = replay([CHECKED, pending_promise(f"{ID}:2"), refused], providers)

    assert ended == ClaimEnded("escalated", reason="bad address")
    assert [(key, path) for key, path, _ in providers.calls] == [(f"{ID}:4", "/slack/send")]


def test_the_policy_verdict_is_taken_from_the_journal() -> None:
    # Checked before a policy change: a replay keeps the verdict it got, whatever the code says.
    refused = resolved_promise(f"{ID}:1", ["travel claims are limited to 1.00"])
    providers = FakeProviders()

    ended = replay([refused], providers)

    assert ended == ClaimEnded("refused", reason="travel claims are limited to 1.00")
    assert [path for _, path, _ in providers.calls] == ["/email/send"]


# -- a message out of retries: reported, never the end of the claim ------------------------------


def test_an_email_out_of_retries_after_the_payment_keeps_the_payment() -> None:
    # The employee's email answers 503 through every retry: the payment has landed, and the
    # claim still ends `paid` with its id, the email reported as maybe unsent.
    providers = FakeProviders(down=("/email/send",))
    decided = resolved_promise(f"{ID}:2", {"decision": "approve", "note": "ok", "attempt": "a"})

    ended = replay([CHECKED, decided, ASKED], providers)

    unsent = f"the message may not have been sent: /email/send: answered 503 (key {ID}:5)"
    assert ended == ClaimEnded("paid", payment_id="id_1", note="ok", unsent=unsent)
    payment, *emails = [(key, path) for key, path, _ in providers.calls]
    assert payment == (f"{ID}:4", "/payment/charge")
    assert emails == [(f"{ID}:5", "/email/send")] * 9  # the first attempt and 8 retries


def test_an_email_the_provider_refuses_after_the_payment_is_in_the_outcome() -> None:
    # A 4xx is a final no, asked once: the claim ends `paid`, and says the employee was not told.
    providers = FakeProviders(refusing=("/email/send",))
    decided = resolved_promise(f"{ID}:2", {"decision": "approve", "note": "ok", "attempt": "a"})

    ended = replay([CHECKED, decided, ASKED], providers)

    unsent = "the message was not sent: /email/send refused: 422 no address on file"
    assert ended == ClaimEnded("paid", payment_id="id_1", note="ok", unsent=unsent)
    assert [path for _, path, _ in providers.calls] == ["/payment/charge", "/email/send"]


def test_a_chat_message_out_of_retries_still_ends_the_claim_escalated() -> None:
    providers = FakeProviders(down=("/slack/send",))

    ended = replay([CHECKED, timed_out(f"{ID}:2"), ASKED], providers)

    unsent = f"the message may not have been sent: /slack/send: answered 503 (key {ID}:4)"
    assert ended == ClaimEnded("escalated", reason="no decision before the deadline", unsent=unsent)
    assert [path for _, path, _ in providers.calls] == ["/slack/send"] * 9


def test_an_approvers_email_out_of_retries_still_waits_for_the_decision() -> None:
    # Its last attempt may have delivered the links: the claim waits for a click (or the
    # deadline), rather than failing while a link to it is in the approver's inbox.
    providers = FakeProviders(down=("/email/send",))

    waiting = replay([CHECKED, pending_promise(f"{ID}:2")], providers)

    assert waiting == [f"{ID}:2"]
    assert [(key, path) for key, path, _ in providers.calls] == [(f"{ID}:3", "/email/send")] * 9
