"""Opt-in bearer-token auth, as the official server does it: `Authorization: Bearer <token>`.

Off unless at least one token is given (`--token`, repeatable, or `RESONATE_DEVSERVER_TOKENS`,
comma-separated). Then every request, SSE stream and cookbook endpoint without a valid token is
refused with a 401 before anything reads or changes state. SDK 0.8.1 sends the header on HTTP
and SSE when built with `Resonate(token=...)` or `RESONATE_TOKEN`.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

TOKENS_ENV = "RESONATE_DEVSERVER_TOKENS"


def tokens_from_env(environ: Mapping[str, str]) -> list[str]:
    """The tokens in `RESONATE_DEVSERVER_TOKENS` (comma-separated; blanks ignored)."""
    return [t.strip() for t in environ.get(TOKENS_ENV, "").split(",") if t.strip()]


class BearerAuth:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def refusal(self, authorization: str | None) -> str | None:
        """Why a request with this `Authorization` header is refused; None if it may pass."""
        if not self._tokens:
            return None
        if not authorization:
            return "missing Authorization header (expected 'Bearer <token>')"
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return "Authorization header is not 'Bearer <token>'"
        candidate = presented.strip().encode()
        # Every token is compared, in constant time each, so timing tells nothing about which
        # token (or how much of one) matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return None if matched else "invalid bearer token"


def without_credentials(request: Any) -> Any:
    """The request with every `auth` taken out of the envelope heads nested in it.

    SDK 0.8.1 sends the token again inside a request's nested envelopes (a `task.fence` carries
    its `promise.create` whole, head and all); the server needs none of them, and whatever it
    applies is written to its log, where a token must never be.
    """
    if isinstance(request, dict):
        return {
            key: (
                {k: v for k, v in value.items() if k != "auth"}
                if key == "head" and isinstance(value, dict)
                else without_credentials(value)
            )
            for key, value in request.items()
        }
    if isinstance(request, list):
        return [without_credentials(item) for item in request]
    return request


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine (names other than
    `localhost` count as reachable: they may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
