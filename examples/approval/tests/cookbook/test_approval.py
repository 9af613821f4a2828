"""approval end to end: a real dev server, worker and gateway processes, and the provider sandbox.

Every test submits claims through the gateway's HTTP API, reads the approver's email from the
sandbox (what the email provider was asked to send), follows its links as a browser would (GET
the page, POST its form) and asserts on what the receiving systems recorded: the sandbox's
emails, chat messages and payments, and the dev server's promises. The shared stack runs in real
time with the gateway's 3-day deadline, which never passes during a test; the deadline tests
have a stack of their own on a dev server that skips time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from approval.links import Link, LinkSigner
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.sandbox.store import EffectRecord
from cookbook.stack import devserver_process, gateway_process, url_of, worker_process
from cookbook.testing.bodies import REMOVED, as_json, changed, malformed_bodies
from cookbook.testing.browser import browser_fixture  # noqa: F401  (the fixture `browser`)
from cookbook.testing.fixtures import RunningDevServer, RunningSandbox
from cookbook.testing.plaintext import plaintext_found, stored_values, what_the_server_holds
from resonate.resonate import Resonate
from resonate.types import Value
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

TIMEOUT_S = 30
SECRET = secrets.token_urlsafe(32)  # this module's link secret, given to worker and gateway
TITLE = re.compile(r'<h1 id="title">(.*?)</h1>', re.S)
LINK = re.compile(r"(Approve|Reject):\s+(\S+)")
# Step ids, which the tests use to find what the workflow did (the example's code never builds
# them): the policy check `:1`, the decision promise `:2`, the email to the approver `:3`, then
# the payment `:4` and the email to the employee `:5`.
DECISION, ASK, PAY = 2, 3, 4
# Who claims and who approves: the client knows their names and email addresses, and sends only
# their staff ids, which the email and payment providers resolve.
EMPLOYEE_ID, EMPLOYEE = "usr_5e0b82d4", {"name": "Zoë Quist", "email": "zoe@example.com"}
APPROVER_ID, APPROVER = "usr_a3c7f190", {"name": "Grace Hopper", "email": "grace@example.com"}


def a_claim(claim_id: str | None = None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "claim_id": claim_id or f"test-{secrets.token_hex(4)}",
        "employee_id": EMPLOYEE_ID,
        "approver_id": APPROVER_ID,
        "category": "travel",
        "amount_cents": 42_000,
        "currency": "EUR",
        "description": "Train to Lyon for the customer workshop",
    }
    return body | changes


@dataclass
class Page:
    status: int
    title: str
    html: str
    headers: httpx.Headers


@dataclass
class Stack:
    gateway: httpx.Client
    server: RunningDevServer
    sandbox: RunningSandbox
    env: dict[str, str]
    workers: list[ManagedProcess] = field(default_factory=list)

    def submit(self, body: dict[str, Any] | None = None) -> str:
        body = body or a_claim()
        response = self.gateway.post("/claims", json=body)
        assert response.status_code == 202, response.text
        claim_id: str = response.json()["claim_id"]
        return claim_id

    def links(self, claim_id: str) -> dict[str, str]:
        """The approver's email about the claim, once sent: its approve and reject links."""
        self.server.wait_for("settle", f"{claim_id}:{ASK}", timeout=TIMEOUT_S)
        [email] = [e for e in self.effects(claim_id) if e.body.get("to") == APPROVER_ID]
        return {verb.lower(): url for verb, url in LINK.findall(email.body["text"])}

    def open(self, url: str, method: str = "GET", **form: str) -> Page:
        response = self.gateway.request(method, url, data=form or None)
        return Page(response.status_code, title_of(response.text), response.text, response.headers)

    def view(self, claim_id: str) -> dict[str, Any]:
        response = self.gateway.get(f"/claims/{claim_id}")
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    def ended(self, claim_id: str) -> dict[str, Any]:
        """The claim's status, once its execution has settled."""
        self.server.wait_for("settle", claim_id, timeout=TIMEOUT_S)
        return self.view(claim_id)

    def waiting(self, claim_id: str) -> None:
        """Until the claim is suspended on the approver's decision."""
        self.server.wait_for("suspend", f"{claim_id}:{DECISION}", timeout=TIMEOUT_S)

    def effects(self, claim_id: str) -> list[EffectRecord]:
        return self.sandbox.records.effects(key_prefix=f"{claim_id}:")

    def promise_states(self, claim_id: str) -> dict[str, str]:
        promises = self.server.state(claim_id)["promises"]
        assert isinstance(promises, list)
        return {p["id"]: p["state"] for p in promises}

    def fail(self, claim_id: str, error: Exception) -> None:
        """End the claim on the server with `error`, as a worker whose workflow raised would."""

        async def reject() -> None:
            client = Resonate(url=self.server.url, group="approval-tests")
            try:
                await client.promises.reject(claim_id, Value(data=error))
            finally:
                await client.stop()

        asyncio.run(reject())


