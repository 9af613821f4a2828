"""`python -m research_pipeline.demo`: research runs through the gateway, narrated.

The demo is an ordinary HTTP client of the gateway (GATEWAY_URL). Each run is a POST answered
with 202 and a status URL at once, then a long poll of that URL. After each run it reads what
the model billed for it, from the records of the provider sandbox (PROVIDER_API_URL), where the
cookbook's stand-in model records every completion it bills with the Idempotency-Key it came
with: each agent call is one key, billed once. Against a real model there are no such records,
and the demo says so.
"""

from __future__ import annotations

import os
import secrets
import textwrap
import time
from collections import Counter
from typing import Any

import httpx

from research_pipeline.steps import RESEARCHER, REVIEWER, WRITER

AGENTS = {RESEARCHER: "researcher", WRITER: "writer", REVIEWER: "reviewer"}


def begin(gateway: httpx.Client, topic: str, key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    shown = f" (Idempotency-Key: {key})" if key else ""
    print(f"→ POST /research {{'topic': {topic!r}}}{shown}")
    started = time.monotonic()
    response = gateway.post("/research", json={"topic": topic}, headers=headers)
    response.raise_for_status()
    took = (time.monotonic() - started) * 1000
    print(f"← {response.status_code} in {took:.0f} ms, Location: {response.headers['Location']}")
    return str(response.headers["Location"])


def settle(gateway: httpx.Client, status_url: str) -> dict[str, Any]:
    """Long-poll the run until it is no longer pending."""
    started = time.monotonic()
    while True:
        response = gateway.get(status_url, params={"wait": 20}, timeout=30).raise_for_status()
        status: dict[str, Any] = response.json()
        if status["status"] != "pending":
            break
    took = time.monotonic() - started
    print(f"→ GET {status_url}?wait=20 ← {took:.1f}s: {describe(status)}")
    return status


def describe(status: dict[str, Any]) -> str:
    report = status.get("report") or {}
    match status["status"]:
        case "delivered" if report["approved"]:
            return (
                f"delivered, approved after {report['revisions']} revision(s),"
                f" posted as {report['message_id']}"
            )
        case "delivered":
            return (
                f"delivered NOT approved after {report['revisions']} revisions (the most allowed),"
                f" posted as {report['message_id']}; the reviewer still says:"
                f" {report['reviewer_notes']!r}"
            )
        case "refused":
            return f"refused by the {report['refused_by']}: {status['reason']}"
        case _:
            return f"{status['status']}: {status.get('reason')}"


def billed(providers: httpx.Client, status_url: str) -> None:
    """What the stand-in model billed for this run: one line per agent, keys counted."""
    # Every key a run sends is made from a step id under the run's id: it begins with it.
    research_id = status_url.removeprefix("/research/")
    response = providers.get("/_admin/effects", params={"key_prefix": research_id})
    completions = [e for e in response.json() if e["provider"] == "model"]
    if not completions:
        print("  billed: nothing recorded (a real model keeps no records here)")
        return
    per_agent = Counter(AGENTS.get(e["body"]["messages"][0]["content"], "?") for e in completions)
    keys = Counter(e["idempotency_key"] for e in completions)
    tokens_in = sum(e["response"]["usage"]["prompt_tokens"] for e in completions)
    tokens_out = sum(e["response"]["usage"]["completion_tokens"] for e in completions)
    agents = ", ".join(f"{agent} ×{n}" for agent, n in per_agent.items())
    once = "each key once" if max(keys.values()) == 1 else "SOME KEY TWICE"
    print(
        f"  billed: {len(completions)} completions ({agents}), {once};"
        f" {tokens_in} tokens in, {tokens_out} out"
    )


def main() -> None:
    with (
        httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=10) as gateway,
        httpx.Client(base_url=os.environ["PROVIDER_API_URL"], timeout=10) as providers,
    ):
        print("1. a topic: researcher → writer → reviewer, who sends the draft back once")
        key = f"demo-{secrets.token_hex(4)}"
        status_url = begin(gateway, "tidal power in Scotland", key)
        status = settle(gateway, status_url)
        billed(providers, status_url)
        print("  the report, as posted to #research:")
        for paragraph in (status.get("report") or {}).get("report", "").split("\n\n"):
            for line in textwrap.wrap(paragraph, 88):
                print(f"  │ {line}")

        print("\n2. the client repeats its POST (say its first answer was lost): the same run")
        again = begin(gateway, "tidal power in Scotland", key)
        print(f"  {'the same' if again == status_url else 'a DIFFERENT'} status URL")
        billed(providers, again)

        print("\n3. a topic the reviewer never approves: back to the writer twice, then delivered")
        status_url = begin(gateway, "perpetual motion machines")
        settle(gateway, status_url)
        billed(providers, status_url)

        print("\n4. bad input is refused, naming the field, and nothing starts")
        bad = gateway.post("/research", json={"topic": ""})
        problem = bad.json()["detail"][0]
        print(f"→ POST /research {{'topic': ''}} ← {bad.status_code}: {problem['loc']}")
        print(f"  {problem['msg']}")


if __name__ == "__main__":
    main()
