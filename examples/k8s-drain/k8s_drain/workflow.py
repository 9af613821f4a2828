"""The durable workflow: drain nodes one by one, and ask a human when a disruption budget says no.

`drain` runs `drain_node` for each node in turn, each a durable child execution of its own (a
remote call: any worker may run it) made of steps: cordon the node, list its pods, evict each
pod. When a PodDisruptionBudget refuses an eviction, the workflow pages the operator and waits
on a durable promise for their decision: retry the eviction, skip the pod, force-delete it, or
abort the drain. The wait costs nothing (the workflow is suspended; no worker holds it) and
survives any crash: a worker that picks the drain up replays it from the top, gets every
finished step and the decision, if one was made, from the journal, and goes on from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from resonate.context import Context
from resonate.retry import Exponential

from k8s_drain.steps import Blocked, cordon, evict, force_delete, page_operator, pods_to_evict

# How long a drain may take in all, waiting for operators included. Once it passes, the waiting
# promise times out and the drain fails; the nodes cordoned so far stay cordoned.
DEADLINE = timedelta(days=7)

# A step whose call fails (a 5xx, a dropped connection) is retried after 0.2, 0.4, 0.8, 1.6, 3.2
# and 5 s, then the drain fails. (The SDK annotates retry delays as whole seconds, but sleeps for
# fractions of one too.)
RETRIES = Exponential(delay=0.1, factor=2, max_retries=6, max_delay=5)  # type: ignore[arg-type]

type Decision = Literal["retry", "skip", "force", "abort"]


@dataclass(frozen=True)
class NodeReport:
    node: str
    pods: dict[str, str]  # namespace/name -> evicted | force-deleted | skipped | blocked
    aborted: bool = False


@dataclass(frozen=True)
class DrainReport:
    status: Literal["drained", "aborted"]
    nodes: list[NodeReport]


async def drain(ctx: Context, nodes: list[str]) -> DrainReport:
    reports: list[NodeReport] = []
    for node in nodes:
        report = await ctx.options(timeout=DEADLINE).rpc(drain_node, node)
        reports.append(report)
        if report.aborted:
            return DrainReport("aborted", reports)
    return DrainReport("drained", reports)


async def drain_node(ctx: Context, node: str) -> NodeReport:
    steps = ctx.options(retry_policy=RETRIES)
    await steps.run(cordon, node)
    outcomes: dict[str, str] = {}
    for pod in await steps.run(pods_to_evict, node):
        outcome = await steps.run(evict, pod, node)
        while isinstance(outcome, Blocked):
            await steps.run(page_operator, outcome)
            match await ctx.promise(timeout=DEADLINE):
                case {"decision": "retry"}:
                    outcome = await steps.run(evict, pod, node)
                case {"decision": "skip"}:
                    outcome = "skipped"
                case {"decision": "force"}:
                    outcome = await steps.run(force_delete, pod)
                case {"decision": "abort"}:
                    return NodeReport(node, outcomes | {str(pod): "blocked"}, aborted=True)
                case _:  # not a decision this workflow knows: ask again
                    pass
        outcomes[str(pod)] = outcome
    return NodeReport(node, outcomes)
