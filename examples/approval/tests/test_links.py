"""Signed decision links, without a server: only the genuine token is accepted."""

from __future__ import annotations

import string
import threading
from pathlib import Path

import approval.links as links
import pytest
from approval.links import Link, LinkSigner, SecretError, signer_from_environment

SECRET = "s" * 40
LINK = Link("claim-7", "claim-7:2", "approve")


def signer(secret: str = SECRET) -> LinkSigner:
    return LinkSigner(secret.encode(), "test")


def test_a_token_stands_for_its_link() -> None:
    token = signer().token(LINK)

    assert signer().verify(token) == LINK
    assert set(token) <= set(string.ascii_letters + string.digits + "-_.")  # fits in a URL path


def test_every_one_character_change_is_refused() -> None:
    token = signer().token(LINK)

    accepted = []
    for i, original in enumerate(token):
        for replacement in string.ascii_letters + string.digits + "-_.=/+%":
            if replacement != original:
                tampered = token[:i] + replacement + token[i + 1 :]
                if signer().verify(tampered) is not None:
                    accepted.append(tampered)
    assert accepted == []


def test_the_other_decision_cannot_be_made_from_a_link() -> None:
    approve = signer().token(LINK)
    reject = signer().token(Link(LINK.claim_id, LINK.promise_id, "reject"))
    version, approve_payload, approve_signature = approve.split(".")
    _, reject_payload, _ = reject.split(".")

    # The reject payload under the approve signature: the signature covers the decision.
    assert signer().verify(f"{version}.{reject_payload}.{approve_signature}") is None
    assert signer().verify(f"{version}.{approve_payload}.{approve_signature}") == LINK


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1",
        "v1..",
        "v2.a.b",
        "v1.a.b.c",
        "v1.!!!.???",
        "v1.é.é",
        "v1." + "A" * 600 + ".B",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert signer().verify(token) is None


def test_a_token_signed_with_another_secret_is_refused() -> None:
    forged = signer("f" * 40).token(LINK)

    assert signer().verify(forged) is None


def test_a_signed_payload_that_is_no_link_is_refused() -> None:
    # Only `token` writes payloads, but the check does not rely on it.
    payload = links._encode(b'["claim-7", "claim-7:2", "pay-me-twice"]')
    token = f"v1.{payload}.{links._encode(signer()._sign(payload))}"

    assert signer().verify(token) is None


def test_the_secret_comes_from_the_environment(tmp_path: Path) -> None:
    in_a_file = tmp_path / "secret"
    in_a_file.write_text("f" * 40 + "\n")

    assert signer_from_environment({"APPROVAL_LINK_SECRET": SECRET}).secret == SECRET.encode()
    from_file = signer_from_environment({"APPROVAL_LINK_SECRET_FILE": str(in_a_file)})
    assert from_file.secret == b"f" * 40
    with pytest.raises(SecretError, match="at least 32 characters"):
        signer_from_environment({"APPROVAL_LINK_SECRET": "short"})
    with pytest.raises(SecretError, match="not both"):
        signer_from_environment(
            {"APPROVAL_LINK_SECRET": SECRET, "APPROVAL_LINK_SECRET_FILE": str(in_a_file)}
        )
    with pytest.raises(SecretError, match="cannot read it"):
        signer_from_environment({"APPROVAL_LINK_SECRET_FILE": str(tmp_path / "missing")})


def test_processes_starting_together_agree_on_the_development_secret(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "link-secret"
    found: list[str] = []
    threads = [
        threading.Thread(target=lambda: found.append(links._development_secret(path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(set(found)) == 1
    assert len(found[0]) >= links.MIN_SECRET_LENGTH
    assert [p.name for p in path.parent.iterdir()] == ["link-secret"]  # no drafts left