def title_of(html: str) -> str:
    match = TITLE.search(html)
    return match[1] if match else ""


def did(effects: list[EffectRecord]) -> list[str]:
    return [f"{e.provider}.{e.action}" for e in effects]


def environment(server_url: str, sandbox_url: str) -> dict[str, str]:
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("RESONATE_", "APPROVAL_"))
    }
    return {
        **inherited,
        "RESONATE_URL": server_url,
        "PROVIDER_API_URL": sandbox_url,
        "APPROVAL_LINK_SECRET": SECRET,
    }


@pytest.fixture(scope="module")
def stack(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("devserver")
    with devserver_process(data_dir, fast_recovery=True) as server:
        env = environment(url_of(server), sandbox.url)
        with (
            gateway_process("approval.gateway", env) as gateway,
            clients.client(base_url=url_of(gateway), timeout=TIMEOUT_S) as client,
        ):
            running = Stack(client, RunningDevServer(server, data_dir, True), sandbox, env)
            running.workers.append(worker_process("approval.worker", env).start())
            try:
                yield running
            finally:
                for worker in running.workers:
                    worker.stop()


# -- deciding by link ----------------------------------------------------------------------------


def test_an_approval_by_link_pays_once_and_tells_the_employee(stack: Stack) -> None:
    claim_id = stack.submit()
    links = stack.links(claim_id)

    page = stack.open(links["approve"])
    done = stack.open(links["approve"], "POST", note="Enjoy Lyon")
    view = stack.ended(claim_id)

    assert (page.status, page.title) == (200, f"Approve expense claim {claim_id}?")
    assert "420.00 EUR" in page.html
    assert '<form method="post">' in page.html
    assert (done.status, done.title) == (200, f"Claim {claim_id} approved")
    ask, payment, told = effects = stack.effects(claim_id)
    assert did(effects) == ["email.send", "payment.charge", "email.send"]
    assert ask.idempotency_key == f"{claim_id}:{ASK}"
    assert payment.idempotency_key == f"{claim_id}:{PAY}"  # the payment step's id
    assert payment.body == {
        "payee": EMPLOYEE_ID,
        "amount_cents": 42_000,
        "currency": "EUR",
        "description": f"expense claim {claim_id}",
    }
    assert told.body["to"] == EMPLOYEE_ID
    assert told.body["subject"] == f"Expense claim {claim_id}: approved and paid"
    assert "Enjoy Lyon" in told.body["text"]
    assert view["state"] == "paid"
    assert view["outcome"] == {
        "state": "paid",
        "payment_id": payment.resource_id,
        "note": "Enjoy Lyon",
        "reason": None,
        "unsent": None,
    }


def test_a_second_click_is_told_it_was_already_decided(stack: Stack) -> None:
    claim_id = stack.submit()
    links = stack.links(claim_id)
    assert stack.open(links["approve"], "POST").status == 200

    again = stack.open(links["approve"], "POST")
    other = stack.open(links["reject"], "POST")
    looked = stack.open(links["reject"])
    stack.ended(claim_id)

    assert (again.status, again.title) == (200, f"Claim {claim_id} was already decided")
    assert "It was approved. Nothing was changed." in again.html
    # The other decision of a decided claim is a conflict, on the page and in its status code.
    assert (other.status, other.title) == (409, f"Claim {claim_id} was already decided")
    assert (looked.status, looked.title) == (200, f"Claim {claim_id} was already decided")
    assert did(stack.effects(claim_id)) == ["email.send", "payment.charge", "email.send"]


def test_a_rejection_pays_nothing_and_passes_the_note_on(stack: Stack) -> None:
    claim_id = stack.submit()

    page = stack.open(stack.links(claim_id)["reject"], "POST", note="Not a business trip")
    view = stack.ended(claim_id)

    assert (page.status, page.title) == (200, f"Claim {claim_id} rejected")
    _, told = effects = stack.effects(claim_id)
    assert did(effects) == ["email.send", "email.send"]
    assert told.body["subject"] == f"Expense claim {claim_id}: rejected"
    assert "Not a business trip" in told.body["text"]
    assert view["outcome"] == {
        "state": "rejected",
        "payment_id": None,
        "note": "Not a business trip",
        "reason": None,
        "unsent": None,
    }


def test_opening_a_link_changes_nothing(stack: Stack) -> None:
    # Mail scanners and link previews open links: a GET must never decide.
    claim_id = stack.submit()
    links = stack.links(claim_id)
    stack.waiting(claim_id)

    pages = [stack.open(links[verb]) for verb in ("approve", "reject") * 5]

    assert {(p.status, p.title.split()[0]) for p in pages} == {(200, "Approve"), (200, "Reject")}
    assert stack.view(claim_id)["state"] == "in-progress"
    assert did(stack.effects(claim_id)) == ["email.send"]
    assert stack.open(links["reject"], "POST").status == 200
    assert stack.ended(claim_id)["state"] == "rejected"


def test_twenty_concurrent_clicks_decide_once(stack: Stack) -> None:
    claim_id = stack.submit()
    approve = stack.links(claim_id)["approve"]

    async def click_all() -> list[httpx.Response]:
        async with clients.async_client(
            base_url=stack.gateway.base_url, timeout=TIMEOUT_S
        ) as client:
            return await asyncio.gather(*(client.post(approve) for _ in range(20)))

    titles = sorted(title_of(r.text) for r in asyncio.run(click_all()))
    stack.ended(claim_id)

    assert titles == [f"Claim {claim_id} approved"] + [f"Claim {claim_id} was already decided"] * 19
    payments = [e for e in stack.effects(claim_id) if e.provider == "payment"]
    assert len(payments) == 1


def test_a_claim_against_the_policy_is_refused_without_asking(stack: Stack) -> None:
    claim_id = stack.submit(a_claim(category="meals", amount_cents=25_000))

    view = stack.ended(claim_id)

    assert view["outcome"]["state"] == "refused"
    assert view["outcome"]["reason"] == "meals claims are limited to 150.00"
    [told] = stack.effects(claim_id)
    assert (told.body["to"], told.body["subject"]) == (
        EMPLOYEE_ID,
        f"Expense claim {claim_id}: refused",
    )


def test_a_worker_killed_while_the_approver_thinks_loses_nothing(stack: Stack) -> None:
    claim_id = stack.submit()
    links = stack.links(claim_id)
    stack.waiting(claim_id)

    stack.workers[0].kill()  # SIGKILL, while the claim is suspended on the decision
    decided = stack.open(links["approve"], "POST")  # no worker alive: the server keeps it
    stack.workers[0] = worker_process("approval.worker", stack.env).start()
    view = stack.ended(claim_id)

    assert decided.status == 200
    assert view["state"] == "paid"
    assert did(stack.effects(claim_id)) == ["email.send", "payment.charge", "email.send"]


def test_a_claim_that_ended_without_a_decision_refuses_the_click(stack: Stack) -> None:
    # The decision promise outlives a claim that ended without it (here failed on the server, as
    # a bug would): a click must not be told the claim will be paid, when nothing would pay it.
    claim_id = stack.submit()
    links = stack.links(claim_id)
    stack.waiting(claim_id)
    stack.fail(claim_id, RuntimeError("the workflow raised"))

    looked = stack.open(links["approve"])
    clicked = stack.open(links["approve"], "POST")
    view = stack.view(claim_id)

    expected = f"Claim {claim_id} can no longer be decided"
    assert (looked.status, looked.title) == (409, expected)
    assert (clicked.status, clicked.title) == (409, expected)
    assert stack.promise_states(claim_id)[f"{claim_id}:{DECISION}"] == "pending"  # not decided
    assert did(stack.effects(claim_id)) == ["email.send"]
    # What the workflow raised, decoded, for a person to look at: not just "rejected".
    assert (view["state"], view["reason"]) == ("failed", "the workflow raised")


# -- in a real browser --------------------------------------------------------------------------


def test_in_a_browser_the_emailed_link_approves_after_a_click(
    stack: Stack, browser: Callable[[], Chrome]
) -> None:
    claim_id = stack.submit()
    approve = stack.links(claim_id)["approve"]
    driver = browser()

    driver.get(approve)
    asked = driver.find_element(By.ID, "title").text
    driver.find_element(By.ID, "note").send_keys("Enjoy Lyon")
    driver.find_element(By.ID, "confirm").click()
    WebDriverWait(driver, TIMEOUT_S).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "title"), "approved")
    )
    outcome = driver.find_element(By.ID, "title").text
    driver.get(approve)  # the emailed link, opened again
    again = driver.find_element(By.ID, "title").text
    view = stack.ended(claim_id)

    assert asked == f"Approve expense claim {claim_id}?"
    assert outcome == f"Claim {claim_id} approved"
    assert again == f"Claim {claim_id} was already decided"
    assert view["outcome"]["state"] == "paid"
    assert view["outcome"]["note"] == "Enjoy Lyon"
    assert did(stack.effects(claim_id)) == ["email.send", "payment.charge", "email.send"]


