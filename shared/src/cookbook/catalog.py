"""The examples in this repository, as declared in each example's `[tool.cookbook]` table.

The table is plain data (which module is the worker, which the demo, which scenarios the crash
harness replays), so an example copied out of the cookbook carries no harness code.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class Scenario:
    name: str
    function: str
    args: list[Any]
    faults: list[dict[str, Any]] = field(default_factory=list)
    expect: str = "resolved"  # or "rejected": the workflow is meant to fail (a rolled-back saga)
    # Values for the latent promises the workflow waits on (`ctx.promise()`), in the order it
    # suspends on them: what a person or another system would send (an approval, an event).
    signals: list[Any] = field(default_factory=list)
    # HTTP calls to a service before every run, e.g. to reset and seed a stand-in cluster:
    # {service = "kubernetes", method = "POST", path = "/_admin/reset", json = {...}}.
    # "{execution_id}" in a string value is replaced by the run's execution id.
    setup: list[dict[str, Any]] = field(default_factory=list)
    # The registered version of `function` to start (`resonate.options(version=...)`): a start by
    # name runs version 1 unless told otherwise.
    version: int = 1


@dataclass(frozen=True)
class Chaos:
    """How `cookbook chaos` drives an example (`[tool.cookbook.chaos]`), and its defaults."""

    # A Python file, relative to the example's folder (it lives with the example's tests: it is
    # cookbook-side code, and may import `cookbook`), defining `DRIVER`, a `cookbook.chaos.Driver`.
    driver: Path
    executions: int = 20
    kills: int = 4
    seconds: float = 6.0


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    worker: str
    group: str
    demo: str | None
    gateway: str | None  # a module run with `python -m`; prints "... listening on <url>"
    services: tuple[str, ...]
    scenarios: tuple[Scenario, ...]
    # The crash harness runs the scenarios on a dev server that skips time (`--skip-time`): a
    # workflow that sleeps for hours is crash-tested with its real durations, in seconds.
    skip_time: bool = False
    # The dev server requires a bearer token (a random one per stack, never written down):
    # `cookbook run`, the crash harness and `cookbook docs` start it with that token and give it
    # to the example's processes as RESONATE_TOKEN, which the SDK sends on every request.
    auth: bool = False
    # "module:function" returning the `Encryptor` the example's workers use (from the same
    # environment), for the harness's own client: it sends the scenario's arguments and reads
    # the outcome, so it must seal and open values as the workers do.
    encryptor: str | None = None
    # The catalog row (README.md's table and the site's home page are made from these): the
    # pattern's name, and what the example shows, in a sentence or a few clauses.
    pattern: str = ""
    summary: str = ""
    chaos: Chaos | None = None
    # The stand-in model's script (`[tool.cookbook.model] script`, a TOML file in the example's
    # folder): loaded into the sandbox whenever the cookbook runs the example.
    model_script: Path | None = None

    @property
    def package(self) -> str:
        return self.worker.split(".")[0]


def repo_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "examples").is_dir() and (candidate / "shared").is_dir():
            return candidate
    raise CatalogError("not inside the cookbook repository (no examples/ and shared/ found)")


# "model" is the stand-in model, served by the sandbox (so it needs "sandbox" too): the example's
# processes get OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL for it, unless already set.
SERVICES = ("sandbox", "kafka", "kubernetes", "model")
EXPECTATIONS = ("resolved", "rejected")


@dataclass(frozen=True)
class Key:
    """One key a `[tool.cookbook]` table may have: its type, and whether it must be there."""

    types: tuple[type, ...]
    required: bool = False
    items: type | None = None  # for a list: the type of every item
    choices: tuple[str, ...] = ()  # for a string, or a list of strings: the allowed values


_A_STRING, _A_LIST, _A_TABLE_LIST = Key((str,)), Key((list,)), Key((list,), items=dict)
_REQUIRED_STRING = Key((str,), required=True)

# The schema of `[tool.cookbook]`. A key that is not here is a mistake (a misspelt `expcet` would
# otherwise be ignored, and the scenario would run expecting the default).
EXAMPLE_KEYS: dict[str, Key] = {
    "worker": _REQUIRED_STRING,
    "group": _REQUIRED_STRING,
    "demo": _A_STRING,
    "gateway": _A_STRING,
    "services": Key((list,), items=str, choices=SERVICES),
    "scenarios": _A_TABLE_LIST,
    # The systems that receive an example's effects, read at every crash point; what each table
    # holds is checked by cookbook.crash.receivers, which reads them.
    "receivers": _A_TABLE_LIST,
    "skip_time": Key((bool,)),
    "auth": Key((bool,)),
    "encryptor": _A_STRING,
    # The example's row in the catalog (README.md, the site): checked by tests/test_examples.py.
    "pattern": _A_STRING,
    "summary": _A_STRING,
    # How random-timing chaos runs drive the example through its entry point (`cookbook chaos`).
    "chaos": Key((dict,)),
    # The stand-in model's scripted replies (cookbook.sandbox.model): `script = "<file>.toml"`.
    "model": Key((dict,)),
}
SCENARIO_KEYS: dict[str, Key] = {
    "name": _REQUIRED_STRING,
    "function": _REQUIRED_STRING,
    "args": _A_LIST,
    "faults": _A_TABLE_LIST,  # what each fault holds is checked by the sandbox when it is armed
    "expect": Key((str,), choices=EXPECTATIONS),
    "signals": _A_LIST,
    "setup": _A_TABLE_LIST,
    "version": Key((int,)),
}
SETUP_KEYS: dict[str, Key] = {
    "service": _REQUIRED_STRING,
    "path": _REQUIRED_STRING,
    "method": _A_STRING,
    "json": Key((dict, list, str, int, float, bool)),
}

MODEL_KEYS: dict[str, Key] = {"script": _REQUIRED_STRING}

CHAOS_KEYS: dict[str, Key] = {
    "driver": _REQUIRED_STRING,
    "executions": Key((int,)),
    "kills": Key((int,)),
    "seconds": Key((int, float)),
}

_NAMES: dict[type, str] = {
    bool: "a boolean",
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a table",
}


def _kind(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    # TOML's booleans are Python ints; `true` is no integer here.
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check(table: dict[str, Any], keys: dict[str, Key], where: str) -> list[str]:
    """What is wrong with one table, each problem naming the key: `<where>.<key>: <reason>`."""
    problems = [
        f"{where}.{name}: unknown key (known: {', '.join(keys)})"
        for name in table
        if name not in keys
    ]
    for name, key in keys.items():
        at = f"{where}.{name}"
        if name not in table:
            if key.required:
                problems.append(f"{at}: missing (required)")
            continue
        value = table[name]
        if not _is(value, key.types):
            expected = " or ".join(_NAMES[t] for t in key.types)
            problems.append(f"{at}: expected {expected}, got {_kind(value)}")
            continue
        items = list(enumerate(value)) if key.items is not None else [(None, value)]
        for i, item in items:
            item_at = at if i is None else f"{at}[{i}]"
            if key.items is not None and not _is(item, (key.items,)):
                problems.append(f"{item_at}: expected {_NAMES[key.items]}, got {_kind(item)}")
            elif key.choices and item not in key.choices:
                problems.append(f"{item_at}: {item!r} is not one of {', '.join(key.choices)}")
    return problems


def validate(table: Any, where: str = "[tool.cookbook]") -> list[str]:
    """Every problem with an example's `[tool.cookbook]` table; empty when it is well formed."""
    if not isinstance(table, dict):
        return [f"{where}: expected a table, got {_kind(table)}"]
    problems = _check(table, EXAMPLE_KEYS, where)
    scenarios = table.get("scenarios")
    names: list[str] = []
    for i, scenario in enumerate(scenarios if isinstance(scenarios, list) else []):
        if not isinstance(scenario, dict):
            continue
        at = f"{where[:-1]}.scenarios][{i}]"
        problems += _check(scenario, SCENARIO_KEYS, at)
        name = scenario.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(f"{at}.name: {name!r} names another scenario too")
            names.append(name)
        setup = scenario.get("setup")
        for j, call in enumerate(setup if isinstance(setup, list) else []):
            if isinstance(call, dict):
                problems += _check(call, SETUP_KEYS, f"{at}.setup[{j}]")
    chaos = table.get("chaos")
    if isinstance(chaos, dict):
        at = f"{where[:-1]}.chaos]"
        problems += _check(chaos, CHAOS_KEYS, at)
        for name in ("executions", "seconds"):
            if _is(chaos.get(name), (int, float)) and chaos[name] <= 0:
                problems.append(f"{at}.{name}: must be above 0, got {chaos[name]}")
        if _is(chaos.get("kills"), (int,)) and chaos["kills"] < 0:
            problems.append(f"{at}.kills: must be 0 or more, got {chaos['kills']}")
        driver = chaos.get("driver")
        if isinstance(driver, str) and (
            Path(driver).is_absolute() or ".." in Path(driver).parts or not driver.endswith(".py")
        ):
            problems.append(f"{at}.driver: must be a .py file inside the example's folder")
    services = table.get("services")
    services = services if isinstance(services, list) else []
    if "model" in services and "sandbox" not in services:
        problems.append(f"{where}.services: 'model' is served by the sandbox: list 'sandbox' too")
    model = table.get("model")
    if isinstance(model, dict):
        at = f"{where[:-1]}.model]"
        problems += _check(model, MODEL_KEYS, at)
        if "model" not in services:
            problems.append(f"{at}: a model script, but 'model' is not in services")
        script = model.get("script")
        if isinstance(script, str) and (
            Path(script).is_absolute() or ".." in Path(script).parts or not script.endswith(".toml")
        ):
            problems.append(f"{at}.script: must be a .toml file inside the example's folder")
    return problems


