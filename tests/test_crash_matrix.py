"""Every example's crash matrix: a real SIGKILL at every checkpoint and phase, then recovery."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cookbook.testing.matrix import MatrixCase, crash_matrix, stop_all


@pytest.fixture(scope="module", autouse=True)
def _stop_stacks_after_module() -> Iterator[None]:
    yield
    stop_all()


@pytest.mark.parametrize("case", crash_matrix())
def test_recovers_from_crash(case: MatrixCase) -> None:
    result = case.run()
    assert result.passed, "\n".join(result.problems)
