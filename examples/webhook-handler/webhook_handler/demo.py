"""`python -m webhook_handler.demo`: the payments provider delivers webhooks, badly; each order
is still handled once.

The provider (the cookbook's sandbox) is given the gateway's URL and the signing secret. Then:
  1. two orders are paid, and the provider delivers each event twice: each order ships once;
  2. one of them is refunded: its shipment is cancelled and the customer is emailed;
  3. a third order's refund is delivered before its payment: nothing ships;
  4. three forged deliveries (a wrong secret, an old signature, a body changed after signing)
     are refused with a 400, and nothing is started;
and last, what the warehouse and the email provider recorded, per order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Any

import httpx

from webhook_handler.gateway import SIGNATURE_HEADER, signing_secret


def main() -> None:
    run = secrets.token_hex(3)
    provider_url = os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100")
    with (
        httpx.Client(base_url=provider_url, timeout=30) as provider,
        httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=10) as gateway,
    ):
        url = str(gateway.base_url).rstrip("/") + "/webhooks/payments"
        provider.post(
            "/webhooks/endpoints",
            json={"url": url, "secret": signing_secret().decode(), "concurrency": 1},
        ).raise_for_status()
        print(f"· the payments provider will deliver to {url}, signed with the shared secret")
        paid = {name: f"order-{run}-{name}" for name in ("a", "b", "c")}

        print("\n1. orders a and b are paid; the provider delivers each event twice")
        deliver(provider, gateway, [event(run, "payment_succeeded", paid[n]) for n in "ab"], 2)

        print("\n2. order b is refunded")
        deliver(provider, gateway, [event(run, "charge_refunded", paid["b"])], 1)

        print("\n3. order c: the refund is delivered before the payment")
        deliver(provider, gateway, [event(run, "charge_refunded", paid["c"])], 1)
        deliver(provider, gateway, [event(run, "payment_succeeded", paid["c"])], 1)

        print("\n4. forged deliveries, straight to the gateway")
        forge(gateway, run)

        print("\n· what the warehouse and the email provider recorded:")
        effects = provider.get("/_admin/effects").raise_for_status().json()
        for name, order_id in paid.items():
            mine = [e for e in effects if e["body"].get("order_id") == order_id]
            counted = ", ".join(
                f"{sum(e['provider'] == p and e['action'] == a for e in mine)} {p}.{a}"
                for p, a in (("inventory", "reserve"), ("inventory", "cancel"), ("email", "send"))
            )
            print(f"  order {name}: {counted}")


def event(run: str, event_type: str, order_id: str) -> dict[str, Any]:
    kind = "paid" if event_type == "payment_succeeded" else "refund"
    suffix = order_id.rsplit("-", 1)[1]
    return {
        "id": f"evt_{run}{kind}{suffix}",
        "type": event_type,
        "data": {
            "order_id": order_id,
            "charge_id": f"ch_{run}{suffix}",
            "amount": 4_200,
            "currency": "eur",
        },
    }


def deliver(
    provider: httpx.Client, gateway: httpx.Client, events: list[dict[str, Any]], copies: int
) -> None:
    """Have the provider deliver `events` (each `copies` times), then show what became of them."""
    provider.post(
        "/webhooks/events", json={"events": events, "copies_min": copies, "copies_max": copies}
    ).raise_for_status()
    idle = provider.get("/webhooks/idle", params={"wait": 30}).raise_for_status().json()
    assert idle["idle"], "the provider is still delivering after 30 s"
    for sent in events:
        deliveries = provider.get("/webhooks/deliveries", params={"event_id": sent["id"]}).json()
        answers = ", ".join(str(d["status_code"]) for d in deliveries)
        status = settled(gateway, sent["id"])
        outcome = status["outcome"]
        shown = outcome.get("detail") or outcome.get("shipment_id")
        detail = f" ({shown})" if shown else ""
        print(
            f"  {sent['type']} {sent['id']} for {status['order_id']}:"
            f" delivered {len(deliveries)}x (answers {answers}) -> {outcome['action']}{detail}"
        )


def settled(gateway: httpx.Client, event_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = gateway.get(f"/events/{event_id}").raise_for_status().json()
        if status["status"] != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """A `Payments-Signature` as the provider makes it."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def forge(gateway: httpx.Client, run: str) -> None:
    body = json.dumps(event(run, "payment_succeeded", f"order-{run}-forged")).encode()
    now = int(time.time())

    secret = signing_secret()
    tampered = body.replace(b'"amount": 4200', b'"amount": 1')
    forgeries = {
        "signed with a wrong secret": (body, sign(b"whsec_guessed", now, body)),
        "signed 10 minutes ago (a replay)": (body, sign(secret, now - 600, body)),
        "amount changed after signing": (tampered, sign(secret, now, body)),
    }
    for what, (content, header) in forgeries.items():
        answer = gateway.post(
            "/webhooks/payments",
            content=content,
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: header},
        )
        print(f"  {what}: {answer.status_code} {answer.json()['detail']}")
    started = gateway.get(f"/events/{json.loads(body)['id']}").status_code
    print(f"  GET /events/<the forged event's id>: {started}: nothing was started")


if __name__ == "__main__":
    main()