def _shown(path: Path) -> str:
    """The pyproject.toml's path as a reader finds it: relative to the repository if inside it."""
    pyproject = path / "pyproject.toml"
    try:
        return str(pyproject.resolve().relative_to(repo_root(path)))
    except (CatalogError, ValueError):
        return str(pyproject)


def load_example(path: Path) -> Example:
    shown = _shown(path)
    try:
        document = tomllib.loads((path / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{shown}: cannot read it: {exc}") from exc
    table = document.get("tool", {}).get("cookbook")
    if table is None:
        raise CatalogError(f"{shown}: no [tool.cookbook] table")
    problems = validate(table)
    chaos_table = table.get("chaos") if isinstance(table, dict) else None
    if not problems and chaos_table is not None and not (path / chaos_table["driver"]).is_file():
        problems.append(f"[tool.cookbook.chaos].driver: no such file {chaos_table['driver']}")
    model_table = table.get("model") if isinstance(table, dict) else None
    if not problems and model_table is not None and not (path / model_table["script"]).is_file():
        problems.append(f"[tool.cookbook.model].script: no such file {model_table['script']}")
    if problems:
        raise CatalogError("\n".join(f"{shown}: {problem}" for problem in problems))
    scenarios = tuple(
        Scenario(
            name=s["name"],
            function=s["function"],
            args=list(s.get("args", [])),
            faults=list(s.get("faults", [])),
            expect=s.get("expect", "resolved"),
            signals=list(s.get("signals", [])),
            setup=list(s.get("setup", [])),
            version=s.get("version", 1),
        )
        for s in table.get("scenarios", [])
    )
    return Example(
        name=path.name,
        path=path,
        worker=table["worker"],
        group=table["group"],
        demo=table.get("demo"),
        gateway=table.get("gateway"),
        services=tuple(table.get("services", [])),
        scenarios=scenarios,
        skip_time=table.get("skip_time", False),
        auth=table.get("auth", False),
        encryptor=table.get("encryptor"),
        pattern=table.get("pattern", ""),
        summary=table.get("summary", ""),
        chaos=None
        if chaos_table is None
        else Chaos(
            driver=path / chaos_table["driver"],
            executions=chaos_table.get("executions", Chaos.executions),
            kills=chaos_table.get("kills", Chaos.kills),
            seconds=float(chaos_table.get("seconds", Chaos.seconds)),
        ),
        model_script=None if model_table is None else path / model_table["script"],
    )


def declares_example(path: Path) -> bool:
    pyproject = path / "pyproject.toml"
    return pyproject.is_file() and "[tool.cookbook]" in pyproject.read_text()


def examples(root: Path | None = None) -> list[Example]:
    """Every folder under examples/ whose pyproject.toml has a [tool.cookbook] table."""
    base = repo_root(root) / "examples"
    return [load_example(p) for p in sorted(base.iterdir()) if declares_example(p)]


def example(name: str, root: Path | None = None) -> Example:
    for candidate in examples(root):
        if candidate.name == name:
            return candidate
    known = ", ".join(e.name for e in examples(root))
    raise CatalogError(f"no example named {name!r} (known: {known})")
