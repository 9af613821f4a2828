"""The step on the ops pool: apply one operator to exact values (fractions written as strings)."""

from __future__ import annotations

from fractions import Fraction

from resonate.context import Context


def apply(ctx: Context, op: str, operands: list[str], text: str) -> dict[str, str]:
    values = [Fraction(operand) for operand in operands]
    match op, values:
        case "-", [value]:
            result = -value
        case "+", [left, right]:
            result = left + right
        case "-", [left, right]:
            result = left - right
        case "*", [left, right]:
            result = left * right
        case "/", [_, right] if right == 0:
            # An answer about the expression, not a failure of the worker: the same inputs give
            # it on every attempt, so it is returned, never raised and retried.
            print(f"ops {ctx.info.id}: {text} divides by zero", flush=True)
            return {"error": f"division by zero at {text}"}
        case "/", [left, right]:
            result = left / right
        case _:
            raise ValueError(f"cannot apply {op!r} to {len(values)} operand(s)")
    print(f"ops {ctx.info.id}: {text} = {result}", flush=True)
    return {"value": str(result)}
