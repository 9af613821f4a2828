"""fan-out end to end: a real dev server, a worker process, the provider sandbox.

Every assertion is on what the providers recorded (the sandbox's requests and effects, with their
own timestamps), not on what the workflow says it did.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found, stored_values
from fan_out.steps import Delivery, Providers, send
from fan_out.workflow import CHANNELS, RETRY
from resonate.dependencies import DependencyMap
from resonate.error import ApplicationError
from resonate.resonate import Resonate
from resonate.testing import root_context

TIMEOUT = 30
# Who is notified: the client knows her name and email address, and sends only the reference,
# which each channel's provider resolves to her address, number or device.
RECIPIENT_ID, RECIPIENT_NAME, RECIPIENT_EMAIL = "cus_5e0b82d4", "Zoë Ångström", "zoe@example.com"
# Her first name in an id would spell it: a `cus_zoe...` or a `notify-zoe-...` names her as
# plainly as her name does, so no stored id or reference may contain it.
FIRST_NAME = "zoe"


@pytest.fixture
def resonate_url(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> str:
    start_worker(
        "fan_out.worker",
        {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": sandbox.url, "PATH": "/usr/bin:/bin"},
    )
    return devserver.url


def new_execution_id() -> str:
    return f"fan-out-test-{secrets.token_hex(4)}"


def add_fault(sandbox: RunningSandbox, execution_id: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults", json={**spec, "key_prefix": execution_id + ":"}
    )
    response.raise_for_status()


def notify(url: str, execution_id: str, times: int = 1, to: str = RECIPIENT_ID) -> list[Any]:
    """Start `notify` `times` times with the same id, concurrently; every result."""

    async def run() -> list[Any]:
        client = Resonate(url=url, group="fan-out-tests")
        try:
            handles = [
                client.options(target="fan-out").rpc(execution_id, "notify", to, "hi")
                for _ in range(times)
            ]
            return await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), TIMEOUT)
        finally:
            await client.stop()

    return asyncio.run(run())


def receipts_recorded(sandbox: RunningSandbox, execution_id: str) -> dict[str, str]:
    """The id of each message a provider sent for this execution; no channel sent twice."""
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    channels = [e.provider for e in effects]
    assert len(channels) == len(set(channels)), f"a channel was sent twice: {channels}"
    return {e.provider: e.resource_id for e in effects}


def requests_per_channel(sandbox: RunningSandbox, execution_id: str) -> Counter[str]:
    return Counter(r.provider for r in sandbox.records.requests(key_prefix=execution_id + ":"))


def test_channels_are_sent_in_parallel_and_each_exactly_once(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_execution_id()
    # Long enough that four steps start well within the fastest channel's latency on a busy
    # machine too: the checks below are about the fan-out, not about how loaded the machine is.
    latency_ms = {"email": 600, "sms": 700, "slack": 800, "push": 1000}
    for channel, ms in latency_ms.items():
        add_fault(sandbox, execution_id, provider=channel, mode="latency", latency_ms=ms)

    [notification] = notify(resonate_url, execution_id)

    assert notification == {
        "receipts": receipts_recorded(sandbox, execution_id),
        "failed": {},
        "unconfirmed": {},
    }
    assert set(notification["receipts"]) == set(CHANNELS)
    calls = sandbox.records.requests(key_prefix=execution_id + ":")
    assert len(calls) == len(CHANNELS)
    # On the providers' clock: the last call started before the first one finished, so all four
    # were in flight together, and the whole fan-out took about as long as the slowest channel.
    assert max(c.started_at for c in calls) < min(c.finished_at for c in calls)
    elapsed = max(c.finished_at for c in calls) - min(c.started_at for c in calls)
    slowest, total = max(latency_ms.values()) / 1000, sum(latency_ms.values()) / 1000
    assert slowest <= elapsed < slowest + 0.6 < total


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_flaky_channel_retries_alone(
    resonate_url: str, sandbox: RunningSandbox, status: int
) -> None:
    execution_id = new_execution_id()
    add_fault(sandbox, execution_id, provider="sms", mode="fail_times", times=2, status=status)

    [notification] = notify(resonate_url, execution_id)

    assert notification == {
        "receipts": receipts_recorded(sandbox, execution_id),
        "failed": {},
        "unconfirmed": {},
    }
    assert requests_per_channel(sandbox, execution_id) == {
        "email": 1,
        "sms": 3,
        "slack": 1,
        "push": 1,
    }


@pytest.mark.parametrize(
    ("status", "reported", "attempts"),
    [
        # A refusal is not worth retrying, and says the message was not sent: failed.
        (410, {"failed": {"push": "refused: 410 injected failure"}}, 1),
        (422, {"failed": {"push": "refused: 422 injected failure"}}, 1),
        # Retried, then given up: a 5xx does not say the message was not sent, so it is not
        # failed but unconfirmed (this sandbox fails before it sends: it did not, this time).
        (503, {"unconfirmed": {"push": "unavailable: answered 503"}}, 1 + RETRY.max_retries),
    ],
)
def test_a_channel_that_fails_for_good_is_named_and_the_others_are_not_resent(
    resonate_url: str,
    sandbox: RunningSandbox,
    status: int,
    reported: dict[str, dict[str, str]],
    attempts: int,
) -> None:
    execution_id = new_execution_id()
    add_fault(sandbox, execution_id, provider="push", mode="fail_always", status=status)

    [notification] = notify(resonate_url, execution_id)

    delivered = receipts_recorded(sandbox, execution_id)
    assert notification == {"receipts": delivered, "failed": {}, "unconfirmed": {}, **reported}
    assert set(delivered) == {"email", "sms", "slack"}
    sent = {"email": 1, "sms": 1, "slack": 1, "push": attempts}
    assert requests_per_channel(sandbox, execution_id) == sent
    # Every attempt at push carried the one key: a resend under it cannot send it twice.
    requests = sandbox.records.requests(key_prefix=execution_id + ":")
    assert {r.idempotency_key for r in requests if r.provider == "push"} == {f"{execution_id}:4"}
    # Asking again (twice, at once) returns the stored outcome: nothing is sent a second time.
    assert notify(resonate_url, execution_id, times=2) == [notification, notification]
    assert requests_per_channel(sandbox, execution_id) == sent


def test_a_call_that_cannot_start_fails_at_once_instead_of_being_retried(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    # No text: the body fails before its first step, the same way on every attempt. Under the
    # SDK's default policy it would be retried (2 s, 4 s, 8 s, ...) and outlive the timeout.
    execution_id = new_execution_id()

    async def run() -> Any:
        client = Resonate(url=resonate_url, group="fan-out-tests")
        try:
            handle = client.options(target="fan-out").rpc(execution_id, "notify", RECIPIENT_ID)
            return await asyncio.wait_for(handle.result(), TIMEOUT)
        finally:
            await client.stop()

    with pytest.raises(ApplicationError, match="missing a required argument: 'text'"):
        asyncio.run(run())

    assert requests_per_channel(sandbox, execution_id) == {}


# -- personal data: the recipient is a reference, and only the providers know who it is ---------


def test_the_server_holds_the_recipients_reference_never_their_address_or_name(
    resonate_url: str, devserver: RunningDevServer, sandbox: RunningSandbox
) -> None:
    execution_id = new_execution_id()

    [notification] = notify(resonate_url, execution_id)

    assert set(notification["receipts"]) == set(CHANNELS)
    # Everything the server holds for the execution (its promises and its journal), and in it
    # what the workflow stored (each promise's param and value: the arguments, each result).
    held = [devserver.state(execution_id), devserver.journal(execution_id)]
    stored = json.dumps(stored_values(held), ensure_ascii=False)
    assert RECIPIENT_ID in stored  # the stored arguments were decoded, not missed
    assert "@" not in stored  # (the server's own tags hold one: `poll://any@fan-out`)
    personal = [RECIPIENT_EMAIL, *RECIPIENT_NAME.split()]
    assert plaintext_found(json.dumps(held).encode(), personal) == []
    # Every id the server holds for the execution starts with the execution's id.
    assert FIRST_NAME not in (execution_id + stored).lower()
    # Each channel's provider got the reference, to resolve it itself.
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert sorted((e.provider, e.body["to"]) for e in effects) == sorted(
        (channel, RECIPIENT_ID) for channel in CHANNELS
    )


def test_a_recipient_that_is_not_a_reference_is_refused_naming_to_and_nothing_is_sent(
    resonate_url: str, devserver: RunningDevServer, sandbox: RunningSandbox
) -> None:
    execution_id = new_execution_id()

    with pytest.raises(ValueError, match=r"\bto is not a recipient reference"):
        notify(resonate_url, execution_id, to=RECIPIENT_EMAIL)

    # The caller stored the address as the argument; the workflow refused it before its first
    # step: no step's promise, no provider asked, and the stored error does not repeat it.
    promises = devserver.state(execution_id)["promises"]
    assert isinstance(promises, list)
    assert [p["id"] for p in promises] == [execution_id]
    [error] = stored_values(promises[0]["value"])  # its message, and the exception pickled
    assert RECIPIENT_EMAIL not in error["message"]
    assert plaintext_found(json.dumps(error).encode(), [RECIPIENT_EMAIL]) == []  # the pickle too
    assert requests_per_channel(sandbox, execution_id) == {}


def test_a_refusal_without_a_json_body_is_still_a_refusal() -> None:
    # A proxy in front of a provider may refuse with an HTML page: still a refusal, not a crash.
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text="<html>Forbidden</html>")

    async def send_once() -> Delivery:
        transport = httpx.MockTransport(proxy)
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(id="notify-1", deps=deps)
            return await send(ctx, "push", RECIPIENT_ID, "hi")

    assert asyncio.run(send_once()) == Delivery("push", failure="refused: 403 Forbidden")
