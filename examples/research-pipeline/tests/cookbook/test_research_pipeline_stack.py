"""research-pipeline end to end: a dev server, workers, two gateways, the stand-in model.

These tests need the cookbook's harness (its dev server, the provider sandbox with its stand-in
model, process helpers), so they live apart from the portable tests. They talk to the gateways
over HTTP only, as a client would, and assert on what the receiving systems recorded: the
stand-in model's billed completions and the chat API's messages (the sandbox's records), and
the dev server's promises. One stack serves the module; each test uses its own runs.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.sandbox.store import EffectRecord, SandboxRecords
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
from research_pipeline.gateway import research_id_for
from research_pipeline.steps import RESEARCHER, REVIEWER, WRITER
from resonate.resonate import Resonate

EXAMPLE = Path(__file__).parents[2]
TIDAL = {"topic": "tidal power in Scotland"}
AGENTS = {RESEARCHER: "researcher", WRITER: "writer", REVIEWER: "reviewer"}


@dataclass(frozen=True)
class Stack:
    gateways: tuple[httpx.Client, httpx.Client]
    server: RunningDevServer
    sandbox_url: str
    records: SandboxRecords
    env: dict[str, str]

    @property
    def gateway(self) -> httpx.Client:
        return self.gateways[0]

    def completions(self, research_id: str) -> list[tuple[str, str]]:
        """The run's billed completions, in order: (agent, idempotency key)."""
        return [(agent_of(e), str(e.idempotency_key)) for e in self.effects(research_id, "model")]

    def effects(self, research_id: str, provider: str) -> list[EffectRecord]:
        # Every key a run sends is made from a step id under the run's id: it begins with it.
        return [e for e in self.records.effects(key_prefix=research_id) if e.provider == provider]

    def asked(self, key: str) -> list[bool]:
        """Every completion request sent with this key: was it answered from the record?"""
        return [r.replayed for r in self.records.requests(key_prefix=key) if r.provider == "model"]

    def arm(self, **spec: Any) -> None:
        clients.post(f"{self.sandbox_url}/_admin/faults", json=spec).raise_for_status()

    def kill_after(self, nth_completion: int, pid: int) -> None:
        """SIGKILL `pid` right after the nth completion billed from now, before it is answered."""
        switch = {"provider": "model", "action": "complete", "nth": nth_completion, "pid": pid}
        clients.post(f"{self.sandbox_url}/_admin/kill-switches", json=switch).raise_for_status()


