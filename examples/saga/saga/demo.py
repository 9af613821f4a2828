"""`python -m saga.demo`: book two trips through the gateway and tell what happens to each.

The first trip goes through. For the second, the simulated car provider is told to refuse, so the
workflow cancels the hotel, then the flight, and the trip ends rolled back. For the third, the
hotel provider keeps failing: whether it booked is unknown, so the hotel is cancelled by the key
the reservation was sent with, and then the flight. Like any HTTP client,
the demo gets 202 and a status URL for each booking, and polls that URL until the trip settles.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import httpx

UNDONE = {
    "cancelled": "cancelled {reservation_id}",
    "voided": "the reservation never arrived; the provider will refuse it if it does",
    "refused": "NOT cancelled, the provider refused ({reason})",
    "unreachable": "NOT cancelled, it kept failing ({reason})",
}


def trip_request(origin: str, destination: str, city: str) -> dict[str, Any]:
    # The trip id (the execution id) and the trip (its argument) are stored on the Resonate
    # server, so neither spells who travels: random references, which only the providers
    # resolve. The demo names the travellers in what it prints, never in what it sends.
    return {
        "trip_id": f"trip-{secrets.token_hex(4)}",
        "traveller_id": f"cus_{secrets.token_hex(6)}",
        "flight": {"origin": origin, "destination": destination, "departs": "2030-05-01"},
        "hotel": {"city": city, "check_in": "2030-05-01", "nights": 3},
        "car": {"pickup": f"{city} airport", "days": 3},
    }


def book(gateway: httpx.Client, who: str, trip: dict[str, Any]) -> None:
    flight, hotel = trip["flight"], trip["hotel"]
    print(
        f"→ POST /trips {trip['trip_id']} ({who}'s trip): "
        f"flight {flight['origin']}→{flight['destination']}, {hotel['nights']} nights in "
        f"{hotel['city']}, a car for {trip['car']['days']} days"
    )
    accepted = gateway.post("/trips", json=trip)
    accepted.raise_for_status()
    status_url = accepted.json()["status_url"]
    print(f"← {accepted.status_code} Accepted; the booking runs on the workers: GET {status_url}")
    status = settled(gateway, status_url)
    match status["status"]:
        case "booked":
            confirmations = ", ".join(f"{p} {c}" for p, c in status["confirmations"].items())
            print(f"✓ booked: {confirmations}")
        case "rolled_back" | "rollback_incomplete":
            print(f"✗ {status['status']}: {status['failed']} failed ({status['reason']})")
            for step, undo in enumerate(status["undo"], 1):
                print(f"  ↩ {step}. {undo['provider']}: {UNDONE[undo['outcome']].format(**undo)}")
        case _:
            print(f"! {status['status']}: {status.get('reason')}")


def settled(gateway: httpx.Client, status_url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = gateway.get(status_url).raise_for_status().json()
        if status["status"] != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def main() -> None:
    providers = os.environ["PROVIDER_API_URL"]
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=10) as gateway:
        book(gateway, "Ada", trip_request("LHR", "LIS", "Lisbon"))
        print()
        grace = trip_request("JFK", "SFO", "San Francisco")
        print(
            "· make the simulated car provider fail for this trip: it will answer "
            "409 Conflict (no cars left) to every reservation for it"
        )
        make_fail(providers, "car", grace, status=409)
        book(gateway, "Grace", grace)
        print()
        alan = trip_request("MAN", "CDG", "Paris")
        print(
            "· make the simulated hotel provider fail for this trip: it will answer "
            "503 Service Unavailable to every reservation for it, so whether it booked is unknown"
        )
        make_fail(providers, "hotel", alan, status=503)
        book(gateway, "Alan", alan)


def make_fail(providers: str, provider: str, trip: dict[str, Any], status: int) -> None:
    """Make one simulated provider answer `status` to every reservation for this trip."""
    httpx.post(
        f"{providers}/_admin/faults",
        json={
            "provider": provider,
            "action": "reserve",
            "mode": "fail_always",
            "status": status,
            "key_prefix": f"{trip['trip_id']}:",
        },
    ).raise_for_status()


if __name__ == "__main__":
    main()
