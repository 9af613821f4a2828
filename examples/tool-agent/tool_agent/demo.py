"""`python -m tool_agent.demo`: two agent runs through the gateway, with the manager's answers.

The manager's chat is the provider sandbox's records of what the chat service was asked to post;
the demo reads the question there, as the manager would, and answers through the gateway. What
the model was billed for is read from the same records (the stand-in model bills there).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from typing import Any

import httpx

TASK = (
    "Book Ada Lovelace on a flight from London Heathrow (LHR) to Lisbon (LIS) on 1 May 2030."
    " Check with her manager first."
)


def effects(provider_url: str, run_id: str, provider: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(
        f"{provider_url}/_admin/effects", params={"key_prefix": f"{run_id}:"}
    ).json()
    return [e for e in found if e["provider"] == provider]


def managers_chat(provider_url: str, run_id: str) -> dict[str, Any]:
    """The question the agent posted to the manager's channel, once it is there."""
    deadline = time.monotonic() + 30
    while not (posted := effects(provider_url, run_id, "slack")) and time.monotonic() < deadline:
        time.sleep(0.1)
    body: dict[str, Any] = posted[0]["body"]
    return body


def ended(gateway: httpx.Client, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        view: dict[str, Any] = gateway.get(f"/runs/{run_id}").raise_for_status().json()
        if view["state"] != "running" or time.monotonic() > deadline:
            return view
        time.sleep(0.1)


def start(gateway: httpx.Client, run_id: str) -> None:
    print(f"→ POST /runs {run_id}", flush=True)
    response = gateway.post("/runs", json={"run_id": run_id, "task": TASK})
    print(f"← {response.status_code} {response.json()}")


def answer(gateway: httpx.Client, question_id: str, text: str) -> None:
    print(f"→ POST /questions/{question_id}/answer: the manager answers {text!r}", flush=True)
    response = gateway.post(f"/questions/{question_id}/answer", json={"answer": text})
    print(f"← {response.status_code} {response.json().get('detail', 'answered')}")


def report(provider_url: str, view: dict[str, Any], run_id: str) -> None:
    print(f"✓ {run_id}: {view['state']} after {view['model_calls']} model calls")
    print(f"  the agent says: {view['answer']}")
    print(f"  bookings: {view['bookings'] or 'none'}")
    flights = effects(provider_url, run_id, "flight")
    print(f"  the flight provider reserved {len(flights)} seat(s)")
    billed = effects(provider_url, run_id, "model")
    keys = [e["idempotency_key"] for e in billed]
    tokens = sum(e["response"].get("usage", {}).get("total_tokens", 0) for e in billed)
    once = "each step once" if len(set(keys)) == len(keys) else "SOME STEP TWICE"
    print(f"  the model billed {len(billed)} completions ({once}), {tokens} tokens")


def main() -> None:
    provider_url = os.environ["PROVIDER_API_URL"]
    suffix = secrets.token_hex(3)
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=15) as gateway:
        print(f"Ada needs a flight. The task: {TASK!r}")
        run_id = f"ada-{suffix}"
        start(gateway, run_id)
        start(gateway, run_id)  # a repeat attaches to the same run
        question = managers_chat(provider_url, run_id)
        print(f"✉ in {question['channel']}: {question['text']!r}")
        answer(gateway, question["question_id"], "yes, economy please")
        answer(gateway, question["question_id"], "no")  # the first answer stands
        report(provider_url, ended(gateway, run_id), run_id)

        print("\nThe same request again; this time the manager says no.")
        run_id = f"ada-again-{suffix}"
        start(gateway, run_id)
        question = managers_chat(provider_url, run_id)
        print(f"✉ in {question['channel']}: {question['text']!r}")
        answer(gateway, question["question_id"], "no: the workshop moved online")
        report(provider_url, ended(gateway, run_id), run_id)

        bad = {"run_id": f"bad-{suffix}", "task": TASK, "max_model_calls": 0}
        response = gateway.post("/runs", json=bad)
        [detail] = response.json()["detail"]
        where = ".".join(map(str, detail["loc"]))
        print(
            f"\n→ POST /runs with max_model_calls 0 ← {response.status_code} {where}:"
            f" {detail['msg']}"
        )
        unknown = gateway.get("/runs/no-such-run")
        print(f"→ GET /runs/no-such-run ← {unknown.status_code} {unknown.json()['detail']}")
    sys.exit(0)


if __name__ == "__main__":
    main()
