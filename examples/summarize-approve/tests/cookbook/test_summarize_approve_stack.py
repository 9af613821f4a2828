"""summarize-approve on real processes: a dev server, workers, a sandbox with the stand-in model.

Cookbook-side (they use the cookbook's fixtures): what is billed is read from the stand-in model's
own records in the sandbox, one effect per billed completion with the Idempotency-Key it came with.
The sandbox here is this module's own, started with this example's model script, so no other
example's script answers.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cookbook import clients
from cookbook.sandbox import SandboxRecords
from cookbook.stack import sandbox_process, stand_in_model_env
from cookbook.testing.fixtures import (
    DevServerFactory,
    ProcessFactory,
    RunningDevServer,
    RunningSandbox,
)
from cookbook.testing.plaintext import searchable
from resonate.resonate import Resonate
from resonate.types import Value

EXAMPLE = Path(__file__).resolve().parents[2]
PAGE = "/openapi.json"
# Grace, the reviewer, by her staff user id. Her name and her address are the email provider's
# to know: the Resonate server must hold neither (it stores every argument in plaintext).
REVIEWER = "usr_8d2f41c7"
REVIEWER_NAMES = ("grace", "hopper")
# The stand-in's scripted answers (stand-in-model.toml).
FIRST = "The Resonate cookbook provider sandbox is an HTTP API of fake third-party providers"
FOR_DEVELOPERS = "For developers testing durable workflows"
ASK_WHO = {"approve": False, "feedback": "Say who it is for, and that nothing is real."}
APPROVE = {"approve": True}


@pytest.fixture(scope="module")
def model_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    db = tmp_path_factory.mktemp("summarize-approve") / "sandbox.db"
    with sandbox_process(db, model_script=EXAMPLE / "stand-in-model.toml") as process:
        yield RunningSandbox(process, SandboxRecords(db))


@pytest.fixture
def env(devserver: RunningDevServer, model_sandbox: RunningSandbox) -> dict[str, str]:
    return {
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": model_sandbox.url,
        **stand_in_model_env(model_sandbox.url),
    }


def new_id() -> str:
    return f"summary-test-{secrets.token_hex(4)}"


def summarize(
    url: str, sandbox: RunningSandbox, decisions: list[Any], execution_id: str | None = None
) -> tuple[str, Any]:
    """Start an execution, answer each review email with the next decision, return the result."""
    execution_id = execution_id or new_id()

    async def go() -> Any:
        client = Resonate(url=url, group="summarize-approve-tests")
        try:
            handle = client.options(target="summarize-approve").rpc(
                execution_id, "summarize_and_approve", PAGE, REVIEWER
            )
            for round_number, decision in enumerate(decisions, start=1):
                mail = await review_email(sandbox, execution_id, round_number)
                await client.promises.resolve(mail["decision_id"], Value(data=decision))
            return await asyncio.wait_for(handle.result(), 60)
        finally:
            await client.stop()

    return execution_id, asyncio.run(go())


async def review_email(
    sandbox: RunningSandbox, execution_id: str, round_number: int
) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:  # the sandbox's records are a database another process writes
            for effect in sandbox.records.effects(key_prefix=f"{execution_id}:"):
                if effect.provider == "email" and effect.body.get("round") == round_number:
                    return effect.body
            await asyncio.sleep(0.05)


def billed_keys(sandbox: RunningSandbox, execution_id: str) -> list[str | None]:
    effects = sandbox.records.effects(key_prefix=f"{execution_id}:")
    return [e.idempotency_key for e in effects if e.provider == "model"]


def test_a_revised_summary_is_approved_and_each_round_billed_once(
    env: dict[str, str], model_sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    start_worker("summarize_approve.worker", env)

    execution_id, ended = summarize(env["RESONATE_URL"], model_sandbox, [ASK_WHO, APPROVE])

    assert ended["state"] == "approved"
    assert ended["rounds"] == 2
    assert ended["summary"].startswith(FOR_DEVELOPERS)
    keys = billed_keys(model_sandbox, execution_id)
    assert len(keys) == ended["rounds"]
    assert len(set(keys)) == len(keys)
    effects = model_sandbox.records.effects(key_prefix=f"{execution_id}:")
    mails = [e.body for e in effects if e.provider == "email"]
    assert [m["text"].startswith(FIRST) for m in mails] == [True, False]
    [post] = [e.body for e in effects if e.provider == "slack"]
    assert post["text"] == f"{PAGE}\n{ended['summary']}"
    assert post["channel"] == "#reading-list"


def test_three_rejections_bill_three_completions(
    env: dict[str, str], model_sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    start_worker("summarize_approve.worker", env)
    no = {"approve": False, "feedback": "Shorter."}

    execution_id, ended = summarize(env["RESONATE_URL"], model_sandbox, [no, no, no])

    assert (ended["state"], ended["rounds"]) == ("rejected", 3)
    keys = billed_keys(model_sandbox, execution_id)
    assert len(keys) == len(set(keys)) == 3
    effects = model_sandbox.records.effects(key_prefix=f"{execution_id}:")
    assert not [e for e in effects if e.provider == "slack"]


def test_a_worker_killed_after_the_model_answered_does_not_pay_for_it_again(
    env: dict[str, str], model_sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    # The first worker dies the moment the stand-in billed the first summary, before the step
    # could checkpoint it: the next worker runs the step again, with the same key.
    first = start_worker("summarize_approve.worker", env, name="worker-1")
    switch = {"provider": "model", "action": "complete", "pid": first.pid}
    clients.post(f"{model_sandbox.url}/_admin/kill-switches", json=switch).raise_for_status()

    def start_successor() -> None:
        first.wait(timeout=30)
        start_worker("summarize_approve.worker", env, name="worker-2")

    successor = threading.Thread(target=start_successor)
    successor.start()
    try:
        execution_id, ended = summarize(env["RESONATE_URL"], model_sandbox, [ASK_WHO, APPROVE])
    finally:
        successor.join()

    assert not first.alive()
    assert (ended["state"], ended["rounds"]) == ("approved", 2)
    keys = billed_keys(model_sandbox, execution_id)
    assert len(keys) == len(set(keys)) == 2  # the first summary was billed once, not twice
    asked = model_sandbox.records.requests(key_prefix=keys[0])
    assert [r.replayed for r in asked] == [False, True]


def test_a_rate_limited_model_is_asked_again_under_the_same_key(
    env: dict[str, str], model_sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    start_worker("summarize_approve.worker", env)
    execution_id = new_id()
    fault = {
        "provider": "model",
        "action": "complete",
        "mode": "fail_times",
        "status": 429,
        "key_prefix": f"{execution_id}:",
    }
    clients.post(f"{model_sandbox.url}/_admin/faults", json=fault).raise_for_status()

    _, ended = summarize(env["RESONATE_URL"], model_sandbox, [APPROVE], execution_id)

    assert (ended["state"], ended["rounds"]) == ("approved", 1)
    [key] = billed_keys(model_sandbox, execution_id)
    assert key is not None
    asked = model_sandbox.records.requests(key_prefix=key)
    assert [r.status_code for r in asked] == [429, 200]


def test_a_reviewer_who_never_answers_ends_it_when_the_promise_times_out(
    start_devserver: DevServerFactory, model_sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    # A dev server that skips time: the 7-hour review deadline passes as soon as the
    # workflow is suspended on it, and the server times the promise out by itself.
    devserver = start_devserver(skip_time=True)
    env = {
        "RESONATE_URL": devserver.url,
        "PROVIDER_API_URL": model_sandbox.url,
        **stand_in_model_env(model_sandbox.url),
    }
    start_worker("summarize_approve.worker", env)

    execution_id, ended = summarize(devserver.url, model_sandbox, [])

    assert ended["state"] == "no-decision"
    assert ended["reason"] == "no answer in time"
    assert ended["summary"].startswith(FIRST)
    assert len(billed_keys(model_sandbox, execution_id)) == ended["rounds"] == 1
    effects = model_sandbox.records.effects(key_prefix=f"{execution_id}:")
    assert [e.provider for e in effects if e.provider in ("email", "slack")] == ["email"]


def test_the_server_holds_the_reviewers_id_never_an_address_or_a_name(
    devserver: RunningDevServer,
    env: dict[str, str],
    model_sandbox: RunningSandbox,
    start_worker: ProcessFactory,
) -> None:
    start_worker("summarize_approve.worker", env)

    execution_id, ended = summarize(env["RESONATE_URL"], model_sandbox, [ASK_WHO, APPROVE])

    assert ended["state"] == "approved"
    promises = devserver.state(execution_id)["promises"]
    assert isinstance(promises, list)
    held = searchable(promises)
    assert REVIEWER in held  # only in a decoded value: they are searched
    assert "@" not in held
    assert [name for name in REVIEWER_NAMES if name in held.lower()] == []
    # The email provider got the id, to resolve to an address itself.
    effects = model_sandbox.records.effects(key_prefix=f"{execution_id}:")
    assert [e.body["to"] for e in effects if e.provider == "email"] == [REVIEWER, REVIEWER]
