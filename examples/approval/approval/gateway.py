"""`python -m approval.gateway`: submit claims (JSON) and decide them by link (HTML pages).

  POST /claims              {"claim_id"?, "employee_id", "approver_id", "category",
                            "amount_cents", "currency", "description", "decide_within_seconds"?}:
                            202, status URL
  GET  /claims/{id}         in progress, or how the claim ended
  GET  /decisions/{token}   the page an emailed link opens: the claim, and a button to confirm.
                            Safe: it changes nothing (mail scanners and previews open links too)
  POST /decisions/{token}   the button: resolves the claim's decision promise; the outcome page

A token is signed by the worker (links.py); the gateway checks the signature before it reads
anything, and answers every token it did not issue with the same 404 page. A decision is taken
once: the second click is told it was already decided (200 for the same decision, 409 for the
other), and a click after the deadline gets 409 (the claim went to finance). The gateway keeps
nothing of its own: it reads the claim and its promise from the Resonate server.
  RESONATE_URL                     the Resonate server (required)
  RESONATE_GROUP                   the worker group that runs claims (default: approval)
  APPROVAL_LINK_SECRET(_FILE)      the secret the worker signs links with (see links.py)
  APPROVAL_PUBLIC_URL              the gateway's address as approvers reach it, put in the links
                                   (default: the address it listens on)
  APPROVAL_DECIDE_WITHIN_SECONDS   the decision deadline of a claim that asks for none (3 days)
  GATEWAY_HOST, GATEWAY_PORT       where to listen (default 127.0.0.1, any free port)

Flask views are synchronous and run on waitress's threads; the Resonate client is asyncio and
lives on one event loop, on a thread of its own, for the life of the process. Each request
hands its coroutine to that loop and waits for the answer.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import waitress
from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import PromiseRecord, Value
from werkzeug.exceptions import HTTPException

from approval.links import Link, LinkSigner, SecretError, signer_from_environment
from approval.workflow import Category, Claim, ClaimId, Currency, Description, StaffId

GROUP = "approval"
MAX_BODY_BYTES = 16 * 1024
RESONATE_TIMEOUT = 10.0  # seconds a request waits for the Resonate server before a 503
DEFAULT_DECIDE_WITHIN = 3 * 86_400
MAX_DECIDE_WITHIN = 30 * 86_400
# How long a claim may take after its deadline (paying, with retries, and telling the
# employee): the execution's own deadline is the decision deadline plus this.
AFTER_THE_DEADLINE = timedelta(days=1)
CLAIM_ID = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"

# What the approver may write with a decision: visible text and line breaks.
Note = Annotated[str, StringConstraints(max_length=500, pattern=r"^(?:[^\p{C}]|\r|\n|\t)*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ClaimRequest(_Strict):
    claim_id: ClaimId | None = None  # yours to choose, so that a repeated POST claims once
    employee_id: StaffId  # `usr_...`: a name or an email address here is a 422 naming the field
    approver_id: StaffId
    category: Category
    amount_cents: Annotated[int, Field(ge=1, le=10_000_000)]
    currency: Currency
    description: Description
    decide_within_seconds: Annotated[int, Field(ge=1, le=MAX_DECIDE_WITHIN)] | None = None


class DecisionForm(_Strict):
    note: Note = ""


@dataclass(frozen=True)
class StartedWith:
    claim: Claim
    decide_within_seconds: int


class Claims:
    """A Resonate client on an event loop of its own, for synchronous Flask views to use."""

    def __init__(self, resonate_url: str, group: str, signer: LinkSigner, window: int) -> None:
        self.group = group
        self.signer = signer
        self.default_window = window
        self.public_url = ""  # set once the server is bound (or from APPROVAL_PUBLIC_URL)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="resonate", daemon=True)
        self._thread.start()
        self.resonate = self.call(self._connect(resonate_url))

    @staticmethod
    async def _connect(resonate_url: str) -> Resonate:
        # A client in a group of its own: the server never hands it workflow work.
        return Resonate(url=resonate_url, group="approval-gateway")

    def call[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop; TimeoutError if the server does not answer."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(RESONATE_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.call(self.resonate.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def get(self, promise_id: str) -> PromiseRecord | None:
        try:
            return await self.resonate.promises.get(promise_id)
        except ServerError as exc:
            if exc.code != 404:
                raise
            return None

    async def started_with(self, claim_id: str) -> tuple[PromiseRecord, StartedWith] | None:
        record = await self.get(claim_id)
        if record is None:
            return None
        param = record.param.data
        if not isinstance(param, dict) or param.get("func") != "expense_claim":
            return None
        match param.get("args"):
            case [dict(claim), int(window), str()]:
                try:
                    return record, StartedWith(Claim.model_validate(claim), window)
                except ValidationError:
                    return None
            case _:
                return None

    async def start(self, claim: Claim, window: int) -> bool:
        """Start the claim, or attach to it; False if the id is taken by another claim."""
        # Starting an id that exists attaches to that execution without comparing arguments,
        # so the stored claim is compared afterwards.
        timeout = timedelta(seconds=window) + AFTER_THE_DEADLINE
        handle = self.resonate.options(target=self.group, timeout=timeout).rpc(
            claim.claim_id, "expense_claim", claim.model_dump(mode="json"), window, self.public_url
        )
        await handle.id()
        found = await self.started_with(claim.claim_id)
        return found is not None and found[1] == StartedWith(claim, window)

    async def resolve(self, link: Link, note: str) -> tuple[PromiseRecord, bool]:
        """Resolve the decision promise; the promise as it ends up, and whether we settled it."""
        attempt = secrets.token_hex(8)  # unique per request: tells this request if it won
        value = {"decision": link.decision, "note": note, "attempt": attempt}
        try:
            settled = await self.resonate.promises.resolve(link.promise_id, Value(data=value))
        except ServerError as exc:
            # Some servers refuse to settle a settled promise instead of returning it as it is.
            if exc.code not in (403, 409):
                raise
            settled = await self.resonate.promises.get(link.promise_id)
        won = settled.state == "resolved" and _value(settled).get("attempt") == attempt
        return settled, won


def _value(record: PromiseRecord) -> dict[str, Any]:
    data = record.value.data
    return data if isinstance(data, dict) else {}


# -- the API ------------------------------------------------------------------------------------


class _AsWritten(DefaultJSONProvider):
    sort_keys = False  # the state first, as written


def create_app(claims: Claims) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json = _AsWritten(app)
    # `/claims//x` is no claim: a 404, not werkzeug's redirect to `/claims/x`.
    app.url_map.merge_slashes = False

    @app.post("/claims")
    def submit() -> tuple[Response, int]:
        body = _json_body(ClaimRequest)
        claim_id = body.claim_id or f"claim-{secrets.token_hex(6)}"
        claim = Claim(
            claim_id=claim_id,
            employee_id=body.employee_id,
            approver_id=body.approver_id,
            category=body.category,
            amount_cents=body.amount_cents,
            currency=body.currency,
            description=body.description,
        )
        window = body.decide_within_seconds or claims.default_window
        if not claims.call(claims.start(claim, window)):
            return _json_error(409, f"claim {claim_id!r} exists with a different body")
        status_url = f"/claims/{claim_id}"
        response = jsonify(claim_id=claim_id, status_url=status_url, decide_within_seconds=window)
        response.headers["Location"] = status_url
        return response, 202

    @app.get("/claims/<claim_id>")
    def status(claim_id: str) -> tuple[Response, int]:
        if re.fullmatch(CLAIM_ID, claim_id) is None:
            return _json_error(422, f"not a claim id: {claim_id[:80]!r}")

        async def read() -> dict[str, Any] | None:
            found = await claims.started_with(claim_id)
            if found is None:
                return None
            record, started = found
            view: dict[str, Any] = {
                "claim_id": claim_id,
                "state": "in-progress",
                "claim": started.claim.model_dump(mode="json"),
                "decide_within_seconds": started.decide_within_seconds,
            }
            if record.state == "resolved":
                return view | {"state": _value(record).get("state"), "outcome": _value(record)}
            if record.state != "pending":  # a person must look: say what the worker raised
                # Outside the try: the server failing to answer is not why the claim failed, and
                # is answered as the server's failure (5xx). Only `result()` raises the claim's
                # own error, decoded (the workflow's, whatever its type), and nothing else.
                ended = await claims.resonate.get(claim_id)
                try:
                    await ended.result()
                except Exception as exc:
                    return view | {"state": "failed", "reason": str(exc) or type(exc).__name__}
                return view | {"state": "failed", "reason": record.state}
            return view

        found = claims.call(read())
        if found is None:
            return _json_error(404, f"no claim {claim_id!r}")
        return jsonify(found), 200

    @app.get("/decisions/<token>")
    def confirm(token: str) -> tuple[Response, int]:
        link = claims.signer.verify(token)
        found = claims.call(_decision(claims, link)) if link is not None else None
        if link is None or found is None:
            return _not_found()
        started, promise, decidable = found
        claim = started.claim
        if decidable:
            deadline = datetime.fromtimestamp(promise.timeout_at / 1000, UTC)
            verb = "Approve" if link.decision == "approve" else "Reject"
            return _page(
                200,
                f"{verb} expense claim {claim.claim_id}?",
                _claim_table(claim)
                + Markup(
                    '<form method="post"><p><label for="note">Note for the employee (optional)'
                    "</label>"
                    '<br><textarea id="note" name="note" rows="3" cols="60" maxlength="500">'
                    "</textarea></p>"
                    '<p><button id="confirm" type="submit">{verb} {amount}</button></p></form>'
                    "<p>Decide by {deadline}; after that the claim goes to finance.</p>"
                ).format(
                    verb=verb,
                    amount=claim.amount,
                    deadline=deadline.isoformat(timespec="minutes"),
                ),
            )
        return _settled_page(claim, promise, link, won=False, asked=False)

    @app.post("/decisions/<token>")
    def decide(token: str) -> tuple[Response, int]:
        link = claims.signer.verify(token)
        if link is None:
            return _not_found()
        form = _form_body()
        found = claims.call(_decision(claims, link))
        if found is None:
            return _not_found()
        started, promise, decidable = found
        won = False
        if decidable:
            promise, won = claims.call(claims.resolve(link, form.note))
        return _settled_page(started.claim, promise, link, won=won, asked=True)

    @app.errorhandler(ValidationError)
    def invalid(exc: ValidationError) -> tuple[Response, int]:
        # Which fields are wrong and why, without echoing the input: it may be huge, or hostile.
        wrong = [
            {"loc": [_shortened(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()[:10]
        ]
        if request.path.startswith("/decisions/"):
            items = Markup("").join(
                Markup("<li>{}: {}</li>").format(".".join(map(str, w["loc"])), w["msg"])
                for w in wrong
            )
            return _page(422, "That form is not right", Markup("<ul>{}</ul>").format(items))
        return jsonify(error="invalid request", detail=wrong), 422

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        if request.path.startswith("/decisions/"):
            if code == 404:
                return _not_found()
            return _page(code, exc.name, Markup("<p>{}</p>").format(exc.description or ""))
        return _json_error(code, exc.description or exc.name)

    @app.errorhandler(TimeoutError)
    def resonate_down(_: TimeoutError) -> tuple[Response, int]:
        return _json_error(503, "the Resonate server did not answer in time; try again")

    @app.errorhandler(ServerError)
    def resonate_refused(exc: ServerError) -> tuple[Response, int]:
        return _json_error(502, f"the Resonate server refused a request: {exc}")

    return app


async def _decision(claims: Claims, link: Link) -> tuple[StartedWith, PromiseRecord, bool] | None:
    """The claim a genuine link is about, its decision promise, and whether it can be decided;
    None if the claim or the promise is gone."""
    found = await claims.started_with(link.claim_id)
    promise = await claims.get(link.promise_id)
    if found is None or promise is None:
        return None
    record, started = found
    # The decision promise outlives a claim that ended without it (it failed, or someone settled
    # it on the server): a click then would be told the claim will be paid, and nothing would.
    return started, promise, promise.state == "pending" and record.state == "pending"


# -- pages --------------------------------------------------------------------------------------

_DONE = {"approve": "approved", "reject": "rejected"}


def _settled_page(
    claim: Claim, promise: PromiseRecord, link: Link, *, won: bool, asked: bool
) -> tuple[Response, int]:
    """The page for a claim that can no longer be decided: `won` if this request settled its
    decision, `asked` if it asked to (a POST) rather than looked (a GET)."""
    if promise.state == "pending":  # the claim ended without a decision
        return _page(
            409,
            f"Claim {claim.claim_id} can no longer be decided",
            _claim_table(claim)
            + Markup("<p>It ended without a decision: nothing will be paid. Ask finance.</p>"),
        )
    if promise.state == "resolved":
        decided = _value(promise).get("decision")
        done = _DONE.get(str(decided), "decided")
        if won:
            then = (
                "It will be paid to the employee, who is told by email."
                if decided == "approve"
                else "The employee is told by email."
            )
            return _page(
                200,
                f"Claim {claim.claim_id} {done}",
                _claim_table(claim) + Markup("<p>{}</p>").format(then),
            )
        # Asked again for what was done, or only looking: not an error. Asking for the other
        # decision is a conflict.
        code = 409 if asked and decided != link.decision else 200
        return _page(
            code,
            f"Claim {claim.claim_id} was already decided",
            _claim_table(claim) + Markup("<p>It was {}. Nothing was changed.</p>").format(done),
        )
    # Timed out (or cancelled): the deadline passed and the workflow escalated the claim.
    return _page(
        409,
        f"The decision deadline for claim {claim.claim_id} has passed",
        _claim_table(claim) + Markup("<p>The claim went to finance, who will decide it.</p>"),
    )


def _claim_table(claim: Claim) -> Markup:
    rows = [
        ("Claim", claim.claim_id),
        # The claim holds the employee's staff id, not their name: the page shows what it has.
        ("Employee", claim.employee_id),
        ("Amount", claim.amount),
        ("Category", claim.category),
        ("Description", claim.description),
    ]
    cells = Markup("").join(
        Markup("<tr><th>{}</th><td>{}</td></tr>").format(name, value) for name, value in rows
    )
    return Markup("<table>{}</table>").format(cells)


def _not_found() -> tuple[Response, int]:
    # The same page for a tampered token, a token signed with another secret, and a genuine
    # one whose claim is gone: nothing in it tells them apart.
    return _page(404, "This link is not valid", Markup("<p>Check the link in your email.</p>"))


# The token is in the URL: no Referer may carry it off the page, and no cache may keep the page.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


def _page(code: int, title: str, body: Markup) -> tuple[Response, int]:
    html = Markup(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
        '<meta name="viewport" content="width=device-width">'
        "<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}"
        "th{{text-align:left;padding-right:1em}}</style></head>"
        '<body><h1 id="title">{title}</h1>{body}</body></html>'
    ).format(title=title, body=body)
    return Response(str(html), code, _PAGE_HEADERS, mimetype="text/html"), code


# -- request bodies -----------------------------------------------------------------------------


def _json_body[M: BaseModel](model: type[M]) -> M:
    if not request.is_json:
        raise _MalformedBody("the body must be JSON, sent with Content-Type: application/json")
    # pydantic's own JSON parser, not `request.get_json`: it bounds how deep a document may nest.
    try:
        return model.model_validate_json(request.get_data(cache=False))
    except ValidationError as exc:
        for error in exc.errors():
            if error["type"] == "json_invalid":
                reason = str(error["msg"]).removeprefix("Invalid JSON: ")
                raise _MalformedBody(f"the body is not valid JSON: {reason}") from None
        raise


def _form_body() -> DecisionForm:
    if not request.content_length and not request.mimetype:
        return DecisionForm()  # a button press with nothing typed, from a client that sends no form
    if request.mimetype != "application/x-www-form-urlencoded":
        raise _MalformedBody("the body must be the page's form (application/x-www-form-urlencoded)")
    fields = request.form
    for name in fields:
        if len(fields.getlist(name)) > 1:
            raise _ValidationProblem(f"{_shortened(name)}: given more than once")
    return DecisionForm.model_validate(fields.to_dict())


class _MalformedBody(HTTPException):
    code = 400


class _ValidationProblem(HTTPException):
    code = 422


def _shortened(part: int | str) -> int | str:
    if isinstance(part, str) and len(part) > 40:
        return part[:40] + "…"
    return part


def _json_error(code: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), code


def main() -> None:
    resonate_url = os.environ.get("RESONATE_URL")
    if not resonate_url:
        sys.exit("approval.gateway: RESONATE_URL is not set (or use `make run-approval`)")
    try:
        signer = signer_from_environment()
    except SecretError as exc:
        sys.exit(f"approval.gateway: {exc}")
    window = int(os.environ.get("APPROVAL_DECIDE_WITHIN_SECONDS", str(DEFAULT_DECIDE_WITHIN)))
    if not 1 <= window <= MAX_DECIDE_WITHIN:
        sys.exit(
            f"approval.gateway: APPROVAL_DECIDE_WITHIN_SECONDS must be 1 to {MAX_DECIDE_WITHIN}"
        )
    claims = Claims(resonate_url, os.environ.get("RESONATE_GROUP", GROUP), signer, window)
    server = waitress.create_server(
        create_app(claims),
        host=os.environ.get("GATEWAY_HOST", "127.0.0.1"),
        port=int(os.environ.get("GATEWAY_PORT", "0")),
    )
    where = f"http://{server.effective_host}:{server.effective_port}"
    claims.public_url = os.environ.get("APPROVAL_PUBLIC_URL") or where
    # waitress runs until interrupted: turn SIGTERM and SIGINT into a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    print(f"approval gateway listening on {where} (links checked with {signer.source})", flush=True)
    try:
        server.run()
    finally:
        server.close()
        claims.close()


if __name__ == "__main__":
    main()
