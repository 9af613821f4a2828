"""`python -m approval.demo`: three expense claims through the gateway, with the approver's clicks.

The approver's inbox is the provider sandbox's email records (what the email provider was asked
to send); the demo opens the links it finds there, as a browser would: GET shows the
confirmation page, POST is the button on it.

The claim id (the execution id) and the claim (its argument) are stored on the Resonate server,
so neither spells who claims or who approves: staff ids and claim ids are random, and only the
providers resolve them. The demo names the people in what it prints, never in what it sends.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from typing import Any

import httpx

GRACE = f"usr_{secrets.token_hex(4)}"  # the approver's staff id
LINK = re.compile(r"^(Approve|Reject)\W+(http\S+)$", re.MULTILINE)
TITLE = re.compile(r'<h1 id="title">(.*?)</h1>', re.S)


def claim(category: str, cents: int, what: str) -> dict[str, Any]:
    return {
        "claim_id": f"claim-{secrets.token_hex(4)}",
        "employee_id": f"usr_{secrets.token_hex(4)}",
        "approver_id": GRACE,
        "category": category,
        "amount_cents": cents,
        "currency": "EUR",
        "description": what,
    }


def submit(gateway: httpx.Client, who: str, body: dict[str, Any]) -> str:
    amount = f"{body['amount_cents'] / 100:.2f} EUR"
    print(f"→ POST /claims {body['claim_id']} ({who}: {body['employee_id']}, {amount})")
    response = gateway.post("/claims", json=body).raise_for_status()
    seconds = response.json()["decide_within_seconds"]
    within = f"{seconds // 86_400} days" if seconds % 86_400 == 0 else f"{seconds} s"
    print(f"← {response.status_code} Accepted: the approver has {within} to decide")
    return str(body["claim_id"])


def inbox(provider: str, claim_id: str, to: str) -> list[dict[str, Any]]:
    """The emails sent about the claim to that staff id, waiting for the first one."""
    deadline = time.monotonic() + 30
    while True:
        effects = httpx.get(
            f"{provider}/_admin/effects", params={"key_prefix": f"{claim_id}:"}
        ).json()
        mails = [e["body"] for e in effects if e["provider"] == "email" and e["body"]["to"] == to]
        if mails or time.monotonic() > deadline:
            return mails
        time.sleep(0.1)


def links(mail: dict[str, Any]) -> dict[str, str]:
    return {verb.lower(): url for verb, url in LINK.findall(mail["text"])}


def click(gateway: httpx.Client, who: str, method: str, url: str, **form: str) -> httpx.Response:
    """Follow a link (GET) or press the page's button (POST), and show the page's title."""
    response = gateway.request(method, url, data=form or None)
    match = TITLE.search(response.text)
    title = match[1] if match else response.text[:80]
    path = httpx.URL(url).path
    print(f"→ {who}: {method} {path[:34]}…\n← {response.status_code} {title}")
    return response


def ended(gateway: httpx.Client, claim_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        view: dict[str, Any] = gateway.get(f"/claims/{claim_id}").raise_for_status().json()
        if view["state"] != "in-progress" or time.monotonic() > deadline:
            return view
        time.sleep(0.1)


def providers_did(provider: str, claim_id: str) -> str:
    effects = httpx.get(f"{provider}/_admin/effects", params={"key_prefix": f"{claim_id}:"}).json()
    return ", ".join(f"{e['provider']}.{e['action']}" for e in effects)


def refused(gateway: httpx.Client, what: str, body: dict[str, Any]) -> None:
    """Submit a bad claim (under an id of its own): the 422 and the field it names."""
    response = gateway.post("/claims", json={**body, "claim_id": f"claim-{secrets.token_hex(4)}"})
    [detail] = response.json()["detail"]
    where = ".".join(map(str, detail["loc"]))
    print(f"→ POST /claims with {what} ← {response.status_code} {where}: {detail['msg']}")


def main() -> None:
    provider = os.environ["PROVIDER_API_URL"]
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=15) as gateway:
        print("Ada claims a train ticket; Grace approves it from the email.")
        ada = claim("travel", 42_000, "Train to Lyon, workshop")
        claim_id = submit(gateway, "Ada", ada)
        submit(gateway, "Ada", ada)  # a repeat attaches to the same claim
        [mail] = inbox(provider, claim_id, GRACE)
        print(f"✉ to Grace ({mail['to']}): {mail['subject']}")
        approve, reject = links(mail)["approve"], links(mail)["reject"]
        click(gateway, "Grace opens the approve link", "GET", approve)
        # One character changed: the signature no longer matches.
        tampered = approve[:-1] + ("A" if approve[-1] != "A" else "B")
        click(gateway, "someone tries the link with one character changed", "GET", tampered)
        click(gateway, "Grace confirms, with a note", "POST", approve, note="Enjoy Lyon")
        click(gateway, "Grace's browser sends the form again", "POST", approve, note="Enjoy Lyon")
        click(gateway, "Grace then clicks reject", "POST", reject)
        view = ended(gateway, claim_id)
        outcome = view["outcome"]
        print(f"✓ {claim_id}: {view['state']}, payment {outcome['payment_id']}")
        print(f"  the providers did: {providers_did(provider, claim_id)}")

        print("\nLinus claims a conference; Grace never answers within the 5 s deadline.")
        linus = claim("training", 90_000, "PyCon ticket")
        claim_id = submit(gateway, "Linus", {**linus, "decide_within_seconds": 5})
        [mail] = inbox(provider, claim_id, GRACE)
        print(f"✉ to Grace ({mail['to']}): {mail['subject']}")
        view = ended(gateway, claim_id)
        print(f"✓ {claim_id}: {view['state']} ({view['outcome']['reason']})")
        print(f"  the providers did: {providers_did(provider, claim_id)}")
        click(gateway, "Grace approves, too late", "POST", links(mail)["approve"])

        print("\nMarie claims a dinner over the meals limit: refused before anyone is asked.")
        marie = claim("meals", 25_000, "Team dinner")
        claim_id = submit(gateway, "Marie", marie)
        view = ended(gateway, claim_id)
        print(f"✓ {claim_id}: {view['state']} ({view['outcome']['reason']})")

        print()
        refused(gateway, "amount_cents 0", {**marie, "amount_cents": 0})
        # Marie's email address where her staff id goes: the server would store it in plaintext.
        refused(gateway, "an email as employee_id", {**marie, "employee_id": "marie@example.com"})
    sys.exit(0)


if __name__ == "__main__":
    main()
