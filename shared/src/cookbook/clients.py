"""HTTP clients for the cookbook's own calls to the services it starts: the dev server, the
sandbox, the examples' gateways (from the crash harness, the chaos runs, the test fixtures and
the tests, the sandbox's job callbacks).

Every new httpx client loads the CA bundle into a TLS context of its own unless it is given one:
about 20 ms of CPU on our machines, for services that are plain HTTP on loopback. `httpx.get()`
makes a client per call, and the tests poll: before these clients, that was two thirds of a
test process's CPU time. Here every client shares one context, made on first use. Verification
stays on: a URL from the environment may be HTTPS.

`get`, `post`, `put`, `patch` and `delete` are httpx's functions of the same names (a client
each, no connection kept) with that context; `client` and `async_client` are `httpx.Client` and
`httpx.AsyncClient` with it.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def client(**options: Any) -> httpx.Client:
    return httpx.Client(verify=tls_context(), **options)


def async_client(**options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=tls_context(), **options)


def request(method: str, url: str, **options: Any) -> httpx.Response:
    """`httpx.request` with the shared TLS context (its request options only)."""
    with client() as http:
        return http.request(method, url, **options)


def get(url: str, **options: Any) -> httpx.Response:
    return request("GET", url, **options)


def post(url: str, **options: Any) -> httpx.Response:
    return request("POST", url, **options)


def put(url: str, **options: Any) -> httpx.Response:
    return request("PUT", url, **options)


def patch(url: str, **options: Any) -> httpx.Response:
    return request("PATCH", url, **options)


def delete(url: str, **options: Any) -> httpx.Response:
    return request("DELETE", url, **options)