def test_in_a_browser_a_tampered_link_shows_nothing_but_not_valid(
    stack: Stack, browser: Callable[[], Chrome]
) -> None:
    claim_id = stack.submit()
    approve = stack.links(claim_id)["approve"]
    driver = browser()

    driver.get(approve[:-1] + ("A" if approve[-1] != "A" else "B"))

    assert driver.find_element(By.ID, "title").text == "This link is not valid"
    assert claim_id not in driver.page_source
    assert driver.find_elements(By.TAG_NAME, "form") == []
    stack.open(approve, "POST")


# -- links that are not ours ---------------------------------------------------------------------


def test_a_tampered_forged_or_unknown_link_is_the_same_404(stack: Stack) -> None:
    claim_id = stack.submit()
    approve = stack.links(claim_id)["approve"]
    base, token = approve.rsplit("/", 1)
    _, payload, signature = token.split(".")
    promise_id = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[1]
    genuine = LinkSigner(SECRET.encode(), "test")
    forger = LinkSigner(secrets.token_urlsafe(32).encode(), "forger")

    urls = {
        "a character changed": base + "/" + token[:-1] + ("A" if token[-1] != "A" else "B"),
        "another claim's payload": base
        + "/"
        + genuine.token(Link("someone-else", promise_id, "approve")).rsplit(".", 1)[0]
        + "."
        + signature,
        "signed with another secret": base
        + "/"
        + forger.token(Link(claim_id, promise_id, "approve")),
        "genuine, no such claim": base
        + "/"
        + genuine.token(Link("no-such-claim", "x:2", "approve")),
        "genuine, no such promise": base + "/" + genuine.token(Link(claim_id, "x:2", "approve")),
        "not a token": base + "/" + claim_id,
        "a bare promise id": base + "/" + promise_id,
    }
    answers = {
        what: (stack.gateway.get(url), stack.gateway.post(url)) for what, url in urls.items()
    }

    bodies = set()
    for what, (got, posted) in answers.items():
        assert (got.status_code, posted.status_code) == (404, 404), what
        bodies |= {got.text, posted.text}
    assert len(bodies) == 1  # nothing in the answer tells them apart
    assert claim_id not in bodies.pop()
    assert stack.view(claim_id)["state"] == "in-progress"
    assert did(stack.effects(claim_id)) == ["email.send"]


