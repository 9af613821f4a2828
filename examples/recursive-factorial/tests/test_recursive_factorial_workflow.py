"""`factorial` in process: `resonate.testing`, one in-process Resonate as the worker group.

These tests need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev
server and worker processes are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from recursive_factorial.steps import InvalidInputError, Workers
from recursive_factorial.workflow import MAX_N, ask, factorial
from resonate.dependencies import DependencyMap
from resonate.resonate import Resonate
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context

GROUP = "recursive-factorial"


class RecordingClient:
    """The worker's Resonate client as a level's step sees it, recording the levels it asks for."""

    def __init__(self, resonate: Resonate) -> None:
        self.resonate = resonate
        self.asked: list[str] = []

    def options(self, **options: Any) -> RecordingClient:
        self.target = self.resonate.options(**options)
        return self

    def rpc(self, id: str, func: str, *args: Any) -> Any:
        self.asked.append(id)
        return self.target.rpc(id, func, *args)


class Untouchable:
    """A Resonate client that fails the test if anything uses it."""

    def __getattr__(self, name: str) -> Any:
        pytest.fail(f"the Resonate client was used ({name}) for an input that should be refused")


def on_workers(body: Callable[[Resonate, RecordingClient], Awaitable[Any]]) -> Any:
    """`body(resonate, levels)` with an in-process Resonate registered as the worker group."""

    async def go() -> Any:
        resonate = local_resonate(group=GROUP)
        try:
            levels = RecordingClient(resonate)
            resonate.with_dependency(Workers(cast(Resonate, levels), GROUP))
            resonate.register(factorial, retry_policy=Never())
            return await asyncio.wait_for(body(resonate, levels), 30)
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_n_factorial_asks_each_level_below_once_by_its_own_id() -> None:
    async def run(resonate: Resonate, levels: RecordingClient) -> tuple[str, list[str]]:
        return await ask(resonate, 6), levels.asked

    result, asked = on_workers(run)

    assert result == "720"
    assert asked == ["factorial-5", "factorial-4", "factorial-3", "factorial-2", "factorial-1"]


def test_a_bigger_n_reuses_the_levels_already_in_the_store() -> None:
    async def run(resonate: Resonate, levels: RecordingClient) -> tuple[str, list[str]]:
        await ask(resonate, 10)
        levels.asked.clear()
        return await ask(resonate, 12), levels.asked

    result, asked = on_workers(run)

    assert result == str(math.factorial(12))
    assert asked == ["factorial-11", "factorial-10"]  # 10! is read from its promise, not computed


def test_the_result_is_a_decimal_string_exact_past_what_a_double_holds() -> None:
    async def run(resonate: Resonate, levels: RecordingClient) -> str:
        return await ask(resonate, 30)

    assert on_workers(run) == str(math.factorial(30))


@pytest.mark.parametrize(
    ("n", "reason"),
    [
        (-1, "must be 0 or more"),
        (True, "must be a whole number"),
        (2.0, "must be a whole number"),
        (MAX_N + 1, f"at most {MAX_N}"),
    ],
)
def test_an_n_it_does_not_compute_is_refused_before_any_request(n: object, reason: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^n: {reason}"):
        asyncio.run(ask(cast(Resonate, Untouchable()), n))


def test_a_replay_reads_the_level_below_from_the_journal_and_asks_for_nothing() -> None:
    """What a worker does after a crash once the step holding 4! was checkpointed."""
    deps = DependencyMap()
    deps.insert(Workers(cast(Resonate, Untouchable()), GROUP))
    four_done = resolved_promise("factorial-5:1", "24")

    ctx = root_context(id="factorial-5", preload=[four_done], deps=deps)

    assert asyncio.run(factorial(ctx, 5)) == "120"
