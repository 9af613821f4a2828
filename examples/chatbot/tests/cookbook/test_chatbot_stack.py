"""chatbot end to end: a real dev server, worker and gateway process, and the stand-in model.

Every test chats through the gateway's HTTP API, then asserts on what the receiving systems
recorded: the stand-in model's billing records in the sandbox (each completion, by idempotency
key) and the dev server (which executions exist). One stack serves the whole module; each test
uses its own chat ids, and the model's records are read by key prefix, i.e. by turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from chatbot.crypto import AesGcmEncryptor, KeyRing
from chatbot.workflow import turn_id
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
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found
from resonate.resonate import Resonate

SCRIPT = Path(__file__).parents[2] / "stand-in-model.toml"
# Long enough for a turn asked again once (2 s later), short enough that one asked twice (2 s,
# then 4 s) is answered 202 and polled.
ANSWER_WITHIN_SECONDS = 5


@dataclass(frozen=True)
class ChatStack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox
    key_ring: KeyRing  # the worker's and the gateway's

    def send(self, chat_id: str, turn: int, message: str) -> httpx.Response:
        return self.gateway.post(f"/chats/{chat_id}/turns", json={"turn": turn, "message": message})

    def arm_fault(self, chat_id: str, turn: int, **fault: Any) -> None:
        """Make the model fail, for this turn's calls only."""
        spec = {"provider": "model", "action": "complete", **fault}
        response = clients.post(
            f"{self.sandbox.url}/_admin/faults",
            json={**spec, "key_prefix": f"{turn_id(chat_id, turn)}:"},
        )
        response.raise_for_status()

    def model_calls(self, chat_id: str, turn: int) -> list[int]:
        """The status of every request the model received for this turn."""
        requests = self.sandbox.records.requests(key_prefix=f"{turn_id(chat_id, turn)}:")
        return [r.status_code for r in requests if r.provider == "model"]

    def billed(self, chat_id: str, turn: int) -> list[str | None]:
        """The idempotency key of every completion the model billed for this turn."""
        effects = self.sandbox.records.effects(key_prefix=f"{turn_id(chat_id, turn)}:")
        return [e.idempotency_key for e in effects if e.provider == "model"]

    def stored(self, chat_id: str, turn: int) -> list[dict[str, Any]]:
        """A turn's promises (the execution and its step) as the server holds them: no key."""
        response = clients.get(f"{self.server.url}/_cookbook/state", headers=self.server.headers)
        promises: list[dict[str, Any]] = response.raise_for_status().json()["promises"]
        return [p for p in promises if p["id"].startswith(turn_id(chat_id, turn))]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatStack]:
    # Module-scoped (one start-up for every test); the processes are stopped by pid at the end.
    # A sandbox of its own: the stand-in model answers from this example's script.
    data_dir = tmp_path_factory.mktemp("devserver")
    db = tmp_path_factory.mktemp("sandbox") / "sandbox.db"
    key_ring = KeyRing.new("test-1")
    with (
        devserver_process(data_dir) as server,
        sandbox_process(db, model_script=SCRIPT) as sandbox,
    ):
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RESONATE_") and not k.startswith("OPENAI_")
        }
        env = {
            **inherited,
            **stand_in_model_env(url_of(sandbox)),
            "RESONATE_URL": url_of(server),
            "PROVIDER_API_URL": url_of(sandbox),
            "ANSWER_WITHIN_SECONDS": str(ANSWER_WITHIN_SECONDS),
            # The worker and the gateway share a key ring of this test module's own.
            "CHAT_ENCRYPTION_KEYS": key_ring.to_json(),
        }
        with (
            worker_process("chatbot.worker", env),
            gateway_process("chatbot.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=30) as client,
        ):
            yield ChatStack(
                client,
                RunningDevServer(server, data_dir, False),
                RunningSandbox(sandbox, SandboxRecords(db)),
                key_ring,
            )


def new_chat() -> str:
    return f"test-{secrets.token_hex(4)}"


GREETING = "Hi, I'm Ada. I'm looking for a book about durable execution."
QUESTION = "Which one would you recommend, and what was my name again?"


# -- the chat ----------------------------------------------------------------------------------


def test_each_turn_carries_the_conversation_so_far_and_is_billed_once(stack: ChatStack) -> None:
    chat = new_chat()

    first = stack.send(chat, 1, GREETING)
    second = stack.send(chat, 2, QUESTION)

    assert first.status_code == 200, first.text
    assert first.json()["status"] == "answered"
    assert second.status_code == 200, second.text
    assert "you are Ada" in second.json()["reply"]  # the name was only in turn 1
    assert len(stack.billed(chat, 1)) == 1
    assert len(stack.billed(chat, 2)) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_a_model_failing_mid_turn_is_asked_again_and_the_user_gets_the_answer_billed_once(
    stack: ChatStack, status: int
) -> None:
    chat = new_chat()
    stack.send(chat, 1, GREETING)
    stack.arm_fault(chat, 2, mode="fail_times", times=1, status=status)

    response = stack.send(chat, 2, QUESTION)

    assert response.status_code == 200, response.text  # in the same request, not sent again
    assert "you are Ada" in response.json()["reply"]
    assert stack.model_calls(chat, 2) == [status, 200]
    assert len(stack.billed(chat, 2)) == 1


def test_a_turn_still_being_retried_is_202_then_polled_and_the_next_turn_waits(
    stack: ChatStack,
) -> None:
    chat = new_chat()
    stack.arm_fault(chat, 1, mode="fail_times", times=2, status=503)  # answered after 2 + 4 s

    accepted = stack.send(chat, 1, GREETING)
    too_early = stack.send(chat, 2, QUESTION)

    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["Location"] == f"/chats/{chat}/turns/1"
    assert accepted.json()["status"] == "pending"
    assert too_early.status_code == 409
    assert "still being answered" in too_early.json()["detail"]
    wait_answered(stack, chat, 1)
    assert stack.model_calls(chat, 1) == [503, 503, 200]
    assert len(stack.billed(chat, 1)) == 1
    assert stack.send(chat, 2, QUESTION).status_code == 200


def test_a_refused_turn_is_an_answer_and_the_next_turn_goes_on_without_it(
    stack: ChatStack,
) -> None:
    chat = new_chat()
    stack.arm_fault(chat, 1, mode="fail_always", status=400)

    refused = stack.send(chat, 1, GREETING)
    second = stack.send(chat, 2, QUESTION)

    assert refused.status_code == 200
    assert refused.json()["status"] == "refused"
    assert stack.model_calls(chat, 1) == [400]  # never retried
    assert "I don't know your name" in second.json()["reply"]


def test_twenty_identical_sends_of_a_turn_are_one_execution_billed_once(stack: ChatStack) -> None:
    chat = new_chat()
    executions_before = stack.server.executions()

    async def send_all() -> list[httpx.Response]:
        async with clients.async_client(base_url=stack.gateway.base_url, timeout=30) as client:
            body = {"turn": 1, "message": GREETING}
            return await asyncio.gather(
                *(client.post(f"/chats/{chat}/turns", json=body) for _ in range(20))
            )

    responses = asyncio.run(send_all())

    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.json()["reply"] for r in responses}) == 1
    assert len(stack.billed(chat, 1)) == 1
    (execution,) = stack.server.executions() - executions_before
    promises = cast(list[dict[str, Any]], stack.server.state(execution)["promises"])
    assert len(promises) == 2  # the turn and its model call