def agent_of(effect: EffectRecord) -> str:
    return AGENTS[effect.body["messages"][0]["content"]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Module-scoped: one start-up for every test; the processes are stopped by pid at the end.
    data_dir = tmp_path_factory.mktemp("devserver")
    db_path = tmp_path_factory.mktemp("sandbox") / "sandbox.db"
    script = EXAMPLE / "stand-in-model.toml"
    with (
        devserver_process(data_dir, fast_recovery=True) as server,
        sandbox_process(db_path, model_script=script) as sandbox,
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
            worker_process("research_pipeline.worker", env, name="worker-1"),
            worker_process("research_pipeline.worker", env, name="worker-2"),
            gateway_process("research_pipeline.gateway", env) as first,
            gateway_process("research_pipeline.gateway", env) as second,
            clients.client(base_url=url_of(first), timeout=30) as a,
            clients.client(base_url=url_of(second), timeout=30) as b,
        ):
            yield Stack(
                (a, b),
                RunningDevServer(server, data_dir, True),
                url_of(sandbox),
                SandboxRecords(db_path),
                env,
            )


def begin(gateway: httpx.Client, body: dict[str, Any] | None = None, key: str = "") -> str:
    headers = {"Idempotency-Key": key} if key else {}
    accepted = gateway.post("/research", json=body or TIDAL, headers=headers)
    assert accepted.status_code == 202, accepted.text
    research_id: str = accepted.json()["research_id"]
    return research_id


def settled(gateway: httpx.Client, research_id: str) -> dict[str, Any]:
    for _ in range(5):
        response = gateway.get(f"/research/{research_id}", params={"wait": 20})
        status: dict[str, Any] = response.json()
        if status["status"] != "pending":
            return status
    raise AssertionError(f"{research_id} still pending: {status}")


def new_key() -> str:
    return f"test-{secrets.token_hex(6)}"


# -- the pipeline, billed once per call --------------------------------------------------------


def test_a_run_started_on_one_gateway_is_delivered_once_and_read_on_the_other(stack: Stack) -> None:
    key = new_key()
    research_id = research_id_for(key)

    accepted = stack.gateway.post("/research", json=TIDAL, headers={"Idempotency-Key": key})
    status = settled(stack.gateways[1], research_id)

    assert accepted.status_code == 202
    assert accepted.headers["Location"] == f"/research/{research_id}"
    completions = stack.completions(research_id)
    assert [agent for agent, _ in completions] == [
        "researcher",
        "writer",
        "reviewer",
        "writer",
        "reviewer",
    ]
    assert len({key for _, key in completions}) == 5  # five calls, five keys, each billed once
    (message,) = stack.effects(research_id, "slack")
    assert message.body["channel"] == "#research"
    report = status["report"]
    assert status["status"] == "delivered"
    assert (report["approved"], report["revisions"]) == (True, 1)
    assert report["message_id"] == message.resource_id
    assert "Sources:" in report["report"]
    assert message.body["text"].endswith(report["report"])


def test_a_draft_the_reviewer_never_approves_goes_back_twice(stack: Stack) -> None:
    research_id = begin(stack.gateway, {"topic": "perpetual motion machines"})

    status = settled(stack.gateway, research_id)

    assert [agent for agent, _ in stack.completions(research_id)] == [
        "researcher",
        "writer",
        *["reviewer", "writer"] * 2,
        "reviewer",
    ]
    assert status["status"] == "delivered"
    assert (status["report"]["approved"], status["report"]["revisions"]) == (False, 2)
    (message,) = stack.effects(research_id, "slack")
    assert "(not approved after 2 revisions)" in message.body["text"]


def run_on_own_worker(stack: Stack, research_id: str, kill_after: int) -> dict[str, Any]:
    """Run the pipeline on a worker of a group of its own, SIGKILLed right after the
    `kill_after`th completion it is billed for; then a new worker of the group takes over."""
    group = f"research-pipeline-crash-{secrets.token_hex(3)}"
    env = {**stack.env, "RESONATE_GROUP": group, "RESONATE_TTL_SECONDS": "2"}

    async def run(doomed: ManagedProcess) -> Any:
        client = Resonate(url=stack.server.url, group=f"{group}-client")
        try:
            handle = client.options(target=group).rpc(research_id, "research_topic", TIDAL)
            assert await asyncio.to_thread(doomed.wait, 60) == -signal.SIGKILL
            with worker_process("research_pipeline.worker", env, name="successor"):
                return await asyncio.wait_for(handle.result(), 60)
        finally:
            await client.stop()

    with worker_process("research_pipeline.worker", env, name="doomed") as doomed:
        stack.kill_after(kill_after, doomed.pid)
        result: dict[str, Any] = asyncio.run(run(doomed))
    return result


def test_a_crash_after_the_writers_checkpoint_never_asks_the_writer_again(stack: Stack) -> None:
    research_id = f"research-{secrets.token_hex(16)}"

    # Killed right after the reviewer's first completion: the writer's draft was checkpointed.
    result = run_on_own_worker(stack, research_id, kill_after=3)

    completions = stack.completions(research_id)
    writer_key = completions[1][1]
    reviewer_key = completions[2][1]
    assert [agent for agent, _ in completions] == [
        "researcher",
        "writer",
        "reviewer",
        "writer",
        "reviewer",
    ]
    assert stack.asked(writer_key) == [False]  # asked once, before the crash; never again
    assert stack.asked(reviewer_key) == [False, True]  # its answer was lost: replayed, not billed
    assert (result["outcome"], result["revisions"]) == ("delivered", 1)


def test_a_crash_before_the_writers_checkpoint_does_not_pay_for_it_twice(stack: Stack) -> None:
    research_id = f"research-{secrets.token_hex(16)}"

    # Killed right after the writer's completion was billed, before the draft was checkpointed.
    result = run_on_own_worker(stack, research_id, kill_after=2)

    completions = stack.completions(research_id)
    writer_key = completions[1][1]
    assert [agent for agent, _ in completions].count("writer") == 2  # first draft and revision
    assert len({key for _, key in completions}) == len(completions) == 5
    assert stack.asked(writer_key) == [False, True]  # asked again after the crash: replayed
    assert result["outcome"] == "delivered"


# -- the failure model -------------------------------------------------------------------------


def test_a_model_refusal_is_a_value_asked_once(stack: Stack) -> None:
    key = new_key()
    research_id = research_id_for(key)
    stack.arm(
        provider="model", action="complete", mode="fail_always", status=404, key_prefix=research_id
    )

    begin(stack.gateway, key=key)
    status = settled(stack.gateway, research_id)

    assert status == {
        "research_id": research_id,
        "status": "refused",
        "reason": "researcher: the model refused (HTTP 404)",
        "report": {
            "outcome": "refused",
            "topic": TIDAL["topic"],
            "revisions": 0,
            "refused_by": "researcher",
            "reason": "researcher: the model refused (HTTP 404)",
        },
    }
    requests = stack.records.requests(key_prefix=research_id)
    assert [(r.provider, r.status_code) for r in requests] == [("model", 404)]


def test_a_rate_limited_call_is_retried_under_its_key_and_billed_once(stack: Stack) -> None:
    key = new_key()
    research_id = research_id_for(key)
    stack.arm(
        provider="model",
        action="complete",
        mode="fail_times",
        times=1,
        status=429,
        key_prefix=research_id,
    )

    begin(stack.gateway, key=key)

    assert settled(stack.gateway, research_id)["status"] == "delivered"
    first_key = stack.completions(research_id)[0][1]
    requests = stack.records.requests(key_prefix=first_key)
    assert [r.status_code for r in requests] == [429, 200]
    assert len(stack.completions(research_id)) == 5


# -- the gateway -------------------------------------------------------------------------------


def test_twenty_concurrent_posts_with_one_key_start_one_run(stack: Stack) -> None:
    key = new_key()

    async def post_all() -> list[httpx.Response]:
        async def post(base_url: httpx.URL) -> httpx.Response:
            async with clients.async_client(base_url=base_url, timeout=30) as client:
                return await client.post("/research", json=TIDAL, headers={"Idempotency-Key": key})

        urls = [stack.gateways[i % 2].base_url for i in range(20)]  # through both gateways
        return await asyncio.gather(*(post(url) for url in urls))

    responses = asyncio.run(post_all())

    research_id = research_id_for(key)
    assert [r.status_code for r in responses] == [202] * 20
    assert {r.json()["research_id"] for r in responses} == {research_id}
    assert settled(stack.gateway, research_id)["status"] == "delivered"
    assert len(stack.completions(research_id)) == 5  # one run's worth, each billed once
    assert len(stack.effects(research_id, "slack")) == 1


def test_a_key_reused_for_a_different_topic_is_409(stack: Stack) -> None:
    key = new_key()
    research_id = begin(stack.gateway, key=key)

    conflict = stack.gateway.post(
        "/research", json={"topic": "wave power"}, headers={"Idempotency-Key": key}
    )

    assert conflict.status_code == 409
    assert conflict.json() == {"detail": "this Idempotency-Key was used for a different request"}
    assert settled(stack.gateway, research_id)["report"]["topic"] == TIDAL["topic"]


def test_unknown_runs_are_404_and_malformed_ids_422(stack: Stack) -> None:
    unknown = stack.gateway.get(f"/research/research-{secrets.token_hex(16)}")
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"detail"}
    for malformed in ("research-1", f"RESEARCH-{secrets.token_hex(16)}", "x" * 300):
        response = stack.gateway.get(f"/research/{malformed}")
        assert response.status_code == 422, malformed
        assert [p["loc"] for p in response.json()["detail"]] == [["path", "research_id"]]


