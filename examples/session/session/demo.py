"""`python -m session.demo`: two user sessions through the gateway, told step by step.

Ada logs in with a 4-second idle timeout (30 minutes is the default), does two things and walks
away. While she is idle, Grace logs in, does one thing and logs out: her token is revoked at once.
Then Ada's timer fires, 4 seconds after her last activity, and her token is revoked too; an
activity she sends after that is refused. The revocation time is the identity provider's own
record of it, compared with the deadline the gateway showed.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

ADA_IDLE_TIMEOUT_SECONDS = 4


def login(gateway: httpx.Client, user: str, idle_timeout_seconds: int) -> str:
    session_id = f"{user}-{secrets.token_hex(3)}"
    print(f"→ POST /sessions {session_id}: {user} logs in, idle timeout {idle_timeout_seconds}s")
    body = {"session_id": session_id, "user": user, "idle_timeout_seconds": idle_timeout_seconds}
    accepted = gateway.post("/sessions", json=body).raise_for_status()
    print(f"← {accepted.status_code} Accepted: GET {accepted.json()['status_url']}")
    session = wait_for(gateway, session_id, lambda s: s["state"] != "starting")
    print(f"✓ logged in; token {session['token']}")
    return session_id


def act(gateway: httpx.Client, session_id: str, action: str) -> None:
    response = gateway.post(f"/sessions/{session_id}/activity", json={"action": action})
    print(f"→ POST /sessions/{session_id}/activity {action!r} ← {response.status_code}", end="")
    print(f" {response.json()['detail']}" if response.is_error else "")


def logout(gateway: httpx.Client, session_id: str) -> None:
    response = gateway.post(f"/sessions/{session_id}/logout")
    print(f"→ POST /sessions/{session_id}/logout ← {response.status_code}")


def wait_until_ended(gateway: httpx.Client, session_id: str) -> dict[str, Any]:
    session = wait_for(gateway, session_id, lambda s: s["state"] not in ("starting", "active"))
    if session["state"] == "ended":
        user, token, ended_by = session["user"], session["token"], session["ended_by"]
        print(f"✓ {user}: session ended by {ended_by}; token {token} revoked")
    else:
        print(f"! {session['user']}: session {session['state']}: {session.get('reason')}")
    return session


def wait_for(
    gateway: httpx.Client,
    session_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    """Poll the session's status until `done` says so (the demo is an ordinary HTTP client)."""
    give_up = time.monotonic() + timeout
    while True:
        session: dict[str, Any] = gateway.get(f"/sessions/{session_id}").raise_for_status().json()
        if done(session) or time.monotonic() > give_up:
            return session
        time.sleep(0.05)


def revoked_at(providers: httpx.Client, session_id: str) -> float:
    """When the identity provider revoked the session's token, by its own clock.

    Read from the sandbox's admin API, a demo-only view of what the provider recorded.
    """
    effects = providers.get("/_admin/effects", params={"key_prefix": f"{session_id}:"}).json()
    return float(next(e["started_at"] for e in effects if e["body"]["op"] == "revoke_token"))


def clock(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds).strftime("%H:%M:%S.%f")[:-3]


def main() -> None:
    with (
        httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=30) as gateway,
        httpx.Client(base_url=os.environ["PROVIDER_API_URL"], timeout=10) as providers,
    ):
        ada = login(gateway, "ada", ADA_IDLE_TIMEOUT_SECONDS)
        act(gateway, ada, "opened /reports")
        act(gateway, ada, "downloaded q3.pdf")
        # The deadline of the round that started once the last activity was recorded.
        active = wait_for(
            gateway, ada, lambda s: len(s["activities"]) == 2 and "idle_deadline" in s
        )
        deadline = datetime.fromisoformat(active["idle_deadline"]).timestamp()
        print(
            f"· ada is idle; her session times out at {clock(deadline)} unless she does something"
        )

        print()
        grace = login(gateway, "grace", 600)
        act(gateway, grace, "opened /settings")
        logout(gateway, grace)
        wait_until_ended(gateway, grace)

        print()
        ended = wait_until_ended(gateway, ada)
        revoked = revoked_at(providers, ada)
        late = revoked - deadline
        print(f"  the provider revoked it at {clock(revoked)}: {late:.3f}s after the deadline")
        print(f"  activities: {', '.join(a['action'] for a in ended['activities'])}")
        act(gateway, ada, "opened /reports again")


if __name__ == "__main__":
    main()
