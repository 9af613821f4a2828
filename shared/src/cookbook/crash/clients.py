"""HTTP clients for the harness's calls to the stack's services (dev server, sandbox, ...)."""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def http_client(**options: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` that shares one TLS context with every other one made here.

    A new client otherwise loads the CA bundle again (20-40 ms of CPU), and a crash point makes
    about ten of them: a third of the harness's own CPU time per point. The services are plain
    HTTP on loopback, but a URL from the environment may not be, so verification stays on.
    """
    return httpx.AsyncClient(verify=_tls(), **options)
