"""versioning end to end: a real dev server, worker processes and the provider sandbox.

Each test deploys workers with the versions it needs (RENEWAL_VERSIONS), starts renewals, and
asserts on what the receiving systems recorded: the sandbox (each email, fraud check and charge,
by idempotency key) and the dev server (the renewal's promises). A renewal sleeps an hour here; a
test makes it fall due when it wants by settling its sleep early, as the server would at the
deadline, so that which worker wakes it is never a race.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import searchable
from resonate.context import Context
from resonate.resonate import Resonate
from resonate.types import Value
from versioning.inflight import in_flight
from versioning.steps import (
    Answer,
    Providers,
    Server,
    Subscription,
    charge_card,
    check_fraud,
    mark_version,
    marker_id,
    send_email,
    unmark_version,
)
from versioning.worker import deployed_versions
from versioning.workflow import NAME, STEP_RETRIES, WORKFLOW_RETRIES, Renewal

TIMEOUT_S = 30
AN_HOUR = 3600
# The customer every test renews for, by reference; the email provider knows the address.
CUSTOMER_ID = "cus_7Q2xK9mB"
# Who it stands for at the email provider (Zoë Ångström <zoe@example.com>): the server must
# never hold any of it.
PERSONAL_DATA = ["@", "example.com", "Zoë", "Ångström"]
# Her first name as an id would spell it: a `sub-zoe` or a `cus_zoe2030` names the customer as
# plainly as her name does, so no stored id or reference may contain it. (Not a name spelled in
# hex digits, as "ada" is: the tests' random ids would contain it now and then.)
FIRST_NAME = "zoe"


@dataclass
class Fleet:
    """The dev server, the sandbox, and a way to deploy workers running chosen versions."""

    server: RunningDevServer
    sandbox: RunningSandbox
    start_worker: ProcessFactory

    def deploy(self, versions: str) -> ManagedProcess:
        env = {
            "RESONATE_URL": self.server.url,
            "PROVIDER_API_URL": self.sandbox.url,
            "RENEWAL_VERSIONS": versions,
        }
        return self.start_worker("versioning.worker", env, name=f"worker-v{versions}")

    def effects(self, renewal_id: str) -> Counter[str]:
        """The effects the providers recorded for a renewal: {"payment.charge": 1, ...}."""
        records = self.sandbox.records.effects(key_prefix=renewal_id + ":")
        return Counter(f"{e.provider}.{e.action}" for e in records)

    def requests(self, renewal_id: str, provider: str) -> int:
        records = self.sandbox.records.requests(key_prefix=renewal_id + ":")
        return sum(1 for r in records if r.provider == provider)

    def sleep_of(self, renewal_id: str) -> str:
        """The id of the renewal's pending sleep (a test may read SDK ids; the example never)."""
        promises = self.server.state(renewal_id)["promises"]
        assert isinstance(promises, list)
        [timer] = [
            p["id"]
            for p in promises
            if p["tags"].get("resonate:timer") == "true" and p["state"] == "pending"
        ]
        return str(timer)

    def wait_for_releases(self, renewal_id: str, count: int) -> None:
        """Block until the renewal's task has been given back `count` times (a long poll)."""
        seen, released = 0, 0
        deadline = time.monotonic() + TIMEOUT_S
        while released < count:
            assert time.monotonic() < deadline, f"released {released} times, not {count}"
            page = clients.get(
                f"{self.server.url}/_cookbook/journal",
                params={"origin": renewal_id, "after": seen, "wait": 5},
                timeout=10,
            ).json()
            seen = page["last_seq"]
            released += sum(
                1
                for e in page["entries"]
                if e["operation"] == "release" and e["promise_id"] == renewal_id
            )


