"""The steps: fetch the page, summarize it with the model, ask the reviewer, publish.

Each is one durable step (`ctx.run`), so a finished one is never done again on replay: the page
is fetched once (the reviewer approves a summary of the page as it was then, not as it is after a
crash), and each summary is paid for once.

Every call that acts or bills carries an Idempotency-Key from the step's durable id, which is
stable across retries and crashes. The model call sends it too: the cookbook's stand-in model
bills a key once and replays its completion for a repeat; a real provider ignores the header (see
the README for what that means in the window between its answer and the checkpoint).

Two kinds of failure, kept apart as in every example of the cookbook:
  transient  a 5xx, 408, 429, a timeout, a dropped connection, a provider's 2xx whose body is
             not its answer (a proxy's HTML page): it may pass. The step raises
             (`ProviderUnavailableError`, `ModelUnavailableError`) and the retry policy the
             workflow passes with the call runs it again, under the same key.
  refusal    any other 4xx (a page that is not there, a request the model API refuses, a bad
             key): asking again gets the same answer. The step returns it as a value (a
             `refusal` field, or `Refused`), so it is checkpointed once and never retried (SDK
             0.8.1 retries every exception a step raises). A field rather than a union of two
             dataclasses: the SDK decodes a step's result with msgspec, which cannot tell two
             dataclasses in a union apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
# What the model is sent of a page: enough for an article, and a bound on what one summary costs.
MAX_PAGE_CHARS = 12_000
PUBLISH_CHANNEL = "#reading-list"
SYSTEM_PROMPT = (
    "You summarize web pages for a busy reader: at most three sentences of plain text, no"
    " preamble. When a reviewer rejects a summary, write a new one that does what they ask."
)


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the web and the third-party APIs (a worker dependency).

    Its base URL is the provider sandbox, which stands in for the web: a page's URL may be a
    path on it (`/openapi.json`) or any absolute URL.
    """

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Model:
    """The chat model: the official client (built with `max_retries=0`) and the model's name."""

    client: openai.AsyncOpenAI
    name: str


@dataclass(frozen=True)
class Page:
    url: str
    text: str = ""
    truncated: bool = False  # the page was longer than MAX_PAGE_CHARS: the model sees its start
    refusal: str | None = None  # why there is no page (a 4xx): never asked again


@dataclass(frozen=True)
class Round:
    """One summary and what the reviewer said about it, when they rejected it."""

    summary: str
    feedback: str


@dataclass(frozen=True)
class Summary:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusal: str | None = None  # why the model API said no (a 4xx): never asked again


@dataclass(frozen=True)
class Refused:
    """The other side said no (a 4xx other than 408 and 429): asking again gets the same answer."""

    status: int
    reason: str


class ProviderUnavailableError(Exception):
    """The web or a provider did not answer now; another attempt may succeed."""


class ModelUnavailableError(Exception):
    """The model API did not answer now (rate limit, 5xx, timeout, lost connection)."""


async def fetch_page(ctx: Context, url: str) -> Page:
    """GET the page: its text (cut at MAX_PAGE_CHARS), or why it is not there (a 4xx)."""
    print(f"fetching {url}", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.get(url)
    except httpx.TransportError as exc:
        raise ProviderUnavailableError(f"GET {url}: {type(exc).__name__}") from exc
    if response.status_code >= 500 or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"GET {url}: answered {response.status_code}")
    if response.is_error:
        return Page(url, refusal=f"GET {url} answered {response.status_code}")
    text = response.text
    truncated = len(text) > MAX_PAGE_CHARS
    cut = f" (the model is sent the first {MAX_PAGE_CHARS:,})" if truncated else ""
    print(f"fetched {url}: {len(text):,} characters{cut}", flush=True)
    return Page(url, text[:MAX_PAGE_CHARS], truncated)


def conversation(page: Page, rounds: list[Round]) -> list[ChatCompletionMessageParam]:
    """The messages for the next summary: the page, then each rejected summary and its feedback."""
    cut = " (its first part: the page is longer)" if page.truncated else ""
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Summarize the page at {page.url}{cut}.\n\n{page.text}"},
    ]
    for earlier in rounds:
        messages.append({"role": "assistant", "content": earlier.summary})
        messages.append(
            {
                "role": "user",
                "content": f"The reviewer rejected that summary: {earlier.feedback}\n"
                "Write a new summary that does what they ask.",
            }
        )
    return messages


async def summarize(ctx: Context, page: Page, rounds: list[Round]) -> Summary:
    """One completion: the next summary, given the summaries rejected so far and why."""
    print(f"summarizing {page.url} (round {len(rounds) + 1}, step {ctx.info.id})", flush=True)
    model = ctx.get_dependency(Model)
    try:
        completion = await model.client.chat.completions.create(
            model=model.name,
            messages=conversation(page, rounds),
            # The stand-in bills a key once; a real provider ignores the header.
            extra_headers={"Idempotency-Key": ctx.info.id},
        )
    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
        # APITimeoutError is an APIConnectionError; both may have been billed.
        raise ModelUnavailableError(f"model: {type(exc).__name__}") from exc
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in RETRYABLE_CLIENT_ERRORS:
            print(f"the model API answered {exc.status_code}; the step will be retried", flush=True)
            raise ModelUnavailableError(f"model: answered {exc.status_code}") from exc
        return Summary(refusal=f"the model API refused: {exc.status_code} {exc.message}")
    text = (completion.choices[0].message.content or "").strip()
    usage = completion.usage
    if usage is None:
        return Summary(text)
    return Summary(text, usage.prompt_tokens, usage.completion_tokens)


async def ask_reviewer(
    ctx: Context, reviewer: str, page: Page, summary: str, round_number: int, decision_id: str
) -> str | Refused:
    """Email the reviewer the summary and the id of the promise their decision resolves.

    `reviewer` is a staff user id (`usr_...`), sent as it is: the email provider resolves it to
    an address, so no address ever passes through the Resonate server.
    """
    print(f"asking {reviewer} to review round {round_number}", flush=True)
    body = {
        "to": reviewer,
        "subject": f"Summary of {page.url} (round {round_number}): approve or reject",
        "text": f"{summary}\n\nApprove it, or reject it saying what to change.",
        "round": round_number,
        # What the reviewer's tool resolves (the demo here; a web page in production).
        "decision_id": decision_id,
    }
    return await _call(ctx, "/email/send", body)


async def publish(ctx: Context, page: Page, summary: str) -> str | Refused:
    """Post the approved summary to the team's reading list."""
    print(f"publishing the approved summary to {PUBLISH_CHANNEL}", flush=True)
    body = {"channel": PUBLISH_CHANNEL, "text": f"{page.url}\n{summary}"}
    return await _call(ctx, "/slack/send", body)


async def _call(ctx: Context, path: str, body: dict[str, Any]) -> str | Refused:
    """The provider's id for what it did, or its refusal as a value; a transient failure raises."""
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # Timed out, reset, or an answer that could not be decoded: it may have acted, and the key
    # makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.status_code >= 500 or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}")
    if response.is_error:
        return Refused(response.status_code, f"{path} refused: {response.status_code}")
    try:
        message_id: str = response.json()["id"]
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # provider did: like a timeout, it may have acted, and the retry's key gets the answer.
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable 'id'"
        ) from exc
    return message_id
