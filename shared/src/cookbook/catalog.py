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

    @property
    def package(self) -> str:
        return self.worker.split(".")[0]


def repo_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "examples").is_dir() and (candidate / "shared").is_dir():
            return candidate
    raise CatalogError("not inside the cookbook repository (no examples/ and shared/ found)")


def load_example(path: Path) -> Example:
    try:
        table = tomllib.loads((path / "pyproject.toml").read_text())["tool"]["cookbook"]
        scenarios = tuple(
            Scenario(
                name=s["name"],
                function=s["function"],
                args=list(s.get("args", [])),
                faults=list(s.get("faults", [])),
                expect=s.get("expect", "resolved"),
                signals=list(s.get("signals", [])),
                setup=list(s.get("setup", [])),
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
        )
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}/pyproject.toml: bad or missing [tool.cookbook]: {exc}") from exc


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
