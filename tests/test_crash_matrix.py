"""Every example's crash matrix: a real SIGKILL at every checkpoint and phase, then recovery."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cookbook import catalog
from cookbook.crash import pins
from cookbook.testing.matrix import MatrixCase, crash_matrix, pin_cases, pin_drift, stop_all


@pytest.fixture(scope="module", autouse=True)
def _stop_stacks_after_module() -> Iterator[None]:
    yield
    stop_all()


@pytest.fixture(scope="session")
def run_alongside(request: pytest.FixtureRequest) -> list[MatrixCase]:
    """The crash points this test process runs: an example's run on lanes, several at once.

    Under pytest-xdist only `--dist loadgroup` (the Makefile's) sends all of an example's points
    to one process (cookbook.testing.fixtures); with another mode each point runs on its own.
    """
    if request.config.getoption("dist", "no") not in ("no", "loadgroup"):
        return []
    return [
        case
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_recovers_from_crash"
        and isinstance(case := item.callspec.params.get("case"), MatrixCase)
    ]


@pytest.mark.parametrize("case", crash_matrix())
def test_recovers_from_crash(case: MatrixCase, run_alongside: list[MatrixCase]) -> None:
    result = case.run(run_alongside)
    assert result.passed, "\n".join(result.problems)


# A step that silently disappears shrinks the matrix and passes it: the crash points the golden
# runs find must be those pinned in tests/crash/points/<example>.txt (`make pin` rewrites them).
@pytest.mark.parametrize("example", pin_cases())
def test_crash_points_are_the_pinned_ones(example: catalog.Example) -> None:
    drift = pin_drift(example)
    assert not drift, "\n".join(drift)


def test_every_pin_file_belongs_to_an_example() -> None:
    orphans = pins.orphans(catalog.repo_root(), catalog.examples())
    assert not orphans, f"no example owns {orphans}: `make pin` removes them"
