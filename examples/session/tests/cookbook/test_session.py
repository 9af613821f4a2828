"""session end to end: a real dev server, worker and gateway processes, and the provider sandbox.

Every test drives sessions through the gateway's HTTP API, then asserts on what the receiving
systems recorded: the sandbox (each token issued, activity recorded and token revoked, with its own
timestamps) and the dev server (the session's promises, their deadlines). The API tests share one
stack, in real time; the deadline and crash tests start their own, on a dev server that skips
time, so their idle timeout is the gateway's 30 minutes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.sandbox.store import EffectRecord
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.fixtures import (
    DevServerFactory,
    ProcessFactory,
    RunningDevServer,
    RunningSandbox,
)
from resonate.promises import Promises
from resonate.resonate import Resonate
from resonate.send import PromiseSearchResult
from resonate.types import PromiseRecord, Value
from session.gateway import MAX_BODY_BYTES, Sessions, create_app
from session.steps import ROUND_TAG

TIMEOUT_S = 30
# The gateway's default idle timeout. The tests that reach it run on a dev server that skips time
# (see `skipping_stack`), so they wait for it in well under a second.
IDLE_TIMEOUT_S = 30 * 60
# How late the idle timeout may revoke the token, measured from the moment the server timed the
# round's move out (its stored deadline, once time skipped to it) to the provider's own timestamp
# of the revocation: up to one dev-server tick (100 ms), then a replay and one HTTP call, about
# 0.1 s on a quiet machine; room for a loaded one, and still far from a timer of the worker's.
DEADLINE_TOLERANCE_S = 2.0
# How exactly the deadline a round stores follows the activity before it: the worker computes it
# when the round starts, right after the activity was recorded: milliseconds on a quiet machine,
# room for a loaded one (a deadline counted from anything else is minutes off).
ROUND_START_S = 1.0


@dataclass(frozen=True)
class Stack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox
    tokens: dict[str, str] = field(default_factory=dict)  # session id -> the token its login got

    def login(self, idle_timeout_seconds: int = IDLE_TIMEOUT_S, user: str = "Zoë") -> str:
        session_id = f"test-{secrets.token_hex(4)}"
        self.start_login(session_id, user, idle_timeout_seconds)
        self.wait_for(session_id, lambda s: s["state"] != "starting")
        return session_id

    def start_login(
        self, session_id: str, user: str = "Zoë", idle_timeout_seconds: int = IDLE_TIMEOUT_S
    ) -> None:
        body = {
            "session_id": session_id,
            "user": user,
            "idle_timeout_seconds": idle_timeout_seconds,
        }
        response = self.gateway.post("/sessions", json=body)
        assert response.status_code == 202, response.text
        self.tokens[session_id] = response.json()["token"]

    def auth(self, session_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[session_id]}"}

    def get(self, session_id: str) -> httpx.Response:
        return self.gateway.get(f"/sessions/{session_id}", headers=self.auth(session_id))

    def post(self, session_id: str, what: str, body: Any = None) -> httpx.Response:
        url = f"/sessions/{session_id}/{what}"
        return self.gateway.post(url, json=body, headers=self.auth(session_id))

    def act(self, session_id: str, action: str) -> str:
        response = self.post(session_id, "activity", {"action": action})
        assert response.status_code == 202, response.text
        activity_id: str = response.json()["activity_id"]
        return activity_id

    def wait_for(self, session_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll the session's status, as any HTTP client would, until `done` says so."""
        give_up = time.monotonic() + TIMEOUT_S
        while time.monotonic() < give_up:
            session: dict[str, Any] = self.get(session_id).json()
            if done(session):
                return session
            time.sleep(0.05)
        raise TimeoutError(f"session {session_id} did not get there in {TIMEOUT_S}s")

    def idle_deadline(self, session_id: str, activities: int) -> float:
        """The deadline the gateway shows once the round after the nth activity has started."""
        session = self.wait_for(
            session_id, lambda s: len(s["activities"]) == activities and "idle_deadline" in s
        )
        return datetime.fromisoformat(session["idle_deadline"]).timestamp()

    def wait_ended(self, session_id: str) -> dict[str, Any]:
        return self.wait_for(session_id, lambda s: s["state"] == "ended")

    def effects(self, session_id: str) -> list[EffectRecord]:
        return self.sandbox.records.effects(key_prefix=f"{session_id}:")


