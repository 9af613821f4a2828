"""distributed-calculator end to end: a real dev server and one worker process serving both pools.

Assertions are on results and on the dev server's own records (which promises exist, which pool
each call was sent to, how many times each was created and settled), not on log lines.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import Any, cast

import pytest
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer
from distributed_calculator.demo import submit
from distributed_calculator.expression import MalformedExpressionError, parse
from distributed_calculator.steps import apply
from distributed_calculator.workflow import OPS_POOL, PARSE_POOL, Result
from resonate.resonate import Resonate
from resonate.testing import root_context

TIMEOUT = 30


@pytest.fixture
def resonate_url(devserver: RunningDevServer, start_worker: ProcessFactory) -> str:
    start_worker(
        "distributed_calculator.worker", {"RESONATE_URL": devserver.url, "PATH": "/usr/bin:/bin"}
    )
    return devserver.url


def new_execution_id() -> str:
    return f"calc-test-{secrets.token_hex(4)}"


def calculate(url: str, execution_id: str, expression: str) -> Result:
    async def run() -> Result:
        client = Resonate(url=url, group="calculator-tests")
        try:
            return await asyncio.wait_for(submit(client, execution_id, expression), TIMEOUT)
        finally:
            await client.stop()

    return asyncio.run(run())


def promises_of(devserver: RunningDevServer, execution_id: str) -> list[dict[str, Any]]:
    promises = cast(list[dict[str, Any]], devserver.state()["promises"])
    return [
        p for p in promises if p["id"] == execution_id or p["id"].startswith(execution_id + ":")
    ]


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("(0.1 + 0.2) * 3 / 4", "0.225"),  # 0.1 + 0.2 is 0.3 exactly, not 0.30000000000000004
        ("-(1 / 3) + 1 / 7", "-4/21"),  # no finite decimal: the exact fraction
        ("2 * (3 + 4) - 10 / 4", "11.5"),
        ("  -2.5", "-2.5"),  # a number alone: nothing to hand out
    ],
)
def test_results_are_exact(resonate_url: str, expression: str, value: str) -> None:
    assert calculate(resonate_url, new_execution_id(), expression) == {
        "expression": expression,
        "value": value,
    }


def test_the_tree_is_spread_over_both_pools(resonate_url: str, devserver: RunningDevServer) -> None:
    execution_id = new_execution_id()
    calculate(resonate_url, execution_id, "(1 + 2) * (3 - 4)")

    calls = Counter(
        (p["tags"]["resonate:target"].rsplit("@", 1)[-1], p["state"])
        for p in promises_of(devserver, execution_id)
        if p["id"] != execution_id
    )
    # Two sub-expressions evaluated on the parse pool; three operators applied on the ops pool.
    assert calls == {(PARSE_POOL, "resolved"): 2, (OPS_POOL, "resolved"): 3}


def test_division_by_zero_is_a_value_reported_once(
    resonate_url: str, devserver: RunningDevServer
) -> None:
    execution_id = new_execution_id()

    result = calculate(resonate_url, execution_id, "1 + 7 / (2 - 2)")

    assert result == {"expression": "1 + 7 / (2 - 2)", "error": "division by zero at 7 / (2 - 2)"}
    promises = promises_of(devserver, execution_id)
    # Every promise resolved (none rejected), and the `+` was never applied: the error stopped
    # the evaluation where it happened.
    assert {p["state"] for p in promises} == {"resolved"}
    assert len([p for p in promises if p["tags"]["resonate:target"].endswith(OPS_POOL)]) == 2
    # Nothing was attempted twice: each promise was settled once, by its first attempt.
    journal = devserver.journal(execution_id)
    settled = Counter(e["promise_id"] for e in journal if e["operation"] == "settle")
    assert settled == dict.fromkeys((p["id"] for p in promises), 1)


def test_dividing_by_zero_returns_instead_of_raising() -> None:
    # A raise would fail the step; with any retry policy it would be tried again, the same way.
    ctx = root_context(id="calc-1:2")
    assert apply(ctx, "/", ["7", "0"], "7 / (2 - 2)") == {
        "error": "division by zero at 7 / (2 - 2)"
    }


def test_a_malformed_expression_is_refused_before_anything_is_created(
    resonate_url: str, devserver: RunningDevServer
) -> None:
    execution_id = new_execution_id()

    with pytest.raises(MalformedExpressionError, match="at position 5: '\\(' is never closed"):
        calculate(resonate_url, execution_id, "2 * (3 + 4")

    assert promises_of(devserver, execution_id) == []


@pytest.mark.parametrize(
    ("expression", "position", "reason"),
    [
        ("", 1, "the expression is empty"),
        ("1 + 2)", 6, "unmatched ')'"),
        ("((1 + 2)", 1, "'(' is never closed"),
        ("1 +", 3, "nothing after '+'"),
        ("2 ** 8", 3, "'**' is not supported (only + - * /)"),
        ("9 // 2", 3, "'//' is not supported (only + - * /)"),
        ("1e9", 2, "unexpected character 'e'"),
        ("__import__('os')", 1, "unexpected character '_'"),
        ("3 + x", 5, "unexpected character 'x'"),
        ("1 2", 3, "invalid syntax"),
        ("07", 1, "a number may not start with 0 (write 7, not 07)"),
        ("4 ()", 1, "'4 ()' is not a number or an arithmetic operation"),
        ("1" * 201, 201, "longer than 200 characters"),
    ],
)
def test_a_malformed_expression_names_the_position(
    expression: str, position: int, reason: str
) -> None:
    with pytest.raises(MalformedExpressionError) as refused:
        parse(expression)
    assert (refused.value.position, refused.value.reason) == (position, reason)


def test_numbers_are_kept_exact_in_the_tree() -> None:
    assert parse("0.1 + -3") == {
        "text": "0.1 + -3",
        "op": "+",
        "operands": [{"text": "0.1", "number": "1/10"}, {"text": "-3", "number": "-3"}],
    }
