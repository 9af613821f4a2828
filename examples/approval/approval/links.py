"""Signed decision links: the only thing an approver's email carries.

A link is `<gateway>/decisions/<token>`, and the token is
    v1.<payload>.<signature>
    payload    base64url of the JSON array [claim id, decision promise id, decision]
    signature  base64url of HMAC-SHA256(secret, "approval-link/v1." + payload)
so a link names one decision ("approve" or "reject") of one claim, and nobody without the secret
can make one: not for another claim, not the other decision of the same claim. Changing one
character of a token makes it a token the gateway never issued, answered 404 like any unknown
link, with nothing in the answer to say what was wrong. The signature is checked (in constant
time) before anything in the payload is read.

The token is no secret from the approver (it is their capability to decide) and hides nothing:
the ids in it are readable. It is not stored by the Resonate server either: the worker signs it
inside the step that sends the email, from the ids the server holds, and the step returns only
the email provider's message id.

The secret comes from the environment, never from code:
    APPROVAL_LINK_SECRET       at least 32 characters (e.g. `python -c 'import secrets;
                               print(secrets.token_urlsafe(32))'`), from a secret manager
    APPROVAL_LINK_SECRET_FILE  or the path of a file holding it
With neither set, a development secret is used (created on first use beside this package,
never committed), so the worker and the gateway on one machine agree; each names it when it
starts. The worker (which signs) and the gateway (which checks) need the same secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

type Decision = Literal["approve", "reject"]
DECISIONS: dict[str, Decision] = {"approve": "approve", "reject": "reject"}

VERSION = "v1"
MIN_SECRET_LENGTH = 32
# Longer than any token this module makes (two ids of at most 64 and 128 characters): a longer
# one is refused before it is decoded.
MAX_TOKEN_LENGTH = 512
DEV_SECRET = Path(__file__).resolve().parent.parent / ".dev-secret" / "link-secret"


class SecretError(ValueError):
    """The link secret is missing, unreadable or too short."""


@dataclass(frozen=True)
class Link:
    """What a genuine token says: this decision, for this claim, into this promise."""

    claim_id: str
    promise_id: str
    decision: Decision


@dataclass(frozen=True)
class LinkSigner:
    secret: bytes
    source: str  # where the secret came from, for the start-up line (never the secret)

    def token(self, link: Link) -> str:
        body = json.dumps([link.claim_id, link.promise_id, link.decision], separators=(",", ":"))
        payload = _encode(body.encode())
        return f"{VERSION}.{payload}.{_encode(self._sign(payload))}"

    def verify(self, token: str) -> Link | None:
        """The link a token stands for; None for anything this signer did not issue."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        match token.split("."):
            case [version, payload, signature] if version == VERSION:
                pass
            case _:
                return None
        given = _decode(signature)
        if given is None or not hmac.compare_digest(given, self._sign(payload)):
            return None
        # Signed by us, so it is what `token` wrote; still, read it defensively.
        decoded = _decode(payload)
        try:
            fields = json.loads(decoded) if decoded is not None else None
        except ValueError:
            return None
        match fields:
            case [str(claim_id), str(promise_id), str(decision)] if decision in DECISIONS:
                return Link(claim_id, promise_id, DECISIONS[decision])
            case _:
                return None

    def _sign(self, payload: str) -> bytes:
        message = f"approval-link/{VERSION}.{payload}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).digest()


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(text: str) -> bytes | None:
    if not text or not text.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Decoding forgives (stray characters, unused low bits in the last one): accept only the one
    # spelling `_encode` writes, so that no other string is the same token.
    return raw if _encode(raw) == text else None


def signer_from_environment(environ: Mapping[str, str] | None = None) -> LinkSigner:
    """The signer for APPROVAL_LINK_SECRET or APPROVAL_LINK_SECRET_FILE, else the development
    one."""
    env = os.environ if environ is None else environ
    inline, path = env.get("APPROVAL_LINK_SECRET"), env.get("APPROVAL_LINK_SECRET_FILE")
    if inline and path:
        raise SecretError("set APPROVAL_LINK_SECRET or APPROVAL_LINK_SECRET_FILE, not both")
    if inline:
        return _signer(inline, "APPROVAL_LINK_SECRET")
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise SecretError(f"APPROVAL_LINK_SECRET_FILE={path}: cannot read it: {exc}") from exc
        return _signer(text, f"APPROVAL_LINK_SECRET_FILE={path}")
    return _signer(_development_secret(DEV_SECRET), f"the development secret {DEV_SECRET}")


def _signer(secret: str, source: str) -> LinkSigner:
    if len(secret) < MIN_SECRET_LENGTH:
        raise SecretError(f"{source}: the secret must be at least {MIN_SECRET_LENGTH} characters")
    return LinkSigner(secret.encode(), source)


def _development_secret(path: Path) -> str:
    """Read the development secret, creating it first if no process has yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as draft:
            draft.write(secrets.token_urlsafe(32))
        try:
            # Atomic, and refused if another process created it meanwhile: every process keeps
            # the first one, so the gateway never checks with a secret the worker did not sign with.
            os.link(draft.name, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft.name)
    return path.read_text().strip()