def test_the_page_escapes_what_the_employee_wrote(stack: Stack) -> None:
    claim_id = stack.submit(a_claim(description='<script>alert("pwned")</script> & more'))

    page = stack.open(stack.links(claim_id)["approve"])

    assert "<script>" not in page.html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; &amp; more" in page.html
    # The token is in the URL: it may not leave by a Referer, nor stay in a cache.
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


# -- the form ------------------------------------------------------------------------------------

BAD_FORMS: dict[str, tuple[bytes, str]] = {
    "note over 500 characters": (b"note=" + b"x" * 501, "application/x-www-form-urlencoded"),
    "note with a NUL": (b"note=a%00b", "application/x-www-form-urlencoded"),
    "note with a bidi override": (b"note=%E2%80%AEevil", "application/x-www-form-urlencoded"),
    "note twice": (b"note=a&note=b", "application/x-www-form-urlencoded"),
    "an unknown field": (b"decision=reject", "application/x-www-form-urlencoded"),
    "JSON instead of the form": (b'{"note": "hi"}', "application/json"),
    "text": (b"note=hi", "text/plain"),
    "a body over 16 KiB": (b"note=" + b"x" * 20_000, "application/x-www-form-urlencoded"),
}


@pytest.fixture(scope="module")
def undecided(stack: Stack) -> tuple[str, str]:
    """A claim waiting for its decision, and its approve link: the bad forms' target."""
    claim_id = stack.submit()
    approve = stack.links(claim_id)["approve"]
    stack.waiting(claim_id)
    return claim_id, approve


