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
from resonate.retry import Exponential, Never

from k8s_drain.steps import (
    Blocked,
    Question,
    ask_operator,
    cordon,
    evict,
    force_delete,
    pods_to_evict,
)

# How long a drain may take in all, waiting for operators included. Once it passes, the waiting
# promise times out and the drain fails; the nodes cordoned so far stay cordoned.
DEADLINE = timedelta(days=7)

# A step whose call may pass next time (a 5xx, a 408, a 429 that is not a disruption budget's,
# a timeout, a dropped connection) is retried after 2, 4, 8, 10 and 10 s: enough to ride out an
# apiserver's restart or a leader election; then the drain fails, visibly, rather than wait on
# an API that is down. A refusal is never retried: the steps return it (see steps.py).
STEP_RETRY = Exponential(delay=1, factor=2, max_retries=5, max_delay=10)

# The workflows themselves are never retried as a whole. Their bodies do no I/O of their own:
# what raises out of one is a step whose retries ran out, or a bug (arguments it cannot decode,
# before its first step), and running it again would only repeat that. The SDK's default policy
# would retry such a body 30 times, with doubling delays, while it holds its lease.
WORKFLOW_RETRY = Never()

type Decision = Literal["retry", "skip", "force", "abort"]


@dataclass(frozen=True)
class NodeReport:
    node: str
    # namespace/name -> evicted | force-deleted | skipped | blocked | refused: <the API's reason>
    pods: dict[str, str]
    aborted: bool = False
    refused: str | None = None  # why the API refused to cordon the node or list its pods

    @property
    def left(self) -> list[str]:
        """The pods the API refused to remove (e.g. 403 forbidden): still on the node."""
        return [pod for pod, outcome in self.pods.items() if outcome.startswith("refused")]


@dataclass(frozen=True)
class DrainReport:
    status: Literal["drained", "incomplete", "aborted", "refused"]
    nodes: list[NodeReport]


async def drain(ctx: Context, nodes: list[str]) -> DrainReport:
    reports: list[NodeReport] = []
    for node in nodes:
        report = await ctx.options(timeout=DEADLINE).rpc(drain_node, node)
        reports.append(report)
        if report.aborted:
            return DrainReport("aborted", reports)
        if report.refused is not None:  # e.g. no such node: the list of nodes is wrong
            return DrainReport("refused", reports)
        # A node that still runs pods is not drained, and must not be retired: stop here, as
        # `kubectl drain` does, rather than cordon the next node into the same refusal.
        if report.left:
            return DrainReport("incomplete", reports)
    return DrainReport("drained", reports)


async def drain_node(ctx: Context, node: str) -> NodeReport:
    steps = ctx.options(retry_policy=STEP_RETRY)
    if (refused := await steps.run(cordon, node)) is not None:
        return NodeReport(node, {}, refused=refused)
    pods = await steps.run(pods_to_evict, node)
    if isinstance(pods, str):
        return NodeReport(node, {}, refused=pods)
    outcomes: dict[str, str] = {}
    asked = 0
    for pod in pods:
        outcome = await steps.run(evict, pod, node)
        while isinstance(outcome, Blocked):
            asked += 1
            decision = ctx.promise(timeout=DEADLINE)
            question = Question(
                Question.id_for(ctx.info.origin_id, node, asked),
                ctx.info.origin_id,
                await decision.id(),
                outcome,
            )
            await steps.run(ask_operator, question)
            match await decision:
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
