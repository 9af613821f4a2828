"""How `cookbook chaos saga` drives the saga: trips booked through `POST /trips`.

Each trip's plan is drawn from its seed: booked outright; booked after the hotel provider failed
twice (503, retried in place); or rolled back because the car provider says no for good (409),
which cancels the hotel, then the flight. The faults are scoped to the trip by the idempotency
keys its steps send (`<trip id>:...`), so one provider serves every plan at once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cookbook.chaos import Driver, Entry, Execution

TRIP = {
    "traveller_id": "cus_7c41e9a2",
    "flight": {"origin": "LHR", "destination": "LIS", "departs": "2030-05-01"},
    "hotel": {"city": "Lisbon", "check_in": "2030-05-01", "nights": 3},
    "car": {"pickup": "Lisbon airport", "days": 3},
}
BOOKED = {"flight.reserve": 1, "hotel.reserve": 1, "car.reserve": 1}
ROLLED_BACK = {"flight.reserve": 1, "hotel.reserve": 1, "hotel.cancel": 1, "flight.cancel": 1}


class SagaDriver(Driver):
    def plan(self, i: int, rng: random.Random) -> Execution:
        kind = rng.choice(["booked", "booked", "transient", "rolled-back"])
        trip_id = f"trip-{i:03d}"
        if kind == "rolled-back":
            return Execution(trip_id, kind, "rolled_back", ROLLED_BACK)
        return Execution(trip_id, kind, "booked", BOOKED)

    async def prepare(self, entry: Entry, plans: Sequence[Execution]) -> None:
        faults = {
            "transient": {
                "provider": "hotel",
                "action": "reserve",
                "mode": "fail_times",
                "times": 2,
                "status": 503,
            },
            "rolled-back": {
                "provider": "car",
                "action": "reserve",
                "mode": "fail_always",
                "status": 409,
            },
        }
        sandbox = entry.stack.provider_url
        for plan in plans:
            if plan.kind in faults:
                fault = {**faults[plan.kind], "key_prefix": f"{plan.id}:"}
                response = await entry.http.post(f"{sandbox}/_admin/faults", json=fault)
                response.raise_for_status()

    async def drive(self, entry: Entry, plan: Execution) -> None:
        # A POST whose answer was lost is sent again: the same trip attaches to its execution.
        response = await entry.call("POST", "/trips", json={"trip_id": plan.id, **TRIP})
        if response.status_code != 202:
            raise AssertionError(f"POST /trips answered {response.status_code}: {response.text}")

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        response = await entry.http.get(f"/trips/{plan.id}")
        if response.status_code != 200:
            return None
        status: str = response.json()["status"]
        return None if status == "pending" else status


DRIVER = SagaDriver()
