"""`python -m async_http_api.demo`: report exports through the begin/poll API, narrated.

The demo is an ordinary HTTP client. Each job is a POST answered with 202 and a status URL at
once, then a GET of that URL: at once (pending), or as a long poll (`?wait=`). The simulated
warehouse is made slow (a latency fault in the provider sandbox) so that a job is pending long
enough to watch. One job is started through a second gateway that the demo starts and then
SIGKILLs mid-job: the job runs on, and the first gateway answers for it. Then the warehouse
refuses one export (403: a value, never retried) and fails once for another (503: retried).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

# Ada, an analyst, asks for the reports. The request (the job's argument) is stored on the
# Resonate server, so it names her by a random reference, which only the mail system resolves to
# her address. The demo names her in what it prints, never in what it sends.
ADA = f"usr_{secrets.token_hex(6)}"
REQUEST = {
    "report": "sales",
    "period_start": "2026-11-01",
    "period_end": "2026-11-30",
    "format": "csv",
    "user_id": ADA,
}


def begin(gateway: httpx.Client, body: dict[str, Any], key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    shown = f" (Idempotency-Key: {key})" if key else ""
    period = f"{body['period_start']}..{body['period_end']}"
    print(f"→ POST :{gateway.base_url.port}/jobs {body['report']} report {period}{shown}")
    started = time.monotonic()
    response = gateway.post("/jobs", json=body, headers=headers).raise_for_status()
    took = (time.monotonic() - started) * 1000
    print(f"← {response.status_code} in {took:.0f} ms, Location: {response.headers['Location']}")
    return str(response.headers["Location"])


def poll(gateway: httpx.Client, status_url: str, wait: int = 0) -> dict[str, Any]:
    query = f"?wait={wait}" if wait else ""
    started = time.monotonic()
    response = gateway.get(f"{status_url}{query}", timeout=wait + 10).raise_for_status()
    status: dict[str, Any] = response.json()
    took = time.monotonic() - started
    print(f"→ GET :{gateway.base_url.port}{status_url}{query} ← {took:.1f}s: {describe(status)}")
    return status


def describe(status: dict[str, Any]) -> str:
    match status["status"]:
        case "pending":
            return "pending"
        case "done":
            result = status["result"]
            return f"done: {result['file']} at {result['link']}, emailed ({result['emailed']})"
        case _:
            return f"failed: {status['reason']}"


@contextmanager
def second_gateway() -> Iterator[tuple[httpx.Client, subprocess.Popen[str]]]:
    """Another gateway process beside the one `make run` started (stopped by its pid)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "async_http_api.gateway"],
        env={**os.environ, "GATEWAY_PORT": "0"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.rsplit(" ", 1)[-1].strip()
        print(f"· started a second gateway: {url} (pid {process.pid})")
        with httpx.Client(base_url=url, timeout=10) as client:
            yield client, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def fault(providers: httpx.Client, **spec: Any) -> str:
    response = providers.post("/_admin/faults", json={"provider": "api", "action": "call", **spec})
    return str(response.raise_for_status().json()["id"])


def main() -> None:
    with (
        httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=10) as gateway,
        httpx.Client(base_url=os.environ["PROVIDER_API_URL"], timeout=10) as providers,
    ):
        print(f"· the reports are for Ada, user {ADA}: the mail system knows her address")
        print(
            "· the simulated warehouse and storage take 1.5 s a call from now on (a latency fault)"
        )
        slow = fault(providers, mode="latency", latency_ms=1500)

        print("\n1. begin, then poll: the answer comes before the work is done")
        status_url = begin(gateway, REQUEST)
        poll(gateway, status_url)
        poll(gateway, status_url, wait=20)

        print("\n2. the gateway that took the job dies; another one answers for it")
        key = f"export-{secrets.token_hex(4)}"
        with second_gateway() as (other, process):
            status_url = begin(other, {**REQUEST, "report": "inventory"}, key)
            poll(other, status_url)
            process.send_signal(signal.SIGKILL)
            process.wait()
            print(f"· 💥 SIGKILLed the second gateway (pid {process.pid}) with the job pending")
        print("· the client lost its gateway; it repeats its POST, with the same key, elsewhere:")
        same = begin(gateway, {**REQUEST, "report": "inventory"}, key)
        print(f"  the same job ({'same' if same == status_url else 'a DIFFERENT'} status URL)")
        poll(gateway, status_url, wait=20)
        providers.delete(f"/_admin/faults/{slow}").raise_for_status()

        print("\n3. the warehouse says no (403): the job fails with its reason, asked once")
        refusal = fault(providers, mode="fail_always", status=403)
        poll(gateway, begin(gateway, {**REQUEST, "report": "signups"}), wait=20)
        providers.delete(f"/_admin/faults/{refusal}").raise_for_status()

        print("\n4. the warehouse is down for two calls (503): the query is retried, and runs")
        fault(providers, mode="fail_times", times=2, status=503)
        poll(gateway, begin(gateway, REQUEST), wait=20)

        print("\n5. a wait that is out of bounds is refused, naming the parameter")
        bad = gateway.get(f"{status_url}?wait=600")
        problem = bad.json()["detail"][0]
        print(f"→ GET {status_url}?wait=600 ← {bad.status_code}: {problem['loc']} {problem['msg']}")


if __name__ == "__main__":
    main()
