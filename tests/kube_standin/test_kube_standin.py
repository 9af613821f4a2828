"""The Kubernetes API stand-in, driven over HTTP by the official `kubernetes` client.

One stand-in process serves the module; every test starts by resetting its cluster. What is
checked is what a client sees from a real kube-apiserver (shapes, codes, PodDisruptionBudget
rules) and what the stand-in records for tests to assert on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cookbook import clients
from cookbook.kube_standin import kube_standin_process
from cookbook.processes import ManagedProcess
from cookbook.stack import url_of
from cookbook.testing import keepalive
from kubernetes.client import (
    ApiClient,
    ApiException,
    Configuration,
    CoreV1Api,
    PolicyV1Api,
    V1DeleteOptions,
    V1Eviction,
    V1ObjectMeta,
    V1Preconditions,
)


@pytest.fixture(scope="module")
def state_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kube") / "kube.db"


@pytest.fixture(scope="module")
def standin(state_path: Path) -> Iterator[ManagedProcess]:
    with kube_standin_process(state_path) as process:
        yield process


@pytest.fixture
def url(standin: ManagedProcess) -> str:
    return url_of(standin)


@pytest.fixture
def core(url: str) -> Iterator[CoreV1Api]:
    with ApiClient(Configuration(host=url)) as api:
        yield CoreV1Api(api)


@pytest.fixture
def policy(url: str) -> Iterator[PolicyV1Api]:
    with ApiClient(Configuration(host=url)) as api:
        yield PolicyV1Api(api)


def pod(name: str, node: str | None = "node-a", **extra: Any) -> dict[str, Any]:
    return {"name": name, "node": node, "labels": {"app": name.rsplit("-", 1)[0]}, **extra}


def reset(url: str, **cluster: Any) -> None:
    seed = {"nodes": ["node-a", "node-b"], **cluster}
    clients.post(f"{url}/_admin/reset", json=seed).raise_for_status()


def records(url: str, **params: str) -> list[tuple[str, str, int, bool]]:
    found = clients.get(f"{url}/_admin/records", params=params).raise_for_status().json()
    return [(r["verb"], r["name"], r["code"], r["applied"]) for r in found]


def evict(core: CoreV1Api, name: str, namespace: str = "default", uid: str | None = None) -> None:
    only = V1DeleteOptions(preconditions=V1Preconditions(uid=uid)) if uid else None
    body = V1Eviction(metadata=V1ObjectMeta(name=name, namespace=namespace), delete_options=only)
    core.create_namespaced_pod_eviction(name, namespace, body)


def present[T](value: T | None) -> T:
    """A field the stand-in sends, as an apiserver would: the client types every field optional."""
    assert value is not None
    return value


def refusal(call: Any, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as raised:
        call(*args, **kwargs)
    status: dict[str, Any] = json.loads(present(raised.value.body))
    return raised.value.status, status


def names(
    core: CoreV1Api, field_selector: str | None = None, label_selector: str | None = None
) -> list[str | None]:
    listed = core.list_pod_for_all_namespaces(
        field_selector=field_selector, label_selector=label_selector
    )
    return [present(p.metadata).name for p in listed.items]


# -- the process -------------------------------------------------------------------------------


def test_says_it_is_a_stand_in(standin: ManagedProcess, url: str) -> None:
    assert "NOT Kubernetes" in standin.output[0]
    assert standin.output[1] == f"kube stand-in listening on {url}"
    for response in (
        clients.get(f"{url}/api/v1/nodes"),
        clients.get(f"{url}/api/v1/namespaces/default/secrets"),  # not served: a 404 Status
        clients.post(f"{url}/_admin/reset", json={"nodes": "not a list"}),
    ):
        assert response.headers["X-Stand-In"] == "cookbook"


def test_answers_at_once_on_a_kept_alive_connection(url: str) -> None:
    # The Kubernetes client keeps its connections alive; Nagle on, each call would be 40 ms late.
    assert keepalive.held_back(f"{url}/api/v1/namespaces/default/pods") is None


def test_unserved_paths_answer_like_an_apiserver(url: str) -> None:
    response = clients.get(f"{url}/apis/apps/v1/deployments")

    assert response.status_code == 404
    assert response.json()["kind"] == "Status"
    assert response.json()["reason"] == "NotFound"


def test_keeps_its_cluster_and_records_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "kube.db"
    with kube_standin_process(state) as first:
        reset(url_of(first), pods=[pod("web-1")])
        clients.patch(
            f"{url_of(first)}/api/v1/nodes/node-a",
            json={"spec": {"unschedulable": True}},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
    with (
        kube_standin_process(state) as second,
        ApiClient(Configuration(host=url_of(second))) as api,
    ):
        assert present(CoreV1Api(api).read_node("node-a").spec).unschedulable is True
        listed = CoreV1Api(api).list_pod_for_all_namespaces().items
        assert [present(p.metadata).name for p in listed] == ["web-1"]
        assert records(url_of(second)) == [("patch", "node-a", 200, True)]


# -- nodes and pods ----------------------------------------------------------------------------


def test_cordon_is_a_patch_that_applies_once(url: str, core: CoreV1Api) -> None:
    reset(url)
    before = present(core.read_node("node-a").metadata).resource_version

    first = core.patch_node("node-a", {"spec": {"unschedulable": True}})
    again = core.patch_node("node-a", {"spec": {"unschedulable": True}})

    assert present(first.spec).unschedulable is present(again.spec).unschedulable is True
    assert present(first.metadata).resource_version != before
    assert (  # a no-op
        present(again.metadata).resource_version == present(first.metadata).resource_version
    )
    assert present(core.read_node("node-b").spec).unschedulable is None
    assert records(url) == [("patch", "node-a", 200, True), ("patch", "node-a", 200, False)]


def test_a_patch_cannot_touch_status_or_names(url: str, core: CoreV1Api) -> None:
    reset(url)

    core.patch_node("node-a", {"status": {"conditions": []}, "metadata": {"labels": {"x": "y"}}})

    node = core.read_node("node-a")
    assert present(present(node.status).conditions)[0].type == "Ready"
    assert present(node.metadata).labels == {"kubernetes.io/hostname": "node-a", "x": "y"}  # merged
    code, status = refusal(core.patch_node, "node-a", {"metadata": {"name": "node-z"}})
    assert (code, status["reason"]) == (400, "BadRequest")
    code, status = refusal(core.patch_node, "node-a", {"spec": {"unschedulable": "yes"}})
    assert (code, status["reason"]) == (422, "Invalid")


def test_only_merge_patches_are_accepted(url: str) -> None:
    reset(url)

    response = clients.patch(
        f"{url}/api/v1/nodes/node-a",
        content=json.dumps([{"op": "add", "path": "/spec/unschedulable", "value": True}]),
        headers={"Content-Type": "application/json-patch+json"},
    )

    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"


def test_lists_pods_by_node_and_label(url: str, core: CoreV1Api) -> None:
    reset(
        url,
        pods=[
            pod("web-1"),
            pod("web-2", "node-b"),
            pod("cache-1"),
            pod("agent-a", namespace="monitoring", owner={"kind": "DaemonSet", "name": "agent"}),
        ],
    )

    on_a = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a").items
    meta = [present(p.metadata) for p in on_a]
    assert sorted((m.namespace, m.name) for m in meta) == [
        ("default", "cache-1"),
        ("default", "web-1"),
        ("monitoring", "agent-a"),
    ]
    agent = next(p for p in on_a if present(p.metadata).name == "agent-a")
    assert present(present(agent.metadata).owner_references)[0].kind == "DaemonSet"
    assert present(agent.status).phase == "Running"
    assert names(core, field_selector="spec.nodeName!=node-a") == ["web-2"]
    assert names(core, label_selector="app=web") == ["web-1", "web-2"]
    assert names(core, label_selector="app!=web,app") == ["cache-1", "agent-a"]
    assert names(core, label_selector="!app") == []
    listed = core.list_namespaced_pod("monitoring")
    assert [present(p.metadata).name for p in listed.items] == ["agent-a"]
    assert present(listed.metadata).resource_version


def test_unsupported_selectors_are_a_400(url: str, core: CoreV1Api) -> None:
    reset(url)

    code, status = refusal(core.list_pod_for_all_namespaces, field_selector="spec.hostname=x")
    assert (code, status["message"]) == (400, 'field label not supported: "spec.hostname"')
    code, _ = refusal(core.list_pod_for_all_namespaces, label_selector="app in (web,cache)")
    assert code == 400


def test_unknown_objects_are_404_status(url: str, core: CoreV1Api, policy: PolicyV1Api) -> None:
    reset(url)

    code, status = refusal(core.read_namespaced_pod, "ghost", "default")
    assert (code, status["reason"], status["message"]) == (
        404,
        "NotFound",
        'pods "ghost" not found',
    )
    assert refusal(core.read_node, "node-z")[0] == 404
    code, status = refusal(policy.read_namespaced_pod_disruption_budget, "ghost", "default")
    assert status["details"] == {"name": "ghost", "group": "policy", "kind": "poddisruptionbudgets"}


# -- evictions and disruption budgets ----------------------------------------------------------


def test_evicting_an_unprotected_pod_removes_it(url: str, core: CoreV1Api) -> None:
    reset(url, pods=[pod("cache-1")])

    evict(core, "cache-1")

    assert names(core) == []
    assert records(url) == [("evict", "cache-1", 201, True)]
    code, _ = refusal(evict, core, "cache-1")  # asked again: the pod is gone
    assert code == 404
    assert records(url, verb="evict")[-1] == ("evict", "cache-1", 404, False)


def test_a_budget_allows_disruptions_down_to_min_available(url: str, core: CoreV1Api) -> None:
    pdb = {"name": "web", "selector": {"app": "web"}, "min_available": 2}
    reset(url, pods=[pod("web-1"), pod("web-2"), pod("web-3", "node-b")], pdbs=[pdb])

    evict(core, "web-1")
    code, status = refusal(evict, core, "web-2")

    assert code == 429
    assert status["reason"] == "TooManyRequests"
    assert status["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert status["details"]["causes"] == [
        {
            "reason": "DisruptionBudget",
            "message": "The disruption budget web needs 2 healthy pods and has 2 currently",
        }
    ]
    assert names(core) == ["web-2", "web-3"]
    assert records(url) == [("evict", "web-1", 201, True), ("evict", "web-2", 429, False)]


def test_budget_status_is_computed_from_the_pods(
    url: str, core: CoreV1Api, policy: PolicyV1Api
) -> None:
    pdbs = [
        {"name": "web", "selector": {"app": "web"}, "min_available": 1},
        {"name": "db", "selector": {"app": "db"}, "min_available": "50%"},
    ]
    pods = [
        pod("web-1"),
        pod("web-2"),
        pod("db-0"),
        pod("db-1"),
        pod("db-2", None, phase="Pending"),
    ]
    reset(url, pods=pods, pdbs=pdbs)

    web = present(policy.read_namespaced_pod_disruption_budget("web", "default").status)
    db = present(policy.read_namespaced_pod_disruption_budget("db", "default").status)

    assert (web.expected_pods, web.current_healthy, web.desired_healthy) == (2, 2, 1)
    assert web.disruptions_allowed == 1
    assert present(web.conditions)[0].reason == "SufficientPods"
    # 50% of 3 selected pods is 2 (rounded up); the Pending pod is not healthy.
    assert (db.expected_pods, db.current_healthy, db.desired_healthy) == (3, 2, 2)
    assert db.disruptions_allowed == 0
    listed = policy.list_pod_disruption_budget_for_all_namespaces().items
    assert [present(b.metadata).name for b in listed] == ["db", "web"]


def test_pending_pods_ignore_their_budget(url: str, core: CoreV1Api) -> None:
    pdb = {"name": "web", "selector": {"app": "web"}, "min_available": 5}
    reset(url, pods=[pod("web-1"), pod("web-2", None, phase="Pending")], pdbs=[pdb])

    evict(core, "web-2")

    assert refusal(evict, core, "web-1")[0] == 429
    assert names(core) == ["web-1"]


def test_a_pod_under_two_budgets_cannot_be_evicted(url: str, core: CoreV1Api) -> None:
    pdbs = [
        {"name": "all", "selector": {}, "min_available": 0},
        {"name": "web", "selector": {"app": "web"}, "min_available": 0},
    ]
    reset(url, pods=[pod("web-1")], pdbs=pdbs)

    code, status = refusal(evict, core, "web-1")

    assert (code, status["reason"]) == (500, "InternalError")
    assert "more than one PodDisruptionBudget" in status["message"]


def test_relaxing_a_budget_unblocks_the_eviction(
    url: str, core: CoreV1Api, policy: PolicyV1Api
) -> None:
    pdb = {"name": "web", "selector": {"app": "web"}, "min_available": 2}
    reset(url, pods=[pod("web-1"), pod("web-2")], pdbs=[pdb])
    assert refusal(evict, core, "web-1")[0] == 429

    relaxed = policy.patch_namespaced_pod_disruption_budget(
        "web", "default", {"spec": {"minAvailable": 1}}
    )
    evict(core, "web-1")

    assert present(relaxed.metadata).generation == 2
    assert present(relaxed.status).observed_generation == 2
    assert present(relaxed.status).disruptions_allowed == 1
    assert names(core) == ["web-2"]
    code, status = refusal(
        policy.patch_namespaced_pod_disruption_budget,
        "web",
        "default",
        {"spec": {"minAvailable": None, "maxUnavailable": 1}},
    )
    assert (code, status["reason"]) == (422, "Invalid")


def test_force_delete_ignores_budgets_and_applies_once(url: str, core: CoreV1Api) -> None:
    pdb = {"name": "web", "selector": {"app": "web"}, "min_available": 1}
    reset(url, pods=[pod("web-1")], pdbs=[pdb])

    deleted = core.delete_namespaced_pod("web-1", "default", grace_period_seconds=0)
    code, _ = refusal(core.delete_namespaced_pod, "web-1", "default", grace_period_seconds=0)

    assert present(deleted.metadata).name == "web-1"
    assert present(deleted.metadata).deletion_grace_period_seconds == 0
    assert code == 404
    assert names(core) == []
    found = clients.get(f"{url}/_admin/records").json()
    assert [(r["code"], r["applied"], r["detail"]["grace_period_seconds"]) for r in found] == [
        (200, True, 0),
        (404, False, 0),
    ]


def test_uid_preconditions_spare_a_pod_that_took_the_name(url: str, core: CoreV1Api) -> None:
    reset(url, pods=[pod("db-0")])
    gone = present(core.read_namespaced_pod("db-0", "default").metadata).uid
    reset(url, pods=[pod("db-0", "node-b")])  # recreated, as a StatefulSet would
    namesake = present(core.read_namespaced_pod("db-0", "default").metadata).uid
    only_gone = V1DeleteOptions(grace_period_seconds=0, preconditions=V1Preconditions(uid=gone))

    deleted = refusal(core.delete_namespaced_pod, "db-0", "default", body=only_gone)
    evicted = refusal(evict, core, "db-0", uid=gone)

    for code, status in (deleted, evicted):
        assert (code, status["reason"]) == (409, "Conflict")
        assert f"UID in precondition: {gone}, UID in object meta: {namesake}" in status["message"]
    assert names(core) == ["db-0"]
    evict(core, "db-0", uid=namesake)
    assert names(core) == []
    assert records(url) == [
        ("delete", "db-0", 409, False),
        ("evict", "db-0", 409, False),
        ("evict", "db-0", 201, True),
    ]


def test_eviction_checks_the_body_against_the_url(url: str, core: CoreV1Api) -> None:
    reset(url, pods=[pod("web-1")])
    other = V1Eviction(metadata=V1ObjectMeta(name="web-2", namespace="default"))

    code, status = refusal(core.create_namespaced_pod_eviction, "web-1", "default", other)

    assert code == 400
    assert status["message"] == "name in URL does not match name in Eviction object"
    assert names(core) == ["web-1"]


# -- the admin API -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed",
    [
        {"nodes": ["node-a"], "pods": [pod("web-1", "node-z")]},
        {"nodes": ["node-a"], "pods": [pod("web-1", None)]},  # Running, but on no node
        {"nodes": ["node-a", "node-a"]},
        {"nodes": ["Node_A"]},
        {"nodes": [], "pdbs": [{"name": "p", "selector": {}, "min_available": -1}]},
        {"nodes": [], "pdbs": [{"name": "p", "selector": {}, "min_available": "150%"}]},
        {"nodes": [], "surprise": True},
    ],
    ids=[
        "unknown node",
        "running nowhere",
        "duplicate node",
        "bad name",
        "negative budget",
        "over 100%",
        "extra field",
    ],
)
def test_a_bad_seed_is_422_and_keeps_the_cluster(
    url: str, core: CoreV1Api, seed: dict[str, Any]
) -> None:
    reset(url, pods=[pod("web-1")])

    response = clients.post(f"{url}/_admin/reset", json=seed)

    assert response.status_code == 422
    assert names(core) == ["web-1"]


def test_reset_wipes_the_records(url: str, core: CoreV1Api) -> None:
    reset(url, pods=[pod("web-1")])
    evict(core, "web-1")

    reset(url)

    assert records(url) == []
    assert [present(n.metadata).name for n in core.list_node().items] == ["node-a", "node-b"]
