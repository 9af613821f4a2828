"""The durable workflow: a tool-calling loop where every model call and every tool call is a step.

The loop is the usual one: send the conversation and the tools to the model; if it answers, that
is the result; if it asks for tools, run each, append its result, and ask again. What makes it
durable is that each model call and each tool call is its own `ctx.run`, a checkpoint with its
own id, which is also the Idempotency-Key the call carries. A worker killed after the model asked
for a booking but before the booking's result was recorded is replaced by another that replays
the conversation from the journal: the model's request is read back, not asked (and paid) again,
and the booking is sent again under the same key, which the provider answers with the seat it
already reserved.

`ask_human` waits for a person through a latent promise (`ctx.promise`): the question is posted
to chat with the promise's id, the gateway resolves the promise with the answer, and nothing runs
meanwhile: no worker holds the execution while the person thinks. After `HUMAN_DEADLINE` the
server times the promise out, and the model is told nobody answered.

The loop is bounded: after `max_model_calls` model calls without an answer it ends `gave-up`, and
it asks `MAX_QUESTIONS` questions at most, so that every wait fits in the run's deadline. An
unknown tool or arguments that do not fit are told to the model as the tool's result (a value),
and so is a refusal from the provider; only a provider that stays down fails the execution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal

from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.error import ApplicationError
from resonate.retry import Exponential, Never

from tool_agent.steps import ToolCall, ask_model, book_flight, post_question
from tool_agent.tools import AskHuman, BadToolCallError, BookFlight, read_call

SYSTEM_PROMPT = (
    "You are a travel agent. You book flights with the book_flight tool. Before booking anything,"
    " ask the traveller's manager with the ask_human tool, and book only what they approve."
)
# Where the agent's questions are posted: the manager's channel.
QUESTIONS_CHANNEL = "#travel-approvals"
# How long a person has to answer a question before the model is told nobody did.
HUMAN_DEADLINE = timedelta(hours=4)
# How many questions a run may ask. A run's deadline is the SDK's default, a day (the gateway
# starts it without a timeout), and every wait in it ends by then. The model may ask in every tool
# call of every model call: uncapped, six unanswered questions (6 x 4 h) would reach the deadline,
# and the server would time the whole run out instead of the model being told nobody answered.
# 4 questions wait 16 h at most, which leaves 8 h for the rest: 12 model calls, each retried to
# the end, take under 1.5 h (6 attempts of up to 60 s, and 60 s of backoff, per call). A question
# past the cap is not asked; the model is told so as the tool's result, and carries on without it.
MAX_QUESTIONS = 4
DEFAULT_MODEL_CALLS = 6
MAX_MODEL_CALLS = 12

# A model call that fails transiently (429, 5xx, a timeout, a dropped connection) is asked again
# after 2, 4, 8, 16 and 30 s: a rate limit window or a restart passes in that time, and every
# retry carries the same Idempotency-Key. A refusal (a 4xx) is never retried: the step returns
# it. Whole seconds: the SDK's policies count in seconds.
MODEL_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)
# The flight provider and the chat service: the same shape, for the same reasons.
TOOL_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)
# The workflow itself is never retried: once it made a durable call the SDK would not retry it
# anyway, and before that the only thing that can fail is decoding its argument, which no retry
# fixes. The SDK's default (30 retries, doubling) would hold the run's lease for hours.
WORKFLOW_RETRIES = Never()

# -- the request --------------------------------------------------------------------------------

# The run id becomes the execution id; Resonate ids may not contain ':' (it names steps).
RunId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
Task = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2000, pattern=r"^[^\p{C}\s](?:[^\p{C}]|\n)*$"),
]


class AgentRequest(BaseModel):
    """What the agent is asked to do: checked by the gateway, and by every worker decoding it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    run_id: RunId
    task: Task
    max_model_calls: Annotated[int, Field(ge=1, le=MAX_MODEL_CALLS)] = DEFAULT_MODEL_CALLS


