"""How `cookbook chaos session` drives sessions: log in, act, log out, through the gateway.

Each session's plan is drawn from its seed: log in, report one to three activities, log out
(ends by `logout`); or log in with a 2-second idle timeout and do nothing (ends by
`idle-timeout`, the server timing the move out by itself, across restarts).

Every provider call of a session is one `api.call` effect: the credential registered, each
activity recorded, the credential revoked. A request whose answer was lost in an outage is sent
again, as a client would, so an activity may be delivered twice; what must hold is one effect
per activity the session recorded, which is what is counted. A login whose answer was lost
cannot be retried (its token is shown once; a second login with that id is a 409): such a
session is left to idle out, and its outcome is read from the Resonate server.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from cookbook.chaos import Driver, Entry, Execution
from cookbook.crash import receivers

# Long enough that a session's activities and logout arrive through a few server restarts.
ACTIVE_IDLE_SECONDS = 30
IDLE_SECONDS = 2


class SessionDriver(Driver):
    def plan(self, i: int, rng: random.Random) -> Execution:
        session_id = f"session-{i:03d}"
        if rng.random() < 0.3:
            return Execution(session_id, "idle", "idle-timeout", {"api.call": 2})
        activities = rng.randint(1, 3)
        return Execution(
            session_id,
            "logout",
            "logout",
            {"api.call": 2 + activities},
            details={"activities": activities},
        )

    async def drive(self, entry: Entry, plan: Execution) -> None:
        learned = entry.learned.setdefault(plan.id, {})
        idle = IDLE_SECONDS if plan.kind == "idle" else ACTIVE_IDLE_SECONDS
        login = {"session_id": plan.id, "user": "ada", "idle_timeout_seconds": idle}
        response = await entry.call("POST", "/sessions", json=login)
        if response.status_code == 409:  # a first attempt got through, its answer (the token) lost
            learned["login answer lost"] = True
            return
        if response.status_code != 202:
            raise AssertionError(f"POST /sessions answered {response.status_code}: {response.text}")
        learned["token"] = token = response.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        for n in range(plan.details.get("activities", 0)):
            body = {"action": f"opened /reports/{n}"}
            sent = await entry.call(
                "POST", f"/sessions/{plan.id}/activity", json=body, headers=auth
            )
            if sent.status_code != 202:
                raise AssertionError(f"activity answered {sent.status_code}: {sent.text}")
        if plan.kind == "logout":
            sent = await entry.call("POST", f"/sessions/{plan.id}/logout", headers=auth)
            if sent.status_code != 202:
                raise AssertionError(f"logout answered {sent.status_code}: {sent.text}")

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        learned = entry.learned.get(plan.id, {})
        if "token" not in learned:
            record = await entry.execution(plan.id)
            ended = _ended(record.value.data if record and record.state == "resolved" else None)
            if ended is not None:
                learned["activities recorded"] = len(ended.get("activities", []))
                return f"{ended['ended_by']} (login answer lost)"
            return None
        response = await entry.http.get(
            f"/sessions/{plan.id}", headers={"Authorization": f"Bearer {learned['token']}"}
        )
        if response.status_code != 200 or response.json()["state"] == "active":
            return None
        view = response.json()
        learned["activities recorded"] = len(view.get("activities", []))
        return str(view.get("ended_by") or view["state"])

    def effects(self, entry: Entry, plan: Execution) -> Mapping[str, int]:
        # A login, each activity the session recorded, a revocation: one provider call each.
        recorded = entry.learned.get(plan.id, {}).get("activities recorded")
        return plan.effects if recorded is None else {"api.call": 2 + recorded}

    async def check(
        self, entry: Entry, plans: Sequence[Execution], recorded: receivers.Recorded
    ) -> list[str]:
        # An activity the gateway accepted (202) must be in the session: none may be lost.
        problems = []
        for plan in plans:
            learned = entry.learned.get(plan.id, {})
            sent, kept = plan.details.get("activities", 0), learned.get("activities recorded")
            if "token" in learned and kept is not None and kept < sent:
                problems.append(f"{plan.id}: {sent} activities accepted, {kept} recorded")
        return problems


def _ended(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) and "ended_by" in value else None


DRIVER = SessionDriver()
