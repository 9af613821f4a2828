"""The recursion's pieces: the id of each level, the check on n, the step that asks for a level.

Each level's id is `factorial-<n>`, chosen by the caller, never generated: the same input is the
same promise for every caller. SDK 0.8.1 has no way to give a child started with `ctx.rpc` an id
of one's own (its children are `<parent>:<seq>`), so a level asks for the one below through the
Resonate client in a step: `resonate.rpc("factorial-<n>", "factorial", n)` creates that
execution or, if the id exists, attaches to it and returns its stored result.
"""

from __future__ import annotations

from dataclasses import dataclass

from resonate.context import Context
from resonate.resonate import Resonate

# Each level waits for the one below in a step that holds one worker task, so a request for n
# holds up to n tasks (and their leases and heartbeats) across the group at once, and creates n
# promises. 500 keeps one request to about half a minute on one busy worker (200 levels took 12 s
# on 2 shared cores) and the result under 1,200 digits; a bigger n is refused before anything is
# created, rather than tying up the workers.
MAX_N = 500


class InvalidInputError(ValueError):
    """n is not something this service computes; raised before anything is created."""


def validate(n: object) -> int:
    """n as an int, or InvalidInputError naming the field and the reason."""
    # bool is an int in Python, and True! is not a question anyone means to ask.
    if isinstance(n, bool) or not isinstance(n, int):
        raise InvalidInputError(f"n: must be a whole number, got {n!r}")
    if n < 0:
        raise InvalidInputError(f"n: must be 0 or more, got {n}")
    if n > MAX_N:
        raise InvalidInputError(
            f"n: at most {MAX_N} (each level holds a worker task and a promise), got {n}"
        )
    return n


def level_id(n: int) -> str:
    """The execution id of n!: the same for every caller, so asking twice is asking once."""
    return f"factorial-{n}"


@dataclass(frozen=True)
class Workers:
    """The worker's own Resonate client and group: a step starts levels through them."""

    resonate: Resonate
    group: str


async def factorial_of(ctx: Context, n: int) -> str:
    """n!, as a decimal string: started as `factorial-<n>`, or read from it if it exists."""
    workers = ctx.get_dependency(Workers)
    # Run again after a crash, this step attaches to the level it started (the id is chosen, the
    # arguments of a second start are ignored), so a level is never computed twice.
    handle = workers.resonate.options(target=workers.group).rpc(level_id(n), "factorial", n)
    result: str = await handle.result()
    return result
