"""`python -m money_transfer.demo`: three transfers through the gateway, and the ledger after each.

The first goes through: a debit and a credit. The second asks for more than the account holds:
the ledger refuses the debit, and the transfer is declined at once (a refusal is an answer, not a
failure to retry). The third sends money to a frozen account: the credit is refused, so the debit
is reversed. Last, the first transfer is posted again: it attaches to the execution that already
ran, and the ledger does not change.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import httpx

from money_transfer.steps import Ledger
from money_transfer.worker import data_dir


def money(cents: int) -> str:
    return f"{cents // 100:,}.{cents % 100:02d}"


def send(gateway: httpx.Client, ledger: Ledger, body: dict[str, Any]) -> None:
    print(
        f"→ POST /transfers {body['transfer_id']}: {money(body['amount_cents'])}"
        f" from {body['from_account']} to {body['to_account']}"
    )
    accepted = gateway.post("/transfers", json=body).raise_for_status()
    status_url = accepted.json()["status_url"]
    print(f"← {accepted.status_code} Accepted; the transfer runs on the workers: GET {status_url}")
    status = settled(gateway, status_url)
    reason = f" ({status['reason']})" if status.get("reason") else ""
    print(f"{'✓' if status['status'] == 'completed' else '✗'} {status['status']}{reason}")
    for kind, account, amount, outcome in ledger.entries(body["transfer_id"]):
        print(f"  ledger: {kind:<8} {account:<8} {money(amount):>13}  {outcome}")


def settled(gateway: httpx.Client, status_url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = gateway.get(status_url).raise_for_status().json()
        if status["status"] != "pending" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def show_balances(ledger: Ledger) -> None:
    balances = ledger.balances()
    shown = ", ".join(f"{account} {money(cents)}" for account, cents in balances.items())
    print(f"· balances: {shown}; total {money(sum(balances.values()))}")


def main() -> None:
    ledger = Ledger.at(data_dir())
    run = secrets.token_hex(3)
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=10) as gateway:
        show_balances(ledger)
        print()
        first = {
            "transfer_id": f"tx-{run}-rent",
            "from_account": "alice",
            "to_account": "bob",
            "amount_cents": 125_050,
        }
        send(gateway, ledger, first)
        print()
        send(
            gateway,
            ledger,
            {
                "transfer_id": f"tx-{run}-too-much",
                "from_account": "carol",
                "to_account": "bob",
                "amount_cents": 900_000_000,
            },
        )
        print()
        send(
            gateway,
            ledger,
            {
                "transfer_id": f"tx-{run}-frozen",
                "from_account": "alice",
                "to_account": "dormant",
                "amount_cents": 5_000,
            },
        )
        print()
        print("· the first transfer again, same id and body (a client retrying after a timeout):")
        send(gateway, ledger, first)
        print()
        show_balances(ledger)


if __name__ == "__main__":
    main()