def server_promises(server: RunningDevServer, origin: str | None = None) -> list[dict[str, Any]]:
    promises = server.state(origin)["promises"]
    assert isinstance(promises, list)
    return promises


def ops(effects: list[EffectRecord]) -> list[str]:
    return [e.body["op"] for e in effects]


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def newest_move(server: RunningDevServer, session_id: str) -> dict[str, Any]:
    """The promise of the session's newest round, as the server stores it (its timeout is the
    round's idle deadline)."""
    moves = [p for p in server_promises(server, session_id) if p["tags"].get("resonate:external")]
    return max(moves, key=lambda p: int(p["createdAt"]))


def wait_until_timed_out(server: RunningDevServer, session_id: str) -> dict[str, Any]:
    give_up = time.monotonic() + TIMEOUT_S
    while (move := newest_move(server, session_id))["state"] == "pending":
        assert time.monotonic() < give_up, f"the idle deadline of {session_id} never passed"
        time.sleep(0.05)
    return move


@contextlib.contextmanager
def time_held(server: RunningDevServer) -> Iterator[None]:
    """Keep a dev server that skips time from skipping: the user acts "in time".

    It skips only while no task waits for a worker or is leased to one, so a task waiting for a
    group no worker serves holds it; resolving its promise lets time skip again.
    """
    hold_id = f"session-tests-hold-{secrets.token_hex(4)}"

    async def settle(create: bool) -> None:
        client = Resonate(url=server.url, group="session-tests")
        try:
            if create:
                in_a_day = int(time.time() * 1000) + 24 * 3600 * 1000
                target = {"resonate:target": "poll://any@session-tests-hold"}
                await client.promises.create(hold_id, in_a_day, Value(), target)
            else:
                await client.promises.resolve(hold_id, Value())
        finally:
            await client.stop()

    asyncio.run(settle(create=True))
    try:
        yield
    finally:
        asyncio.run(settle(create=False))


