"""`calculate` in process: the SDK's `resonate.testing`, one in-process Resonate serving both pools.

These tests need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev
server and worker processes are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from distributed_calculator.expression import MalformedExpressionError
from distributed_calculator.steps import apply
from distributed_calculator.workflow import PARSE_POOL, Result, calculate, evaluate
from resonate.context import Context
from resonate.error import Suspended
from resonate.retry import Never
from resonate.testing import local_resonate, pending_promise, resolved_promise, root_context


def calculate_in_process(expression: str) -> tuple[Result, list[str]]:
    """The result, and the operations the ops pool applied (each `text`, in the order applied)."""
    applied: list[str] = []

    def recording_apply(ctx: Context, op: str, operands: list[str], text: str) -> dict[str, str]:
        applied.append(text)
        return apply(ctx, op, operands, text)

    async def go() -> Result:
        resonate = local_resonate(group=PARSE_POOL)
        try:
            resonate.register(calculate, retry_policy=Never())
            resonate.register(evaluate, retry_policy=Never())
            resonate.register(recording_apply, name="apply", retry_policy=Never())
            handle = resonate.run("calc-1", calculate, expression)
            result: Result = await asyncio.wait_for(handle.result(), 30)
            return result
        finally:
            await resonate.stop()

    return asyncio.run(go()), applied


def ignore_suspended_calls(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if not isinstance(context.get("exception"), Suspended):
        loop.default_exception_handler(context)


def suspends(ctx: Context, expression: str) -> bool:
    """Whether `calculate` suspends on calls still pending (rather than returning a result)."""

    async def go() -> bool:
        # Each pending call raises Suspended in its own task, which a worker's runtime collects;
        # a bare context does not, and asyncio would report them as exceptions never retrieved.
        asyncio.get_running_loop().set_exception_handler(ignore_suspended_calls)
        try:
            await calculate(ctx, expression)
        except Suspended:
            return True
        return False

    return asyncio.run(go())


def test_each_operator_is_one_exact_operation_on_the_ops_pool() -> None:
    result, applied = calculate_in_process("(0.1 + 0.2) * 3 / 4")

    assert result == {"expression": "(0.1 + 0.2) * 3 / 4", "value": "0.225"}  # no float error
    assert applied == ["0.1 + 0.2", "(0.1 + 0.2) * 3", "(0.1 + 0.2) * 3 / 4"]


def test_an_answer_with_no_finite_decimal_is_a_fraction() -> None:
    result, _ = calculate_in_process("-(1 / 3) + 1 / 7")

    assert result["value"] == "-4/21"


def test_a_division_by_zero_is_a_value_applied_once_and_stops_the_evaluation() -> None:
    result, applied = calculate_in_process("1 + 7 / (2 - 2)")

    assert result == {"expression": "1 + 7 / (2 - 2)", "error": "division by zero at 7 / (2 - 2)"}
    assert applied == ["2 - 2", "7 / (2 - 2)"]  # once, not retried; the `+` above is never applied


@pytest.mark.parametrize(
    ("expression", "position"), [("2 * (3 + 4", 5), ("2 ** 3", 3), ("__import__('os')", 1)]
)
def test_a_malformed_expression_is_refused_naming_the_position_before_any_call(
    expression: str, position: int
) -> None:
    ctx = root_context(id="calc-1")

    with pytest.raises(MalformedExpressionError) as refused:
        asyncio.run(calculate(ctx, expression))

    assert refused.value.position == position
    assert ctx.take_remote_todos() == []


def test_a_caller_that_skipped_the_client_gets_the_same_refusal_through_the_promise() -> None:
    """The error travels through the workflow's rejected promise: it must come back as itself."""

    async def go() -> MalformedExpressionError:
        resonate = local_resonate(group=PARSE_POOL)
        try:
            resonate.register(calculate, retry_policy=Never())
            resonate.register(evaluate, retry_policy=Never())
            handle = resonate.rpc("calc-1", "calculate", "2 * (3 + 4")  # no `submit`, no parse
            with pytest.raises(MalformedExpressionError) as refused:
                await asyncio.wait_for(handle.result(), 30)
            return refused.value
        finally:
            await resonate.stop()

    refused = asyncio.run(go())

    assert (refused.position, refused.reason) == (5, "'(' is never closed")
    assert str(refused) == "malformed expression at position 5: '(' is never closed"


def test_sibling_sub_expressions_are_both_started_before_either_is_awaited() -> None:
    """The fan-out shape: with both still pending the workflow suspends on the two of them."""
    ctx = root_context(id="calc-1")

    assert suspends(ctx, "(1 + 2) * (3 + 4)")
    assert ctx.take_remote_todos() == ["calc-1:1", "calc-1:2"]


def test_a_replay_reads_finished_sub_expressions_from_the_journal() -> None:
    """Both sides done, the multiplication pending: the replay asks for the multiplication only."""
    journal = [
        resolved_promise("calc-1:1", {"value": "3"}),
        resolved_promise("calc-1:2", {"value": "7"}),
        pending_promise("calc-1:3"),
    ]
    ctx = root_context(id="calc-1", preload=journal)

    assert suspends(ctx, "(1 + 2) * (3 + 4)")
    assert ctx.take_remote_todos() == ["calc-1:3"]

    done = root_context(
        id="calc-1", preload=[*journal[:2], resolved_promise("calc-1:3", {"value": "21"})]
    )
    assert asyncio.run(calculate(done, "(1 + 2) * (3 + 4)"))["value"] == "21"
