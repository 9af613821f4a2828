"""The steps: calls to the identity provider's API, and publishing a round.

Each provider call carries an Idempotency-Key derived from the step's durable id, which is stable
across retries and crashes. If this process dies after the provider acted (registered a
credential, recorded an activity, revoked a credential) but before the step's result was
checkpointed, the step runs again on another worker, sends the same key, and the provider answers
with its original response instead of acting twice. That is also why the credential id is stable:
it is the provider's answer to the login step, stored with the step.

No step ever sees the bearer token itself: the provider is given its SHA-256 digest, and answers
with a credential id, a handle that names the credential without granting anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context
from resonate.resonate import Resonate
from resonate.types import Value

# The tag of a session's round records, whose value is the session id: the gateway finds them by it.
ROUND_TAG = "session-round-of"


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the identity provider's API (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Server:
    """The worker's own Resonate client, for promises the workflow does not await (a dependency)."""

    resonate: Resonate


@dataclass(frozen=True)
class Refused:
    """The provider said no (a 4xx other than 408 and 429): asking again gets the same answer."""

    status: int
    reason: str


class ProviderUnavailableError(Exception):
    """A 5xx, 408, 429, no answer, or a 2xx without its answer: the provider may answer next time
    (and may have acted), so the step's retry policy retries."""


def round_id(session_id: str, round_no: int) -> str:
    """The id of a round's record. Session ids have no '.', so no session can take this id."""
    return f"{session_id}.round.{round_no}"


async def register_token(ctx: Context, user: str, token_sha256: str) -> str | Refused:
    print(f"registering a credential for {user} (step {ctx.info.id})", flush=True)
    return await _call(ctx, {"op": "issue_token", "user": user, "token_sha256": token_sha256})


async def record_activity(
    ctx: Context, credential_id: str, activity_id: str, action: str
) -> str | Refused:
    print(f"recording activity {action!r} (step {ctx.info.id})", flush=True)
    body = {
        "op": "record_activity",
        "credential_id": credential_id,
        "activity_id": activity_id,
        "action": action,
    }
    return await _call(ctx, body)


async def revoke_token(ctx: Context, credential_id: str) -> str | Refused:
    print(f"revoking credential {credential_id} (step {ctx.info.id})", flush=True)
    return await _call(ctx, {"op": "revoke_token", "credential_id": credential_id})


async def revoke_by_digest(ctx: Context, token_sha256: str) -> str | Refused:
    """Revoke whatever credential the provider holds for this digest: a no-op if it has none.

    For a registration whose outcome is unknown (it ran out of retries, and a call that timed out
    may have landed): the session never learned a credential id, but the digest names it too.
    """
    print(f"revoking any credential of the token's digest (step {ctx.info.id})", flush=True)
    return await _call(ctx, {"op": "revoke_token", "token_sha256": token_sha256})


async def open_round(ctx: Context, session_id: str, round_no: int, move_id: str) -> None:
    """Record, under an id the example chooses, which promise this round's move goes into.

    The move's own id is the SDK's to choose; the gateway learns it from here, never by guessing.
    Creating a promise that exists returns it unchanged, so a re-run after a crash is harmless.
    """
    await ctx.get_dependency(Server).resonate.promises.create(
        round_id(session_id, round_no),
        ctx.info.timeout_at,
        Value(data={"round": round_no, "move": move_id}),
        {ROUND_TAG: session_id},
    )


async def _call(ctx: Context, body: dict[str, str]) -> str | Refused:
    """The provider's answer: the id of what it acted on, or its refusal as a value.

    A refusal is returned, not raised, so it is checkpointed once and never retried. A 5xx, 408,
    429, a timeout, a lost connection or a 2xx whose body is not the answer raises, and the step's
    retry policy tries again with the same Idempotency-Key: a call that timed out may have landed,
    and the key makes the provider answer a repeat with what it did the first time.
    """
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/api/call", json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # No answer, or one that could not be decoded: it may have landed, and the retry's key gets
    # the answer. Raised as the provider's unavailability, like a 503, the session it ends says
    # which call went unanswered (httpx's own message names neither provider nor call).
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(
            f"identity provider did not answer {body['op']}: {type(exc).__name__}"
        ) from exc
    status = response.status_code
    if status in (408, 429) or status >= 500:
        raise ProviderUnavailableError(f"identity provider answered {status} to {body['op']}")
    if not response.is_success:
        return Refused(
            status, f"identity provider refused {body['op']}: {status} {_error(response)}"
        )
    try:
        resource_id: str = response.json()["id"]
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # provider did: like a timeout, it may have landed, and the retry's key gets the answer.
        raise ProviderUnavailableError(
            f"identity provider answered {status} to {body['op']} without a readable 'id'"
        ) from exc
    return resource_id


def _error(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error) if error else response.reason_phrase
