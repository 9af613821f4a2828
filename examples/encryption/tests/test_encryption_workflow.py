"""`onboard` in process: the SDK's `resonate.testing`, fake providers, the example's encryptor.

These tests need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev
server, worker processes and the provider sandbox are in tests/cookbook/ and run in the cookbook;
test_crypto.py covers the encryptor alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import pytest
from encryption.crypto import AesGcmEncryptor, KeyRing
from encryption.steps import Answer, Customer, Providers, ProviderUnavailableError
from encryption.workflow import STEP_RETRIES, InvalidCustomerError, Onboarding, onboard
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context

ADA = Customer("Ada Lovelace", "ada@example.com", "12 St James's Square", "fp_8f2c")
PERSONAL = [b"Ada Lovelace", b"ada@example.com", b"St James", b"fp_8f2c"]


def acts(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": ("idv-" if path == "/api/call" else "mail-") + str(attempt)}


type Reply = dict[str, Any] | str | bytes


@dataclass
class FakeProviders:
    """The identity provider (/api/call) and the mailer (/email/send), answering by rule.

    A dict is answered as JSON, a str as an HTML page, and bytes as they are under
    `Content-Encoding: gzip`: a garbled body that cannot even be decoded."""

    answer: Callable[[str, int], tuple[int, Reply]] = acts
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((path, request.headers["Idempotency-Key"], json.loads(request.content)))
        status, body = self.answer(path, sum(1 for called, _, _ in self.calls if called == path))
        if isinstance(body, str):
            return httpx.Response(status, html=body)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"Content-Encoding": "gzip"})
        return httpx.Response(status, json=body)

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]


class RecordingEncryptor(AesGcmEncryptor):
    """The example's encryptor, keeping what it was given to seal and what it sent out."""

    def __init__(self, key_ring: KeyRing) -> None:
        super().__init__(key_ring)
        self.sealed: list[bytes] = []
        self.sent: list[bytes] = []

    def encrypt(self, data: bytes) -> bytes:
        sealed = super().encrypt(data)
        self.sealed.append(data)
        self.sent.append(sealed)
        return sealed


def onboard_in_process(
    providers: FakeProviders, customer: Customer = ADA
) -> tuple[Onboarding, RecordingEncryptor]:
    """`onboard` on an in-process Resonate sealing every value; retries take no time."""
    encryptor = RecordingEncryptor(KeyRing.new("k1"))

    async def go() -> Onboarding:
        resonate = local_resonate(encryptor=encryptor)
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                resonate.with_dependency(Providers(client))
                resonate.register(onboard, retry_policy=Never())
                handle = resonate.run("onboard-1", onboard, customer, 0)
                result: Onboarding = await asyncio.wait_for(handle.result(), 30)
                return result
        finally:
            await resonate.stop()

    return asyncio.run(go()), encryptor


def test_each_step_calls_its_provider_once_with_a_key_that_names_no_customer() -> None:
    providers = FakeProviders()

    result, _ = onboard_in_process(providers)

    assert result == Onboarding("onboarded", ADA, verification="idv-1", welcome_email="mail-1")
    assert providers.paths() == ["/api/call", "/email/send"]
    keys = [key for _, key, _ in providers.calls]
    assert len(set(keys)) == 2
    assert all(key.startswith("onboard-1") and "ada" not in key.lower() for key in keys)


def test_what_the_server_is_sent_holds_the_personal_data_only_sealed() -> None:
    _, encryptor = onboard_in_process(FakeProviders())

    assert any(b"ada@example.com" in plain for plain in encryptor.sealed)  # the args, the result
    for sent in encryptor.sent:
        for value in PERSONAL:
            assert value not in sent


def test_an_identity_refused_is_a_value_asked_once_and_no_welcome_follows() -> None:
    providers = FakeProviders(
        lambda path, n: (
            (422, {"error": "address mismatch"}) if path == "/api/call" else acts(path, n)
        )
    )

    result, _ = onboard_in_process(providers)

    assert result.status == "refused"
    assert result.reason == "identity not verified: 422 address mismatch"
    assert providers.paths() == ["/api/call"]


def test_a_provider_that_is_down_is_asked_again_with_the_same_key() -> None:
    providers = FakeProviders(
        lambda path, n: (503, {}) if path == "/email/send" and n == 1 else acts(path, n)
    )

    result, _ = onboard_in_process(providers)

    assert result.welcome_email == "mail-2"
    mail_keys = [key for path, key, _ in providers.calls if path == "/email/send"]
    assert len(mail_keys) == 2
    assert mail_keys[0] == mail_keys[1]


PROXY_PAGE = "<html><body>Welcome to the gateway</body></html>"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (PROXY_PAGE, "answered 200 without a readable 'id'"),
        ({"status": "pending"}, "answered 200 without a readable 'id'"),
        (b"garbled", "DecodingError"),  # httpx cannot decode it: it raises as it reads the body
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_verification_answered_without_its_answer_may_have_landed(
    reply: Reply, reason: str
) -> None:
    # A 200 that is not the provider's answer says nothing about what it did: not a bug, but a
    # call that may have landed, retried under its key like an outage, then failing the step.
    providers = FakeProviders(lambda path, n: (200, reply))

    with pytest.raises(ProviderUnavailableError, match=f"^/api/call: {reason}"):
        onboard_in_process(providers)
    keys = [key for path, key, _ in providers.calls if path == "/api/call"]
    assert len(keys) == 1 + STEP_RETRIES.max_retries
    assert len(set(keys)) == 1
    assert providers.paths() == ["/api/call"] * len(keys)  # no welcome email


def test_an_identity_refused_with_a_page_instead_of_json_is_still_a_refusal() -> None:
    providers = FakeProviders(lambda path, n: (422, PROXY_PAGE))

    result, _ = onboard_in_process(providers)

    assert result.reason == "identity not verified: 422 Unprocessable Entity"
    assert providers.paths() == ["/api/call"]


def test_a_record_that_is_not_a_customer_is_refused_before_any_call() -> None:
    providers = FakeProviders()

    with pytest.raises(InvalidCustomerError, match=r"^email:"):
        onboard_in_process(providers, Customer("Ada", "not-an-email", "x", "fp"))
    assert providers.calls == []


def test_a_replay_after_the_wait_sends_only_the_welcome_email() -> None:
    providers = FakeProviders()
    journal = [
        resolved_promise("onboard-1:1", asdict(Answer(receipt="idv-journal"))),
        resolved_promise("onboard-1:2"),  # the wait before the welcome email is over
    ]

    async def replay() -> Onboarding:
        transport = httpx.MockTransport(providers.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(id="onboard-1", preload=journal, deps=deps)
            return await onboard(ctx, ADA, 3600)

    result = asyncio.run(replay())

    assert result.verification == "idv-journal"
    assert providers.paths() == ["/email/send"]
