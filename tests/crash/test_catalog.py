"""`[tool.cookbook]` is validated: a misspelt or mistyped key is an error naming file and key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import pytest
from cookbook import catalog, clients

ROOT = catalog.repo_root(Path(__file__))

GOOD = """
[tool.cookbook]
worker = "demo.worker"
group = "demo"
services = ["sandbox"]
receivers = [{ anything = "its own module checks it" }]

[[tool.cookbook.scenarios]]
name = "booked"
function = "book"
args = [1]

[[tool.cookbook.scenarios]]
name = "refused"
function = "book"
expect = "rejected"
faults = [{ provider = "car", status = 409 }]
[[tool.cookbook.scenarios.setup]]
service = "kubernetes"
path = "/_admin/reset"
json = { nodes = ["a"] }
"""


def example_at(tmp_path: Path, toml: str) -> Path:
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(toml)
    return folder


def problems_of(tmp_path: Path, toml: str) -> list[str]:
    with pytest.raises(catalog.CatalogError) as raised:
        catalog.load_example(example_at(tmp_path, toml))
    return str(raised.value).splitlines()


def test_a_well_formed_table_loads(tmp_path: Path) -> None:
    example = catalog.load_example(example_at(tmp_path, GOOD))
    assert [s.expect for s in example.scenarios] == ["resolved", "rejected"]
    assert example.scenarios[1].setup[0]["json"] == {"nodes": ["a"]}


def test_a_misspelt_scenario_key_names_the_file_the_scenario_and_the_key(tmp_path: Path) -> None:
    toml = GOOD.replace('expect = "rejected"', 'expcet = "rejected"')
    [problem] = problems_of(tmp_path, toml)
    assert problem.startswith(
        f"{tmp_path}/demo/pyproject.toml: [tool.cookbook.scenarios][1].expcet: unknown key"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('group = "demo"', "group = 7"),
            "[tool.cookbook].group: expected a string, got an integer",
        ),
        (
            ('group = "demo"', 'group = "demo"\nworkers = 2'),
            "[tool.cookbook].workers: unknown key",
        ),
        (('worker = "demo.worker"', ""), "[tool.cookbook].worker: missing (required)"),
        (
            ('services = ["sandbox"]', 'services = ["sandbox", "redis"]'),
            "[tool.cookbook].services[1]: 'redis' is not one of sandbox, kafka, kubernetes, model",
        ),
        (
            ('services = ["sandbox"]', 'services = "sandbox"'),
            "[tool.cookbook].services: expected a list, got a string",
        ),
        (
            ("receivers = [{", 'receivers = ["flights", {'),
            "[tool.cookbook].receivers[0]: expected a table, got a string",
        ),
        (
            ('expect = "rejected"', 'expect = "failed"'),
            "[tool.cookbook.scenarios][1].expect: 'failed' is not one of resolved, rejected",
        ),
        (
            ("args = [1]", "args = 1"),
            "[tool.cookbook.scenarios][0].args: expected a list, got an integer",
        ),
        (
            ('name = "refused"', 'name = "booked"'),
            "[tool.cookbook.scenarios][1].name: 'booked' names another scenario too",
        ),
        (
            ('path = "/_admin/reset"', 'paht = "/_admin/reset"'),
            "[tool.cookbook.scenarios][1].setup[0].paht: unknown key",
        ),
        (
            ('function = "book"\nargs', "function = true\nargs"),
            "[tool.cookbook.scenarios][0].function: expected a string, got a boolean",
        ),
        (
            ("args = [1]", 'args = [1]\nversion = "2"'),
            "[tool.cookbook.scenarios][0].version: expected an integer, got a string",
        ),
    ],
)
def test_wrong_keys_and_types_are_errors_naming_the_key(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    toml = GOOD.replace(*change)
    assert toml != GOOD
    problems = problems_of(tmp_path, toml)
    assert any(p.startswith(f"{tmp_path}/demo/pyproject.toml: {expected}") for p in problems), (
        problems
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    toml = GOOD.replace('expect = "rejected"', 'expcet = "rejected"').replace("group =", "grop =")
    assert len(problems_of(tmp_path, toml)) == 3  # expcet, grop, and the group it lacks


def test_a_file_in_this_repository_is_named_by_its_path_in_it() -> None:
    assert catalog.validate({"worker": "w", "group": "g", "sevices": []}) == [
        "[tool.cookbook].sevices: unknown key (known: worker, group, demo, gateway, services, "
        "scenarios, receivers, skip_time, auth, encryptor, pattern, summary, chaos, model)"
    ]
    with pytest.raises(catalog.CatalogError, match=r"^examples/saga/missing/pyproject.toml: "):
        catalog.load_example(ROOT / "examples" / "saga" / "missing")


def test_skip_time_reaches_the_harness_stack(tmp_path: Path) -> None:
    from cookbook.crash.harness import harness_stack

    plain = catalog.load_example(example_at(tmp_path, GOOD))
    assert not plain.skip_time
    assert not harness_stack(plain).skip_time
    (tmp_path / "b").mkdir()
    skipping = catalog.load_example(
        example_at(
            tmp_path / "b", GOOD.replace('group = "demo"', 'group = "demo"\nskip_time = true')
        )
    )
    assert harness_stack(skipping).skip_time


def test_skip_time_must_be_a_boolean(tmp_path: Path) -> None:
    toml = GOOD.replace('group = "demo"', 'group = "demo"\nskip_time = "yes"')
    [problem] = problems_of(tmp_path, toml)
    assert problem.endswith("[tool.cookbook].skip_time: expected a boolean, got a string")


def test_auth_makes_the_harness_stack_require_a_token(tmp_path: Path) -> None:
    """With `auth = true` the harness's dev server refuses requests without the stack's token,
    also once restarted (a server-kill point), and the example's processes get that token."""
    from cookbook.crash.harness import harness_stack

    plain = catalog.load_example(example_at(tmp_path, GOOD.replace('["sandbox"]', "[]")))
    assert not plain.auth
    assert not harness_stack(plain).auth
    (tmp_path / "b").mkdir()
    toml = GOOD.replace('["sandbox"]', "[]").replace(
        'group = "demo"', 'group = "demo"\nauth = true'
    )
    with harness_stack(catalog.load_example(example_at(tmp_path / "b", toml))) as stack:
        health = f"{stack.resonate_url}/_cookbook/health"
        for _ in ("started", "restarted"):
            assert clients.get(health).status_code == 401
            assert clients.get(health, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert clients.get(health, headers=stack.resonate_headers).status_code == 200
            stack.restart_devserver()
        assert stack.token is not None
        assert stack.env()["RESONATE_TOKEN"] == stack.token


def test_auth_must_be_a_boolean(tmp_path: Path) -> None:
    toml = GOOD.replace('group = "demo"', 'group = "demo"\nauth = "on"')
    [problem] = problems_of(tmp_path, toml)
    assert problem.endswith("[tool.cookbook].auth: expected a boolean, got a string")


def test_a_scenario_starts_the_version_it_names(tmp_path: Path) -> None:
    """`version` reaches the harness's start: a start by name runs version 1 unless told."""
    from cookbook.crash.harness import CrashHarness
    from cookbook.stack import Stack
    from resonate.resonate import Resonate

    without_setup = GOOD.split("[[tool.cookbook.scenarios.setup]]")[0]
    toml = without_setup.replace("args = [1]", "args = [1]\nversion = 2").replace(
        'faults = [{ provider = "car", status = 409 }]\n', ""
    )
    example = catalog.load_example(example_at(tmp_path, toml))
    assert [s.version for s in example.scenarios] == [2, 1]

    class Client:
        """Records what a start asks of the SDK's client."""

        def __init__(self) -> None:
            self.started: list[tuple[dict[str, object], tuple[object, ...]]] = []

        def options(self, **options: object) -> Client:
            self.started.append((options, ()))
            return self

        def rpc(self, *call: object) -> None:
            self.started[-1] = (self.started[-1][0], call)

    harness = CrashHarness.__new__(CrashHarness)  # what _start reads, without a running stack
    harness.example, harness.stack = example, Stack(sandbox=False)
    client = Client()
    for scenario in example.scenarios:
        asyncio.run(harness._start(cast(Resonate, client), scenario, f"run-{scenario.name}"))
    assert client.started == [
        ({"target": "demo", "version": 2}, ("run-booked", "book", 1)),
        ({"target": "demo", "version": 1}, ("run-refused", "book")),
    ]


CHAOS = """
[tool.cookbook.chaos]
driver = "tests/chaos_driver.py"
executions = 12
kills = 3
seconds = 2.5
"""


def test_a_chaos_table_loads_with_its_driver_and_sizes(tmp_path: Path) -> None:
    folder = example_at(tmp_path, GOOD + CHAOS)
    (folder / "tests").mkdir()
    (folder / "tests" / "chaos_driver.py").write_text("")
    chaos = catalog.load_example(folder).chaos
    assert chaos == catalog.Chaos(folder / "tests" / "chaos_driver.py", 12, 3, 2.5)
    (tmp_path / "plain").mkdir()
    assert catalog.load_example(example_at(tmp_path / "plain", GOOD)).chaos is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("kills = 3", "kils = 3"), "[tool.cookbook.chaos].kils: unknown key"),
        (
            ("executions = 12", "executions = 0"),
            "[tool.cookbook.chaos].executions: must be above 0",
        ),
        (("kills = 3", "kills = -1"), "[tool.cookbook.chaos].kills: must be 0 or more"),
        (("seconds = 2.5", 'seconds = "2"'), "[tool.cookbook.chaos].seconds: expected an integer"),
        (
            ('driver = "tests/chaos_driver.py"', 'driver = "../elsewhere.py"'),
            "[tool.cookbook.chaos].driver: must be a .py file inside the example's folder",
        ),
        (
            ('driver = "tests/chaos_driver.py"', ""),
            "[tool.cookbook.chaos].driver: missing (required)",
        ),
        (
            ("executions = 12", ""),
            "[tool.cookbook.chaos].driver: no such file tests/chaos_driver.py",
        ),
    ],
)
def test_a_wrong_chaos_table_is_an_error_naming_the_key(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    toml = GOOD + CHAOS.replace(*change)
    problems = problems_of(tmp_path, toml)
    assert any(p.startswith(f"{tmp_path}/demo/pyproject.toml: {expected}") for p in problems), (
        problems
    )