def test_a_turn_sent_again_with_another_message_is_409_and_bills_nothing(
    stack: ChatStack,
) -> None:
    chat = new_chat()
    assert stack.send(chat, 1, GREETING).status_code == 200

    conflict = stack.send(chat, 1, "Something else entirely")

    assert conflict.status_code == 409
    assert "different message" in conflict.json()["detail"]
    assert len(stack.billed(chat, 1)) == 1


def test_a_turn_out_of_order_is_409_and_starts_nothing(stack: ChatStack) -> None:
    chat = new_chat()
    executions_before = stack.server.executions()

    skipped = stack.send(chat, 2, QUESTION)

    assert skipped.status_code == 409
    assert skipped.json()["detail"] == f"chat '{chat}' has no turn 1: send it first"
    assert stack.server.executions() == executions_before


def test_a_turn_is_read_back_and_an_unknown_one_is_404(stack: ChatStack) -> None:
    chat = new_chat()
    answer = stack.send(chat, 1, GREETING).json()

    assert stack.gateway.get(f"/chats/{chat}/turns/1").json() == answer
    assert stack.gateway.get(f"/chats/{chat}/turns/2").status_code == 404
    assert stack.gateway.get(f"/chats/{new_chat()}/turns/1").status_code == 404
    assert stack.gateway.get("/chats/a:b/turns/1").status_code == 422
    assert stack.gateway.get(f"/chats/{chat}/turns/0").status_code == 422