@pytest.mark.parametrize("body", BAD_FORMS.values(), ids=BAD_FORMS.keys())
def test_a_bad_form_decides_nothing(
    stack: Stack, undecided: tuple[str, str], body: tuple[bytes, str]
) -> None:
    claim_id, approve = undecided
    content, content_type = body

    response = stack.gateway.post(approve, content=content, headers={"Content-Type": content_type})

    assert response.status_code in (400, 413, 422), response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert len(response.content) < 3_000  # says what is wrong without echoing the input
    assert stack.view(claim_id)["state"] == "in-progress"
    assert stack.open(approve).title.startswith("Approve")  # still open for a good click
    assert did(stack.effects(claim_id)) == ["email.send"]


def test_a_422_on_the_form_names_the_field(stack: Stack, undecided: tuple[str, str]) -> None:
    _, approve = undecided

    page = stack.open(approve, "POST", note="x" * 501)

    assert (page.status, page.title) == (422, "That form is not right")
    assert "note: String should have at most 500 characters" in page.html


# -- submitting claims ---------------------------------------------------------------------------


def test_twenty_concurrent_duplicate_posts_start_one_claim(stack: Stack) -> None:
    body = a_claim()
    claim_id = body["claim_id"]

    async def post_all() -> list[httpx.Response]:
        async with clients.async_client(
            base_url=stack.gateway.base_url, timeout=TIMEOUT_S
        ) as client:
            return await asyncio.gather(*(client.post("/claims", json=body) for _ in range(20)))

    responses = asyncio.run(post_all())
    stack.open(stack.links(claim_id)["reject"], "POST")
    stack.ended(claim_id)

    assert [r.status_code for r in responses] == [202] * 20
    assert {r.json()["claim_id"] for r in responses} == {claim_id}
    promises = stack.server.state(claim_id)["promises"]
    assert isinstance(promises, list)
    assert [p["id"] for p in promises if p["id"] == claim_id] == [claim_id]
    requests = stack.sandbox.records.requests(f"{claim_id}:")
    assert [f"{r.provider}.{r.action}" for r in requests] == ["email.send", "email.send"]


