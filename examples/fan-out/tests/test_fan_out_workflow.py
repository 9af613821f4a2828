"""`notify` in process: the SDK's `resonate.testing` and fake channel providers.

These tests need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev
server, worker processes and the provider sandbox are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fan_out.steps import Providers
from fan_out.workflow import CHANNELS, RETRY, Notification, notify
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context

# The recipient, by reference: the providers resolve it (an address, a number, a device).
TO = "cus_9d4e1b7a"


def delivers(channel: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"{channel}-{attempt}"}


type Reply = dict[str, Any] | str | bytes


@dataclass
class FakeChannels:
    """Answers by rule: `answer(channel, attempt on it) -> (status, body)`; records every call.

    A dict is answered as JSON, a str as an HTML page, and bytes as they are under
    `Content-Encoding: gzip`: a garbled body that cannot even be decoded. With `together` set, no
    answer is given until that many requests are in flight at once.
    """

    answer: Callable[[str, int], tuple[int, Reply]] = delivers
    together: int = 0
    calls: list[tuple[str, str]] = field(default_factory=list)
    recipients: list[tuple[str, Any]] = field(default_factory=list)  # (channel, its body's "to")
    in_flight: int = 0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        channel = request.url.path.split("/")[1]
        self.calls.append((channel, request.headers["Idempotency-Key"]))
        self.recipients.append((channel, json.loads(request.content)["to"]))
        self.in_flight += 1
        if self.in_flight >= self.together:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 2)
        self.in_flight -= 1
        status, body = self.answer(channel, self.attempts(channel))
        if isinstance(body, str):
            return httpx.Response(status, html=body)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"Content-Encoding": "gzip"})
        return httpx.Response(status, json=body)

    def attempts(self, channel: str) -> int:
        return sum(1 for called, _ in self.calls if called == channel)

    def keys(self, channel: str) -> list[str]:
        return [key for called, key in self.calls if called == channel]


def notify_in_process(channels: FakeChannels, to: str = TO) -> Notification:
    """`notify` on an in-process Resonate (no server, no worker); retries take no time."""

    async def go() -> Notification:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(channels.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                resonate.with_dependency(Providers(client))
                resonate.register(notify, retry_policy=Never())
                handle = resonate.run("notify-1", notify, to, "hello")
                notification: Notification = await asyncio.wait_for(handle.result(), 30)
                return notification
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_the_four_channels_are_sent_at_once_each_with_its_own_key() -> None:
    """No provider answers until all four requests are in flight: a sequential notify would hang."""
    channels = FakeChannels(together=len(CHANNELS))

    notification = notify_in_process(channels)

    assert notification == Notification(receipts={c: f"{c}-1" for c in CHANNELS})
    assert sorted(channel for channel, _ in channels.calls) == sorted(CHANNELS)
    assert len({key for _, key in channels.calls}) == 4


def test_every_channel_is_sent_the_recipients_reference() -> None:
    """Each provider resolves the reference itself: the execution's argument names nobody."""
    channels = FakeChannels()

    notification = notify_in_process(channels)

    assert set(notification.receipts) == set(CHANNELS)
    assert sorted(channels.recipients) == sorted((channel, TO) for channel in CHANNELS)


@pytest.mark.parametrize(
    "to",
    ["ada@example.com", "Ada Lovelace", "cus_ada@example.com", "cus_a1", "+44 20 7946 0000"],
    ids=["an email address", "a name", "an email after the prefix", "too short", "a phone number"],
)
def test_a_recipient_that_is_not_a_reference_is_refused_naming_to_and_nothing_is_sent(
    to: str,
) -> None:
    channels = FakeChannels()

    with pytest.raises(ValueError, match=r"\bto is not a recipient reference") as refused:
        notify_in_process(channels, to)

    assert channels.calls == []
    assert to not in str(refused.value)  # the server stores the error: it does not repeat it


def test_a_refusing_channel_is_reported_asked_once_and_the_others_deliver() -> None:
    channels = FakeChannels(
        lambda channel, attempt: (
            (400, {"error": "no such number"}) if channel == "sms" else delivers(channel, attempt)
        )
    )

    notification = notify_in_process(channels)

    assert notification.failed == {"sms": "refused: 400 no such number"}
    assert set(notification.receipts) == {"email", "slack", "push"}
    assert channels.attempts("sms") == 1