HOSTILE: dict[str, bytes] = {
    **malformed_bodies(TIDAL),
    "not json": b"topic=tidal",
    "missing topic": as_json(changed(TIDAL, "topic", REMOVED)),
    "topic null": as_json(changed(TIDAL, "topic", None)),
    "topic number": as_json(changed(TIDAL, "topic", 42)),
    "topic array": as_json(changed(TIDAL, "topic", ["tidal"])),
    "topic too short": as_json(changed(TIDAL, "topic", "ab")),
    "topic only spaces": as_json(changed(TIDAL, "topic", "     ")),
    "topic leading space": as_json(changed(TIDAL, "topic", " tidal power")),
    "topic over 200 characters": as_json(changed(TIDAL, "topic", "t" * 201)),
    "topic NUL byte": as_json(changed(TIDAL, "topic", "tidal\x00power")),
    "topic newline": as_json(changed(TIDAL, "topic", "tidal\npower")),
    "topic bidi override": as_json(changed(TIDAL, "topic", "tidal\u202epower")),
    "topic lone surrogate": as_json(changed(TIDAL, "topic", "tidal\ud800power")),
    "extra field": as_json(changed(TIDAL, "model", "gpt-5")),
    "research id smuggled in": as_json(changed(TIDAL, "research_id", "research-" + "0" * 32)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(changed(TIDAL, "topic", "t" * 20_000)),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_request_is_rejected_and_nothing_is_stored(stack: Stack, body: bytes) -> None:
    executions_before = stack.server.executions()
    calls_before = len(stack.records.requests())

    response = stack.gateway.post(
        "/research", content=body, headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before
    assert len(stack.records.requests()) == calls_before


def test_a_bad_topic_is_422_naming_it(stack: Stack) -> None:
    response = stack.gateway.post("/research", json={"topic": "ab"})

    assert response.status_code == 422
    assert [(p["loc"], p["msg"]) for p in response.json()["detail"]] == [
        (["body", "topic"], "String should have at least 3 characters")
    ]


def test_a_body_over_16_kib_is_413_also_when_streamed(stack: Stack) -> None:
    streamed = stack.gateway.post(
        "/research",
        content=iter([b'{"topic": "', b"t" * 20_000, b'"}']),
        headers={"Content-Type": "application/json"},
    )

    assert streamed.status_code == 413
    assert streamed.json() == {"detail": "the body is over 16 KiB"}


@pytest.mark.parametrize("key", ["", "a" * 256, "with space", "ключ"])
def test_a_bad_idempotency_key_is_422_naming_the_header(stack: Stack, key: str) -> None:
    executions_before = stack.server.executions()

    response = stack.gateway.post(
        "/research", json=TIDAL, headers={b"Idempotency-Key": key.encode()}
    )

    assert response.status_code == 422
    assert [p["loc"] for p in response.json()["detail"]] == [["header", "Idempotency-Key"]]
    assert stack.server.executions() == executions_before
