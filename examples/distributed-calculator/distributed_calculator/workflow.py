"""The durable workflows: `calculate` an expression by evaluating its tree across two pools.

`calculate` and `evaluate` run on the parse pool: each operator node with a sub-expression for an
operand hands that sub-expression to another `evaluate` on the parse pool (a durable call of its
own, so any parse worker may take it), then hands the operator and its operand values to `apply`
on the ops pool. Sibling sub-expressions are started before either is awaited, so they are
evaluated at the same time, on whichever workers of the pool are free.

A result is `{"value": "<fraction>"}` or `{"error": "..."}`: division by zero is an answer about the
expression, reported as a value, never raised (raising would fail the step, and with a retry policy
would repeat an arithmetic that fails the same way every time).
"""

from __future__ import annotations

from typing import Any

from resonate.context import Context

from distributed_calculator.expression import Node, exact, parse

PARSE_POOL = "calculator-parse"
OPS_POOL = "calculator-ops"

type Result = dict[str, str]  # {"value": "3/10"} or {"error": "division by zero at 1 / 0"}


async def calculate(ctx: Context, expression: str) -> Result:
    # The client parsed it already and refused a malformed one before starting anything; parsing
    # again here is deterministic and cheap, and a caller that skipped the client is refused too.
    tree = parse(expression)
    result = await evaluate(ctx, tree)
    if "error" in result:
        return {"expression": expression, "error": result["error"]}
    return {"expression": expression, "value": exact(result["value"])}


async def evaluate(ctx: Context, node: Node) -> Result:
    if "number" in node:
        return {"value": node["number"]}
    sub_expressions = ctx.options(target=PARSE_POOL)
    started = [
        sub_expressions.rpc("evaluate", operand) if "op" in operand else None
        for operand in node["operands"]
    ]
    values: list[str] = []
    # Awaited in order, not as they finish, so every replay makes the same calls in the same order.
    for operand, call in zip(node["operands"], started, strict=True):
        result = _result(await call) if call is not None else {"value": operand["number"]}
        if "error" in result:
            return result
        values.append(result["value"])
    applied = await ctx.options(target=OPS_POOL).rpc("apply", node["op"], values, node["text"])
    return _result(applied)


def _result(decoded: Any) -> Result:
    """A remote call's result comes back as plain JSON: check it is what `Result` says."""
    if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
        raise TypeError(f"unexpected result from a remote call: {decoded!r}")
    return {str(k): v for k, v in decoded.items()}
