"""`python -m k8s_drain.demo`: drain two nodes through the gateway, playing the on-call operator.

It seeds the cookbook's Kubernetes API stand-in with a small cluster (three nodes; a web
Deployment of three pods behind a budget that keeps two; a one-pod database behind a budget that
keeps one), starts a drain of node-a and node-b, and answers each question the drain asks, as
an operator would: force the database pod off, retry the web pod too early, relax its budget,
retry again. It then shows what the Kubernetes API received. The stand-in runs no controllers,
so an evicted pod is never replaced: on a real cluster the web budget would unblock by itself
once web-1's replacement is Running on node-c.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from typing import Any

import httpx

from k8s_drain.steps import Cluster

CLUSTER = {
    "nodes": ["node-a", "node-b", "node-c"],
    "pods": [
        {"name": "web-1", "node": "node-a", "labels": {"app": "web"}},
        {"name": "cache-1", "node": "node-a", "labels": {"app": "cache"}},
        {"name": "web-2", "node": "node-b", "labels": {"app": "web"}},
        {"name": "db-0", "node": "node-b", "labels": {"app": "db"}},
        {"name": "web-3", "node": "node-c", "labels": {"app": "web"}},
        *(
            {
                "name": f"node-exporter-{node[-1]}",
                "namespace": "monitoring",
                "node": node,
                "owner": {"kind": "DaemonSet", "name": "node-exporter"},
            }
            for node in ("node-a", "node-b", "node-c")
        ),
    ],
    "pdbs": [
        {"name": "web", "selector": {"app": "web"}, "min_available": 2},
        {"name": "db", "selector": {"app": "db"}, "min_available": 1},
    ],
}


def settled_change(gateway: httpx.Client, url: str, seen: int | None) -> dict[str, Any]:
    """The drain's status once it has moved on: finished, or waiting on a new question."""
    deadline = time.monotonic() + 60
    while True:
        status: dict[str, Any] = gateway.get(url).raise_for_status().json()
        fresh = status["status"] != "blocked" or status["waiting_since_ms"] != seen
        if (status["status"] != "draining" and fresh) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def decide(gateway: httpx.Client, drain_id: str, pod: str, decision: str, why: str) -> None:
    print(f"→ operator: {decision} {pod} ({why})")
    response = gateway.post(
        f"/drains/{drain_id}/decision", json={"decision": decision, "pod": pod}
    ).raise_for_status()
    print(f"← {response.status_code} Accepted")


async def relax_budget(name: str, min_available: int) -> None:
    # The operator's `kubectl patch pdb web -p '{"spec":{"minAvailable":1}}'`.
    cluster = await Cluster.connect()
    try:
        patch = {"spec": {"minAvailable": min_available}}
        await cluster.policy.patch_namespaced_pod_disruption_budget(name, "default", patch)
    finally:
        await cluster.close()


def main() -> None:
    kube = os.environ["KUBE_API_URL"]
    if httpx.get(f"{kube}/healthz").headers.get("X-Stand-In") != "cookbook":
        sys.exit(
            f"k8s_drain.demo: {kube} is not the cookbook's stand-in, and this demo seeds a cluster"
            " of its own; on a real cluster, follow the README's 'Run it against a real cluster'"
        )
    print(f"· Kubernetes API: {kube} (the cookbook's stand-in, not Kubernetes)")
    httpx.post(f"{kube}/_admin/reset", json=CLUSTER).raise_for_status()
    print(
        "· cluster: node-a runs web-1 and cache-1, node-b runs web-2 and db-0, node-c runs web-3;"
        " budgets: web keeps 2 of 3 pods, db keeps its 1 pod"
    )
    drain_id = f"drain-{secrets.token_hex(3)}"
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=15) as gateway:
        print(f"→ POST /drains {drain_id}: node-a, then node-b")
        accepted = gateway.post(
            "/drains", json={"drain_id": drain_id, "nodes": ["node-a", "node-b"]}
        )
        url = accepted.raise_for_status().json()["status_url"]
        print(f"← {accepted.status_code} Accepted; GET {url}")
        asked: dict[str, int] = {}
        status = settled_change(gateway, url, None)
        while status["status"] == "blocked":
            blocked = status["blocked"]
            pod = blocked["pod"]
            print(
                f"⏸ blocked: {pod} on {blocked['node']}, PodDisruptionBudget "
                f"{blocked['budget']}: {blocked['message']}"
            )
            asked[pod] = asked.get(pod, 0) + 1
            if pod == "default/db-0":
                decide(gateway, drain_id, pod, "force", "a single replica: accept a short outage")
            elif asked[pod] == 1:
                decide(gateway, drain_id, pod, "retry", "maybe web-1's replacement is up by now")
            else:
                print("· operator: relax budget web to minAvailable 1 (kubectl patch pdb web)")
                asyncio.run(relax_budget("web", 1))
                decide(gateway, drain_id, pod, "retry", "the budget allows it now")
            status = settled_change(gateway, url, status["waiting_since_ms"])
        if "report" in status:  # finished: drained, or incomplete, aborted, refused
            print(f"{'✓' if status['status'] == 'drained' else '!'} {status['status']}:")
            for node in status["report"]:
                pods = ", ".join(f"{pod} {outcome}" for pod, outcome in node["pods"].items())
                print(f"  {node['node']}: {pods}")
        else:
            print(f"! {status['status']}: {status.get('error')}")
    print("· what the Kubernetes API received (the stand-in's records):")
    for record in httpx.get(f"{kube}/_admin/records").raise_for_status().json():
        kind = {"Node": "node", "Pod": "pod", "PodDisruptionBudget": "pdb"}[record["kind"]]
        name = "/".join(filter(None, (record["namespace"], record["name"])))
        what = f"{kind} {name}"
        detail = record["detail"]
        verdict = "applied" if record["applied"] else detail.get("cause") or detail.get("refused")
        print(f"  {record['verb']:<6} {what:<20} {record['code']}  {verdict}")


if __name__ == "__main__":
    main()
