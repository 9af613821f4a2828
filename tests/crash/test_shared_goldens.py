"""Collecting the crash matrix starts nothing; parallel test processes make each golden run once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from cookbook import catalog
from cookbook.crash import pins
from cookbook.crash.harness import Golden, Outcome
from cookbook.crash.plan import Checkpoint, crash_points
from cookbook.testing import matrix
from cookbook.testing.fixtures import SharedSetUps, crash_matrix_group

HELLO = catalog.example("hello")
SMS = Checkpoint(":1", "step", "sms.send", suspended_on=False)


@pytest.fixture
def fresh_matrix(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The matrix module as a new test process sees it; yields the examples it records."""
    recorded: list[str] = []

    def record(example: catalog.Example) -> dict[str, Golden]:
        recorded.append(example.name)
        scenario = example.scenarios[0]
        outcome = Outcome("resolved", "'sent'")
        golden = Golden(scenario, "golden-id", outcome, [SMS], Counter(), 0.5)
        return {scenario.name: golden}

    # Restored afterwards, whatever share_goldens_through sets in between.
    monkeypatch.setattr(matrix, "_goldens", {})
    monkeypatch.setattr(matrix, "_shared_dir", None)
    monkeypatch.setattr(matrix, "_record", record)
    return recorded


def test_the_crash_points_are_collected_from_the_pins_without_a_golden_run(
    fresh_matrix: list[str],
) -> None:
    params = matrix.crash_matrix(["hello"])

    assert fresh_matrix == [], "collecting made a golden run"
    pinned = pins.read(HELLO)
    assert [p.id for p in params] == [
        f"hello[{point_id}]" for point_ids in pinned.values() for point_id in point_ids
    ]


def test_a_second_process_loads_the_golden_run_the_first_one_made(
    fresh_matrix: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = HELLO.scenarios[0].name
    matrix.share_goldens_through(tmp_path)
    first = matrix.golden_run("hello", scenario)
    assert fresh_matrix == ["hello"]

    monkeypatch.setattr(matrix, "_goldens", {})  # the second process
    second = matrix.golden_run("hello", scenario)
    assert fresh_matrix == ["hello"], "the second process ran the golden run again"
    assert [p.id for p in second.points] == [p.id for p in first.points]
    assert [p.id for p in first.points] == [p.id for p in crash_points(scenario, [SMS])]


def test_without_xdist_the_golden_runs_stay_in_the_process(
    fresh_matrix: list[str],
) -> None:
    matrix.crash_matrix(["hello"])
    matrix.golden_run("hello", HELLO.scenarios[0].name)
    assert fresh_matrix == ["hello"]


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        (
            "tests/test_crash_matrix.py::test_recovers_from_crash[saga[booked:car.reserve/before]]",
            "crash-matrix:saga",
        ),
        (
            "tests/test_crash_matrix.py::test_recovers_from_crash[k8s-drain[pdb:step#1/server-kill]]",
            "crash-matrix:k8s-drain",
        ),
        (
            "tests/test_crash_matrix.py::test_crash_points_are_the_pinned_ones[saga]",
            "crash-matrix:saga",
        ),
        ("tests/test_demos.py::test_the_demo_runs_as_its_readme_says[saga-None]", None),
        ("tests/test_crash_matrix.py::test_something_else", None),
    ],
)
def test_crash_points_of_one_example_are_one_xdist_group(nodeid: str, group: str | None) -> None:
    assert crash_matrix_group(nodeid) == group


def test_the_tests_of_a_module_sharing_a_set_up_are_one_xdist_group(tmp_path: Path) -> None:
    (tmp_path / "stack").mkdir()
    (tmp_path / "stack" / "test_gateway.py").write_text(
        '@pytest.fixture(scope="module")\ndef stack(): ...\n'
    )
    (tmp_path / "stack" / "test_plain.py").write_text("@pytest.fixture\ndef body(): ...\n")
    (tmp_path / "under_conftest").mkdir()
    (tmp_path / "under_conftest" / "conftest.py").write_text("@pytest.fixture(scope='package')\n")
    (tmp_path / "under_conftest" / "test_it.py").write_text("def test_it(): ...\n")
    groups = SharedSetUps(tmp_path).group

    assert groups("stack/test_gateway.py::test_a[1]") == "module:stack/test_gateway.py"
    assert groups("stack/test_gateway.py::test_b") == "module:stack/test_gateway.py"
    assert groups("stack/test_plain.py::test_a[1]") == "stack/test_plain.py::test_a[1]"
    assert groups("under_conftest/test_it.py::test_it") == "module:under_conftest/test_it.py"


def test_an_example_stack_module_of_the_cookbook_is_one_group() -> None:
    groups = SharedSetUps(catalog.repo_root()).group
    module = "examples/saga/tests/cookbook/test_saga.py"

    assert groups(f"{module}::test_x") == groups(f"{module}::test_y[1]") == f"module:{module}"
    assert groups("tests/test_demos.py::test_the_demo_runs_as_its_readme_says[saga]") == (
        "tests/test_demos.py::test_the_demo_runs_as_its_readme_says[saga]"
    )