def test_the_server_holds_neither_the_message_nor_the_reply_in_plaintext(
    stack: ChatStack,
) -> None:
    chat = new_chat()
    stack.send(chat, 1, GREETING)
    second = stack.send(chat, 2, QUESTION)
    reply = second.json()["reply"]

    stored = stack.stored(chat, 2)

    # The execution (its argument, its result) and its model call (its result): the turn.
    assert len(stored) == 2
    assert all(p["state"] == "resolved" for p in stored)
    [execution] = [p for p in stored if p["id"] == turn_id(chat, 2)]
    assert execution["param"].get("data")
    assert all(p["value"].get("data") for p in stored)
    # Turn 2 carries the whole chat so far (both messages, turn 1's reply) and its own reply.
    personal = [GREETING, QUESTION, reply]
    assert plaintext_found(json.dumps(stored).encode(), personal) == []


def wait_answered(stack: ChatStack, chat: str, turn: int) -> None:
    """Wait for the turn to settle: the execution's own completion, not a poll of the gateway."""

    async def settled() -> None:
        client = Resonate(
            url=stack.server.url, group="chatbot-tests", encryptor=AesGcmEncryptor(stack.key_ring)
        )
        try:
            await asyncio.wait_for((await client.get(turn_id(chat, turn))).result(), 30)
        finally:
            await client.stop()

    asyncio.run(settled())
    assert stack.gateway.get(f"/chats/{chat}/turns/{turn}").json()["status"] == "answered"


# -- hostile input -----------------------------------------------------------------------------

VALID = {"turn": 1, "message": GREETING}

HOSTILE: dict[str, bytes] = {
    **malformed_bodies(VALID),
    "missing turn": as_json(changed(VALID, "turn", REMOVED)),
    "missing message": as_json(changed(VALID, "message", REMOVED)),
    "turn zero": as_json(changed(VALID, "turn", 0)),
    "turn negative": as_json(changed(VALID, "turn", -1)),
    "turn past the limit": as_json(changed(VALID, "turn", 51)),
    "turn as string": as_json(changed(VALID, "turn", "1")),
    "turn fraction": as_json(changed(VALID, "turn", 1.5)),
    "turn as bool": as_json(changed(VALID, "turn", True)),
    "turn huge": as_json(changed(VALID, "turn", 10**40)),
    "message empty": as_json(changed(VALID, "message", "")),
    "message only spaces": as_json(changed(VALID, "message", " \n\t ")),
    "message NUL byte": as_json(changed(VALID, "message", "Hi\x00there")),
    "message escape sequence": as_json(changed(VALID, "message", "Hi\x1b[2Jthere")),
    "message lone surrogate": as_json(changed(VALID, "message", "Hi \ud800")),
    "message too long": as_json(changed(VALID, "message", "x" * 4001)),
    "message array": as_json(changed(VALID, "message", ["Hi"])),
    "message number": as_json(changed(VALID, "message", 42)),
    "extra field": as_json(changed(VALID, "history", [])),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 32 KiB": as_json(changed(VALID, "message", "A" * 40_000)),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_request_is_rejected_and_nothing_is_stored(stack: ChatStack, body: bytes) -> None:
    executions_before = stack.server.executions()
    model_calls_before = len(stack.sandbox.records.requests())

    response = stack.gateway.post(
        f"/chats/{new_chat()}/turns", content=body, headers={"Content-Type": "application/json"}
    )

    assert 400 <= response.status_code < 500, response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before
    assert len(stack.sandbox.records.requests()) == model_calls_before


@pytest.mark.parametrize("chat_id", ["a:b", "a.b", "-a", "x" * 65, "é"])
def test_a_bad_chat_id_is_422_naming_it(stack: ChatStack, chat_id: str) -> None:
    response = stack.gateway.post(f"/chats/{chat_id}/turns", json=VALID)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "chat_id"]


def test_a_bad_message_is_422_naming_the_field(stack: ChatStack) -> None:
    response = stack.gateway.post(f"/chats/{new_chat()}/turns", json={"turn": 1, "message": " "})

    assert response.status_code == 422
    assert [p["loc"] for p in response.json()["detail"]] == [["body", "message"]]
