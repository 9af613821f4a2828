"""`python -m session.demo`: two user sessions through the gateway, told step by step.

Ada logs in with a 4-second idle timeout (30 minutes is the default), does two things and walks
away. While she is idle, Grace logs in, does one thing and logs out: her token is revoked at once.
Then Ada's deadline passes, 4 seconds after her last activity, and her token is revoked too; an
activity she sends after that is refused. The revocation time is the identity provider's own
record of it, compared with the deadline the gateway showed.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

ADA_IDLE_TIMEOUT_SECONDS = 4


@dataclass(frozen=True)
class Login:
    """A session as its user holds it: its id, and the token that proves it is theirs."""

    session_id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def login(gateway: httpx.Client, user: str, idle_timeout_seconds: int) -> Login:
    session_id = f"{user}-{secrets.token_hex(3)}"
    print(f"→ POST /sessions {session_id}: {user} logs in, idle timeout {idle_timeout_seconds}s")
    body = {"session_id": session_id, "user": user, "idle_timeout_seconds": idle_timeout_seconds}
    accepted = gateway.post("/sessions", json=body).raise_for_status().json()
    # The token is the user's secret: the demo shows only its first characters.
    print(f"← 202 Accepted: token {accepted['token'][:6]}…; GET {accepted['status_url']}")
    session = Login(session_id, accepted["token"])
    wait_for(gateway, session, lambda s: s["state"] != "starting")
    print(f"✓ {user} logged in")
    return session


def act(gateway: httpx.Client, session: Login, action: str) -> None:
    response = gateway.post(
        f"/sessions/{session.session_id}/activity", json={"action": action}, headers=session.auth
    )
    print(
        f"→ POST /sessions/{session.session_id}/activity {action!r} ← {response.status_code}",
        end="",
    )
    print(f" {response.json()['detail']}" if response.is_error else "")


def logout(gateway: httpx.Client, session: Login) -> None:
    response = gateway.post(f"/sessions/{session.session_id}/logout", headers=session.auth)
    print(f"→ POST /sessions/{session.session_id}/logout ← {response.status_code}")


def wait_until_ended(gateway: httpx.Client, session: Login) -> dict[str, Any]:
    ended = wait_for(gateway, session, lambda s: s["state"] not in ("starting", "active"))
    if ended["state"] == "ended":
        print(f"✓ {ended['user']}: session ended by {ended['ended_by']}; credential revoked")
    else:
        print(f"! {ended['user']}: session {ended['state']}: {ended.get('reason')}")
    return ended


def wait_for(
    gateway: httpx.Client,
    session: Login,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 60,
) -> dict[str, Any]:
    """Poll the session's status until `done` says so (the demo is an ordinary HTTP client)."""
    give_up = time.monotonic() + timeout
    url = f"/sessions/{session.session_id}"
    while True:
        view: dict[str, Any] = gateway.get(url, headers=session.auth).raise_for_status().json()
        if done(view) or time.monotonic() > give_up:
            return view
        time.sleep(0.05)


def revoked_at(providers: httpx.Client, session: Login) -> float:
    """When the identity provider revoked the session's token, by its own clock.

    Read from the sandbox's admin API, a demo-only view of what the provider recorded.
    """
    effects = providers.get(
        "/_admin/effects", params={"key_prefix": f"{session.session_id}:"}
    ).json()
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
