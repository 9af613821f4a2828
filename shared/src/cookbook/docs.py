"""Code shown in READMEs is taken from the real source files, and checked.

A README marks a block with the file it comes from, relative to the README's folder, and
optionally one top-level function or class in it:

    <!-- snippet: hello/workflow.py:greet -->
    ```python
    ...
    ```
    <!-- end snippet -->

`cookbook docs` rewrites every block from its source; `cookbook docs --check` (run by the tests)
fails when a README and its source disagree. The source files carry no markers, so an example
copied out of the cookbook is unchanged.

An example README also shows the promise tree of one of its scenarios, drawn from a real run
(see `cookbook.diagram`), between markers naming the scenario:

    <!-- tree: booked -->
    ```mermaid
    ...
    ```
    <!-- end tree -->

The top-level README's catalog table is made from the examples' own `[tool.cookbook]` (`pattern`,
`summary`) and their pinned crash points, between `<!-- catalog -->` and `<!-- end catalog -->`:
the catalog is the one list of examples, and the README (and the site's home page) follow it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cookbook import catalog
from cookbook.crash import pins

SNIPPET = re.compile(
    r"(?P<open><!-- snippet: (?P<ref>[^\s]+) -->\n)```(?P<lang>\w*)\n(?P<body>.*?)```\n"
    r"(?P<close><!-- end snippet -->)",
    re.DOTALL,
)


TREE = re.compile(
    r"(?P<open><!-- tree: (?P<scenario>[^\s]+) -->\n)```mermaid\n(?P<body>.*?)```\n"
    r"(?P<close><!-- end tree -->)",
    re.DOTALL,
)


CATALOG = re.compile(
    r"(?P<open><!-- catalog[^>]*-->\n)(?P<body>.*?)(?P<close><!-- end catalog -->)", re.DOTALL
)


class SnippetError(ValueError):
    pass


@dataclass(frozen=True)
class Drift:
    readme: Path
    ref: str


def extract(base: Path, ref: str) -> str:
    """The text a reference names: a whole file, or `file.py:name` for one top-level definition."""
    file, _, name = ref.partition(":")
    path = base / file
    if not path.is_file():
        raise SnippetError(f"{ref}: no file {path}")
    text = path.read_text()
    if not name:
        return text
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and (
            node.name == name
        ):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            return "\n".join(text.splitlines()[first - 1 : node.end_lineno]) + "\n"
    raise SnippetError(f"{ref}: no top-level function or class {name!r} in {path}")


def render(readme: Path) -> tuple[str, list[Drift]]:
    """The README with every snippet refreshed, and the snippets that had drifted."""
    original = readme.read_text()
    drifted: list[Drift] = []

    def refresh(match: re.Match[str]) -> str:
        current = extract(readme.parent, match["ref"])
        if current != match["body"]:
            drifted.append(Drift(readme, match["ref"]))
        return f"{match['open']}```{match['lang']}\n{current}```\n{match['close']}"

    return SNIPPET.sub(refresh, original), drifted


def crash_point_count(example: catalog.Example) -> int:
    path = pins.pin_path(example)
    return sum(map(len, pins.parse(path.read_text()).values())) if path.is_file() else 0


def catalog_table(examples: Sequence[catalog.Example], link: Callable[[str], str]) -> str:
    """The catalog as a markdown table, each example's name linked to `link(name)`."""
    rows = [
        "| example | pattern | what it shows | crash points |",
        "| --- | --- | --- | --: |",
        *(
            f"| [{e.name}]({link(e.name)}) | {e.pattern or 'TODO'} | {e.summary or 'TODO'} "
            f"| {crash_point_count(e)} |"
            for e in examples
        ),
    ]
    return "\n".join(rows) + "\n"


def render_catalog(readme: Path, examples: Sequence[catalog.Example]) -> tuple[str, list[Drift]]:
    """The top-level README with its catalog table made from `examples` (drifted: it changed)."""
    text = readme.read_text()
    match = CATALOG.search(text)
    if match is None:
        raise SnippetError(f"{readme}: no <!-- catalog --> ... <!-- end catalog --> block")
    table = catalog_table(examples, lambda name: f"examples/{name}")
    drifted = [] if match["body"] == table else [Drift(readme, "catalog")]
    return text[: match.start("body")] + table + text[match.end("body") :], drifted


def readmes(root: Path) -> list[Path]:
    return [root / "README.md", *sorted(root.glob("examples/*/README.md"))]


def sync(root: Path, *, check: bool) -> list[Drift]:
    text, drifted = render_catalog(root / "README.md", catalog.examples(root))
    if drifted and not check:
        (root / "README.md").write_text(text)
    for readme in readmes(root):
        if not readme.is_file():
            continue
        text, found = render(readme)
        drifted += found
        if found and not check:
            readme.write_text(text)
    return drifted


def tree_scenarios(readme: Path) -> list[str]:
    """The scenarios whose promise trees a README shows, in order."""
    return [m["scenario"] for m in TREE.finditer(readme.read_text())]


def render_trees(readme: Path, diagrams: Mapping[str, str]) -> tuple[str, list[Drift]]:
    """The README with every tree block replaced by its scenario's diagram, and the drifted ones."""
    drifted: list[Drift] = []

    def refresh(match: re.Match[str]) -> str:
        current = diagrams[match["scenario"]]
        if current != match["body"]:
            drifted.append(Drift(readme, f"tree: {match['scenario']}"))
        return f"{match['open']}```mermaid\n{current}```\n{match['close']}"

    return TREE.sub(refresh, readme.read_text()), drifted
