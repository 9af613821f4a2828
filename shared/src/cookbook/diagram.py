"""An execution's promise tree as a Mermaid diagram, for the example READMEs (`make docs`).

The tree comes from a golden run of the crash harness: the same run whose checkpoints become the
crash points, so every node below is a place the crash matrix kills a process. A node reads

    :2 hotel.reserve            the promise id relative to the execution id, and its label: the
    step · resolved             effect the step applied in the sandbox (or the function a remote
                                call ran); what kind of checkpoint it is; how it ended

Nothing in a label depends on the run (no execution id, timestamp, or minted id), and children
are ordered by their ids, which the SDK assigns in call order: the same workflow and scenario
always give the same text, whatever execution id the run used. A test compares the READMEs with
the golden runs the crash-matrix tests already make.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cookbook.catalog import Example, Scenario
from cookbook.crash.harness import CrashHarness, Golden, harness_stack
from cookbook.crash.plan import Checkpoint, classify

# Node shapes by kind: a workflow rounded, a step a box, a remote call a subroutine, a sleep a
# hexagon, a promise (an awaited signal) a stadium.
SHAPES = {
    "workflow": ('("', '")'),
    "step": ('["', '"]'),
    "rpc": ('[["', '"]]'),
    "sleep": ('{{"', '"}}'),
    "promise": ('(["', '"])'),
}
# Nodes that did not resolve stand out (a state starting with the key: `rejected_canceled` too).
STYLES = {
    "rejected": "fill:#fdecea,stroke:#c0392b",
    "pending": "fill:#fff8e1,stroke:#b7950b",
}


@dataclass(frozen=True)
class TreeNode:
    suffix: str  # "" for the root
    label: str
    kind: str
    state: str
    children: tuple[TreeNode, ...]


def _order(suffix: str) -> tuple[tuple[int, str], ...]:
    # ":10" after ":9": compare the numbers in an id as numbers.
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", suffix) if p)


def tree(golden: Golden) -> TreeNode:
    """The golden run's promises, nested by `resonate:parent`, labelled by its checkpoints."""
    root_id = golden.execution_id
    by_id = {p["id"]: p for p in golden.promises}
    if root_id not in by_id:
        raise ValueError(f"the golden run of {golden.scenario.name} recorded no promises")
    checkpoints: dict[str, Checkpoint] = {c.suffix: c for c in golden.checkpoints}
    children: dict[str, list[str]] = {}
    for promise_id, promise in by_id.items():
        parent = promise.get("tags", {}).get("resonate:parent")
        if promise_id != root_id and parent in by_id:
            children.setdefault(parent, []).append(promise_id)

    def node(promise_id: str) -> TreeNode:
        promise = by_id[promise_id]
        suffix = promise_id.removeprefix(root_id)
        if promise_id == root_id:
            label, kind = golden.scenario.function, "workflow"
        elif suffix in checkpoints:
            label, kind = checkpoints[suffix].label, checkpoints[suffix].kind
        else:
            kind = classify(promise.get("tags", {}))
            label = kind
        below = sorted(children.get(promise_id, []), key=lambda c: _order(c.removeprefix(root_id)))
        return TreeNode(suffix, label, kind, str(promise["state"]), tuple(node(c) for c in below))

    return node(root_id)


def _text(node: TreeNode) -> str:
    first = f"{node.suffix} {node.label}" if node.suffix else node.label
    return f"{first}<br/>{node.kind} · {node.state}".replace('"', "#quot;")


def _walk(node: TreeNode) -> Iterable[TreeNode]:
    yield node
    for child in node.children:
        yield from _walk(child)


def mermaid(root: TreeNode) -> str:
    """A Mermaid flowchart of the tree, left to right, children in call order."""
    nodes = list(_walk(root))
    names = {id(n): f"n{i}" for i, n in enumerate(nodes)}
    lines = ["flowchart LR"]
    for n in nodes:
        opening, closing = SHAPES.get(n.kind, SHAPES["step"])
        lines.append(f"    {names[id(n)]}{opening}{_text(n)}{closing}")
    for n in nodes:
        lines += [f"    {names[id(n)]} --> {names[id(c)]}" for c in n.children]
    for state, style in STYLES.items():
        marked = [names[id(n)] for n in nodes if n.state.startswith(state)]
        if marked:
            lines += [f"    classDef {state} {style}", f"    class {','.join(marked)} {state}"]
    return "\n".join(lines) + "\n"


def diagram(golden: Golden) -> str:
    return mermaid(tree(golden))


def golden_run(example: Example, scenario: Scenario) -> Golden:
    """One golden run of a scenario on a fresh embedded stack (what `make docs` draws)."""
    with harness_stack(example) as stack, CrashHarness(example, stack) as harness:
        return harness.golden(scenario)
