"""How `cookbook chaos money-transfer` drives transfers: `POST /transfers` through the gateway.

Each transfer's plan is drawn from its seed: alice pays bob (completed); alice pays the frozen
`dormant` account (the credit is refused and the debit reversed); or carol sends more than she
holds (declined at the debit, nothing moves). The ledger's own records are the receiving system:
each transfer must leave exactly its entries (one per operation, by its op id), and the balances
must be the opening ones moved by the completed transfers, no more and no less.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from cookbook.chaos import Driver, Entry, Execution
from cookbook.crash import receivers
from money_transfer.steps import DEMO_ACCOUNTS

TOO_MUCH = 900_000_000  # more than carol holds
type Entries = Counter[tuple[str, str, int, str]]


def expected_entries(kind: str, source: str, target: str, amount: int) -> Entries:
    match kind:
        case "completed":
            return Counter(
                [("debit", source, amount, "applied"), ("credit", target, amount, "applied")]
            )
        case "reversed":
            return Counter(
                [
                    ("debit", source, amount, "applied"),
                    ("credit", target, amount, "account_frozen"),
                    ("reversal", source, amount, "applied"),
                ]
            )
        case _:
            return Counter([("debit", source, amount, "insufficient_funds")])


class MoneyTransferDriver(Driver):
    def plan(self, i: int, rng: random.Random) -> Execution:
        kind = rng.choice(["completed", "completed", "reversed", "declined"])
        source, target, amount = {
            "completed": ("alice", "bob", rng.randint(100, 50_000)),
            "reversed": ("alice", "dormant", rng.randint(100, 50_000)),
            "declined": ("carol", "bob", TOO_MUCH),
        }[kind]
        transfer = {"from_account": source, "to_account": target, "amount_cents": amount}
        return Execution(f"transfer-{i:03d}", kind, kind, {}, details=transfer)

    async def drive(self, entry: Entry, plan: Execution) -> None:
        body = {"transfer_id": plan.id, **plan.details}
        response = await entry.call("POST", "/transfers", json=body)
        if response.status_code != 202:
            raise AssertionError(
                f"POST /transfers answered {response.status_code}: {response.text}"
            )

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        response = await entry.http.get(f"/transfers/{plan.id}")
        if response.status_code != 200:
            return None
        status: str = response.json()["status"]
        return None if status == "pending" else status

    async def check(
        self, entry: Entry, plans: Sequence[Execution], recorded: receivers.Recorded
    ) -> list[str]:
        path = entry.worker_dir / "money-transfer-data" / "ledger.db"
        entries, balances = await asyncio.to_thread(_read_ledger, path)
        problems = []
        for plan in plans:
            d = plan.details
            want = expected_entries(
                plan.kind, d["from_account"], d["to_account"], d["amount_cents"]
            )
            got = entries.pop(plan.id, Counter())
            if got != want:
                extra, missing = sorted((got - want).elements()), sorted((want - got).elements())
                problems.append(f"ledger: {plan.id} extra {extra}, missing {missing}")
        problems += [f"ledger: entries of no transfer: {t} {dict(e)}" for t, e in entries.items()]
        moved = sum(p.details["amount_cents"] for p in plans if p.kind == "completed")
        opening = {account: balance for account, (balance, _) in DEMO_ACCOUNTS.items()}
        closing_balances = {
            **opening,
            "alice": opening["alice"] - moved,
            "bob": opening["bob"] + moved,
        }
        if balances != closing_balances:
            problems.append(f"ledger: balances {balances}, expected {closing_balances}")
        return problems


def _read_ledger(path: Path) -> tuple[dict[str, Entries], dict[str, Any]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute("SELECT transfer_id, kind, account_id, amount, outcome FROM entries")
        entries: dict[str, Entries] = {}
        for transfer_id, *entry in rows:
            entries.setdefault(transfer_id, Counter())[tuple(entry)] += 1
        balances = dict(db.execute("SELECT id, balance FROM accounts"))
    return entries, balances


DRIVER = MoneyTransferDriver()
