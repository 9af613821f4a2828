"""A stand-in for the few Kubernetes API calls the k8s-drain example makes. It is not Kubernetes.

No kube-apiserver can be installed where the cookbook is tested, so this small server answers,
over real HTTP and in the JSON shapes the official `kubernetes` Python client expects, the calls
a node drain makes: nodes (get, list, patch to cordon), pods (list by node, get, delete), the
Eviction API with PodDisruptionBudget semantics (429 when a budget forbids the disruption), and
PodDisruptionBudgets (get, list, patch). The example's client code runs unchanged against it and
against a real cluster. See `cluster.py` for what it models and what it leaves out.

  python -m cookbook.kube_standin --port 0 --state kube.db
"""

from __future__ import annotations

import sys
from pathlib import Path

from cookbook.processes import ManagedProcess


def kube_standin_process(state_path: Path) -> ManagedProcess:
    """The stand-in as a managed process (not started), keeping its cluster in `state_path`."""
    argv = [
        sys.executable,
        "-m",
        "cookbook.kube_standin",
        "--port",
        "0",
        "--state",
        str(state_path),
    ]
    return ManagedProcess("kubernetes", argv, ready=r"listening on (http\S+)")
