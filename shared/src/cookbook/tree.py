"""`make tree ID=<execution id>`: print an execution's promise tree.

It asks the server with `promise.search` on the `resonate:origin` tag, which the official Resonate
server and the cookbook's dev server both answer, and rebuilds the tree from `resonate:parent`.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from resonate.resonate import Resonate
from resonate.types import PromiseRecord

from cookbook.crash.plan import classify


@dataclass
class Node:
    record: PromiseRecord
    children: list[Node] = field(default_factory=list)

    @property
    def label(self) -> str:
        record = self.record
        kind = (
            "workflow" if record.tags.get("resonate:parent") == record.id else classify(record.tags)
        )
        name = _function_name(record.param)
        took = ""
        if record.settled_at is not None and record.created_at:
            took = f" {record.settled_at - record.created_at} ms"
        return f"{record.id}  {kind}{' ' + name if name else ''}  {record.state}{took}"


def _function_name(param: Any) -> str:
    data = getattr(param, "data", None)
    if isinstance(data, dict):
        return str(data.get("func", ""))
    if isinstance(data, str):
        try:
            return str(json.loads(base64.b64decode(data)).get("func", ""))
        except ValueError:
            return ""
    return ""


async def fetch(resonate: Resonate, execution_id: str) -> list[PromiseRecord]:
    records: list[PromiseRecord] = []
    cursor: str | None = None
    while True:
        page = await resonate.promises.search(None, {"resonate:origin": execution_id}, 100, cursor)
        records += page.promises
        cursor = page.cursor
        if not cursor:
            return records


def build(execution_id: str, records: list[PromiseRecord]) -> Node | None:
    nodes = {r.id: Node(r) for r in records}
    root = nodes.get(execution_id)
    for node in sorted(nodes.values(), key=lambda n: (n.record.created_at, n.record.id)):
        parent = node.record.tags.get("resonate:parent")
        if node is not root and parent in nodes:
            nodes[parent].children.append(node)
    return root


def render(node: Node, prefix: str = "", last: bool = True, top: bool = True) -> list[str]:
    lines = [node.label if top else f"{prefix}{'└── ' if last else '├── '}{node.label}"]
    inner = "" if top else prefix + ("    " if last else "│   ")
    for i, child in enumerate(node.children):
        lines += render(child, inner, i == len(node.children) - 1, top=False)
    return lines


async def print_tree(execution_id: str) -> int:
    url = os.environ.get("RESONATE_URL")
    if not url:
        print(
            "cookbook tree: RESONATE_URL is not set (start `make devserver`, or point it at "
            "your Resonate server)",
            file=sys.stderr,
        )
        return 2
    resonate = Resonate(url=url, group="cookbook-tree", subscription_refresh_secs=0)
    try:
        root = build(execution_id, await fetch(resonate, execution_id))
    finally:
        await resonate.stop()
    if root is None:
        print(f"no execution {execution_id!r} on {url}", file=sys.stderr)
        return 1
    print("\n".join(render(root)))
    return 0
