"""The durable workflow: one user session, from login to logout or idle timeout.

The session is one execution, keyed by the session id. It is started with the SHA-256 digest of
the bearer token the gateway gave the user, never the token. Login registers the credential with
the identity provider; then, round after round, the workflow waits for the next thing the user
does (an activity or a logout, delivered by the gateway into a latent promise whose id the round
publishes) or for the idle timeout, whichever comes first. Each activity is recorded by its own
checkpointed step and starts a new round, with a deadline of its own. When the user logs out or
a round's deadline passes, the credential is revoked and the session ends. A refusal by the
provider (a 4xx) is a value that ends the session as "refused"; only outages are retried.

Nothing lives in the worker's memory between two rounds: a worker that dies while the session is
idle loses nothing, and the server keeps the deadline: it is the timeout of the promise the round
waits on, stored when the round began.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from resonate.context import Context
from resonate.error import ApplicationError
from resonate.retry import Exponential

from session.steps import (
    Refused,
    open_round,
    record_activity,
    register_token,
    revoke_by_digest,
    revoke_token,
)

type EndedBy = Literal["logout", "idle-timeout", "refused", "provider-unavailable"]


@dataclass(frozen=True)
class Activity:
    activity_id: str  # chosen by the gateway, unique per request
    action: str


@dataclass(frozen=True)
class SessionEnded:
    """What a finished session returns: also what `GET /sessions/{id}` shows once it ended.

    No bearer token: the session only ever holds the provider's credential id, a handle that
    names the credential (to record activity against it and revoke it) without granting anything.
    """

    user: str
    credential_id: str | None  # None if the provider refused the login
    ended_by: EndedBy
    activities: list[Activity]
    # What the provider refused (the login, an activity, or the revocation itself), or why it
    # could not be reached.
    problem: str | None = None


# A provider call that fails transiently (5xx, 408, 429, a timeout, a lost connection) is retried
# after 2, 4, 8 and 16 s, then every 30 s: ten retries in three and a half minutes, long enough to
# ride out a provider's restart or a rate limit, short enough that a session whose provider is
# down ends (or, if even the revocation cannot be made, fails visibly) instead of hanging. A
# refusal is never retried: the steps return it as a value.
RETRIES = Exponential(delay=1, factor=2, max_retries=10, max_delay=30)


async def session(
    ctx: Context, user: str, idle_timeout_seconds: int, token_sha256: str
) -> SessionEnded:
    steps = ctx.options(retry_policy=RETRIES)
    try:
        credential = await steps.run(register_token, user, token_sha256)
    except Exception:
        # Out of retries, and a call that timed out may have landed: revoke whatever credential
        # the digest names before the session fails, so that no token it never saw stays valid.
        await steps.run(revoke_by_digest, token_sha256)
        raise
    if isinstance(credential, Refused):
        return SessionEnded(user, None, "refused", [], credential.reason)
    idle_timeout = timedelta(seconds=idle_timeout_seconds)
    activities: list[Activity] = []
    ended_by: EndedBy
    problem: str | None = None
    round_no = 0
    while True:
        round_no += 1
        # The user's next move, put here by the gateway, with the idle deadline as its timeout.
        # When the deadline passes the server times the promise out by itself, which wakes the
        # workflow; and it never resolves it after that (a late resolve finds it timed out). So
        # a move either came in time or it did not, and every replay finds the same answer.
        next_move = ctx.promise(timeout=idle_timeout)
        # Tell the gateway where this round's move goes, under a round id of the example's own.
        await steps.run(open_round, ctx.info.id, round_no, await next_move.id())
        try:
            move = await next_move
        except ApplicationError:  # timed out (nothing else rejects a move): idle
            ended_by = "idle-timeout"
            break
        match move:
            case {"type": "activity", "activity_id": str(activity_id), "action": str(action)}:
                try:
                    recorded = await steps.run(record_activity, credential, activity_id, action)
                except Exception as exc:  # out of retries: end the session rather than fail open
                    ended_by, problem = "provider-unavailable", str(exc)
                    break
                if isinstance(recorded, Refused):  # the provider no longer honours the credential
                    ended_by, problem = "refused", recorded.reason
                    break
                activities.append(Activity(activity_id, action))
            case _:  # a logout; anything else fails closed, the same way
                ended_by = "logout"
                break
    # Out of retries here, the session fails (`GET` shows `failed`): a human must revoke it.
    revoked = await steps.run(revoke_token, credential)
    if isinstance(revoked, Refused):  # e.g. already revoked by the provider: a human may look
        problem = revoked.reason if problem is None else f"{problem}; {revoked.reason}"
    return SessionEnded(user, credential, ended_by, activities, problem)
