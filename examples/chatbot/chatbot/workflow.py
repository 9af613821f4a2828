"""One turn of a chat: one durable execution, holding the conversation so far.

A chat is a sequence of turns. Turn n of chat c is the execution `chat.<c>.turn.<n>`: its
argument is the conversation before it (the history) and the user's new message, and its result
is the model's reply. The gateway builds turn n from turn n-1 once n-1 has settled, so the
Resonate server holds the whole chat, a turn at a time, and any gateway can continue it.

The turn calls the model in one checkpointed step. A model that is overloaded or down (429, 5xx,
a timeout) is asked again by this turn's retry policy, with the same idempotency key and the same
messages: the user is not asked to send anything again, and a completion the provider did return
is never paid for twice. A refusal (a 400 for a prompt the model will not take, say) is the same
on every attempt: it is the turn's answer, never retried.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.retry import Exponential

from chatbot.steps import Message, Reply, complete

MAX_TURNS = 50  # a chat's turns each carry the whole history: bounded, so a promise stays small
MAX_MESSAGE_CHARS = 4000

# A chat id is part of every turn's execution id; Resonate ids may not contain ':' (it names
# steps), and '.' separates the parts of the turn's id.
ChatId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
TurnNumber = Annotated[int, Field(ge=1, le=MAX_TURNS)]
# What a user types: some visible text, no control characters but tabs and line breaks. (A
# lone surrogate, which JSON can carry, is refused too: the pattern is matched on UTF-8.)
_TYPED = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
_VISIBLE = r"[^\x00-\x20\x7f-\x9f\s]"
UserText = Annotated[
    str,
    StringConstraints(max_length=MAX_MESSAGE_CHARS, pattern=rf"^{_TYPED}*{_VISIBLE}{_TYPED}*$"),
]

# A model that is overloaded (429) or down (5xx, a timeout) is asked again 2, 4, 8 and 8 s later:
# about 22 s, enough to ride out a burst of 429s or a provider's restart while the user is still
# looking at the chat. After that the turn fails, saying why; the user's next turn can go on.
MODEL_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=8)


def turn_id(chat_id: str, number: int) -> str:
    """The execution id of turn `number` of chat `chat_id`: one execution per turn, ever."""
    return f"chat.{chat_id}.turn.{number}"


class Turn(BaseModel):
    """What a turn's execution is started with: who, which turn, the chat so far, the message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chat_id: ChatId
    number: TurnNumber
    history: list[Message] = Field(max_length=2 * MAX_TURNS)
    message: UserText

    def conversation(self) -> list[Message]:
        """The chat as it stands after this turn's message, before the model's reply."""
        return [*self.history, Message(role="user", content=self.message)]


def history_after(turn: Turn, reply: Reply | None) -> list[Message]:
    """The history the next turn starts from: a turn the model answered adds both messages.

    A turn the model refused, or that failed, adds nothing: the model never saw it in the
    conversation, so the next turn does not either.
    """
    if reply is None or reply.content is None:
        return list(turn.history)
    return [*turn.conversation(), Message(role="assistant", content=reply.content)]


async def chat_turn(ctx: Context, turn: Turn) -> Reply:
    step = ctx.options(retry_policy=MODEL_RETRIES)
    return await step.run(complete, turn.conversation())