@pytest.fixture
def fleet(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> Fleet:
    return Fleet(devserver, sandbox, start_worker)


def with_client(scenario: Callable[[Resonate], Awaitable[None]], fleet: Fleet) -> None:
    """Run a test's steps on an event loop, with a client of the fleet's server."""

    async def go() -> None:
        client = Resonate(url=fleet.server.url, group="versioning-tests")
        try:
            await scenario(client)
        finally:
            await client.stop()

    asyncio.run(go())


def subscription(renews_in_seconds: int = AN_HOUR) -> Subscription:
    return Subscription(
        subscription_id=f"sub-{secrets.token_hex(3)}",
        customer_id=CUSTOMER_ID,
        plan="pro-monthly",
        amount_cents=1200,
        currency="EUR",
        renews_in_seconds=renews_in_seconds,
    )


def start(client: Resonate, version: int, renews_in_seconds: int = AN_HOUR) -> tuple[str, Any]:
    renewal_id = f"renewal.test-{secrets.token_hex(4)}"
    who = asdict(subscription(renews_in_seconds))
    # Longer than a step's deadline (a day), as a renewal's would be.
    options = client.options(target="versioning", version=version, timeout=timedelta(days=40))
    return renewal_id, options.rpc(renewal_id, "renewal", who)


async def asleep(fleet: Fleet, renewal_id: str) -> None:
    """Wait until the renewal has sent its notice and sleeps until it falls due."""
    await asyncio.to_thread(fleet.server.wait_for, "suspend", f"{renewal_id}:3", TIMEOUT_S)


async def fall_due(client: Resonate, fleet: Fleet, renewal_id: str) -> None:
    await client.promises.resolve(await asyncio.to_thread(fleet.sleep_of, renewal_id), Value())


async def result(handle: Any) -> dict[str, Any]:
    outcome: dict[str, Any] = await asyncio.wait_for(handle.result(), TIMEOUT_S)
    return outcome


def test_a_renewal_asleep_on_v1_finishes_on_v1_after_a_deploy_of_both(fleet: Fleet) -> None:
    async def scenario(client: Resonate) -> None:
        release_1 = fleet.deploy("1")
        renewal_id, handle = start(client, 1)
        await asleep(fleet, renewal_id)
        release_1.stop()
        fleet.deploy("1,2")
        await fall_due(client, fleet, renewal_id)

        renewal = await result(handle)

        assert renewal["version"] == 1
        assert renewal["outcome"] == "renewed"
        # Version 1's body: no fraud check; each effect once.
        assert fleet.effects(renewal_id) == {"email.send": 2, "payment.charge": 1}
        [charge] = fleet.sandbox.records.effects(key_prefix=renewal_id + ":4")
        assert renewal["charge"] == charge.resource_id

    with_client(scenario, fleet)


def test_the_server_holds_the_customer_reference_and_no_personal_data(fleet: Fleet) -> None:
    async def scenario(client: Resonate) -> None:
        fleet.deploy("1,2")
        renewal_id, handle = start(client, 2, renews_in_seconds=0)
        assert (await result(handle))["outcome"] == "renewed"

        # Every promise of the renewal: its own, its steps' and sleep's, and its version marker.
        promises = fleet.server.state()["promises"]
        assert isinstance(promises, list)
        held = [p for p in promises if p["id"].startswith(renewal_id)]
        checkpoints = [f"{renewal_id}:{n}" for n in range(1, 8)]  # see the README's tree
        assert {p["id"] for p in held} == {renewal_id, *checkpoints, marker_id(renewal_id)}
        text = searchable(held)
        assert [data for data in PERSONAL_DATA if data in text] == []
        assert CUSTOMER_ID in text  # the argument was found and read: the reference is in it
        references = re.findall(r"\b(?:cus_|sub-)[A-Za-z0-9]+", text)  # customer, subscription
        ids_and_references = {p["id"] for p in held} | set(references)
        assert [i for i in ids_and_references if FIRST_NAME in i.lower()] == []

        # The email provider got the reference, to resolve to an address itself.
        emails = fleet.sandbox.records.effects(key_prefix=renewal_id + ":")
        sent = [(e.body["template"], e.body["to"]) for e in emails if e.provider == "email"]
        assert sent == [("renewal-notice", CUSTOMER_ID), ("receipt", CUSTOMER_ID)]

    with_client(scenario, fleet)


def test_new_renewals_start_on_v2_beside_v1_ones_and_inflight_tells_them_apart(
    fleet: Fleet,
) -> None:
    async def scenario(client: Resonate) -> None:
        fleet.deploy("1,2")
        on_v1 = [start(client, 1) for _ in range(2)]
        on_v2 = start(client, 2)
        everyone = [*on_v1, on_v2]
        for renewal_id, _ in everyone:
            await asleep(fleet, renewal_id)

        assert await in_flight(client, 1) == sorted(renewal_id for renewal_id, _ in on_v1)
        assert await in_flight(client, 2) == [on_v2[0]]
        # A marker lives as long as its renewal may (a step's deadline is a day at most).
        renewal, marker = await asyncio.gather(
            client.promises.get(on_v2[0]), client.promises.get(marker_id(on_v2[0]))
        )
        assert marker.timeout_at == renewal.timeout_at

        for renewal_id, _ in everyone:
            await fall_due(client, fleet, renewal_id)
        assert [(await result(handle))["version"] for _, handle in everyone] == [1, 1, 2]
        assert fleet.effects(on_v2[0]) == {"email.send": 2, "api.call": 1, "payment.charge": 1}
        assert await in_flight(client, 1) == []  # version 1 may now be dropped
        assert await in_flight(client, 2) == []

    with_client(scenario, fleet)


def test_a_renewal_that_ended_without_settling_its_marker_is_not_in_flight(fleet: Fleet) -> None:
    async def scenario(client: Resonate) -> None:
        fleet.deploy("1,2")
        (ended, _), (running, _) = start(client, 1), start(client, 1)
        for renewal_id in (ended, running):
            await asleep(fleet, renewal_id)
        # How a renewal ends when a step fails through its retries, or an operator gives up on
        # it: its promise is rejected, and no step after that settles its marker.
        await client.promises.reject(ended, Value(data="the payment provider stayed down"))

        assert (await client.promises.get(marker_id(ended))).state == "pending"
        assert await in_flight(client, 1) == [running]  # the ended one needs version 1 no more

    with_client(scenario, fleet)


def test_a_worker_without_the_version_hands_the_renewal_back_again_and_again(
    fleet: Fleet,
) -> None:
    async def scenario(client: Resonate) -> None:
        release_1 = fleet.deploy("1")
        renewal_id, handle = start(client, 1)
        await asleep(fleet, renewal_id)
        release_1.stop()
        too_early = fleet.deploy("2")  # version 1 dropped while a renewal still needs it
        await fall_due(client, fleet, renewal_id)

        # SDK 0.8.1 raises FunctionNotFoundError in the worker and releases the task; the server
        # hands it out again at once. Nothing runs, nothing fails: the renewal just waits.
        await asyncio.to_thread(fleet.wait_for_releases, renewal_id, 20)
        assert not handle.done()
        assert fleet.effects(renewal_id) == {"email.send": 1}  # the notice, from before the sleep

        too_early.stop()
        fleet.deploy("1,2")  # the fix: deploy version 1 again
        assert (await result(handle))["version"] == 1
        assert fleet.effects(renewal_id) == {"email.send": 2, "payment.charge": 1}

    with_client(scenario, fleet)


@pytest.mark.parametrize(
    ("version", "provider", "status", "outcome", "effects"),
    [
        # The fraud service holds the renewal: no charge; the notice, and the hold's email.
        (2, "api", 403, "held", {"email.send": 2}),
        # The card is declined, on either version: the notice, and the decline's email.
        (1, "payment", 402, "declined", {"email.send": 2}),
        (2, "payment", 402, "declined", {"email.send": 2, "api.call": 1}),
    ],
)
def test_a_refusal_is_a_value_asked_once(
    fleet: Fleet, version: int, provider: str, status: int, outcome: str, effects: dict[str, int]
) -> None:
    renewal_id = f"renewal.test-{secrets.token_hex(4)}"
    response = clients.post(
        f"{fleet.sandbox.url}/_admin/faults",
        json={"provider": provider, "key_prefix": renewal_id + ":", "status": status},
    )
    response.raise_for_status()
    fleet.deploy("1,2")

    async def scenario(client: Resonate) -> None:
        options = client.options(target="versioning", version=version)
        handle = options.rpc(renewal_id, "renewal", asdict(subscription(renews_in_seconds=0)))

        renewal = await result(handle)

        assert (renewal["version"], renewal["outcome"]) == (version, outcome)
        assert renewal["reason"] == f"{status} injected failure"
        assert renewal["charge"] is None
        assert fleet.requests(renewal_id, provider) == 1
        assert fleet.effects(renewal_id) == effects

    with_client(scenario, fleet)


def test_the_worker_reads_the_versions_it_deploys() -> None:
    assert deployed_versions(None) == [1, 2]
    assert deployed_versions("2") == [2]
    assert deployed_versions(" 2,1 ") == [1, 2]
    with pytest.raises(SystemExit, match="unknown versions"):
        deployed_versions("1,3")
    with pytest.raises(SystemExit, match="not a list"):
        deployed_versions("v1")


# -- editing a version in place ---------------------------------------------------------------
#
# A replay matches the body's durable calls to the journal by position: the nth call gets the
# nth record. These tests put an edited version 1 on a worker while a renewal sleeps on the
# original, wake the renewal, and record what SDK 0.8.1 does.

# What the edited body's inserted fraud check returned, replay after replay.
inserted_check_answers: list[Answer] = []


async def v1_with_a_check_inserted_before_the_notice(
    ctx: Context, subscription: Subscription
) -> Renewal:
    """Version 1 with the fraud check added near the top, before a step that had already run."""
    step = ctx.options(retry_policy=STEP_RETRIES)
    renewal_id = ctx.info.id
    await step.run(mark_version, renewal_id, 1, ctx.info.timeout_at)
    cleared = await step.run(check_fraud, subscription)  # inserted: the new 2nd call
    inserted_check_answers.append(cleared)
    await step.run(send_email, subscription, "renewal-notice")
    await ctx.sleep(timedelta(seconds=subscription.renews_in_seconds))
    charged = await step.run(charge_card, subscription)
    await step.run(send_email, subscription, "receipt")
    await step.run(unmark_version, renewal_id)
    return Renewal(1, "renewed", charge=charged.receipt)


async def v1_with_a_check_inserted_after_the_sleep(
    ctx: Context, subscription: Subscription
) -> Renewal:
    """Version 1 with the fraud check added where version 2 has it: after the sleep."""
    step = ctx.options(retry_policy=STEP_RETRIES)
    renewal_id = ctx.info.id
    await step.run(mark_version, renewal_id, 1, ctx.info.timeout_at)
    await step.run(send_email, subscription, "renewal-notice")
    await ctx.sleep(timedelta(seconds=subscription.renews_in_seconds))
    await step.run(check_fraud, subscription)  # inserted
    charged = await step.run(charge_card, subscription)
    await step.run(send_email, subscription, "receipt")
    await step.run(unmark_version, renewal_id)
    return Renewal(1, "renewed", charge=charged.receipt)


async def edited_worker(
    fleet: Fleet, body: Callable[[Context, Subscription], Awaitable[Renewal]]
) -> tuple[Resonate, httpx.AsyncClient]:
    """A worker in this process that runs `body` as version 1: the edited deploy."""
    providers = clients.async_client(base_url=fleet.sandbox.url, timeout=10)
    worker = Resonate(
        url=fleet.server.url, group="versioning", pid="edited", ttl=timedelta(seconds=5)
    )
    worker.with_dependency(Providers(providers))
    worker.with_dependency(Server(worker))
    worker.register(body, name=NAME, version=1, retry_policy=WORKFLOW_RETRIES)
    return worker, providers


async def asleep_on_v1(fleet: Fleet, client: Resonate) -> tuple[str, Any]:
    """A renewal started by the original version 1, asleep, with its worker gone."""
    original = fleet.deploy("1")
    renewal_id, handle = start(client, 1)
    await asleep(fleet, renewal_id)
    original.stop()
    return renewal_id, handle


def test_a_step_inserted_before_a_finished_one_reads_its_result_and_the_renewal_sticks(
    fleet: Fleet,
) -> None:
    async def scenario(client: Resonate) -> None:
        renewal_id, handle = await asleep_on_v1(fleet, client)
        [notice] = fleet.sandbox.records.effects(key_prefix=renewal_id + ":2")
        worker, providers = await edited_worker(fleet, v1_with_a_check_inserted_before_the_notice)
        try:
            await fall_due(client, fleet, renewal_id)
            await asyncio.to_thread(fleet.wait_for_releases, renewal_id, 10)
        finally:
            await worker.stop()
            await providers.aclose()

        # The inserted check is the body's 2nd call, so it got the 2nd record: the notice
        # email's receipt. It never asked the fraud service, and the body read it as "cleared".
        assert inserted_check_answers[0] == Answer(receipt=notice.resource_id)
        assert fleet.requests(renewal_id, "api") == 0
        # The notice step, now 3rd, got the sleep's record (no value), which does not decode as
        # an Answer: the SDK raises, the worker gives the task back, and every replay fails the
        # same way. No error reaches the caller; the renewal is stuck, nothing charged.
        assert not handle.done()
        assert fleet.effects(renewal_id) == {"email.send": 1}

        # Putting the original body back heals it: the edit had written nothing.
        fleet.deploy("1")
        renewal = await result(handle)
        assert (renewal["version"], renewal["outcome"]) == (1, "renewed")
        assert fleet.effects(renewal_id) == {"email.send": 2, "payment.charge": 1}

    with_client(scenario, fleet)


def test_a_step_inserted_after_the_sleep_runs_in_renewals_already_asleep(fleet: Fleet) -> None:
    async def scenario(client: Resonate) -> None:
        renewal_id, handle = await asleep_on_v1(fleet, client)
        worker, providers = await edited_worker(fleet, v1_with_a_check_inserted_after_the_sleep)
        try:
            await fall_due(client, fleet, renewal_id)
            renewal = await result(handle)
        finally:
            await worker.stop()
            await providers.aclose()

        # Nothing recorded sits where the edit is, so the replay accepts it: a renewal that
        # started on version 1 silently ran a fraud check that version 1 never had.
        assert renewal["version"] == 1
        assert fleet.effects(renewal_id) == {"email.send": 2, "api.call": 1, "payment.charge": 1}

    with_client(scenario, fleet)
