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

Failures are told apart by what asking again could change:
- A refusal is an answer, not a failure, and it is returned as a value, never retried: the API
  would answer the same. A 4xx other than 408 and 429 (no such node, forbidden, invalid) becomes
  a "refused: ..." outcome that the workflow reports. A PodDisruptionBudget's refusal is the one
  a drain is about: it is a 429 with the cause `DisruptionBudget`, the apiserver's "not now,
  this would disrupt too much", and `evict` returns it as `Blocked` (which pod, which budget,
  why): checkpointed like any result, it is what the operator is asked about.
- Anything that may pass next time raises, and the step is retried under the policy the
  workflow gives it: a 5xx, a 408, any other 429 (API Priority and Fairness sheds load with
  429 too), a timeout, a dropped connection. A write that timed out may have landed; retrying it
  is safe for the reasons above.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta

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
from resonate.resonate import Resonate
from resonate.types import Value

# How long the server keeps a question's record. It is resolved when written, so this only
# bounds the promise's life; a drain takes at most 7 days (workflow.DEADLINE).
QUESTION_RECORD_TTL = timedelta(days=8)


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
        if url := os.environ.get("KUBE_API_URL"):
            api = ApiClient(Configuration(host=url))
        else:
            try:
                api = await _client_from_kubeconfig()
            except config.ConfigException:
                in_cluster = Configuration()
                _load_incluster_config(client_configuration=in_cluster)
                api = ApiClient(in_cluster)
        return cls(api, CoreV1Api(api), PolicyV1Api(api))

    async def close(self) -> None:
        await _close_client(self.api)


# The client's config loaders and `close` carry no annotations; these are their signatures.
_client_from_kubeconfig: Callable[[], Awaitable[ApiClient]] = config.new_client_from_config
_load_incluster_config: Callable[..., None] = config.load_incluster_config
_close_client: Callable[[ApiClient], Awaitable[None]] = ApiClient.close


@dataclass(frozen=True)
class Pager:
    """The chat provider that pages the on-call operator (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Questions:
    """Where the drain writes down the questions it asks (a worker dependency): promises on the
    Resonate server, under ids the drain chooses, which the gateway reads."""

    resonate: Resonate


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
    budget: str | None  # the PodDisruptionBudget's name; None if gone, or not ours to list
    message: str  # the apiserver's reason, e.g. "The disruption budget web needs 2 healthy ..."


# The tag that marks a question of a drain, with the drain's id as its value.
QUESTION_OF_DRAIN = "k8s-drain/question-of"


@dataclass(frozen=True)
class Question:
    """A question to the operator, as written down for the gateway to find."""

    id: str  # chosen by the drain: `<drain id>/<node>/<n>`, the node's n-th question
    drain_id: str
    decision_id: str  # the promise the drain waits on, which a decision resolves
    blocked: Blocked

    @staticmethod
    def id_for(drain_id: str, node: str, number: int) -> str:
        # "/" is in neither a drain id nor a node name, so no two questions share an id.
        return f"{drain_id}/{node}/{number}"


async def cordon(ctx: Context, node: str) -> str | None:
    """Mark the node unschedulable; None once it is, or why the API refused."""
    print(f"cordoning {node}", flush=True)
    cluster = ctx.get_dependency(Cluster)
    try:
        await cluster.core.patch_node(node, {"spec": {"unschedulable": True}})
    except ApiException as exc:
        return _refused(exc)
    return None


async def pods_to_evict(ctx: Context, node: str) -> list[Pod] | str:
    """The pods on the node that a drain evicts: all but DaemonSet and static (mirror) pods;
    or why the API refused to list them."""
    cluster = ctx.get_dependency(Cluster)
    try:
        listed = await cluster.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}"
        )
    except ApiException as exc:
        return _refused(exc)
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
    """Evict through the Eviction API: "evicted", `Blocked` by a disruption budget, or
    "refused: ..." if the API refused for another reason."""
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
        return _refused(exc)  # raises if asking again may pass: the step is retried
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
        return _refused(exc)
    return "force-deleted"


async def ask_operator(ctx: Context, question: Question) -> str | None:
    """Page the on-call operator, and write the question down for the gateway.

    Returns the page's message id; None if the chat provider refused the page (the question
    stands all the same: `GET /drains/{id}` shows it)."""
    blocked = question.blocked
    text = (
        f"Drain {question.drain_id} is blocked: evicting {blocked.pod} from {blocked.node} would "
        f"violate PodDisruptionBudget {blocked.budget} ({blocked.message}). Decide with "
        f"POST /drains/{question.drain_id}/decision: retry, skip, force or abort."
    )
    print(f"paging the operator about {blocked.pod}", flush=True)
    pager = ctx.get_dependency(Pager)
    response = await pager.client.post(
        "/slack/send",
        json={"channel": "#oncall", "text": text},
        headers={"Idempotency-Key": ctx.info.id},
    )
    if _transient(response.status_code):
        response.raise_for_status()  # retried, with the same key: never paged twice
    message_id: str | None = None
    if response.is_client_error:
        print(f"the chat provider refused the page: {response.status_code}", flush=True)
    else:
        try:
            message_id = response.json()["id"]
        except (ValueError, LookupError, TypeError) as exc:
            # A 2xx that is not the provider's answer (a proxy's HTML page, a cut-off body) says
            # nothing about whether the page went out. Raised as an HTTP error, like a 5xx, it
            # is retried under the same key, and the provider answers what it did.
            raise httpx.DecodingError(
                f"answered {response.status_code} without a readable 'id'",
                request=response.request,
            ) from exc
    # Written down once the page went out, so the drain shows as blocked once it is asked.
    await _write_down(ctx.get_dependency(Questions).resonate, question)
    return message_id


async def _write_down(resonate: Resonate, question: Question) -> None:
    # Created and resolved at once: a record, nothing waits on it. Both calls are idempotent
    # (the id is the question's), so the step may run them again after a crash.
    record = {
        "drain_id": question.drain_id,
        "decision_id": question.decision_id,
        "blocked": asdict(question.blocked),
    }
    timeout_at = int((time.time() + QUESTION_RECORD_TTL.total_seconds()) * 1000)
    tags = {QUESTION_OF_DRAIN: question.drain_id}
    created = await resonate.promises.create(question.id, timeout_at, Value(data=record), tags)
    if created.state == "pending":
        await resonate.promises.resolve(question.id, Value(data=None))


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


def _transient(status: int) -> bool:
    """Whether an HTTP answer means "not now" (asking again may pass) rather than "no"."""
    return status >= 500 or status in (408, 429)


def _refused(exc: ApiException) -> str:
    """The refusal, as the outcome a step returns; raises `exc` if asking again may pass."""
    if exc.status is None or _transient(exc.status) or exc.status < 400:
        raise exc
    message = exc.reason
    with contextlib.suppress(ValueError, AttributeError):  # not a Status: keep the reason
        message = json.loads(exc.body or "").get("message") or message
    return f"refused: {exc.status} {message}"


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
    try:
        budgets = await cluster.policy.list_namespaced_pod_disruption_budget(pod.namespace)
    except ApiException as exc:
        # The name is only shown to the operator: a refusal to list budgets (a 403 where the
        # drain may evict but not read budgets) must not fail the eviction's answer. Only what
        # may pass next time raises, and the step is retried.
        _refused(exc)
        return None
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