@pytest.fixture(scope="module")
def stack(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir) as server:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        env = {**inherited, "RESONATE_URL": url_of(server), "PROVIDER_API_URL": sandbox.url}
        with (
            worker_process("session.worker", env),
            gateway_process("session.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=TIMEOUT_S) as client,
        ):
            yield Stack(client, RunningDevServer(server, data_dir, False), sandbox)


# -- the lifecycle -----------------------------------------------------------------------------


def test_login_activities_and_logout_each_reach_the_provider_once(stack: Stack) -> None:
    session_id = stack.login()
    active = stack.get(session_id).json()
    first = stack.act(session_id, "opened /reports")
    second = stack.act(session_id, "downloaded q3.pdf")
    both = stack.wait_for(session_id, lambda s: len(s["activities"]) == 2)

    assert stack.post(session_id, "logout").status_code == 202
    ended = stack.wait_ended(session_id)

    issue, record_first, record_second, revoke = effects = stack.effects(session_id)
    assert ops(effects) == ["issue_token", "record_activity", "record_activity", "revoke_token"]
    assert set(stack.sandbox.records.effect_counts_by_key(f"{session_id}:").values()) == {1}
    credential = issue.resource_id
    token_sha256 = digest(stack.tokens[session_id])
    assert issue.body == {"op": "issue_token", "user": "Zoë", "token_sha256": token_sha256}
    assert record_first.body == {
        "op": "record_activity",
        "credential_id": credential,
        "activity_id": first,
        "action": "opened /reports",
    }
    assert record_second.body["activity_id"] == second
    assert revoke.body == {"op": "revoke_token", "credential_id": credential}
    assert active["state"] == "active"
    assert active["activities"] == []
    assert both["activities"] == [
        {"activity_id": first, "action": "opened /reports"},
        {"activity_id": second, "action": "downloaded q3.pdf"},
    ]
    assert ended == {
        "session_id": session_id,
        "user": "Zoë",
        "state": "ended",
        "idle_timeout_seconds": IDLE_TIMEOUT_S,
        "ended_by": "logout",
        "activities": both["activities"],
    }


def test_after_the_session_ended_activity_and_logout_are_409(stack: Stack) -> None:
    session_id = stack.login()
    assert stack.post(session_id, "logout").status_code == 202
    stack.wait_ended(session_id)

    late = stack.post(session_id, "activity", {"action": "late"})
    again = stack.post(session_id, "logout")

    assert late.status_code == 409
    assert late.json()["detail"] == "the session has ended"
    assert again.status_code == 409
    assert ops(stack.effects(session_id)) == ["issue_token", "revoke_token"]


def test_concurrent_activities_are_each_recorded_once(stack: Stack) -> None:
    session_id = stack.login()
    actions = [f"clicked button {n}" for n in range(8)]

    async def post_all() -> list[httpx.Response]:
        async with clients.async_client(
            base_url=stack.gateway.base_url, timeout=TIMEOUT_S, headers=stack.auth(session_id)
        ) as client:
            return await asyncio.gather(
                *(
                    client.post(f"/sessions/{session_id}/activity", json={"action": action})
                    for action in actions
                )
            )

    responses = asyncio.run(post_all())
    assert [r.status_code for r in responses] == [202] * len(actions)
    stack.post(session_id, "logout")
    ended = stack.wait_ended(session_id)

    accepted = {r.json()["activity_id"]: r.json()["action"] for r in responses}
    assert {a["activity_id"]: a["action"] for a in ended["activities"]} == accepted
    records = [e for e in stack.effects(session_id) if e.body["op"] == "record_activity"]
    assert sorted(e.body["activity_id"] for e in records) == sorted(accepted)
    assert set(stack.sandbox.records.effect_counts_by_key(f"{session_id}:").values()) == {1}


# -- the token -----------------------------------------------------------------------------------


def encodings(secret: str) -> list[str]:
    """`secret` as it could sit in a stored document: plain, or inside base64 at any alignment.

    The SDK stores values as base64 of their JSON, so a plaintext token in a promise would not
    show up as itself. Of each alignment, only the characters that depend on the secret alone.
    """
    raw = secret.encode()
    forms = [secret]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        forms.append(encoded[(shift * 4 + 2) // 3 : -4])
    return forms


def test_the_token_is_nowhere_in_the_server_or_in_any_answer(stack: Stack) -> None:
    session_id = stack.login()
    token = stack.tokens[session_id]
    stack.act(session_id, "opened /reports")
    active = stack.get(session_id)
    stack.post(session_id, "logout")
    stack.wait_ended(session_id)
    ended = stack.get(session_id)

    places = {
        "GET while active": active.text,
        "GET once ended": ended.text,
        "/_cookbook/state": clients.get(f"{stack.server.url}/_cookbook/state").text,
        "/_cookbook/journal": clients.get(f"{stack.server.url}/_cookbook/journal").text,
        **{
            f"data dir {path.name}": path.read_bytes().decode("utf-8", "replace")
            for path in stack.server.data_dir.rglob("*")
            if path.is_file()
        },
    }
    assert any(name.startswith("data dir") for name in places), "the WAL was not found"
    found = [name for name, text in places.items() if any(f in text for f in encodings(token))]
    assert found == [], f"the bearer token is readable in {found}"
    # What the session holds instead is the token's digest; finding it also shows that the scan
    # sees through the server's base64.
    held = [
        name for name, text in places.items() if any(f in text for f in encodings(digest(token)))
    ]
    assert "/_cookbook/state" in held
    assert any(name.startswith("data dir") for name in held), held


def test_a_request_without_the_sessions_token_is_refused(stack: Stack) -> None:
    session_id = stack.login()
    other = stack.login()
    url = f"/sessions/{session_id}"

    no_token = [
        stack.gateway.get(url),
        stack.gateway.post(f"{url}/activity", json={"action": "x"}),
        stack.gateway.post(f"{url}/logout"),
    ]
    others_token = [
        stack.gateway.get(url, headers=stack.auth(other)),
        stack.gateway.post(f"{url}/activity", json={"action": "x"}, headers=stack.auth(other)),
        stack.gateway.post(f"{url}/logout", headers=stack.auth(other)),
    ]

    assert [r.status_code for r in no_token] == [401] * 3
    assert all(r.headers["WWW-Authenticate"] == "Bearer" for r in no_token)
    # The same answer as for a session that does not exist: no probing which ids do.
    assert [r.status_code for r in others_token] == [404] * 3
    assert stack.get(session_id).json()["state"] == "active"
    assert ops(stack.effects(session_id)) == ["issue_token"]


# -- the identity provider's refusals and outages ------------------------------------------------


def add_fault(stack: Stack, **fault: Any) -> None:
    response = clients.post(f"{stack.sandbox.url}/_admin/faults", json={"provider": "api", **fault})
    assert response.status_code == 201, response.text


def test_a_refused_login_is_an_answer_and_is_not_retried(stack: Stack) -> None:
    session_id = f"test-{secrets.token_hex(4)}"
    add_fault(stack, mode="fail_always", status=403, key_prefix=f"{session_id}:")

    stack.start_login(session_id)
    ended = stack.wait_ended(session_id)

    assert ended["ended_by"] == "refused"
    assert "identity provider refused issue_token: 403" in ended["problem"]
    requests = stack.sandbox.records.requests(f"{session_id}:")
    assert [r.status_code for r in requests] == [403]  # asked once: a refusal is not retried
    assert stack.effects(session_id) == []


def test_a_provider_outage_is_retried_with_the_same_key(stack: Stack) -> None:
    session_id = f"test-{secrets.token_hex(4)}"
    add_fault(stack, mode="fail_times", times=1, status=429, key_prefix=f"{session_id}:")

    stack.start_login(session_id)
    stack.wait_for(session_id, lambda s: s["state"] == "active")

    requests = stack.sandbox.records.requests(f"{session_id}:")
    assert [r.status_code for r in requests] == [429, 200]
    assert len({r.idempotency_key for r in requests}) == 1
    assert ops(stack.effects(session_id)) == ["issue_token"]


# -- reading state -----------------------------------------------------------------------------


class RecordingPromises(Promises):
    """The Resonate client's promises API, noting every id read or settled and every search."""

    def __init__(self, inner: Promises) -> None:
        super().__init__(inner.sender, inner.codec)
        self.touched: list[str] = []
        self.searched: list[dict[str, str] | None] = []
        self.found: list[PromiseRecord] = []

    async def get(self, id: str) -> PromiseRecord:
        self.touched.append(id)
        return await super().get(id)

    async def resolve(self, id: str, value: Value) -> PromiseRecord:
        self.touched.append(id)
        return await super().resolve(id, value)

    async def search(
        self, state: str | None, tags: dict[str, str] | None, limit: int | None, cursor: str | None
    ) -> PromiseSearchResult:
        self.searched.append(tags)
        result = await super().search(state, tags, limit, cursor)
        self.found += result.promises
        return result


def test_the_gateway_reads_only_ids_it_chose_or_was_told(stack: Stack) -> None:
    session_id = stack.login()
    stack.act(session_id, "opened /reports")
    stack.wait_for(session_id, lambda s: len(s["activities"]) == 1 and "idle_deadline" in s)

    async def look_up_and_log_out() -> RecordingPromises:
        resonate = Resonate(url=stack.server.url, group="session-tests")
        recorder = resonate.promises = RecordingPromises(resonate.promises)
        sessions = Sessions(resonate, "session", 60)
        try:
            login = await sessions.started_with(session_id)
            assert login is not None
            view = await sessions.view(session_id, login)
            assert (view.state, len(view.activities)) == ("active", 1)
            assert await sessions.deliver(session_id, {"type": "logout"}) == "delivered"
        finally:
            await resonate.stop()
        return recorder

    recorder = asyncio.run(look_up_and_log_out())

    # The session id is the gateway's; the promises of the moves are named by the round records
    # (which it finds by the tag the session gives them): no id is built from the SDK's scheme.
    rounds = [record.param.data for record in recorder.found]
    told = {str(r["move"]) for r in rounds if isinstance(r, dict)}
    assert set(recorder.touched) <= {session_id} | told, set(recorder.touched) - told
    assert set(recorder.touched) & told, "the move was delivered into the promise it was told of"
    assert recorder.searched
    assert all(tags == {ROUND_TAG: session_id} for tags in recorder.searched)
    assert stack.wait_ended(session_id)["ended_by"] == "logout"


# -- the OpenAPI document ------------------------------------------------------------------------

# Every answer each operation gives, as the tests of this module see them.
ANSWERS = {
    ("post", "/sessions"): {"202", "400", "409", "413", "422"},
    ("post", "/sessions/{session_id}/activity"): {
        *("202", "400", "401", "404", "409", "413", "422", "503")
    },
    ("post", "/sessions/{session_id}/logout"): {"202", "401", "404", "409", "422", "503"},
    ("get", "/sessions/{session_id}"): {"200", "401", "404", "422"},
}


def test_the_openapi_document_declares_every_answer_with_its_body() -> None:
    document = create_app("http://127.0.0.1:9", "session", 60).openapi()
    operations = {
        (method, path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }

    assert set(operations) == set(ANSWERS)
    for key, operation in operations.items():
        assert set(operation["responses"]) == ANSWERS[key], key
        for status, answer in operation["responses"].items():
            body = answer["content"]["application/json"]["schema"]
            model = "FieldErrors" if status == "422" else "Error" if status >= "400" else None
            if model is not None:
                assert body == {"$ref": f"#/components/schemas/{model}"}, (key, status)
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


@pytest.mark.parametrize(
    "body", [b"\xff{", b"[" * 1500 + b"]" * 1500], ids=["not utf-8", "nested 1500 deep"]
)
def test_a_body_that_is_not_json_or_too_deep_is_400(stack: Stack, body: bytes) -> None:
    login = stack.gateway.post(
        "/sessions", content=body, headers={"Content-Type": "application/json"}
    )

    assert login.status_code == 400
    assert login.json() == {"detail": "There was an error parsing the body"}


# -- identity and input ------------------------------------------------------------------------


def test_a_session_id_is_logged_into_once(stack: Stack) -> None:
    session_id = stack.login(idle_timeout_seconds=60, user="ada")
    same = {"session_id": session_id, "user": "ada", "idle_timeout_seconds": 60}

    # The first login's token is stored nowhere: a second login cannot be given it, nor a token
    # of its own for a session started with another one's digest.
    again = stack.gateway.post("/sessions", json=same)
    other_user = stack.gateway.post("/sessions", json={**same, "user": "grace"})

    assert again.status_code == 409
    assert other_user.status_code == 409
    assert "log in with a new id" in again.json()["detail"]
    assert "token" not in again.json()
    assert ops(stack.effects(session_id)) == ["issue_token"]
    assert stack.get(session_id).json()["state"] == "active"  # the first token still works


def test_unknown_sessions_are_404(stack: Stack) -> None:
    unknown = f"no-such-session-{secrets.token_hex(4)}"
    stack.tokens[unknown] = "a-token-nobody-was-given"
    assert stack.get(unknown).status_code == 404
    assert stack.post(unknown, "activity", {"action": "x"}).status_code == 404
    assert stack.post(unknown, "logout").status_code == 404

    # A promise that is not a session is not shown as one, nor resolved.
    other = f"not-a-session-{secrets.token_hex(4)}"
    stack.tokens[other] = "a-token-nobody-was-given"

    async def create_promise() -> None:
        client = Resonate(url=stack.server.url, group="session-tests")
        try:
            in_a_minute = int(time.time() * 1000) + 60_000
            await client.promises.create(other, in_a_minute, Value(data={"not": "a session"}), {})
        finally:
            await client.stop()

    asyncio.run(create_promise())
    assert stack.get(other).status_code == 404
    assert stack.post(other, "logout").status_code == 404


BAD_LOGINS: dict[str, Any] = {
    "empty object": {},
    "array": [{"session_id": "s-1", "user": "ada"}],
    "missing user": {"session_id": "s-1"},
    "missing session id": {"user": "ada"},
    "session id with colon": {"session_id": "s:1", "user": "ada"},
    "session id with dot": {"session_id": "s.round.1", "user": "ada"},
    "session id too long": {"session_id": "s" * 65, "user": "ada"},
    "user empty": {"session_id": "s-1", "user": ""},
    "user control character": {"session_id": "s-1", "user": "ada\x00"},
    "user number": {"session_id": "s-1", "user": 42},
    "idle timeout zero": {"session_id": "s-1", "user": "ada", "idle_timeout_seconds": 0},
    "idle timeout string": {"session_id": "s-1", "user": "ada", "idle_timeout_seconds": "3"},
    "idle timeout fraction": {"session_id": "s-1", "user": "ada", "idle_timeout_seconds": 2.5},
    "idle timeout over a day": {"session_id": "s-1", "user": "ada", "idle_timeout_seconds": 10**6},
    "extra field": {"session_id": "s-1", "user": "ada", "admin": True},
}

BAD_ACTIVITIES: dict[str, Any] = {
    "empty object": {},
    "action empty": {"action": ""},
    "action only spaces": {"action": "   "},
    "action number": {"action": 7},
    "action null": {"action": None},
    "action too long": {"action": "a" * 201},
    "action bidi override": {"action": "open \u202etxt.exe"},
    "extra field": {"action": "x", "at": "now"},
    "string body": "opened /reports",
}


@pytest.mark.parametrize("body", BAD_LOGINS.values(), ids=BAD_LOGINS.keys())
def test_a_bad_login_is_422_and_starts_nothing(stack: Stack, body: Any) -> None:
    executions_before = stack.server.executions()

    response = stack.gateway.post("/sessions", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before


@pytest.fixture(scope="module")
def idle_session(stack: Stack) -> str:
    return stack.login()


@pytest.mark.parametrize("body", BAD_ACTIVITIES.values(), ids=BAD_ACTIVITIES.keys())
def test_a_bad_activity_is_422_and_changes_nothing(
    stack: Stack, idle_session: str, body: Any
) -> None:
    before = stack.get(idle_session).json()

    response = stack.post(idle_session, "activity", body)

    assert response.status_code == 422, response.text
    assert stack.get(idle_session).json() == before
    assert ops(stack.effects(idle_session)) == ["issue_token"]


def test_oversized_bodies_and_bad_ids_are_refused(stack: Stack, idle_session: str) -> None:
    huge = {"action": "a" * 10_000}
    too_large = stack.post(idle_session, "activity", huge)
    assert too_large.status_code == 413
    # Shaped like every other error answer, as the OpenAPI document declares it.
    assert too_large.json() == {"detail": f"the body is over {MAX_BODY_BYTES} bytes"}
    login = stack.gateway.post("/sessions", json={"session_id": "test-huge", "user": "a" * 10_000})
    assert (login.status_code, login.json()) == (413, too_large.json())
    auth = stack.auth(idle_session)
    assert stack.gateway.get("/sessions/test:1", headers=auth).status_code == 422
    assert stack.gateway.post("/sessions/test.1/logout", headers=auth).status_code == 422


# -- the idle deadline, in skipped time, and crashes -----------------------------------------------


@dataclass(frozen=True)
class SkippingStack(Stack):
    """A stack of its own on a dev server that skips time, with workers started on demand."""

    start_worker: Callable[[], ManagedProcess] = field(kw_only=True)

    def kill_worker_once_idle(self, worker: ManagedProcess, session_id: str, move: int) -> None:
        """Arm the dev server to SIGKILL `worker` right after the session suspended on `move`."""
        wire = {"operation": "suspend", "promise_id": f"{session_id}:{move}", "when": "after"}
        response = clients.post(
            f"{self.server.url}/_cookbook/tripwires",
            json={**wire, "victim": "worker", "pid": worker.pid},
        )
        response.raise_for_status()


@pytest.fixture
def skipping_stack(
    start_devserver: DevServerFactory,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    start_process: Callable[[ManagedProcess], ManagedProcess],
) -> Iterator[SkippingStack]:
    server = start_devserver(skip_time=True)
    env = {"RESONATE_URL": server.url, "PROVIDER_API_URL": sandbox.url, "PATH": "/usr/bin:/bin"}
    gateway = start_process(gateway_process("session.gateway", {**os.environ, **env}))
    with clients.client(base_url=url_of(gateway), timeout=TIMEOUT_S) as client:
        yield SkippingStack(
            client, server, sandbox, start_worker=lambda: start_worker("session.worker", env)
        )


def test_each_activity_restarts_the_30_minute_deadline_and_it_ends_the_session(
    skipping_stack: SkippingStack,
) -> None:
    stack = skipping_stack
    stack.start_worker()
    with time_held(stack.server):  # the user acts within the idle timeout
        session_id = stack.login()
        stack.act(session_id, "opened /reports")
        first_deadline = stack.idle_deadline(session_id, activities=1)
        stack.act(session_id, "downloaded q3.pdf")
        shown_deadline = stack.idle_deadline(session_id, activities=2)
        stored_deadline = int(newest_move(stack.server, session_id)["timeoutAt"]) / 1000
    # Time skips to the deadline: the server times the round's move out by itself.
    ended = stack.wait_ended(session_id)

    _, record_first, record_last, revoke = effects = stack.effects(session_id)
    assert ops(effects) == ["issue_token", "record_activity", "record_activity", "revoke_token"]
    assert ended["ended_by"] == "idle-timeout"
    # Each activity restarted the deadline: 30 minutes after it was recorded, not after login.
    assert 0 <= first_deadline - record_first.finished_at - IDLE_TIMEOUT_S < ROUND_START_S
    assert 0 <= shown_deadline - record_last.finished_at - IDLE_TIMEOUT_S < ROUND_START_S
    assert abs(stored_deadline - shown_deadline) <= 0.002  # what GET shows is the move's timeout
    # The move timed out (its deadline, skipped to, is when it fired), and the revocation followed.
    timed_out = newest_move(stack.server, session_id)
    assert timed_out["state"] == "rejected_timedout"
    fired_at = int(timed_out["timeoutAt"]) / 1000
    assert 0 <= revoke.started_at - fired_at < DEADLINE_TOLERANCE_S, revoke.started_at - fired_at


# Step ids: login `:1`; round 1 waits on `:2` (the move), once it published the round `:3`, and
# records the activity `:4`; round 2 waits on `:5`. (The test arms a tripwire by id; the example's
# code never builds these ids.)
ROUND_2_MOVE = 5


def test_a_worker_killed_while_idle_the_server_keeps_its_deadline_and_times_it_out(
    skipping_stack: SkippingStack,
) -> None:
    stack = skipping_stack
    first = stack.start_worker()
    with time_held(stack.server):
        session_id = stack.login()
        stack.kill_worker_once_idle(first, session_id, ROUND_2_MOVE)
        activity_id = stack.act(session_id, "opened /reports")
        assert first.wait(TIMEOUT_S) == -9
        idle = newest_move(stack.server, session_id)
    # No worker alive: the server times the round out by itself, at the deadline the dead worker
    # set (skipped to); a timer in a worker's memory would have died with it.
    timed_out = wait_until_timed_out(stack.server, session_id)
    late = stack.post(session_id, "activity", {"action": "too late"})
    restarted_at = time.time()
    stack.start_worker()  # replays the session and finds its move timed out
    ended = stack.wait_ended(session_id)

    issue, record, revoke = effects = stack.effects(session_id)
    assert ops(effects) == ["issue_token", "record_activity", "revoke_token"]
    assert record.body["activity_id"] == activity_id
    assert idle["id"] == timed_out["id"] == f"{session_id}:{ROUND_2_MOVE}"
    assert 0 <= int(idle["timeoutAt"]) / 1000 - record.finished_at - IDLE_TIMEOUT_S < ROUND_START_S
    assert timed_out["state"] == "rejected_timedout"
    # The server refused the late activity: the promise it would go into had timed out.
    assert late.status_code == 409
    assert late.json()["detail"] == "the session timed out: it was idle past its deadline"
    assert ended["ended_by"] == "idle-timeout"
    assert [a["action"] for a in ended["activities"]] == ["opened /reports"]
    assert revoke.started_at > restarted_at  # revoked by the new worker, as soon as it came
    assert revoke.body["credential_id"] == issue.resource_id
