"""Pinned crash points, and golden runs that fail only their own example's tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cookbook import catalog
from cookbook.crash import pins
from cookbook.crash.harness import Golden, Outcome
from cookbook.crash.plan import Checkpoint
from cookbook.testing import matrix

HELLO = catalog.example("hello")
SEND = Checkpoint(":1", "step", "sms.send", suspended_on=False)
LOG = Checkpoint(":2", "step", "audit.log", suspended_on=False)


def folder_in(root: Path, name: str = "shop", toml_extra: str = "") -> Path:
    """An example's folder in a repository of its own under `root`, with two scenarios."""
    (root / "shared").mkdir(exist_ok=True)
    folder = root / "examples" / name
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        f"""
[tool.cookbook]
worker = "shop.worker"
group = "shop"
{toml_extra}
[[tool.cookbook.scenarios]]
name = "paid"
function = "pay"

[[tool.cookbook.scenarios]]
name = "refused"
function = "pay"
"""
    )
    return folder


def example_in(root: Path, name: str = "shop") -> catalog.Example:
    return catalog.load_example(folder_in(root, name))


def test_a_pin_file_round_trips_grouped_by_scenario(tmp_path: Path) -> None:
    shop = example_in(tmp_path)
    points = {"paid": ["paid:a/before", "paid:a/after-effect"], "refused": []}
    path = pins.write(shop, points)
    assert path == tmp_path / "tests" / "crash" / "points" / "shop.txt"
    assert pins.parse(path.read_text()) == points
    assert pins.drift(shop, points) == []


def test_a_dropped_checkpoint_is_a_readable_diff(tmp_path: Path) -> None:
    shop = example_in(tmp_path)
    pins.write(shop, {"paid": ["paid:a/before", "paid:b/before"], "refused": []})

    problems = pins.drift(shop, {"paid": ["paid:a/before"], "refused": []})

    assert problems[0].splitlines() == [
        "tests/crash/points/shop.txt: the crash points of 'paid' differ:",
        "--- pinned [paid]",
        "+++ golden run [paid]",
        "@@ -1,2 +1 @@",
        " paid:a/before",
        "-paid:b/before",
        "if the change is deliberate, run `make pin EXAMPLE=shop` and commit it",
    ]


def test_an_added_scenario_point_or_a_missing_file_is_drift_too(tmp_path: Path) -> None:
    shop = example_in(tmp_path)
    assert pins.drift(shop, {"paid": []})[0].startswith("tests/crash/points/shop.txt: missing")
    pins.write(shop, {"paid": ["paid:a/before"]})
    problems = pins.drift(shop, {"paid": ["paid:a/before", "paid:a/server-kill"], "refused": []})
    assert "+paid:a/server-kill" in problems[0]
    assert problems[1].splitlines()[0] == (
        "tests/crash/points/shop.txt: scenario 'refused' has no pinned crash points"
    )


def test_a_failed_golden_run_leaves_its_scenario_uncompared(tmp_path: Path) -> None:
    shop = example_in(tmp_path)
    pins.write(shop, {"paid": ["paid:a/before"], "refused": ["refused:a/before"]})
    assert pins.drift(shop, {"paid": ["paid:a/before"], "refused": None}) == []


def test_the_pins_of_a_renamed_example_are_orphans(tmp_path: Path) -> None:
    shop = example_in(tmp_path)
    pins.write(shop, {"paid": []})
    old_name = pins.write(example_in(tmp_path, "till"), {"paid": []})
    assert pins.orphans(tmp_path, [shop]) == [old_name]


class FakeHarness:
    """Golden runs without processes: one checkpoint each, or an error for `broken` scenarios."""

    def __init__(self, broken: set[tuple[str, str]], made: list[str]) -> None:
        self.broken, self.made = broken, made

    def for_example(self, example: catalog.Example) -> Any:
        outer = self

        class One:
            def golden(self, scenario: catalog.Scenario) -> Golden:
                outer.made.append(f"{example.name}/{scenario.name}")
                if (example.name, scenario.name) in outer.broken:
                    raise AssertionError(
                        f"golden run of {scenario.name}: expected resolved, got rejected: boom"
                    )
                found = [SEND, LOG]
                return Golden(scenario, "g", Outcome("resolved", "'ok'"), found, Counter(), 0.1)

        return One()


