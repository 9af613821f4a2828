"""tool-agent through real processes: the dev server, the sandbox with the stand-in model, workers
and the gateway. What was booked and what was billed is read from the sandbox's own records.

Uses the cookbook's harness (dev server, sandbox, processes), so it lives in tests/cookbook/.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cookbook import clients
from cookbook.sandbox.store import SandboxRecords
from cookbook.stack import (
    devserver_process,
    gateway_process,
    sandbox_process,
    stand_in_model_env,
    url_of,
    worker_process,
)
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.fixtures import RunningDevServer
from resonate.resonate import Resonate

EXAMPLE = Path(__file__).resolve().parents[2]
TASK = "Book Ada Lovelace on a flight from LHR to LIS on 1 May 2030. Check with her manager first."


@dataclass(frozen=True)
class AgentStack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox_url: str
    records: SandboxRecords
    env: dict[str, str]

    def question_of(self, run_id: str) -> str:
        """The question id the agent posted to chat, once it is there."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            posted = [e for e in self.records.effects(f"{run_id}:") if e.provider == "slack"]
            if posted:
                return str(posted[0].body["question_id"])
            time.sleep(0.05)
        raise AssertionError(f"{run_id}: no question was posted")

    def ended(self, run_id: str) -> dict[str, Any]:
        """Await the execution (a Resonate listener, not a poll), then ask the gateway."""

        async def settled() -> None:
            client = Resonate(url=self.server.url, group="tool-agent-tests")
            try:
                await asyncio.wait_for((await client.get(run_id)).result(), 30)
            finally:
                await client.stop()

        asyncio.run(settled())
        status: dict[str, Any] = self.gateway.get(f"/runs/{run_id}").json()
        return status

    def billed(self, run_id: str) -> Counter[str | None]:
        """Completions the stand-in billed for this run, by Idempotency-Key."""
        effects = self.records.effects(f"{run_id}:")
        return Counter(e.idempotency_key for e in effects if e.provider == "model")

    def asked(self, run_id: str, provider: str) -> Counter[str | None]:
        """Requests a provider received for this run, by Idempotency-Key (replays included)."""
        requests = self.records.requests(f"{run_id}:")
        return Counter(r.idempotency_key for r in requests if r.provider == provider)

    def reservations(self, run_id: str) -> list[str]:
        effects = self.records.effects(f"{run_id}:")
        return [e.resource_id for e in effects if e.provider == "flight"]

    def promise_states(self, run_id: str) -> dict[str, str]:
        promises = cast("list[dict[str, str]]", self.server.state(run_id)["promises"])
        return {p["id"]: p["state"] for p in promises}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentStack]:
    # Module-scoped (one start-up for every test); each process is stopped by its pid at the end.
    # A sandbox of its own: it answers as the model from this example's script.
    data_dir = tmp_path_factory.mktemp("devserver")
    db = tmp_path_factory.mktemp("sandbox") / "sandbox.db"
    script = EXAMPLE / "stand-in-model.toml"
    with (
        devserver_process(data_dir) as server,
        sandbox_process(db, model_script=script) as sandbox,
    ):
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith(("RESONATE_", "OPENAI_"))
        }
        env = {
            **inherited,
            **stand_in_model_env(url_of(sandbox)),
            "RESONATE_URL": url_of(server),
            "PROVIDER_API_URL": url_of(sandbox),
        }
        with (
            worker_process("tool_agent.worker", env),
            gateway_process("tool_agent.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=10) as client,
        ):
            yield AgentStack(
                client,
                RunningDevServer(server, data_dir, False),
                url_of(sandbox),
                SandboxRecords(db),
                env,
            )


def new_run() -> dict[str, Any]:
    return {"run_id": f"test-{secrets.token_hex(4)}", "task": TASK}


def answer(stack: AgentStack, question_id: str, text: str) -> httpx.Response:
    return stack.gateway.post(f"/questions/{question_id}/answer", json={"answer": text})


# -- the agent ---------------------------------------------------------------------------------


def test_an_approved_run_books_once_and_bills_each_model_call_once(stack: AgentStack) -> None:
    run = new_run()
    assert stack.gateway.post("/runs", json=run).status_code == 202

    question_id = stack.question_of(run["run_id"])
    assert stack.gateway.get(f"/runs/{run['run_id']}").json()["state"] == "running"
    assert answer(stack, question_id, "yes, economy please").status_code == 200
    ended = stack.ended(run["run_id"])

    [reservation] = stack.reservations(run["run_id"])
    assert ended["state"] == "answered"
    assert ended["bookings"] == [reservation]
    assert reservation in ended["answer"]
    # Four completions (ask, book with a bad date, book again, report), each key billed once.
    billed = stack.billed(run["run_id"])
    assert len(billed) == ended["model_calls"] == 4
    assert set(billed.values()) == {1}


def test_a_declined_run_books_nothing(stack: AgentStack) -> None:
    run = new_run()
    stack.gateway.post("/runs", json=run).raise_for_status()

    answer(stack, stack.question_of(run["run_id"]), "no: the workshop moved online")
    ended = stack.ended(run["run_id"])

    assert (ended["state"], ended["bookings"]) == ("answered", [])
    assert "did not approve" in ended["answer"]
    assert stack.reservations(run["run_id"]) == []


@pytest.mark.parametrize(
    ("provider", "action", "nth"),
    [
        # After the seat was reserved, before the booking step's result was checkpointed.
        ("flight", "reserve", 1),
        # After the model's (corrected) booking request was billed, before it was checkpointed.
        ("model", "complete", 3),
    ],
    ids=["after-the-booking", "after-the-tool-request"],
)
def test_a_worker_killed_between_the_tool_request_and_its_result_books_and_bills_once(
    stack: AgentStack, provider: str, action: str, nth: int
) -> None:
    # A worker group of its own, so that the worker the switch kills is the one doing the work.
    group = f"crash-{secrets.token_hex(3)}"
    env = {**stack.env, "RESONATE_GROUP": group, "RESONATE_TTL_SECONDS": "2"}
    run_id = f"test-{secrets.token_hex(4)}"
    with worker_process("tool_agent.worker", env, name="worker-1") as first:
        switch = {"provider": provider, "action": action, "pid": first.pid, "nth": nth}
        clients.post(f"{stack.sandbox_url}/_admin/kill-switches", json=switch).raise_for_status()

        async def start() -> None:
            client = Resonate(url=stack.server.url, group="tool-agent-tests")
            try:
                request = {"run_id": run_id, "task": TASK, "max_model_calls": 6}
                await client.options(target=group).rpc(run_id, "agent", request).id()
            finally:
                await client.stop()

        asyncio.run(start())
        assert answer(stack, stack.question_of(run_id), "yes").status_code == 200
        first.wait(timeout=20)  # killed by the switch
    with worker_process("tool_agent.worker", env, name="worker-2"):
        ended = stack.ended(run_id)

    assert ended["state"] == "answered"
    assert ended["bookings"] == stack.reservations(run_id)
    assert len(ended["bookings"]) == 1  # one seat, though the booking may have been sent twice
    billed = stack.billed(run_id)
    assert set(billed.values()) == {1}  # no completion billed twice for one step
    asked = stack.asked(run_id, "model")
    # The model was asked again only for the call the crash interrupted (a replay, not billed);
    # every call whose answer had been checkpointed was read back from the journal.
    repeated = [key for key, times in asked.items() if times > 1]
    assert repeated == ([] if provider == "flight" else [f"{run_id}:5"])
    assert max(stack.asked(run_id, "flight").values()) == (2 if provider == "flight" else 1)


def test_twenty_identical_posts_start_one_run(stack: AgentStack) -> None:
    run = new_run()

    async def post_all() -> list[int]:
        async with clients.async_client(base_url=stack.gateway.base_url, timeout=10) as client:
            responses = await asyncio.gather(*(client.post("/runs", json=run) for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(post_all()) == [202] * 20
    stack.question_of(run["run_id"])
    # One execution: one first model call, billed once.
    assert stack.billed(run["run_id"]) == Counter({f"{run['run_id']}:1": 1})
    assert len(stack.asked(run["run_id"], "slack")) == 1


def test_the_same_run_id_with_a_different_request_is_409(stack: AgentStack) -> None:
    run = new_run()
    assert stack.gateway.post("/runs", json=run).status_code == 202

    conflict = stack.gateway.post("/runs", json={**run, "task": "Book a car instead."})

    assert conflict.status_code == 409
    assert "exists with a different request" in conflict.json()["detail"]
    assert stack.gateway.post("/runs", json=run).status_code == 202  # the same one attaches


def test_a_question_is_answered_once(stack: AgentStack) -> None:
    run = new_run()
    stack.gateway.post("/runs", json=run).raise_for_status()
    question_id = stack.question_of(run["run_id"])

    assert answer(stack, question_id, "no").status_code == 200
    assert answer(stack, question_id, "no").status_code == 200  # a repeat of the same answer
    changed_mind = answer(stack, question_id, "yes")

    assert changed_mind.status_code == 409
    assert "answered already" in changed_mind.json()["detail"]
    assert stack.ended(run["run_id"])["bookings"] == []


def test_unknown_runs_and_promises_that_are_no_questions_are_404(stack: AgentStack) -> None:
    assert stack.gateway.get(f"/runs/no-such-run-{secrets.token_hex(4)}").status_code == 404
    run = new_run()
    stack.gateway.post("/runs", json=run).raise_for_status()
    stack.question_of(run["run_id"])

    # The run's first model call is a promise too, but no question: it cannot be settled here.
    step = f"{run['run_id']}:1"
    assert answer(stack, step, "yes").status_code == 404
    assert answer(stack, "no-such-run:2", "yes").status_code == 404
    assert answer(stack, run["run_id"], "yes").status_code == 422  # a run id is no question id
    assert stack.gateway.get(f"/runs/{step}").status_code == 422
    assert stack.promise_states(run["run_id"])[step] == "resolved"


# -- hostile input -----------------------------------------------------------------------------


def _changed(path: str, value: Any) -> dict[str, Any]:
    return changed(new_run(), path, value)


HOSTILE_RUNS: dict[str, bytes] = {
    **malformed_bodies(new_run()),
    "missing run_id": as_json(_changed("run_id", REMOVED)),
    "missing task": as_json(_changed("task", REMOVED)),
    "run_id with colon": as_json(_changed("run_id", "run:1")),
    "run_id too long": as_json(_changed("run_id", "r" * 65)),
    "run_id number": as_json(_changed("run_id", 7)),
    "run_id path traversal": as_json(_changed("run_id", "../../etc/passwd")),
    "task empty": as_json(_changed("task", "")),
    "task only spaces": as_json(_changed("task", "   ")),
    "task NUL byte": as_json(_changed("task", "Book\x00it")),
    "task bidi override": as_json(_changed("task", "Book \u202eti")),
    "task lone surrogate": as_json(_changed("task", "Book \ud800")),
    "task too long": as_json(_changed("task", "a" * 2001)),
    "task array": as_json(_changed("task", ["Book"])),
    "max_model_calls zero": as_json(_changed("max_model_calls", 0)),
    "max_model_calls huge": as_json(_changed("max_model_calls", 10**9)),
    "max_model_calls as string": as_json(_changed("max_model_calls", "3")),
    "max_model_calls fraction": as_json(_changed("max_model_calls", 2.5)),
    "max_model_calls bool": as_json(_changed("max_model_calls", True)),
    "extra field": as_json(_changed("model", "gpt-5")),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("task", "a" * 20_000)),
}


@pytest.mark.parametrize("body", HOSTILE_RUNS.values(), ids=HOSTILE_RUNS.keys())
def test_a_hostile_run_request_is_rejected_and_nothing_is_stored(
    stack: AgentStack, body: bytes
) -> None:
    executions_before = stack.server.executions()
    calls_before = len(stack.records.requests())

    response = stack.gateway.post(
        "/runs", content=body, headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before
    assert len(stack.records.requests()) == calls_before


def test_a_bad_field_is_422_naming_it(stack: AgentStack) -> None:
    response = stack.gateway.post("/runs", json=_changed("max_model_calls", 0))

    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "max_model_calls"],
            "msg": "Input should be greater than or equal to 1",
            "type": "greater_than_equal",
        }
    ]


HOSTILE_ANSWERS: dict[str, bytes] = {
    "empty object": as_json({}),
    "string": as_json("yes"),
    "answer empty": as_json({"answer": ""}),
    "answer NUL byte": as_json({"answer": "ye\x00s"}),
    "answer too long": as_json({"answer": "y" * 1001}),
    "answer number": as_json({"answer": 1}),
    "extra field": as_json({"answer": "yes", "approved": True}),
    "body over 16 KiB": as_json({"answer": "y" * 20_000}),
}


@pytest.mark.parametrize("body", HOSTILE_ANSWERS.values(), ids=HOSTILE_ANSWERS.keys())
def test_a_hostile_answer_is_rejected_and_the_question_stays_open(
    stack: AgentStack, body: bytes
) -> None:
    run = new_run()
    stack.gateway.post("/runs", json=run).raise_for_status()
    question_id = stack.question_of(run["run_id"])

    response = stack.gateway.post(
        f"/questions/{question_id}/answer",
        content=body,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code in (413, 422), response.text
    assert stack.promise_states(run["run_id"])[question_id] == "pending"
