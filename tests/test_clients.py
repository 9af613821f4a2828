"""The cookbook's HTTP clients (cookbook.clients) share one TLS context, and the cookbook's own
code (the toolkit, the tests) makes its clients there.

A client that builds a TLS context of its own loads the CA bundle again: about 20 ms of CPU.
Before these clients, the tests' polls spent two thirds of a test process's CPU time so.
"""

from __future__ import annotations

import ast
import asyncio
import http.server
import ssl
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from cookbook import catalog, clients
from cookbook.testing.http_server import serving

ROOT = catalog.repo_root(Path(__file__))
# httpx's functions, each of which makes a client; and its clients, each of which makes a TLS
# context unless it is given one (`verify=`) or needs none (`transport=`: an in-process app).
HTTPX_FUNCTIONS = {"get", "post", "put", "patch", "delete", "request", "stream"}
HTTPX_CLIENTS = {"Client", "AsyncClient"}


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_url() -> Iterator[str]:
    with serving(_Ok) as url:
        yield url


async def _status_async(url: str) -> int:
    async with clients.async_client(base_url=url) as http:
        return (await http.get("/")).status_code


def test_calls_and_clients_share_one_tls_context(server_url: str) -> None:
    clients.tls_context.cache_clear()
    with mock.patch("ssl.create_default_context", wraps=ssl.create_default_context) as made:
        for _ in range(3):
            assert clients.get(server_url).text == "ok"
        with clients.client(base_url=server_url) as http:
            assert http.get("/").status_code == 200
        assert asyncio.run(_status_async(server_url)) == 200
    assert made.call_count == 1


def _cookbook_code() -> list[Path]:
    """The toolkit and the tests: the examples' own code is a user's, and is left to httpx."""
    portable = set(ROOT.glob("examples/*/tests/*.py"))
    return [
        path
        for pattern in ("shared/src/**/*.py", "tests/**/*.py", "examples/*/tests/**/*.py")
        for path in ROOT.glob(pattern)
        if path not in portable and "/bench/" not in str(path)
    ]


def offences(source: str) -> list[str]:
    """Each call in `source` that makes a TLS context of its own, as `httpx.<name>`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "httpx"
        ):
            continue
        name = node.func.attr
        given = {keyword.arg for keyword in node.keywords}
        if name in HTTPX_FUNCTIONS or (
            name in HTTPX_CLIENTS and not given & {"verify", "transport"}
        ):
            found.append(f"line {node.lineno}: httpx.{name}")
    return found


def test_the_cookbooks_own_code_makes_its_clients_in_cookbook_clients() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in _cookbook_code()
        if (hits := offences(path.read_text()))
    }
    assert found == {}, "use cookbook.clients instead of httpx's functions and clients"


@pytest.mark.parametrize(
    ("code", "offends"),
    [
        ('response = httpx.get(f"{url}/state")', True),
        ("http = httpx.Client(base_url=url, timeout=10)", True),
        ("http = httpx.AsyncClient(\n    base_url=url,\n    timeout=10,\n)", True),
        ('http = httpx.AsyncClient(\n    transport=transport, base_url="http://api"\n)', False),
        ("http = httpx.Client(verify=context)", False),
        ('response = clients.get(f"{url}/state")', False),
        ('"""`httpx.get()` makes a client per call"""', False),
        ("def handle(response: httpx.Response) -> None: ...", False),
    ],
)
def test_the_scan_tells_own_contexts_from_shared_ones(code: str, offends: bool) -> None:
    assert bool(offences(code)) is offends