@pytest.fixture
def fresh_matrix(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    fake = FakeHarness({("hello", "greet")}, made)
    monkeypatch.setattr(matrix, "_goldens", {})
    monkeypatch.setattr(matrix, "_shared_dir", None)
    monkeypatch.setattr(matrix, "_harness", fake.for_example)
    return made


def id_of(param: pytest.ParameterSet) -> str:
    assert isinstance(param.id, str)  # crash_matrix names every param
    return param.id


def ids(params: list[pytest.ParameterSet]) -> list[str]:
    return [id_of(p) for p in params]


def case_of(param: pytest.ParameterSet) -> matrix.MatrixCase | matrix.BrokenExample:
    """What a crash-matrix param runs: a pinned point, or an example that cannot be run."""
    case = param.values[0]
    assert isinstance(case, matrix.MatrixCase | matrix.BrokenExample)
    return case


def test_a_failed_golden_run_fails_only_its_own_example(fresh_matrix: list[str]) -> None:
    params = matrix.crash_matrix(["hello", "wlrf"])
    hello = [p for p in params if id_of(p).startswith("hello[")]

    assert hello
    for param in hello:
        with pytest.raises(AssertionError) as failed:
            case_of(param).run()
        assert str(failed.value) == (
            "hello: the golden run of scenario 'greet' failed, so its crash points are unknown: "
            "AssertionError: golden run of greet: expected resolved, got rejected: boom"
        )
    with pytest.raises(AssertionError, match="scenario 'greet' failed"):
        matrix.golden_run("hello", "greet")
    assert matrix.golden_run("wlrf", "opened").points  # wlrf's own golden runs are made


def test_a_pinned_point_the_golden_run_does_not_find_fails_saying_so(
    fresh_matrix: list[str],
) -> None:
    # The fake golden runs find SEND and LOG only: wlrf's pinned points are not among them.
    case = case_of(matrix.crash_matrix(["wlrf"])[0])

    with pytest.raises(AssertionError, match=r"is pinned, but the golden run of 'opened' has no"):
        case.run()


def test_a_failed_golden_run_is_shared_with_the_other_test_processes(
    fresh_matrix: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix.share_goldens_through(tmp_path)
    for example in ("hello", "wlrf"):
        matrix.goldens_of(catalog.example(example))
    monkeypatch.setattr(matrix, "_goldens", {})  # the second process
    for example in ("hello", "wlrf"):
        matrix.goldens_of(catalog.example(example))
    assert fresh_matrix == ["hello/greet", "wlrf/opened", "wlrf/refused"]  # each made once
    with pytest.raises(AssertionError, match="scenario 'greet' failed"):
        matrix.golden_run("hello", "greet")


def test_an_example_with_a_bad_table_fails_only_its_own_test(
    fresh_matrix: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins.write(catalog.load_example(folder_in(tmp_path, "shop")), {"paid": ["paid:a/before"]})
    folder_in(tmp_path, "till", toml_extra='expcet = "rejected"')
    monkeypatch.setattr(catalog, "repo_root", lambda start=None: tmp_path)

    params = matrix.crash_matrix()

    assert ids(params) == ["shop[paid:a/before]", "till[pyproject.toml]"]
    with pytest.raises(AssertionError, match=r"\[tool.cookbook\].expcet: unknown key"):
        case_of(params[1]).run()


def test_an_example_without_a_pin_file_is_one_failing_test(
    fresh_matrix: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder_in(tmp_path, "shop")
    monkeypatch.setattr(catalog, "repo_root", lambda start=None: tmp_path)

    params = matrix.crash_matrix()

    assert ids(params) == ["shop[pins]"]
    with pytest.raises(AssertionError, match=r"shop: its pin file cannot be read .*make pin"):
        case_of(params[0]).run()
    assert fresh_matrix == []


def test_the_pin_test_compares_the_session_golden_runs(fresh_matrix: list[str]) -> None:
    matrix.crash_matrix(["hello"])
    # hello's only scenario failed: nothing to compare, its own test says why
    assert matrix.pin_drift(HELLO) == []
