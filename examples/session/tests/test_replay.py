"""Which way a replay goes: the workflow body run over a given journal, with no server or worker.

The branch depends only on the state of the round's move, which the server decides once: resolved
before the deadline, or timed out at it (the move's timeout is the idle deadline).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.error import ApplicationError, Suspended
from resonate.testing import pending_promise, rejected_promise, resolved_promise, root_context
from resonate.types import PromiseRecord
from session.steps import Providers, ProviderUnavailableError, register_token
from session.workflow import Activity, SessionEnded, session

ID = "s-1"
DIGEST = "0" * 64
ACTIVITY = {"type": "activity", "activity_id": "a1", "action": "opened /reports"}
REFUSED_LOGIN = "identity provider refused issue_token: 403 locked"


def timed_out(promise_id: str) -> PromiseRecord:
    """A latent promise the server timed out at its deadline (what it stores: no value)."""
    return PromiseRecord(id=promise_id, state="rejected_timedout", timeout_at=1, settled_at=1)


def replay(
    journal: list[PromiseRecord], provider: DependencyMap | None = None
) -> SessionEnded | list[str]:
    """Run the body over `journal`: its result, or the promises it suspended on."""

    async def run() -> SessionEnded | list[str]:
        ctx: Context = root_context(id=ID, preload=journal, deps=provider)
        try:
            return await session(ctx, "ada", 60, DIGEST)
        except Suspended:
            await ctx.flush_local_work()
            return ctx.take_remote_todos()

    return asyncio.run(run())


# Step ids: the login `:1`; each round creates its move, publishes the round (a step), then
# records the activity: three ids, `:2` to `:4` for the first.
LOGGED_IN = resolved_promise(f"{ID}:1", "cred_1")


def opened(move: int) -> PromiseRecord:
    """The round record step, done: the round that waits on `move` was published."""
    return resolved_promise(f"{ID}:{move + 1}")


def test_a_move_that_came_in_time_is_recorded_and_a_new_round_begins() -> None:
    journal = [
        LOGGED_IN,
        resolved_promise(f"{ID}:2", ACTIVITY),
        opened(2),
        resolved_promise(f"{ID}:4", "api_rec_1"),  # activity recorded
        opened(5),
    ]

    # The activity was taken: the workflow goes on to wait for the next move (`:5`) alone.
    assert replay(journal) == [f"{ID}:5"]


def test_a_move_that_timed_out_ends_the_session() -> None:
    journal = [
        LOGGED_IN,
        timed_out(f"{ID}:2"),
        opened(2),
        resolved_promise(f"{ID}:4", "api_revoke_1"),  # the credential revoked
    ]

    assert replay(journal) == SessionEnded("ada", "cred_1", "idle-timeout", [])


def test_while_the_move_is_pending_the_session_waits_for_it_alone() -> None:
    # No timer of its own: the move's timeout is the idle deadline, and the server settles the
    # move (resolved in time, or timed out) whichever way it goes.
    journal = [LOGGED_IN, pending_promise(f"{ID}:2"), opened(2)]

    assert replay(journal) == [f"{ID}:2"]


@pytest.mark.parametrize("move", [{"type": "logout"}, {"type": "unknown"}, "junk"])
def test_a_logout_or_anything_unknown_ends_the_session(move: object) -> None:
    journal = [
        LOGGED_IN,
        resolved_promise(f"{ID}:2", move),
        opened(2),
        resolved_promise(f"{ID}:4", "api_revoke_1"),
    ]

    assert replay(journal) == SessionEnded("ada", "cred_1", "logout", [])


def test_recorded_activities_are_returned_in_order() -> None:
    second = {"type": "activity", "activity_id": "a2", "action": "downloaded q3.pdf"}
    journal = [
        LOGGED_IN,
        *[
            resolved_promise(f"{ID}:{n}", v)
            for n, v in ((2, ACTIVITY), (3, None), (4, "api_rec_1"))
        ],
        *[resolved_promise(f"{ID}:{n}", v) for n, v in ((5, second), (6, None), (7, "api_rec_2"))],
        timed_out(f"{ID}:8"),
        opened(8),
        resolved_promise(f"{ID}:10", "api_revoke_1"),
    ]

    assert replay(journal) == SessionEnded(
        "ada",
        "cred_1",
        "idle-timeout",
        [Activity("a1", "opened /reports"), Activity("a2", "downloaded q3.pdf")],
    )


# -- refusals: a 4xx from the provider is a value in the journal, and decides the way forward ----


def test_a_refused_login_ends_the_session_at_once() -> None:
    # Nothing to revoke and no round to open: the refusal is the session's result.
    journal = [resolved_promise(f"{ID}:1", {"status": 403, "reason": REFUSED_LOGIN})]

    assert replay(journal) == SessionEnded("ada", None, "refused", [], REFUSED_LOGIN)


def test_a_refused_activity_ends_the_session_and_revokes_the_credential() -> None:
    refused = "identity provider refused record_activity: 401"
    journal = [
        LOGGED_IN,
        *[resolved_promise(f"{ID}:{n}", v) for n, v in ((2, ACTIVITY), (3, None))],
        resolved_promise(f"{ID}:4", {"status": 401, "reason": refused}),
        resolved_promise(f"{ID}:5", "api_revoke_1"),  # the revocation: no round is opened
    ]

    assert replay(journal) == SessionEnded("ada", "cred_1", "refused", [], refused)


# -- outages: a step out of retries has an unknown outcome -------------------------------------


@dataclass
class FakeProvider:
    """The identity provider, in process: every call succeeds and is noted."""

    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def dependencies(self) -> DependencyMap:
        def answer(request: httpx.Request) -> httpx.Response:
            self.calls.append((request.headers["Idempotency-Key"], json.loads(request.content)))
            return httpx.Response(200, json={"id": f"api_{len(self.calls)}"})

        client = httpx.AsyncClient(
            base_url="http://provider", transport=httpx.MockTransport(answer)
        )
        deps = DependencyMap()
        deps.insert(Providers(client))
        return deps


def test_a_login_out_of_retries_revokes_whatever_its_digest_names_then_fails() -> None:
    provider = FakeProvider()
    journal = [rejected_promise(f"{ID}:1", "identity provider answered 503 to issue_token")]

    with pytest.raises(ApplicationError, match="503"):
        replay(journal, provider.dependencies())

    # The registration may have landed: the credential is revoked by the digest, the only name the
    # session has for it, before the session fails.
    assert provider.calls == [(f"{ID}:2", {"op": "revoke_token", "token_sha256": DIGEST})]


def test_an_activity_out_of_retries_ends_the_session_and_revokes_the_credential() -> None:
    provider = FakeProvider()
    journal = [
        LOGGED_IN,
        *[resolved_promise(f"{ID}:{n}", v) for n, v in ((2, ACTIVITY), (3, None))],
        rejected_promise(f"{ID}:4", "identity provider answered 503 to record_activity"),
    ]

    ended = replay(journal, provider.dependencies())

    assert isinstance(ended, SessionEnded)
    assert (ended.ended_by, ended.activities) == ("provider-unavailable", [])
    assert "503" in (ended.problem or "")
    assert provider.calls == [(f"{ID}:5", {"op": "revoke_token", "credential_id": "cred_1"})]


def lost(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("no answer", request=request)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            lambda _: httpx.Response(200, html="<html>Bad Gateway</html>"),
            "issue_token without a readable 'id'",
        ),
        (lambda _: httpx.Response(200, json={"ok": True}), "issue_token without a readable 'id'"),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda _: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "did not answer issue_token: DecodingError",
        ),
        (lost, "did not answer issue_token: ReadTimeout"),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded", "no answer"],
)
def test_a_login_answered_without_its_id_may_have_landed(
    answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    # A 2xx that is not the provider's answer says nothing of whether the credential was
    # registered: not a bug in the step, but a call to retry under the same key like a timeout.
    async def run() -> None:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(base_url="http://provider", transport=transport) as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            await register_token(root_context(id=ID, deps=deps), "ada", DIGEST)

    with pytest.raises(ProviderUnavailableError, match=reason):
        asyncio.run(run())