def test_a_flaky_channel_retries_alone_with_the_same_key() -> None:
    channels = FakeChannels(
        lambda channel, attempt: (
            (429, {}) if channel == "push" and attempt == 1 else delivers(channel, attempt)
        )
    )

    notification = notify_in_process(channels)

    assert notification.receipts["push"] == "push-2"
    assert len(set(channels.keys("push"))) == 1
    assert [channels.attempts(c) for c in CHANNELS] == [1, 1, 1, 2]


def test_a_channel_down_past_its_retries_is_unconfirmed_and_does_not_hold_up_the_others() -> None:
    channels = FakeChannels(
        lambda channel, attempt: (
            (503, {"error": "down"}) if channel == "slack" else delivers(channel, attempt)
        )
    )

    notification = notify_in_process(channels)

    assert notification.unconfirmed == {"slack": "unavailable: answered 503"}
    assert notification.failed == {}
    assert set(notification.receipts) == {"email", "sms", "push"}
    assert channels.attempts("slack") == 1 + RETRY.max_retries
    assert len(set(channels.keys("slack"))) == 1


PROXY_PAGE = "<html><body>Welcome to the gateway</body></html>"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (PROXY_PAGE, "answered 200 without a readable 'id'"),
        ({"status": "queued"}, "answered 200 without a readable 'id'"),
        (b"garbled", "DecodingError"),  # httpx cannot decode it: it raises as it reads the body
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_channel_answered_without_its_answer_is_retried_then_reported(
    reply: Reply, reason: str
) -> None:
    # A 200 that is not the provider's answer says nothing about what it did: not a bug that
    # fails the whole notification, but a message that may have gone out, retried under its key.
    channels = FakeChannels(
        lambda channel, attempt: (200, reply) if channel == "slack" else delivers(channel, attempt)
    )

    notification = notify_in_process(channels)

    assert notification.unconfirmed == {"slack": f"unavailable: {reason}"}
    assert notification.failed == {}
    assert set(notification.receipts) == {"email", "sms", "push"}
    assert channels.attempts("slack") == 1 + RETRY.max_retries
    assert len(set(channels.keys("slack"))) == 1


def test_a_channel_that_sent_but_whose_answers_were_lost_is_unconfirmed_not_failed() -> None:
    """The SMS provider sends the message, and its answer never comes back (the connection drops
    after the send), on every attempt: the message went out, so reporting it failed would be
    false. The provider holds one Idempotency-Key for it, so it sent it once at most."""
    sent: list[str] = []  # the SMS provider's outbox: the key of each message it sent

    def answer(channel: str, attempt: int) -> tuple[int, Reply]:
        if channel != "sms":
            return delivers(channel, attempt)
        key = channels.keys("sms")[-1]
        if key not in sent:  # a repeat of a key is answered from the first send, not re-sent
            sent.append(key)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    channels = FakeChannels(answer)

    notification = notify_in_process(channels)

    assert sent == ["notify-1:2"]  # it went out, once
    assert notification.unconfirmed == {"sms": "unavailable: RemoteProtocolError"}
    assert notification.failed == {}
    assert set(notification.receipts) == {"email", "slack", "push"}
    assert channels.keys("sms") == ["notify-1:2"] * (1 + RETRY.max_retries)


def test_a_refusal_with_a_page_instead_of_json_is_still_reported_asked_once() -> None:
    channels = FakeChannels(
        lambda channel, attempt: (
            (400, PROXY_PAGE) if channel == "sms" else delivers(channel, attempt)
        )
    )

    notification = notify_in_process(channels)

    assert notification.failed == {"sms": "refused: 400 Bad Request"}
    assert channels.attempts("sms") == 1


def test_a_replay_sends_only_the_channels_the_journal_has_no_result_for() -> None:
    """After a crash with email and sms checkpointed: slack and push are sent again, only they."""
    channels = FakeChannels()
    journal = [
        resolved_promise("notify-1:1", {"channel": "email", "receipt": "email-journal"}),
        resolved_promise("notify-1:2", {"channel": "sms", "receipt": "sms-journal"}),
    ]

    async def replay() -> Notification:
        transport = httpx.MockTransport(channels.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            return await notify(root_context(id="notify-1", preload=journal, deps=deps), TO, "hi")

    notification = asyncio.run(replay())

    assert notification.receipts == {
        "email": "email-journal",
        "sms": "sms-journal",
        "slack": "slack-1",
        "push": "push-1",
    }
    assert sorted(channel for channel, _ in channels.calls) == ["push", "slack"]
