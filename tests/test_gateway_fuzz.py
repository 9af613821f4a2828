"""Every gateway in the catalog, fuzzed over HTTP as it runs: no 5xx, and only answers it documents.

The gateways are found in the catalog (`[tool.cookbook] gateway`), so a new example's gateway gets
the same checks without a line here. Each runs as the example runs it: its own process, with the
services the example declares and one worker of its group (cookbook.testing.gateways), so what
a request starts really runs, and what is tested is the server a user deploys (uvicorn's or
waitress's HTTP parsing and body limits included, which an in-process ASGI/WSGI client skips).

- A gateway that serves an OpenAPI document (FastAPI) gets a bounded, deterministic schemathesis
  run (coverage and fuzzing phases), checking for server errors, answers whose status code or
  body the document does not declare, and invalid requests it accepts.
- A gateway without one (Flask) gets hypothesis-generated JSON bodies and path values on every
  route, its routes read from its app: never a 5xx.
- Every gateway answers at once on a kept-alive connection: not 40 ms late, as a uvicorn on a
  socket of `socket.create_server` does unless it turns Nagle's algorithm off
  (cookbook.testing.keepalive).
- Every gateway gets a hostile-request battery (nesting 1,500 deep, a 5,000-digit number, invalid
  UTF-8, a body over the size limit, an unknown id, ...) on every route: never a 5xx, and where
  the gateway documents its answers, a status code the operation declares.

All of it runs in about a minute for the four gateways of today on two cores (each starts its
own stack); no request is random from one run to the next.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import httpx
import pytest
from cookbook import catalog, clients
from cookbook.testing import keepalive
from cookbook.testing.gateways import gateway_examples, running_gateway
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = catalog.repo_root(Path(__file__))
SCHEMATHESIS = str(Path(sys.executable).with_name("st"))
# What schemathesis checks. negative_data_rejection: a request the document says is invalid
# (a date field given an integer) must not be accepted.
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]
# coverage: every boundary and wrong type the document allows, in a fixed order (it is what finds
# an integer accepted for a date); fuzzing: a few random requests per operation. Left out: the
# examples phase (the documents have none) and the stateful one (chains of calls through links),
# which took longer than the other two together and found nothing they did not.
PHASES = ["coverage", "fuzzing"]
MAX_EXAMPLES = 5  # per operation in the fuzzing phase: the run stays bounded and quick
RANDOM_REQUESTS = 60  # hypothesis-generated requests per gateway, over all its routes
NESTING = 1500  # 3 KB of brackets: under every size limit, deeper than Python's recursion limit


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with `{name}` for each path parameter
    has_body: bool
    declared: (
        frozenset[str] | None
    )  # the status codes the document declares ("4XX" too); None: no document

    def url(self, value: str) -> str:
        return re.sub(r"\{[^}]+\}", quote(value, safe=""), self.path)

    def declares(self, status: int) -> bool:
        if self.declared is None or "default" in self.declared:
            return True
        return str(status) in self.declared or f"{str(status)[0]}XX" in self.declared


@dataclass(frozen=True)
class Gateway:
    name: str
    url: str
    openapi: dict[str, Any] | None
    routes: list[Route]


def openapi_routes(document: dict[str, Any]) -> list[Route]:
    return [
        Route(
            method.upper(),
            path,
            "requestBody" in operation,
            frozenset(operation.get("responses", {})),
        )
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def app_routes(module: str) -> list[Route]:
    """The routes of a gateway with no OpenAPI document, read from its app's URL map.

    The app is built with a stand-in for whatever `create_app` takes (nothing is called on it
    while routes are registered), only to read the routes: the requests go to the real process.
    """
    create_app = getattr(importlib.import_module(module), "create_app", None)
    assert create_app is not None, (
        f"{module} serves no OpenAPI document and has no create_app() to read its routes from"
    )
    app = create_app(mock.MagicMock())
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append(Route(method, path, method in {"POST", "PUT", "PATCH"}, None))
    return routes


@contextmanager
def started(example: catalog.Example, workdir: Path) -> Iterator[Gateway]:
    assert example.gateway is not None
    with running_gateway(example, workdir) as url:
        response = clients.get(f"{url}/openapi.json", timeout=10)
        try:
            document = response.json() if response.status_code == 200 else None
        except ValueError:
            document = None
        if isinstance(document, dict) and "openapi" in document:
            routes = openapi_routes(document)
        else:
            document, routes = None, app_routes(example.gateway)
        assert routes, f"{example.name}: its gateway has no routes to test"
        yield Gateway(example.name, url, document, routes)


@pytest.mark.parametrize(
    "example", gateway_examples(catalog.examples(ROOT)), ids=lambda example: example.name
)
def test_the_gateway_survives_fuzzing(example: catalog.Example, tmp_path: Path) -> None:
    """One test per gateway, so that each gateway is started once (xdist's groups do not hold
    tests together under pytest 9); every check runs, and the failure lists all they found."""
    failures = []
    with started(example, tmp_path) as gateway:
        if gateway.openapi is not None:
            failures += schemathesis_failures(gateway, tmp_path)
        else:
            failures += random_request_failures(gateway)
        failures += hostile_body_failures(gateway)
        if delayed := keepalive.held_back(f"{gateway.url}/no-such-route"):
            failures.append(delayed)
    if failures:
        pytest.fail(f"{example.name}'s gateway:\n" + "\n\n".join(failures), pytrace=False)


def schemathesis_failures(gateway: Gateway, workdir: Path) -> list[str]:
    command = [
        SCHEMATHESIS,
        "run",
        f"{gateway.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        ",".join(PHASES),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",  # the same requests on every run: CI is not flaky
        "--workers",
        "1",  # in a fixed order too
        "--no-shrink",  # each failure as found, and a bounded run
        "--continue-on-failure",  # every failure, not the first of each operation
        "--request-timeout",
        "20",
        "--no-color",
    ]
    began = time.monotonic()
    run = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - began
    generated = re.search(r"(\d+) generated", run.stdout)
    print(f"{gateway.name}: schemathesis ran {generated and generated[1]} cases in {elapsed:.1f}s")
    if run.returncode == 0:
        return []
    found = run.stdout.partition("= FAILURES =")[2].rpartition("= SUMMARY =")[0]
    return ["schemathesis:\n" + (found.strip("= \n") or run.stdout + run.stderr)]


# -- hostile bodies and random requests, on every route -----------------------------------------

JSON = "application/json"
HOSTILE_BODIES: list[tuple[str, bytes, str | None]] = [
    ("arrays nested 1,500 deep", b"[" * NESTING + b"]" * NESTING, JSON),
    ("objects nested 1,500 deep", b'{"a":' * NESTING + b"1" + b"}" * NESTING, JSON),
    ("a 5,000-digit number", b'{"a": ' + b"9" * 5000 + b"}", JSON),
    ("a body over 16 KiB", b"[" + b"0," * 9000 + b"0]", JSON),
    ("invalid UTF-8", b"\xff\xfe\xfa", JSON),
    ("truncated JSON", b'{"a": [1, 2', JSON),
    ("an empty body", b"", JSON),
    ("JSON null", b"null", JSON),
    ("a JSON string", b'"x"', JSON),
    ("a JSON array", b"[1, 2, 3]", JSON),
    ("NaN and Infinity", b'{"a": NaN, "b": -Infinity}', JSON),
    ("a lone surrogate", b'{"a": "\\ud800"}', JSON),
    ("a NUL in a key", b'{"\\u0000": 1}', JSON),
    ("JSON sent as text/plain", b'{"a": 1}', "text/plain"),
    ("no content type", b'{"a": 1}', None),
    ("JSON declared UTF-16", b'{"a": 1}', "application/json; charset=utf-16"),
]


def answer_problem(route: Route, response: httpx.Response) -> str | None:
    if response.status_code >= 500:
        return f"answered {response.status_code}"
    if not route.declares(response.status_code):
        declared = ", ".join(sorted(route.declared or ()))
        return f"answered {response.status_code}, which it does not declare ({declared})"
    return None


def send(
    client: httpx.Client, route: Route, value: str, body: bytes | None, content_type: str | None
) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.request(route.method, route.url(value), content=body, headers=headers)


def hostile_body_failures(gateway: Gateway) -> list[str]:
    """Each hostile body on every route that takes one, and an unknown id on every route that
    takes an id: a 4xx, and one the gateway declares if it documents its answers."""
    problems: dict[str, list[str]] = {}  # what went wrong -> the requests it went wrong for
    sent = 0
    unknown = "fuzz-unknown-id"  # every run starts on a fresh server: no such execution
    with clients.client(base_url=gateway.url, timeout=20) as client:
        for route in gateway.routes:
            cases: list[tuple[str, bytes | None, str | None]] = (
                [(f"an unknown id ({unknown})", None, None)] if "{" in route.path else []
            )
            if route.has_body:
                cases += HOSTILE_BODIES
            for what, body, content_type in cases:
                response = send(client, route, unknown, body, content_type)
                sent += 1
                if problem := answer_problem(route, response):
                    answer = f"{route.method} {route.path} {problem}: {response.text[:100]}"
                    problems.setdefault(answer, []).append(what)
    print(f"{gateway.name}: {sent} hostile requests")
    lines = [f"{answer}\n    to: {'; '.join(whats)}" for answer, whats in problems.items()]
    return ["hostile bodies:\n" + "\n".join(lines)] if lines else []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def random_request_failures(gateway: Gateway) -> list[str]:
    """hypothesis-generated JSON bodies and path values on every route, for a gateway with no
    document for schemathesis to read: never a 5xx."""
    began = time.monotonic()
    problems: dict[tuple[str, int], str] = {}  # the first request of each route and answer
    with clients.client(base_url=gateway.url, timeout=20) as client:

        @settings(
            max_examples=RANDOM_REQUESTS,
            derandomize=True,  # the same requests on every run: CI is not flaky
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: every problem is collected
            suppress_health_check=list(HealthCheck),
        )
        @given(
            route=st.sampled_from(gateway.routes),
            value=st.text(min_size=1, max_size=70) | st.from_regex(r"\A[a-z0-9]{1,12}\Z"),
            body=json_values,
        )
        def request(route: Route, value: str, body: Any) -> None:
            encoded = json.dumps(body).encode() if route.has_body else None
            response = send(client, route, value, encoded, JSON if route.has_body else None)
            if problem := answer_problem(route, response):
                problems.setdefault(
                    (f"{route.method} {route.path}", response.status_code),
                    f"{route.method} {route.url(value)} {encoded!r:.200}: {problem}",
                )

        request()
    elapsed = time.monotonic() - began
    print(f"{gateway.name}: {RANDOM_REQUESTS} random requests in {elapsed:.1f}s")
    return ["random requests:\n" + "\n".join(problems.values())] if problems else []
