"""`drain` and `drain_node` in process: the SDK's own `resonate.testing`, a fake Kubernetes API.

The steps take the Kubernetes API as a dependency (`Cluster`): here a fake of the client's
`CoreV1Api` and `PolicyV1Api` that answers as the apiserver does (`ApiException` with its status
and body), recording every call. The operator's decision is replayed over a journal
(`root_context`), as a worker does when the decision wakes the drain. These tests need only the
SDK, this package and its dependencies, and pytest: they run in a copy of this folder outside the
cookbook (`make copy-out-k8s-drain`). The tests that drive a real dev server, worker, gateway and
the Kubernetes API stand-in are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import httpx
import pytest
from k8s_drain.steps import Blocked, Cluster, Pager, Pod, Question, Questions, ask_operator, evict
from k8s_drain.workflow import (
    STEP_RETRY,
    WORKFLOW_RETRY,
    DrainReport,
    NodeReport,
    drain,
    drain_node,
)
from kubernetes.aio.client import (
    ApiClient,
    ApiException,
    CoreV1Api,
    PolicyV1Api,
    V1LabelSelector,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodDisruptionBudget,
    V1PodDisruptionBudgetList,
    V1PodDisruptionBudgetSpec,
    V1PodList,
)
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.testing import local_resonate, resolved_promise, root_context
from resonate.types import PromiseRecord

WEB = Pod("shop", "web-1", "uid-web-1", {"app": "web"})


def api_error(status: int, message: str = "no", causes: list[dict[str, str]] | None = None) -> Any:
    body = {"kind": "Status", "message": message, "details": {"causes": causes or []}}
    error = ApiException(status=status, reason=message)
    error.body = json.dumps(body)
    return error


def listed(node: str) -> V1PodList:
    """The node's pods: web-1 and db-0 to evict, a DaemonSet's pod that stays."""
    daemon = V1OwnerReference(
        api_version="apps/v1", kind="DaemonSet", name="logs", uid="ds", controller=True
    )
    return V1PodList(
        items=[
            V1Pod(metadata=V1ObjectMeta(namespace="shop", name="web-1", uid="uid-web-1")),
            V1Pod(metadata=V1ObjectMeta(namespace="shop", name="db-0", uid="uid-db-0")),
            V1Pod(
                metadata=V1ObjectMeta(
                    namespace="kube-system", name="logs-x", uid="uid-l", owner_references=[daemon]
                )
            ),
        ]
    )


@dataclass
class FakeKubernetes:
    """CoreV1Api and PolicyV1Api, as far as the drain uses them; `evicting(pod, attempt)` may
    raise what the apiserver answers an eviction with."""

    evicting: Callable[[str, int], None] = lambda pod, attempt: None
    cordoning: Callable[[str], None] = lambda node: None
    listing_budgets: Callable[[str], None] = lambda namespace: None
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def patch_node(self, node: str, body: dict[str, Any]) -> None:
        assert body == {"spec": {"unschedulable": True}}
        self.calls.append(("cordon", node))
        self.cordoning(node)

    async def list_pod_for_all_namespaces(self, field_selector: str) -> V1PodList:
        node = field_selector.removeprefix("spec.nodeName=")
        self.calls.append(("list", node))
        return listed(node)

    async def create_namespaced_pod_eviction(self, name: str, namespace: str, body: Any) -> None:
        assert body.delete_options.preconditions.uid == f"uid-{name}"  # this very pod
        self.calls.append(("evict", f"{namespace}/{name}"))
        self.evicting(f"{namespace}/{name}", self.count("evict", f"{namespace}/{name}"))

    async def delete_namespaced_pod(self, name: str, namespace: str, body: Any) -> None:
        assert body.grace_period_seconds == 0
        self.calls.append(("force-delete", f"{namespace}/{name}"))

    async def list_namespaced_pod_disruption_budget(
        self, namespace: str
    ) -> V1PodDisruptionBudgetList:
        self.calls.append(("list-budgets", namespace))
        self.listing_budgets(namespace)
        web = V1PodDisruptionBudget(
            metadata=V1ObjectMeta(name="web"),
            spec=V1PodDisruptionBudgetSpec(selector=V1LabelSelector(match_labels={"app": "web"})),
        )
        return V1PodDisruptionBudgetList(items=[web])

    def count(self, what: str, subject: str) -> int:
        return self.calls.count((what, subject))

    def cluster(self) -> Cluster:
        return Cluster(cast(ApiClient, None), cast(CoreV1Api, self), cast(PolicyV1Api, self))


def run_drain(kube: FakeKubernetes, nodes: list[str]) -> DrainReport:
    """`drain` on an in-process Resonate registered as the worker does."""

    async def go() -> DrainReport:
        resonate = local_resonate()
        try:
            resonate.with_dependency(kube.cluster())
            resonate.with_dependency(Questions(resonate))
            resonate.register(drain, retry_policy=WORKFLOW_RETRY)
            resonate.register(drain_node, retry_policy=WORKFLOW_RETRY)
            report: DrainReport = await asyncio.wait_for(
                resonate.run("drain-1", drain, nodes).result(), 30
            )
            return report
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_each_node_is_cordoned_and_its_pods_evicted_leaving_daemonset_pods() -> None:
    kube = FakeKubernetes()

    report = run_drain(kube, ["node-a", "node-b"])

    assert report.status == "drained"
    assert report.nodes[0] == NodeReport(
        "node-a", {"shop/db-0": "evicted", "shop/web-1": "evicted"}
    )
    assert kube.calls[:4] == [
        ("cordon", "node-a"),
        ("list", "node-a"),
        ("evict", "shop/db-0"),
        ("evict", "shop/web-1"),
    ]
    assert ("evict", "kube-system/logs-x") not in kube.calls
    assert [node for what, node in kube.calls if what == "cordon"] == ["node-a", "node-b"]


def test_an_eviction_that_already_happened_is_done_and_a_503_is_asked_again() -> None:
    def evicting(pod: str, attempt: int) -> None:
        if pod == "shop/db-0":
            raise api_error(404, "not found")  # evicted before a crash: the goal is met
        if attempt <= 2:
            raise api_error(503, "apiserver restarting")

    kube = FakeKubernetes(evicting=evicting)

    report = run_drain(kube, ["node-a"])

    assert report.nodes[0].pods == {"shop/db-0": "evicted", "shop/web-1": "evicted"}
    assert kube.count("evict", "shop/web-1") == 3
    assert kube.count("evict", "shop/db-0") == 1
    assert STEP_RETRY.max_retries >= 2


def test_a_node_the_api_refuses_stops_the_drain_as_a_value() -> None:
    def cordoning(node: str) -> None:
        if node == "node-x":
            raise api_error(404, 'nodes "node-x" not found')

    kube = FakeKubernetes(cordoning=cordoning)

    report = run_drain(kube, ["node-x", "node-b"])

    assert report == DrainReport(
        "refused", [NodeReport("node-x", {}, refused='refused: 404 nodes "node-x" not found')]
    )
    assert kube.calls == [("cordon", "node-x")]  # asked once; node-b is left alone


def test_a_pod_the_api_refuses_to_remove_leaves_the_drain_incomplete() -> None:
    def evicting(pod: str, attempt: int) -> None:
        if pod == "shop/web-1":
            raise api_error(403, "pods/eviction is forbidden")

    kube = FakeKubernetes(evicting=evicting)

    report = run_drain(kube, ["node-a", "node-b"])

    # Not "drained": web-1 still runs on node-a, which must not be retired.
    assert report == DrainReport(
        "incomplete",
        [
            NodeReport(
                "node-a",
                {"shop/db-0": "evicted", "shop/web-1": "refused: 403 pods/eviction is forbidden"},
            )
        ],
    )
    assert report.nodes[0].left == ["shop/web-1"]
    assert kube.count("evict", "shop/web-1") == 1  # a refusal is never retried
    assert ("cordon", "node-b") not in kube.calls  # the drain stops at the node, as kubectl does


BUDGET_REFUSAL = {"reason": "DisruptionBudget", "message": "The disruption budget web needs 2"}


def evict_under_step_retry(kube: FakeKubernetes) -> str | Blocked:
    """`evict` as a step of its own, under the retry policy `drain_node` gives it."""

    async def go() -> str | Blocked:
        resonate = local_resonate()  # retries at once: no backoff to wait out
        try:
            resonate.with_dependency(kube.cluster())
            resonate.register(evict, retry_policy=STEP_RETRY)
            outcome: str | Blocked = await asyncio.wait_for(
                resonate.run("evict-1", evict, WEB, "node-a").result(), 30
            )
            return outcome
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_a_budget_that_is_not_ours_to_list_still_asks_the_operator_once() -> None:
    def evicting(pod: str, attempt: int) -> None:
        raise api_error(429, "Cannot evict pod", [BUDGET_REFUSAL])

    def listing_budgets(namespace: str) -> None:
        raise api_error(403, "poddisruptionbudgets is forbidden")

    kube = FakeKubernetes(evicting=evicting, listing_budgets=listing_budgets)

    outcome = evict_under_step_retry(kube)

    # The budget's name is only shown to the operator: without it, the question still stands.
    assert outcome == Blocked("shop/web-1", "node-a", None, "The disruption budget web needs 2")
    assert kube.calls == [("evict", "shop/web-1"), ("list-budgets", "shop")]  # not retried


def test_a_budget_listing_that_may_pass_next_time_is_asked_again() -> None:
    def evicting(pod: str, attempt: int) -> None:
        raise api_error(429, "Cannot evict pod", [BUDGET_REFUSAL])

    def listing_budgets(namespace: str) -> None:
        if kube.count("list-budgets", namespace) == 1:
            raise api_error(503, "apiserver restarting")

    kube = FakeKubernetes(evicting=evicting, listing_budgets=listing_budgets)

    outcome = evict_under_step_retry(kube)

    assert outcome == Blocked("shop/web-1", "node-a", "web", "The disruption budget web needs 2")
    assert kube.count("list-budgets", "shop") == 2


BLOCKED = Blocked("shop/web-1", "node-a", "web", "The disruption budget web needs 2 healthy pods")


def replay_blocked(kube: FakeKubernetes, decision: str) -> NodeReport:
    """`drain_node` over a journal: cordoned, listed, evicting web-1 was blocked, the operator
    paged and their decision made. What a worker runs when the decision wakes the drain."""
    journal: list[PromiseRecord] = [
        resolved_promise("n-1:1", None),  # cordoned
        resolved_promise("n-1:2", [asdict(WEB)]),  # the pods to evict
        resolved_promise("n-1:3", asdict(BLOCKED)),  # the eviction, blocked
        resolved_promise("n-1:4", {"decision": decision}),  # the operator's decision
        resolved_promise("n-1:5", "msg_1"),  # the page
    ]

    async def go() -> NodeReport:
        async with httpx.AsyncClient(base_url="http://pager.invalid") as pager:
            deps = DependencyMap()
            deps.insert(kube.cluster())
            deps.insert(Pager(pager))
            ctx: Context = root_context(id="n-1", preload=journal, deps=deps)
            return await drain_node(ctx, "node-a")

    return asyncio.run(go())


@pytest.mark.parametrize(
    "answer",
    [
        lambda: httpx.Response(200, html="<html><body>Welcome to the gateway</body></html>"),
        lambda: httpx.Response(200, json={"ok": True}),
        # httpx decodes the body as it builds the response, and raises DecodingError
        lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_page_answered_without_its_answer_may_have_gone_out_and_is_asked_again(
    answer: Callable[[], httpx.Response],
) -> None:
    # Not a bug in the step: the operator may have been paged. It raises an HTTP error, like a
    # 5xx, so the step is retried under the same key and the provider answers what it did.
    question = Question(Question.id_for("drain-1", "node-a", 1), "drain-1", "drain-1:4", BLOCKED)

    async def page() -> str | None:
        transport = httpx.MockTransport(lambda _: answer())
        async with httpx.AsyncClient(transport=transport, base_url="http://pager") as pager:
            deps = DependencyMap()
            deps.insert(Pager(pager))
            return await ask_operator(root_context(id="n-1:5", deps=deps), question)

    with pytest.raises(httpx.HTTPError):
        asyncio.run(page())


def test_the_operators_decision_is_carried_out_and_nothing_before_it_is_redone() -> None:
    forced = FakeKubernetes()
    retried = FakeKubernetes()
    skipped = FakeKubernetes()

    assert replay_blocked(forced, "force").pods == {"shop/web-1": "force-deleted"}
    assert forced.calls == [("force-delete", "shop/web-1")]
    assert replay_blocked(retried, "retry").pods == {"shop/web-1": "evicted"}
    assert retried.calls == [("evict", "shop/web-1")]
    assert replay_blocked(skipped, "skip").pods == {"shop/web-1": "skipped"}
    assert skipped.calls == []


def test_abort_ends_the_node_with_the_pod_blocked() -> None:
    kube = FakeKubernetes()

    report = replay_blocked(kube, "abort")

    assert report == NodeReport("node-a", {"shop/web-1": "blocked"}, aborted=True)
    assert kube.calls == []
