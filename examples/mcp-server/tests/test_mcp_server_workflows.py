"""The workflows in-process: the SDK's own server in memory (`local_resonate`), no network.

The weather API, the email and payment providers are an `httpx.MockTransport`; the model is the
official `openai` client on a mock transport that answers Chat Completions as the API does, so
the steps' handling of a completion, a refusal (400) and a rate limit (429) is the real client's.
Portable: these import only resonate, the example and its own dependencies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
import pytest
from mcp.server.mcpserver.exceptions import ToolError
from mcp_server.calls import (
    Invoice,
    InvoiceOutcome,
    WeatherReport,
    invoice_call_id,
    weather_call_id,
)
from mcp_server.decide import decide
from mcp_server.server import CallId, server
from mcp_server.steps import (
    Approver,
    Model,
    Providers,
    ProviderUnavailableError,
    Refused,
    pay_vendor,
)
from mcp_server.workflow import invoice_approval, weather_report
from pydantic import TypeAdapter, ValidationError
from resonate.dependencies import DependencyMap
from resonate.resonate import Resonate
from resonate.testing import local_resonate, root_context
from resonate.types import PromiseRecord, Value

INVOICE = Invoice(
    invoice_id="INV-7",
    vendor="Atelier Lumiere",
    amount_cents=184_000,
    currency="EUR",
    description="Stage lighting",
)
APPROVER = "payables-lead@example.com"  # the workers' configured approver


@dataclass
class World:
    """What the providers and the model were asked, and how the model answers."""

    model_statuses: list[int] = field(default_factory=list)  # one per call; 200 once they run out
    provider_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    model_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    emailed: asyncio.Event = field(default_factory=asyncio.Event)

    def provider(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        key = request.headers["Idempotency-Key"]
        self.provider_calls.append((request.url.path, key, body))
        if request.url.path == "/email/send":
            self.emailed.set()
        return httpx.Response(
            200, json={"id": f"{request.url.path.split('/')[1]}_{len(self.provider_calls)}"}
        )

    def model(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.model_calls.append((request.headers["Idempotency-Key"], body))
        status = self.model_statuses.pop(0) if self.model_statuses else 200
        if status != 200:
            error = {"message": "scripted failure", "type": "x", "param": None, "code": None}
            return httpx2.Response(status, json={"error": error})
        city = body["messages"][-1]["content"].split(" for ")[1].split(" on ")[0]
        return httpx2.Response(
            200,
            json={
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"{city}: dry and mild."},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
            },
        )


def run_in(world: World, body: Callable[[Resonate], Coroutine[Any, Any, Any]]) -> Any:
    async def go() -> Any:
        model = openai.AsyncOpenAI(
            api_key="test",
            base_url="http://model/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(world.model)),
        )
        transport = httpx.MockTransport(world.provider)
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as client:
            resonate = local_resonate()
            try:
                resonate.with_dependency(Providers(client))
                resonate.with_dependency(Model(model, "test-model"))
                resonate.with_dependency(Approver(APPROVER))
                resonate.register(weather_report)
                resonate.register(invoice_approval)
                return await body(resonate)
            finally:
                await resonate.stop()

    return asyncio.run(go())


def test_a_report_is_written_by_one_model_call_keyed_by_its_step() -> None:
    world = World()

    report: WeatherReport = run_in(
        world,
        lambda r: r.run("weather.lyon.2026-12-06", weather_report, "Lyon", "2026-12-06").result(),
    )

    assert report == WeatherReport("Lyon", "2026-12-06", "api_1", "Lyon: dry and mild.")
    [(path, observation_key, body)] = world.provider_calls
    assert (path, body["city"], body["date"]) == ("/api/call", "Lyon", "2026-12-06")
    [(model_key, request)] = world.model_calls
    assert request["model"] == "test-model"
    assert "observation api_1" in request["messages"][-1]["content"]
    # Each call keyed by its own step's durable id, under the execution.
    assert observation_key.startswith("weather.lyon.2026-12-06:")
    assert model_key.startswith("weather.lyon.2026-12-06:")
    assert model_key != observation_key


def test_a_model_refusal_is_a_value_and_is_not_asked_again() -> None:
    world = World(model_statuses=[400])

    report: WeatherReport = run_in(
        world, lambda r: r.run("weather.x.1", weather_report, "Lyon", "2026-12-06").result()
    )

    assert report.report is None
    assert report.refused == "model: Error code: 400 - scripted failure"
    assert len(world.model_calls) == 1


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_transient_model_failure_is_asked_again_under_the_same_key(status: int) -> None:
    world = World(model_statuses=[status, status])

    report: WeatherReport = run_in(
        world, lambda r: r.run("weather.y.1", weather_report, "Lyon", "2026-12-06").result()
    )

    assert report.report == "Lyon: dry and mild."
    keys = [key for key, _ in world.model_calls]
    assert len(keys) == 3
    assert len(set(keys)) == 1


async def approval(world: World, resonate: Resonate, value: Any) -> InvoiceOutcome:
    handle = resonate.run("invoice.INV-7", invoice_approval, INVOICE, 3600)
    await world.emailed.wait()  # the approver's email carries the decision's promise
    promise = world.provider_calls[0][2]["decision_promise"]
    await resonate.promises.resolve(promise, Value(data=value))
    outcome: InvoiceOutcome = await handle.result()
    return outcome


def decided(world: World, value: Any) -> InvoiceOutcome:
    outcome: InvoiceOutcome = run_in(world, lambda resonate: approval(world, resonate, value))
    return outcome


def test_an_approved_invoice_pays_the_vendor_once() -> None:
    world = World()

    outcome = decided(world, {"decision": "approve", "note": "ok"})

    assert outcome == InvoiceOutcome("INV-7", "paid", "ok", payment_id="payment_2")
    [email, payment] = world.provider_calls
    assert email[0] == "/email/send"
    assert email[2]["to"] == APPROVER
    assert email[2]["decision_promise"] in email[2]["text"]
    assert payment[0] == "/payment/charge"
    assert payment[2] == {"payee": "Atelier Lumiere", "amount_cents": 184_000, "currency": "EUR"}


def test_the_ai_client_cannot_name_the_approver_and_no_address_is_stored() -> None:
    # An AI that could choose the approver (or a prompt injection in what it read) could send the
    # request to an address it controls and approve its own invoice: the tool takes no approver.
    tools = {tool.name: tool for tool in asyncio.run(server.list_tools())}
    offered = set(tools["approve_invoice"].input_schema["properties"])
    assert offered == {"invoice_id", "vendor", "amount_cents", "currency", "description"}
    assert offered == set(Invoice.model_fields)  # what the execution stores as its argument
    world = World()

    async def body(resonate: Resonate) -> list[PromiseRecord]:
        await approval(world, resonate, {"decision": "approve"})
        [email, payment] = world.provider_calls
        ids = ["invoice.INV-7", email[2]["decision_promise"], email[1], payment[1]]
        return [await resonate.promises.get(promise_id) for promise_id in ids]

    stored = run_in(world, body)

    # The workers' approver was asked, looked up by the step: no promise holds the address.
    assert world.provider_calls[0][2]["to"] == APPROVER
    for promise in stored:
        assert APPROVER not in repr((promise.param.data, promise.value.data)), promise.id


@pytest.mark.parametrize(
    "value", [{"decision": "reject", "note": "no"}, {"decision": "maybe"}, "approve", None]
)
def test_anything_but_an_approval_pays_nothing(value: Any) -> None:
    world = World()

    outcome = decided(world, value)

    assert outcome.state == "rejected"
    assert [path for path, _, _ in world.provider_calls] == ["/email/send"]


@pytest.mark.parametrize(
    ("tool", "arguments", "undeclared"),
    [
        ("approve_invoice", INVOICE.model_dump() | {"approver_email": APPROVER}, "approver_email"),
        ("weather_report", {"city": "Lyon", "units": "imperial"}, "units"),
        ("call_status", {"call_id": "invoice.INV-7", "wait": 20}, "wait"),
    ],
)
def test_an_argument_a_tool_does_not_declare_is_refused_naming_it(
    tool: str, arguments: dict[str, Any], undeclared: str
) -> None:
    # Dropped, the caller would believe it was used (an approver it named, say). Refused by the
    # SDK's validation of the arguments, before the body runs (here, with no Resonate client).
    with pytest.raises(ToolError) as refused:
        asyncio.run(server.call_tool(tool, arguments))

    assert f"\n{undeclared}\n  Extra inputs are not permitted" in str(refused.value)
    assert isinstance(refused.value.__cause__, ValidationError)
    listed = {t.name: t.input_schema for t in asyncio.run(server.list_tools())}
    assert listed[tool]["additionalProperties"] is False  # the client is told, too


def test_call_ids_come_from_the_arguments() -> None:
    # Two cities never share a call (asking for Malmö must not answer Malm's report), and every
    # id is one call_status takes, also for a name that has no ASCII letter to show.
    cities = ["Malmö", "Malm", "Malmo", "Å", "Ø", "Æ", "Łódź", "Lodz", "St. Louis", "St Louis"]
    ids = [weather_call_id(city, "2026-12-06") for city in cities]
    assert len(set(ids)) == len(cities)
    for call_id in ids:
        TypeAdapter(CallId).validate_python(call_id)
    assert weather_call_id("Saint-Étienne", "2026-12-06").startswith("weather.saint-etienne-")
    assert weather_call_id("New  York", "2026-12-06") == weather_call_id("new york", "2026-12-06")
    assert invoice_call_id("INV-7") == "invoice.INV-7"


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("invoice_id", "INV:7"),
        ("invoice_id", ""),
        ("amount_cents", 0),
        ("amount_cents", "100"),
        ("currency", "XYZ"),
        ("approver_email", "mallory@example.net"),  # who decides is never the submitter's
        ("vendor", " padded"),
        ("description", "x" * 201),
    ],
)
def test_a_bad_invoice_is_refused_naming_the_field(field_name: str, value: Any) -> None:
    fields = INVOICE.model_dump() | {field_name: value}

    with pytest.raises(ValidationError) as refused:
        Invoice.model_validate(fields)

    assert [e["loc"][0] for e in refused.value.errors()] == [field_name]


def test_a_decision_is_taken_once_and_an_unknown_one_is_said_so() -> None:
    async def body(resonate: Resonate) -> list[str]:
        promise = await resonate.promises.create("invoice.INV-8.decision", 2**62, Value(), {})
        return [
            await decide(resonate, promise.id, "reject", "no"),
            await decide(resonate, promise.id, "approve", "yes after all"),
            await decide(resonate, "invoice.INV-9.decision", "approve", ""),
        ]

    said = run_in(World(), body)

    assert said == [
        "rejected: invoice.INV-8.decision",
        "invoice.INV-8.decision was already settled (resolved): nothing changed",
        "no decision is awaited under 'invoice.INV-9.decision'",
    ]


def pay_answered(answer: Callable[[], httpx.Response]) -> tuple[str | Refused, int]:
    """`pay_vendor` alone, on a bare context, answered by `answer`: its result, and requests."""
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer()

    async def go() -> str | Refused:
        transport = httpx.MockTransport(handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://providers") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(id="inv-7:3", deps=deps)
            return await pay_vendor(ctx, INVOICE.vendor, INVOICE.amount_cents, INVOICE.currency)

    return asyncio.run(go()), len(requests)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            lambda: httpx.Response(200, html="<html><body>Welcome to the gateway</body></html>"),
            "payment: answered 200 without its id",
        ),
        (
            lambda: httpx.Response(200, json={"status": "ok"}),
            "payment: answered 200 without its id",
        ),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "payment: DecodingError",
        ),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_payment_answered_without_its_answer_may_have_landed(
    answer: Callable[[], httpx.Response], reason: str
) -> None:
    # Not a bug in the step: the vendor may have been paid. Raised as the provider being
    # unavailable, with the call's key, the step is retried and the provider answers from the key.
    with pytest.raises(ProviderUnavailableError, match=reason) as raised:
        pay_answered(answer)

    assert raised.value.idempotency_key == "inv-7:3"


def test_a_refusal_whose_body_is_a_page_is_still_a_refusal_asked_once() -> None:
    refused, requests = pay_answered(lambda: httpx.Response(403, html="<h1>Forbidden</h1>"))

    assert (refused, requests) == (Refused("payment", "403 Forbidden"), 1)
