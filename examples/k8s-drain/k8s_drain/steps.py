"""The steps: Kubernetes API calls (cordon, list, evict, force-delete) and paging the operator.

The Kubernetes calls go through the official client (`kubernetes.aio`, its asyncio flavour).
Kubernetes takes no idempotency keys, and a drain needs none: each write it makes is idempotent
by the state it leaves. Cordoning a cordoned node changes nothing. A pod can be evicted or
deleted once: asking again answers 404, which the steps take as done; and as each request names
the pod's uid as a precondition, it cannot hit a new pod that took the old one's name (a
StatefulSet's `db-0` comes back as `db-0`), which answers 409, also taken as done. So a step that
runs again after a crash (its effect applied, its result never checkpointed) cannot act twice.
The pager, a chat message through a provider, is not like that: its call carries an
Idempotency-Key from the step's durable id, as in hello.

A refused eviction is not a failure. When a PodDisruptionBudget forbids it (429, cause
`DisruptionBudget`), `evict` returns a `Blocked` value saying which pod, which budget and why:
checkpointed like any result, it is what the operator is asked about. Anything else that goes
wrong raises, and the step is retried under the policy the workflow gives it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import httpx
from kubernetes.aio import config
from kubernetes.aio.client import (
    ApiClient,
    ApiException,
    Configuration,
    CoreV1Api,
    PolicyV1Api,
    V1DeleteOptions,
    V1Eviction,
    V1LabelSelector,
    V1ObjectMeta,
    V1Pod,
    V1Preconditions,
)
from resonate.context import Context


@dataclass(frozen=True)
class Cluster:
    """The Kubernetes API, shared by every step (a worker dependency)."""

    api: ApiClient
    core: CoreV1Api
    policy: PolicyV1Api

    @classmethod
    async def connect(cls) -> Cluster:
        """KUBE_API_URL if set (the cookbook's stand-in, or `kubectl proxy`); else KUBECONFIG
        or ~/.kube/config; else the service account of the pod this runs in."""
        # (The client's config loaders are not annotated: hence the type: ignores.)
        if url := os.environ.get("KUBE_API_URL"):
            api = ApiClient(Configuration(host=url))
        else:
            try:
                api = await config.new_client_from_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                in_cluster = Configuration()
                config.load_incluster_config(client_configuration=in_cluster)  # type: ignore[no-untyped-call]
                api = ApiClient(in_cluster)
        return cls(api, CoreV1Api(api), PolicyV1Api(api))

    async def close(self) -> None:
        await self.api.close()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Pager:
    """The chat provider that pages the on-call operator (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str  # this pod, not another one that may take its name later
    labels: dict[str, str]

    def only_this(self, grace_period_seconds: int | None = None) -> V1DeleteOptions:
        """Delete options that act on this very pod, or fail with 409."""
        return V1DeleteOptions(
            grace_period_seconds=grace_period_seconds,
            preconditions=V1Preconditions(uid=self.uid),
        )

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Blocked:
    """An eviction a PodDisruptionBudget refused: what the operator is asked to decide about."""

    pod: str  # namespace/name
    node: str
    budget: str | None  # the PodDisruptionBudget's name; None if it is gone by now
    message: str  # the apiserver's reason, e.g. "The disruption budget web needs 2 healthy ..."


async def cordon(ctx: Context, node: str) -> None:
    print(f"cordoning {node}", flush=True)
    cluster = ctx.get_dependency(Cluster)
    await cluster.core.patch_node(node, {"spec": {"unschedulable": True}})


async def pods_to_evict(ctx: Context, node: str) -> list[Pod]:
    """The pods on the node that a drain evicts: all but DaemonSet and static (mirror) pods."""
    cluster = ctx.get_dependency(Cluster)
    listed = await cluster.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
    pods: list[Pod] = []
    staying: list[Pod] = []
    for listed_pod in listed.items:
        meta = listed_pod.metadata
        assert meta is not None  # optional in the client's model; the API always sends it
        pod = Pod(str(meta.namespace), str(meta.name), str(meta.uid), meta.labels or {})
        (staying if _stays_on_node(listed_pod) else pods).append(pod)
    print(
        f"{node}: to evict {_names(pods)}; staying (DaemonSet, static) {_names(staying)}",
        flush=True,
    )
    return sorted(pods, key=str)


async def evict(ctx: Context, pod: Pod, node: str) -> str | Blocked:
    """Evict through the Eviction API: "evicted", or `Blocked` by a disruption budget."""
    print(f"evicting {pod}", flush=True)
    cluster = ctx.get_dependency(Cluster)
    eviction = V1Eviction(
        metadata=V1ObjectMeta(name=pod.name, namespace=pod.namespace),
        delete_options=pod.only_this(),
    )
    try:
        await cluster.core.create_namespaced_pod_eviction(pod.name, pod.namespace, eviction)
    except ApiException as exc:
        # Gone already (404), or replaced by a namesake (409): evicted by this very step before
        # a crash, or by someone else. Either way the goal is met, and the answer must not
        # depend on whether the step ran before.
        if exc.status in (404, 409):
            return "evicted"
        if exc.status == 429 and (reason := _budget_refusal(exc)) is not None:
            blocked = Blocked(str(pod), node, await _budget_of(cluster, pod), reason)
            print(f"{pod}: blocked by PodDisruptionBudget {blocked.budget}: {reason}", flush=True)
            return blocked
        raise  # anything else (a 5xx, API rate limiting): the step is retried
    return "evicted"


async def force_delete(ctx: Context, pod: Pod) -> str:
    """Delete with grace period 0: no budget applies, and the pod goes at once."""
    print(f"force-deleting {pod}", flush=True)
    cluster = ctx.get_dependency(Cluster)
    try:
        await cluster.core.delete_namespaced_pod(pod.name, pod.namespace, body=pod.only_this(0))
    except ApiException as exc:
        if exc.status in (404, 409):  # gone already (see `evict`)
            return "force-deleted"
        raise
    return "force-deleted"


async def page_operator(ctx: Context, blocked: Blocked) -> str:
    """Tell the on-call operator what is blocked and how to decide; returns the message id."""
    drain_id = ctx.info.origin_id
    text = (
        f"Drain {drain_id} is blocked: evicting {blocked.pod} from {blocked.node} would violate "
        f"PodDisruptionBudget {blocked.budget} ({blocked.message}). Decide with "
        f"POST /drains/{drain_id}/decision: retry, skip, force or abort."
    )
    print(f"paging the operator about {blocked.pod}", flush=True)
    pager = ctx.get_dependency(Pager)
    response = await pager.client.post(
        "/slack/send",
        json={"channel": "#oncall", "text": text},
        headers={"Idempotency-Key": ctx.info.id},
    )
    response.raise_for_status()  # a 5xx raises, and the step is retried
    message_id: str = response.json()["id"]
    return message_id


def _names(pods: list[Pod]) -> str:
    return ", ".join(sorted(map(str, pods))) or "none"


def _stays_on_node(pod: V1Pod) -> bool:
    # As `kubectl drain --ignore-daemonsets`: a DaemonSet pod would be recreated on the same
    # node (it tolerates the cordon), and a static pod belongs to the node's kubelet.
    meta = pod.metadata
    assert meta is not None
    owners = meta.owner_references or []
    mirror = "kubernetes.io/config.mirror" in (meta.annotations or {})
    return mirror or any(o.kind == "DaemonSet" and o.controller for o in owners)


def _budget_refusal(exc: ApiException) -> str | None:
    """The apiserver's reason if a disruption budget refused the eviction, else None.

    Other 429s exist (API priority and fairness sheds load with 429 too) and are transient."""
    try:
        status = json.loads(exc.body or "")
        causes = status.get("details", {}).get("causes", [])
    except (ValueError, AttributeError):
        return None
    for cause in causes:
        if cause.get("reason") == "DisruptionBudget":
            return str(cause.get("message") or status.get("message"))
    return None


async def _budget_of(cluster: Cluster, pod: Pod) -> str | None:
    budgets = await cluster.policy.list_namespaced_pod_disruption_budget(pod.namespace)
    for budget in budgets.items:
        if budget.spec is not None and _selects(budget.spec.selector, pod.labels):
            return budget.metadata.name if budget.metadata else None
    return None


def _selects(selector: V1LabelSelector | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False  # a budget without a selector selects no pods
    if any(labels.get(k) != v for k, v in (selector.match_labels or {}).items()):
        return False
    for requirement in selector.match_expressions or []:
        value, values = labels.get(requirement.key), requirement.values or []
        match requirement.operator:
            case "In" if value not in values:
                return False
            case "NotIn" if value is not None and value in values:
                return False
            case "Exists" if value is None:
                return False
            case "DoesNotExist" if value is not None:
                return False
    return True
