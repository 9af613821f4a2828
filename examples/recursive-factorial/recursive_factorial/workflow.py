"""The durable recursion: `factorial(n)` runs as the execution `factorial-<n>` and asks for n - 1.

The id of every level is chosen from its input, `factorial-<n>`, so it is one promise in the
whole system: whoever asks for 7! (a client, or the level for 8) starts it if it does not exist
and otherwise attaches to it, pending or settled. A request for 12! after 10! computes 12 and 11
and reads 10! from the store; nothing below 10 runs again. That is memoization with the server's
promise store as the table, and it survives every crash because the table is durable.
"""

from __future__ import annotations

from resonate.context import Context
from resonate.resonate import Resonate
from resonate.retry import Exponential

from recursive_factorial.steps import MAX_N, factorial_of, level_id, validate

# The step that asks for the level below only fails if the Resonate server cannot be reached (the
# level below itself never fails: n was checked at the top). A server restart takes seconds, so 5
# more attempts 2, 4, 8, 16, 30 s apart (about a minute) ride one out; after that this level fails
# and says so. Whole seconds: the SDK's policies take `int`.
ASK_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)

__all__ = ["ASK_RETRIES", "MAX_N", "ask", "factorial"]


async def factorial(ctx: Context, n: int) -> str:
    validate(n)
    if n <= 1:
        return "1"
    smaller = await ctx.options(retry_policy=ASK_RETRIES).run(factorial_of, n - 1)
    # A decimal string, not a JSON number: 19! is already past 2**53, where readers that parse
    # JSON numbers as doubles (JavaScript, jq, most dashboards) start rounding, and 171! is past
    # the largest double. Python's own int would round-trip, but the promise store is shared.
    return str(n * int(smaller))


async def ask(resonate: Resonate, n: object, group: str = "recursive-factorial") -> str:
    """n!, started on the workers or read from the store; a bad n is refused before any request.

    By name, so a client needs only the name the workers registered, not the code.
    """
    checked = validate(n)
    result: str = (
        await resonate.options(target=group).rpc(level_id(checked), "factorial", checked).result()
    )
    return result