@dataclass(frozen=True)
class AgentEnded:
    """How a run ended: also what `GET /runs/{id}` shows."""

    # answered: the model gave its final answer; gave-up: no answer within max_model_calls;
    # refused: the model's API refused the request (a 4xx), so no answer will come.
    state: Literal["answered", "gave-up", "refused"]
    answer: str | None = None
    reason: str | None = None
    bookings: list[str] = field(default_factory=list)  # reservation ids, in booking order
    model_calls: int = 0


# -- the workflow -------------------------------------------------------------------------------


async def agent(ctx: Context, request: AgentRequest) -> AgentEnded:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": request.task},
    ]
    bookings: list[str] = []
    questions: list[str] = []
    model = ctx.options(retry_policy=MODEL_RETRIES)
    for call_number in range(1, request.max_model_calls + 1):
        # A copy: the step's argument must not change under it once later turns are appended.
        reply = await model.run(ask_model, list(messages))
        if reply.refusal is not None:
            return AgentEnded(
                "refused", reason=reply.refusal, bookings=bookings, model_calls=call_number
            )
        if not reply.tool_calls:
            return AgentEnded(
                "answered", answer=reply.content or "", bookings=bookings, model_calls=call_number
            )
        messages.append(_assistant_turn(reply.content, reply.tool_calls))
        for call in reply.tool_calls:
            result = await run_tool(ctx, call, bookings, questions)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return AgentEnded(
        "gave-up",
        reason=f"no answer within {request.max_model_calls} model calls",
        bookings=bookings,
        model_calls=request.max_model_calls,
    )


async def run_tool(ctx: Context, call: ToolCall, bookings: list[str], questions: list[str]) -> str:
    """Run one tool call; its result as the model reads it (JSON). Never raises for bad input.

    `bookings` and `questions` are what the run booked and asked so far; this call adds to them.
    """
    try:
        arguments = read_call(call.name, call.arguments)
    except BadToolCallError as bad:
        print(f"tool call refused: {bad}", flush=True)
        return _result(error=str(bad))
    tool = ctx.options(retry_policy=TOOL_RETRIES)
    match arguments:
        case BookFlight():
            booked = await tool.run(book_flight, arguments.model_dump(mode="json"))
            if booked.reservation_id is None:
                return _result(error=f"the airline refused: {booked.refusal}")
            bookings.append(booked.reservation_id)
            return _result(reservation_id=booked.reservation_id, status="reserved")
        case AskHuman():
            if len(questions) >= MAX_QUESTIONS:
                return _result(error=f"not asked: a run may ask {MAX_QUESTIONS} questions at most")
            questions.append(arguments.question)
            return await ask_human(ctx, arguments.question)
    return _result(error=f"{call.name}: not implemented")  # pragma: no cover - every tool is above


async def ask_human(ctx: Context, question: str) -> str:
    """Post the question, then wait (suspended, for up to HUMAN_DEADLINE) for the answer."""
    answer = ctx.promise(timeout=HUMAN_DEADLINE)
    posted = await ctx.options(retry_policy=TOOL_RETRIES).run(
        post_question, await answer.id(), question, QUESTIONS_CHANNEL
    )
    if posted != "posted":  # nobody was asked: waiting would only run out the deadline
        return _result(error=f"the question could not be posted ({posted})")
    try:
        decided: Any = await answer
    except ApplicationError:  # timed out at the deadline (nothing else rejects it)
        return _result(error=f"nobody answered within {HUMAN_DEADLINE}")
    match decided:
        case {"answer": str(text)}:
            return _result(answer=text)
        case _:  # resolved by something other than the gateway: say so rather than guess
            return _result(error="the answer could not be read")


def _assistant_turn(content: str | None, calls: list[ToolCall]) -> ChatCompletionMessageParam:
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ],
    }


def _result(**fields: str) -> str:
    return json.dumps(fields, sort_keys=True)
