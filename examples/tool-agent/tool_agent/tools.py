"""The tools the model is offered, and how a tool call's arguments are read.

The model writes a tool call's arguments as a JSON string, and nothing makes it write good ones:
it may name a tool that does not exist, send text that is not JSON, or leave out a field. None of
that is a crash: `read_call` turns it into an error the workflow hands back to the model as the
tool's result, naming what is wrong, so the model can correct itself on its next turn.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

from openai.types.chat import ChatCompletionFunctionToolParam
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

# Visible text: no control characters, no leading or trailing whitespace.
Text = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=500, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"
    ),
]
Airport = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BookFlight(_Arguments):
    """Reserve a seat: it books for real, once per call."""

    origin: Airport
    destination: Airport
    departs: date
    passenger: Text


class AskHuman(_Arguments):
    """Ask the traveller's manager a question and wait for the answer."""

    question: Text


ARGUMENTS: dict[str, type[_Arguments]] = {"book_flight": BookFlight, "ask_human": AskHuman}


def _tool(name: str, arguments: type[_Arguments]) -> ChatCompletionFunctionToolParam:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": str(arguments.__doc__),
            "parameters": arguments.model_json_schema(),
        },
    }


TOOLS: list[ChatCompletionFunctionToolParam] = [
    _tool(name, arguments) for name, arguments in ARGUMENTS.items()
]


class BadToolCallError(Exception):
    """A tool call the workflow cannot run; its message is what the model is told."""


def read_call(name: str, arguments: str) -> _Arguments:
    """The call's arguments, checked; BadToolCallError naming the problem if it cannot run."""
    model = ARGUMENTS.get(name)
    if model is None:
        raise BadToolCallError(f"unknown tool {name!r}; the tools are {', '.join(ARGUMENTS)}")
    try:
        decoded: Any = json.loads(arguments)
    except ValueError as exc:
        raise BadToolCallError(f"{name}: the arguments are not JSON ({exc})") from None
    try:
        return model.model_validate(decoded)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        raise BadToolCallError(f"{name}: {problems}") from None