def test_the_same_id_with_another_body_is_409(stack: Stack) -> None:
    body = a_claim()
    claim_id = stack.submit(body)

    response = stack.gateway.post("/claims", json=changed(body, "amount_cents", 1))

    assert response.status_code == 409
    assert response.json() == {"error": f"claim {claim_id!r} exists with a different body"}
    assert stack.view(claim_id)["claim"]["amount_cents"] == 42_000
    stack.open(stack.links(claim_id)["reject"], "POST")


def test_without_an_id_the_gateway_chooses_one(stack: Stack) -> None:
    body = changed(a_claim(), "claim_id", REMOVED)

    first, second = stack.submit(body), stack.submit(body)

    assert first != second
    for claim_id in (first, second):
        stack.open(stack.links(claim_id)["reject"], "POST")
        assert stack.ended(claim_id)["state"] == "rejected"


def _changed(path: str, value: Any) -> dict[str, Any]:
    return changed(a_claim("bad-body"), path, value)


BAD_BODIES: dict[str, bytes] = {
    **malformed_bodies(a_claim("bad-body")),
    "missing employee_id": as_json(_changed("employee_id", REMOVED)),
    "missing approver_id": as_json(_changed("approver_id", REMOVED)),
    "missing amount": as_json(_changed("amount_cents", REMOVED)),
    "missing description": as_json(_changed("description", REMOVED)),
    "claim_id with colon": as_json(_changed("claim_id", "c:1")),
    "claim_id empty": as_json(_changed("claim_id", "")),
    "claim_id too long": as_json(_changed("claim_id", "c" * 65)),
    "claim_id number": as_json(_changed("claim_id", 7)),
    "claim_id path traversal": as_json(_changed("claim_id", "../../etc/passwd")),
    "employee_id empty": as_json(_changed("employee_id", "")),
    "employee_id NUL byte": as_json(_changed("employee_id", "usr_5e0b\x00")),
    "employee_id bidi override": as_json(_changed("employee_id", "usr_\u202e5e0b82d4")),
    "employee_id lone surrogate": as_json(_changed("employee_id", "usr_5e0b\ud800")),
    "employee_id too long": as_json(_changed("employee_id", "usr_" + "a" * 33)),
    "approver_id number": as_json(_changed("approver_id", 7)),
    "category unknown": as_json(_changed("category", "yacht")),
    "amount zero": as_json(_changed("amount_cents", 0)),
    "amount negative": as_json(_changed("amount_cents", -100)),
    "amount fraction": as_json(_changed("amount_cents", 10.5)),
    "amount as string": as_json(_changed("amount_cents", "42000")),
    "amount as bool": as_json(_changed("amount_cents", True)),
    "amount NaN": as_json(_changed("amount_cents", float("nan"))),
    "amount huge": as_json(_changed("amount_cents", 10**12)),
    "currency unknown": as_json(_changed("currency", "BTC")),
    "description empty": as_json(_changed("description", "")),
    "description over 500": as_json(_changed("description", "d" * 501)),
    "description control character": as_json(_changed("description", "a\x1bb")),
    "deadline zero": as_json(_changed("decide_within_seconds", 0)),
    "deadline over 30 days": as_json(_changed("decide_within_seconds", 30 * 86_400 + 1)),
    "deadline as string": as_json(_changed("decide_within_seconds", "3600")),
    "extra field": as_json(_changed("approved", True)),
    "deeply nested": b"[" * 5_000 + b"]" * 5_000,
    "body over 16 KiB": as_json(_changed("description", "A" * 20_000)),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_bad_claim_is_a_4xx_naming_the_field_and_starts_nothing(
    stack: Stack, body: bytes
) -> None:
    executions_before = stack.server.executions()

    response = stack.gateway.post(
        "/claims", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code in (400, 413, 422), response.text
    assert len(response.content) < 2_000  # says what is wrong without echoing the input
    if response.status_code == 422:
        assert response.json()["detail"], "a 422 names the fields that are wrong"
    assert stack.server.executions() == executions_before
    assert stack.sandbox.records.requests("bad-body:") == []


def test_a_422_names_the_field_and_the_reason(stack: Stack) -> None:
    response = stack.gateway.post("/claims", json=_changed("amount_cents", 0))

    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid request",
        "detail": [
            {
                "loc": ["amount_cents"],
                "msg": "Input should be greater than or equal to 1",
                "type": "greater_than_equal",
            }
        ],
    }


def test_an_oversized_body_is_a_413_claim_or_form(stack: Stack, undecided: tuple[str, str]) -> None:
    _, approve = undecided
    executions_before = stack.server.executions()

    claim = stack.gateway.post("/claims", json=_changed("description", "A" * 20_000))
    form = stack.gateway.post(
        approve,
        content=b"note=" + b"x" * 20_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert (claim.status_code, form.status_code) == (413, 413)
    assert claim.json() == {"error": "The data value transmitted exceeds the capacity limit."}
    assert title_of(form.text) == "Request Entity Too Large"
    assert stack.server.executions() == executions_before


def test_unknown_and_malformed_claim_ids(stack: Stack) -> None:
    assert stack.gateway.get("/claims/no-such-claim").status_code == 404
    assert stack.gateway.get("/claims/c:1").status_code == 422
    assert stack.gateway.get("/claims//x").status_code == 404


# -- personal data: a claim names its people by staff id, and only the providers know them -------

NOT_A_REFERENCE: dict[str, dict[str, Any]] = {
    "an email address as employee_id": {"employee_id": EMPLOYEE["email"]},
    "a name as employee_id": {"employee_id": EMPLOYEE["name"]},
    "an email after the prefix": {"employee_id": "usr_zoe@example.com"},
    "an email address as approver_id": {"approver_id": APPROVER["email"]},
    "a name as approver_id": {"approver_id": APPROVER["name"]},
    "the name and email instead": {"employee_id": REMOVED, "employee": EMPLOYEE},
}
PERSONAL = [*EMPLOYEE.values(), *APPROVER.values(), *EMPLOYEE["name"].split()]
PERSONAL += APPROVER["name"].split()
# A first name in an id would spell it: a `usr_zoe...` or a `claim-grace-...` names the person as
# plainly as the name does, so no stored id or reference may contain one.
FIRST_NAMES = ["zoe", "zoë", "grace"]


@pytest.mark.parametrize("fields", NOT_A_REFERENCE.values(), ids=NOT_A_REFERENCE.keys())
def test_personal_data_where_a_staff_id_goes_is_refused(
    stack: Stack, fields: dict[str, Any]
) -> None:
    body = a_claim()
    for path, value in fields.items():
        body = changed(body, path, value)
    claim_id = body["claim_id"]
    executions_before = stack.server.executions()

    response = stack.gateway.post("/claims", json=body)

    assert response.status_code == 422, response.text
    named = {field for field in fields if field.endswith("_id")}  # the staff id fields given
    assert named <= {error["loc"][0] for error in response.json()["detail"]}
    assert plaintext_found(response.content, PERSONAL) == []  # not echoed either
    assert stack.server.executions() == executions_before  # nothing started, nothing stored
    assert stack.sandbox.records.requests(f"{claim_id}:") == []


def test_the_server_holds_staff_ids_never_a_name_or_an_email(stack: Stack) -> None:
    claim_id = stack.submit()
    assert stack.open(stack.links(claim_id)["approve"], "POST", note="Enjoy Lyon").status == 200
    assert stack.ended(claim_id)["state"] == "paid"

    # Every promise of the claim (the execution, its steps and its decision), decoded.
    promises = stack.server.state(claim_id)["promises"]
    assert isinstance(promises, list)
    assert len(promises) == 6  # the execution and its 5 children
    stored = {p["id"]: json.dumps(stored_values(p), ensure_ascii=False) for p in promises}
    assert EMPLOYEE_ID in stored[claim_id]  # the argument, decoded: the claim and its ids
    assert APPROVER_ID in stored[claim_id]
    assert [
        i for i, data in stored.items() if "@" in data or plaintext_found(data.encode(), PERSONAL)
    ] == []
    assert [
        i for i, data in stored.items() for name in FIRST_NAMES if name in (i + data).lower()
    ] == []
    # Nor anywhere else the server keeps or shows it: its files (log, archive), and its state.
    # One search (it decodes all the server keeps): the reference, which shows the search sees
    # what is stored, and none of the personal data.
    held = what_the_server_holds(stack.server)
    assert plaintext_found(held, [EMPLOYEE_ID, *PERSONAL]) == [EMPLOYEE_ID]
    # The providers were given the staff ids, which they resolve to an address and an account.
    effects = stack.effects(claim_id)
    assert [(did([e])[0], e.body.get("to", e.body.get("payee"))) for e in effects] == [
        ("email.send", APPROVER_ID),
        ("payment.charge", EMPLOYEE_ID),
        ("email.send", EMPLOYEE_ID),
    ]


# -- the deadline, in skipped time ---------------------------------------------------------------


@pytest.fixture(scope="module")
def skipping(sandbox: RunningSandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A dev server that skips time: a 3-day deadline passes as soon as the claim waits."""
    data_dir = tmp_path_factory.mktemp("skipping-devserver")
    with devserver_process(data_dir, fast_recovery=True, skip_time=True) as server:
        env = environment(url_of(server), sandbox.url)
        with (
            gateway_process("approval.gateway", env) as gateway,
            worker_process("approval.worker", env),
            clients.client(base_url=url_of(gateway), timeout=TIMEOUT_S) as client,
        ):
            running = RunningDevServer(server, data_dir, True, skip_time=True)
            yield Stack(client, running, sandbox, env)


def test_after_the_deadline_the_claim_is_escalated_and_a_click_is_409(skipping: Stack) -> None:
    stack = skipping
    started = time.monotonic()
    claim_id = stack.submit()
    links = stack.links(claim_id)

    view = stack.ended(claim_id)
    waited = time.monotonic() - started
    clicked = stack.open(links["approve"], "POST")
    looked = stack.open(links["reject"])

    assert waited < 15  # 3 days, skipped
    assert view["decide_within_seconds"] == 3 * 86_400
    assert view["outcome"] == {
        "state": "escalated",
        "payment_id": None,
        "note": None,
        "reason": "no decision before the deadline",
        "unsent": None,
    }
    ask, escalated = effects = stack.effects(claim_id)
    assert did(effects) == ["email.send", "slack.send"]
    assert escalated.body["channel"] == "#finance-approvals"
    assert f"Expense claim {claim_id}" in escalated.body["text"]
    assert f"no decision from {APPROVER_ID} in time" in escalated.body["text"]
    assert "3 days" in ask.body["text"]
    expected = f"The decision deadline for claim {claim_id} has passed"
    assert (clicked.status, clicked.title) == (409, expected)
    assert (looked.status, looked.title) == (409, expected)
    assert did(stack.effects(claim_id)) == ["email.send", "slack.send"]  # nothing paid
