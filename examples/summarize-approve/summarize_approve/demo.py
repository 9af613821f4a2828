"""`python -m summarize_approve.demo`: two pages summarized, with the reviewer's answers.

The page is the provider sandbox's own API description (`/openapi.json`): the sandbox stands in
for the web. The reviewer's inbox is the sandbox's email records (what the email provider was
asked to send); the demo reads each review email there and answers it as the reviewer's tool
would, by resolving the promise the email names. What was billed is read from the model's own
records (the stand-in's, in the sandbox): one completion per summary.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import textwrap
from typing import Any

import httpx
from resonate.resonate import Resonate
from resonate.types import Value

from summarize_approve.workflow import MAX_ROUNDS

GROUP = "summarize-approve"
PAGE = "/openapi.json"
# Grace, the reviewer, by her staff user id: the execution's arguments sit in the Resonate server
# in plaintext, so it gets no address; the email provider resolves the id.
REVIEWER = "usr_8d2f41c7"


async def review_email(
    sandbox: httpx.AsyncClient, execution_id: str, round_number: int
) -> dict[str, Any]:
    """The review email of that round, once the workflow sent it."""
    async with asyncio.timeout(60):
        while True:
            effects = (
                await sandbox.get("/_admin/effects", params={"key_prefix": f"{execution_id}:"})
            ).json()
            for effect in effects:
                body = effect["body"]
                if effect["provider"] == "email" and body.get("round") == round_number:
                    return dict(body)
            await asyncio.sleep(0.2)


async def billed(sandbox: httpx.AsyncClient, execution_id: str) -> str:
    effects = (
        await sandbox.get("/_admin/effects", params={"key_prefix": f"{execution_id}:"})
    ).json()
    completions = [e for e in effects if e["provider"] == "model"]
    keys = {e["idempotency_key"] for e in completions}
    tokens = sum(e["response"].get("usage", {}).get("total_tokens", 0) for e in completions)
    return f"{len(completions)} completions billed, {len(keys)} keys, {tokens} tokens"


async def summarize_with_reviewer(
    resonate: Resonate, sandbox: httpx.AsyncClient, execution_id: str, answers: list[Any]
) -> None:
    print(f"→ summarize {PAGE} for {REVIEWER}, as execution {execution_id}")
    handle = resonate.options(target=GROUP).rpc(
        execution_id, "summarize_and_approve", PAGE, REVIEWER
    )
    for round_number, answer in enumerate(answers, start=1):
        mail = await review_email(sandbox, execution_id, round_number)
        summary = mail["text"].split("\n\n")[0]
        print(f"✉ round {round_number} to {mail['to']}:")
        print(textwrap.indent(textwrap.fill(summary, 92), "    "))
        if answer["approve"]:
            print(f"← {REVIEWER} approves")
        else:
            print(f"← {REVIEWER} rejects: {answer['feedback']!r}")
        await resonate.promises.resolve(mail["decision_id"], Value(data=answer))
    ended = await handle.result()
    print(f"✓ {ended['state']} after {ended['rounds']} round(s)", end="")
    print(f", posted as {ended['posted']}" if ended["posted"] else f": {ended['reason']}")
    print(f"  the model's records: {await billed(sandbox, execution_id)}")


async def main() -> None:
    run = secrets.token_hex(3)
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="summarize-approve-clients")
    try:
        async with httpx.AsyncClient(
            base_url=os.environ["PROVIDER_API_URL"], timeout=10
        ) as sandbox:
            print(
                f"The page: {PAGE} on the provider sandbox, which stands in for the web (it is"
                " the sandbox's own API description).\n"
            )
            print("Grace asks for one change, then approves the second summary.")
            await summarize_with_reviewer(
                resonate,
                sandbox,
                f"reading-{run}",
                [
                    {"approve": False, "feedback": "Say who it is for, and that nothing is real."},
                    {"approve": True},
                ],
            )
            print(f"\nGrace rejects every summary: the workflow stops after {MAX_ROUNDS} rounds.")
            await summarize_with_reviewer(
                resonate,
                sandbox,
                f"picky-{run}",
                [
                    {"approve": False, "feedback": "Shorter."},
                    {"approve": False, "feedback": "Shorter still."},
                    {"approve": False, "feedback": "One sentence, please."},
                ],
            )
            print("\nA page given as an ftp:// URL is refused before anything is done.")
            handle = resonate.options(target=GROUP).rpc(
                f"bad-{run}", "summarize_and_approve", "ftp://example.com/notes", REVIEWER
            )
            ended = await handle.result()
            print(f"✓ {ended['state']}: {ended['reason']}")
    finally:
        await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
