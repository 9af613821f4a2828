"""`python -m webservers.demo`: book tickets through a FastAPI, a Flask and a Django app, each
running the booking in its own process; repeat requests; kill one app mid-booking.

It starts one process of each app (and stops each by its pid at the end), all workers of the
group `webservers`, and talks to them over HTTP only. What the outside world saw is read from
the provider sandbox's own records: which holds and emails exist for each ticket.

Environment: RESONATE_URL (required), PROVIDER_API_URL (the sandbox), RESONATE_TTL_SECONDS for
the apps it starts (default 5: a killed app's booking moves on after at most that long).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

APPS = ("fastapi", "flask", "django")
LISTENING = re.compile(r"listening on (http\S+)")


@dataclass
class App:
    name: str
    process: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


def start_app(name: str, label: str | None = None) -> App:
    """Start one app's process; return once it says it is a worker and listening."""
    env = {**os.environ, "RESONATE_TTL_SECONDS": os.environ.get("RESONATE_TTL_SECONDS", "5")}
    process = subprocess.Popen(
        [sys.executable, "-m", f"webservers.{name}_app"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # blocks until the app says it is listening
        if match := LISTENING.search(line):
            break
    else:
        sys.exit(f"webservers.demo: the {name} app exited before it was ready")

    def relay(stream: Any) -> None:  # keep its output flowing, and shown
        for line in stream:
            print(f"    {label or name} | {line.rstrip()}", flush=True)

    threading.Thread(target=relay, args=(process.stdout,), daemon=True).start()
    return App(name, process, match.group(1))


def stop(app: App) -> None:
    if app.process.poll() is None:
        app.process.send_signal(signal.SIGTERM)
    app.process.wait(timeout=15)


@contextmanager
def running(names: tuple[str, ...]) -> Iterator[dict[str, App]]:
    apps: dict[str, App] = {}
    try:
        for name in names:
            apps[name] = start_app(name)
        yield apps
    finally:
        for app in apps.values():
            stop(app)


def new_ticket(seats: int = 2) -> dict[str, Any]:
    # The request is stored on the Resonate server as the execution's argument, and the ticket
    # id as its id: random references that name nobody, which only the providers resolve.
    return {
        "ticket_id": f"t-{secrets.token_hex(4)}",
        "customer_id": f"cus_{secrets.token_hex(6)}",
        "event_id": "evt_pycon2027",
        "seats": seats,
    }


def effects(sandbox: str, ticket_id: str) -> list[str]:
    """What the providers did for this ticket, from the sandbox's own records."""
    found = httpx.get(f"{sandbox}/_admin/effects", params={"key_prefix": ticket_id + ":"})
    found.raise_for_status()
    return [f"{e['provider']}.{e['action']}" for e in found.json()]


def calls(sandbox: str, ticket_id: str) -> int:
    """How many requests reached the providers for this ticket, whatever they did."""
    found = httpx.get(f"{sandbox}/_admin/requests", params={"key_prefix": ticket_id + ":"})
    found.raise_for_status()
    return len(found.json())


def post(app: App, body: dict[str, Any], timeout: float = 30) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.post(f"{app.url}/tickets", json=body, timeout=timeout)
    return response, time.perf_counter() - started


def main() -> None:
    sandbox = os.environ.get("PROVIDER_API_URL", "http://127.0.0.1:8100")
    ttl = os.environ.get("RESONATE_TTL_SECONDS", "5")
    with running(APPS) as apps:
        print("→ three web apps, each in its own process, each a worker of group 'webservers':")
        for app in apps.values():
            print(f"   {app.name:<8} pid {app.pid:<7} {app.url}")

        print("\n→ POST /tickets to each app: the route runs book_tickets in its own process")
        tickets = {}
        for app in apps.values():
            tickets[app.name] = ticket = new_ticket()
            answer, took = post(app, ticket)
            print(
                f"   {app.name:<8} {answer.status_code} in {took:.2f}s  {json.dumps(answer.json())}"
            )
            print(f"            the sandbox: {', '.join(effects(sandbox, ticket['ticket_id']))}")

        print("\n→ the same POST again: the stored booking, and no provider is asked anything")
        for app in apps.values():
            ticket = tickets[app.name]
            before = calls(sandbox, ticket["ticket_id"])
            answer, took = post(app, ticket)
            after = calls(sandbox, ticket["ticket_id"])
            print(
                f"   {app.name:<8} {answer.status_code} in {took:.2f}s, the same booking;"
                f" provider calls for it: {before} before, {after} after"
            )

        print("\n→ 20 concurrent duplicates of one new ticket, to each app")
        for app in apps.values():
            ticket = new_ticket()
            with ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _, a=app, t=ticket: post(a, t)[0], range(20)))
            codes = sorted({a.status_code for a in answers})
            bodies = len({a.text for a in answers})
            done = effects(sandbox, ticket["ticket_id"])
            print(
                f"   {app.name:<8} 20 answers, status {codes}, {bodies} distinct booking;"
                f" the sandbox: {', '.join(done)}"
            )

        print("\n→ a bad request is refused before anything runs")
        bad = {**new_ticket(), "seats": 0}
        answer, _ = post(apps["django"], bad)
        print(f"   django   {answer.status_code}  {json.dumps(answer.json())}")

        crash(apps, sandbox, ttl)


def crash(apps: dict[str, App], sandbox: str, ttl: str) -> None:
    victim = apps["flask"]
    ticket = new_ticket()
    tid = ticket["ticket_id"]
    print(
        f"\n→ crash: the flask app (pid {victim.pid}) will be SIGKILLed right after the inventory"
        " holds the seats, before the step's result is recorded"
    )
    # The sandbox's kill switch: it SIGKILLs that pid as soon as it has applied the effect.
    switch = {"provider": "inventory", "action": "reserve", "pid": victim.pid}
    httpx.post(f"{sandbox}/_admin/kill-switches", json=switch).raise_for_status()
    try:
        post(victim, ticket)
    except httpx.TransportError as exc:
        print(f"   POST /tickets to flask: {type(exc).__name__}, the process is gone")
    victim.process.wait(timeout=10)
    print(f"   ✗ pid {victim.pid} exited with {victim.process.returncode} (SIGKILL)")
    print(f"   the sandbox: {', '.join(effects(sandbox, tid))}: held, no email, no answer")

    apps["flask"] = replacement = start_app("flask", "flask-2")
    print(
        f"\n→ a new flask process (pid {replacement.pid}) starts; the client sends its POST again"
    )
    answer, took = post(replacement, ticket)
    booking = answer.json()
    print(f"   flask-2  {answer.status_code} in {took:.2f}s  {json.dumps(booking)}")
    print(
        f"   the booking had waited for the dead process's lease to run out (at most {ttl}s);"
        " then it went to a live web process of the group (the server hands it to one, or the"
        " retried POST takes it, whichever comes first), which replayed it: the hold step ran"
        " again and the inventory answered from its Idempotency-Key, then the email went out"
    )
    done = effects(sandbox, tid)
    print(f"   the sandbox: {', '.join(done)}: one hold, one email")
    if done != ["inventory.reserve", "email.send"] or booking.get("status") != "booked":
        sys.exit("webservers.demo: the crashed booking did not finish exactly once")
    print("\n✓ every booking ran once, in the web process that took the request (or, after the")
    print("  crash, in the web process that took it over); repeats were answered from the store")


if __name__ == "__main__":
    main()
