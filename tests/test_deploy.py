"""The scale-out topology (shared/deploy/), checked statically: no Docker engine or cluster here.

- docker-compose.scale.yml matches the Compose Specification; its commands, environment and
  addresses hold together as docker-compose.yml's do (tests/test_compose.py's checks, reused).
- The Kubernetes manifests match the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and
  hold together: every Service and PodDisruptionBudget selects a workload, every port it names
  exists, every variable a process reads is set, every address is a Service, every Secret is the
  one the README tells you to create, every container has resources and probes, and a worker gets
  the time its graceful stop needs.

Each consistency check is a function returning problems, and is seen to catch a broken manifest.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from ruamel.yaml import YAML

from tests.test_compose import (
    ROOT,
    SAFE_DEFAULTS,
    addressed_host,
    check_jsonschema,
    depends_on,
    module_file,
    package_modules,
    packaged,
    python_module,
    variables_read,
)

DEPLOY = ROOT / "shared" / "deploy"
SCALE_COMPOSE = DEPLOY / "docker-compose.scale.yml"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
README = DEPLOY / "README.md"
KUBERNETES_VERSION = "1.33.0"  # the oldest release still maintained upstream; newer accept it
COOKBOOK_IMAGE = "resonate-cookbook:local"
# The Secrets a user creates by hand (README.md says how), with the keys the manifests read.
USER_SECRETS = {"resonate-postgres": {"url", "password"}}
# Services that exist only to try the topology without real providers.
DEV_ONLY = {"sandbox"}


def interpolated(value: str) -> str:
    """A compose value with `${VAR:-default}` replaced by its default, `${VAR...}` by `<VAR>`."""

    def default(match: re.Match[str]) -> str:
        name, operator, rest = match[1], match[2], match[3]
        return rest if operator in (":-", "-") else f"<{name}>"

    return re.sub(r"\$\{(\w+)(:?[-?])?([^}]*)\}", default, value)


# -- docker-compose.scale.yml ---------------------------------------------------------------------


@cache
def scale_services() -> dict[str, dict[str, Any]]:
    loaded: dict[str, Any] = YAML(typ="safe").load(SCALE_COMPOSE.read_text())
    services: dict[str, dict[str, Any]] = loaded["services"]
    return services


def scale_environment(service: dict[str, Any]) -> dict[str, str]:
    return {str(k): interpolated(str(v)) for k, v in (service.get("environment") or {}).items()}


def test_the_scale_compose_file_matches_the_compose_specification_schema() -> None:
    result = check_jsonschema(SCALE_COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for name, service in services.items():
        module = python_module(service)
        if module is None:
            continue
        path = module_file(module)
        if path is None or not packaged(path):
            problems.append(f"{name}: `python -m {module}` is not a module the image ships")
            continue
        provided = scale_environment(service)
        read = set().union(*(variables_read(p) for p in package_modules(path)))
        if missing := read - provided.keys() - SAFE_DEFAULTS.keys():
            problems.append(f"{name}: reads {sorted(missing)}, which are not set")
        waits_for = depends_on(service)
        for variable, value in provided.items():
            host = addressed_host(value)
            if host in services and host not in waits_for:
                problems.append(f"{name}: {variable} points at {host}; depend on it")
            elif host is not None and host not in services and host not in ("0.0.0.0",):
                problems.append(f"{name}: {variable}={value} names no service")
        for dependency in waits_for:
            if dependency in DEV_ONLY and not service_optional(service, dependency):
                problems.append(f"{name}: needs the dev-only {dependency}; make it optional")
    for name in DEV_ONLY & services.keys():
        if not services[name].get("profiles"):
            problems.append(f"{name} is dev only: it must sit under a profile, off by default")
    return problems


def service_optional(service: dict[str, Any], dependency: str) -> bool:
    spec = (service.get("depends_on") or {}).get(dependency)
    return isinstance(spec, dict) and spec.get("required") is False


def test_the_scale_compose_file_holds_together() -> None:
    assert compose_problems(scale_services()) == []


def test_the_compose_checks_catch_a_broken_scale_file() -> None:
    broken = copy.deepcopy(scale_services())
    broken["saga-worker"]["environment"] = {"RESONATE_URL": "http://resonate:8001"}
    broken["saga-gateway"]["command"] = ["python", "-m", "saga.gatewy"]
    del broken["saga-gateway-2"]["depends_on"]
    del broken["sandbox"]["profiles"]
    problems = "\n".join(compose_problems(broken))
    assert "saga-worker: reads ['PROVIDER_API_URL']" in problems
    assert "saga.gatewy" in problems
    assert "saga-gateway-2: RESONATE_URL points at resonate" in problems
    assert "sandbox is dev only" in problems


def test_the_scale_topology_runs_the_server_on_postgres_and_workers_as_replicas() -> None:
    services = scale_services()
    server = scale_environment(services["resonate"])
    assert server["RESONATE_STORAGE__TYPE"] == "postgres"
    assert server["RESONATE_STORAGE__POSTGRES__URL"].startswith("postgres://")
    assert "<POSTGRES_PASSWORD>" in server["RESONATE_STORAGE__POSTGRES__URL"], (
        "the database password comes from the environment, never from the file"
    )
    assert services["saga-worker"]["deploy"]["replicas"] > 1
    gateways = [s for s in services.values() if python_module(s) == "saga.gateway"]
    assert len(gateways) > 1


# -- the Kubernetes manifests ---------------------------------------------------------------------


@cache
def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every document of every manifest."""
    found = []
    for path in MANIFESTS:
        for document in YAML(typ="safe").load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


def documents() -> list[dict[str, Any]]:
    return [document for _, document in manifests()]


def test_there_are_manifests_for_the_server_its_database_and_an_example() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents()}
    assert {
        ("Deployment", "resonate"),
        ("StatefulSet", "postgres"),
        ("Deployment", "saga-worker"),
        ("Deployment", "saga-gateway"),
        ("PodDisruptionBudget", "saga-worker"),
    } <= kinds


@pytest.mark.parametrize(
    "document",
    [d for _, d in manifests()],
    ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in manifests()],
)
def test_every_manifest_matches_the_kubernetes_openapi_schema(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_an_invalid_manifest() -> None:
    broken = copy.deepcopy(next(d for d in documents() if d["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessPorbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


WORKLOADS = ("Deployment", "StatefulSet")


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] in WORKLOADS)


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return found


def selector_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every Service and PodDisruptionBudget selects a workload, and a Service's port exists."""
    problems = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        selected = [w for w in workloads(docs) if selects(selector, pod_labels(w))]
        if len(selected) != 1:
            problems.append(f"{name} selects {len(selected)} workloads, not one")
            continue
        workload = selected[0]
        if doc["kind"] == "Service":
            ports = {p.get("name") for c in containers(workload) for p in c.get("ports", [])}
            for port in doc["spec"]["ports"]:
                if port["targetPort"] not in ports:
                    problems.append(f"{name}: no container port named {port['targetPort']}")
        elif workload["spec"].get("replicas", 1) <= doc["spec"].get("maxUnavailable", 0):
            problems.append(f"{name}: allows every replica of its workload to be evicted")
    return problems


def test_every_service_and_disruption_budget_selects_one_workload() -> None:
    assert selector_problems(documents()) == []


def test_the_selector_check_catches_a_label_mismatch_and_a_missing_port() -> None:
    broken = copy.deepcopy(documents())
    for doc in broken:
        if doc["kind"] == "PodDisruptionBudget":
            doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "workers"
        if doc["kind"] == "Service" and doc["metadata"]["name"] == "saga-gateway":
            doc["spec"]["ports"][0]["targetPort"] = "web"
    problems = "\n".join(selector_problems(broken))
    assert "PodDisruptionBudget/saga-worker selects 0 workloads" in problems
    assert "Service/saga-gateway: no container port named web" in problems


def container_environment(
    container: dict[str, Any], docs: list[dict[str, Any]]
) -> dict[str, str | None]:
    """Every variable a container gets (None: from a Secret), its ConfigMaps' included."""
    env: dict[str, str | None] = {}
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(config_maps.get(name, {}).get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def process_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Commands, variables, addresses, Secrets, ConfigMaps, images, resources and probes."""
    problems = []
    service_names = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for workload in workloads(docs):
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            image = container["image"]
            if image != COOKBOOK_IMAGE and (":" not in image or image.endswith(":latest")):
                problems.append(f"{where}: pin the image {image} to a tag")
            resources = container.get("resources", {})
            if not {"cpu", "memory"} <= resources.get("requests", {}).keys():
                problems.append(f"{where}: request cpu and memory")
            if "memory" not in resources.get("limits", {}):
                problems.append(f"{where}: limit its memory")
            if "readinessProbe" not in container:
                problems.append(f"{where}: no readiness probe")
            if container.get("ports") and "livenessProbe" not in container:
                problems.append(f"{where}: serves a port and has no liveness probe")
            for source in container.get("envFrom", []):
                if source["configMapRef"]["name"] not in config_maps:
                    problems.append(f"{where}: no ConfigMap {source['configMapRef']['name']}")
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in USER_SECRETS.get(ref["name"], set()):
                    problems.append(f"{where}: Secret {ref['name']}/{ref['key']} is not documented")
            env = container_environment(container, docs)
            for variable, value in env.items():
                host = addressed_host(value or "")
                if host and host not in service_names and host != "0.0.0.0":
                    problems.append(f"{where}: {variable}={value} names no Service")
            command = container.get("command", [])
            if image != COOKBOOK_IMAGE:
                continue
            module = python_module({"command": command})
            path = module_file(module) if module else None
            if path is None or not packaged(path):
                problems.append(f"{where}: {command} runs no module the image ships")
                continue
            read = set().union(*(variables_read(p) for p in package_modules(path)))
            if missing := read - env.keys() - SAFE_DEFAULTS.keys():
                problems.append(f"{where}: reads {sorted(missing)}, which are not set")
    return problems


def test_every_process_gets_what_it_reads_and_runs_what_exists() -> None:
    assert process_problems(documents()) == []


def test_the_process_checks_catch_what_a_broken_manifest_gets_wrong() -> None:
    broken = copy.deepcopy(documents())
    for doc in broken:
        if doc["kind"] == "ConfigMap":
            del doc["data"]["PROVIDER_API_URL"]
            doc["data"]["RESONATE_URL"] = "http://resonate-server:8001"
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "saga-gateway":
            gateway = containers(doc)[0]
            gateway["command"] = ["python", "-m", "saga.gatway"]
            del gateway["livenessProbe"]
            del gateway["resources"]["limits"]
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "resonate":
            containers(doc)[0]["image"] = "resonatehqio/resonate:latest"
            containers(doc)[0]["env"][1]["valueFrom"]["secretKeyRef"]["key"] = "dsn"
    problems = "\n".join(process_problems(broken))
    for expected in (
        "saga-worker/worker: reads ['PROVIDER_API_URL']",
        "RESONATE_URL=http://resonate-server:8001 names no Service",
        "saga.gatway",
        "saga-gateway/gateway: serves a port and has no liveness probe",
        "saga-gateway/gateway: limit its memory",
        "pin the image resonatehqio/resonate:latest",
        "Secret resonate-postgres/dsn is not documented",
    ):
        assert expected in problems


def test_the_readme_says_how_to_create_every_secret_the_manifests_read() -> None:
    readme = README.read_text()
    for name, keys in USER_SECRETS.items():
        assert f"kubectl create secret generic {name}" in readme
        for key in keys:
            assert f"--from-literal={key}=" in readme


def test_workers_stop_gracefully_within_their_grace_period() -> None:
    """SIGTERM -> `resonate.stop()` (which lets the steps under way finish), with time for it."""
    for workload in workloads(documents()):
        for container in containers(workload):
            module = python_module({"command": container.get("command", [])})
            if not module or not module.endswith(".worker"):
                continue
            source = "".join(p.read_text() for p in package_modules(module_file(module) or Path()))
            assert "SIGTERM" in source, f"{module} must handle SIGTERM"
            assert "resonate.stop()" in source, f"{module} must stop its Resonate instance"
            grace = workload["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            assert grace >= 60, f"{workload['metadata']['name']}: give a worker a minute to drain"


def test_the_server_runs_on_postgres_once_with_its_url_from_a_secret() -> None:
    server = next(d for d in documents() if d["metadata"]["name"] == "resonate")
    assert server["spec"]["replicas"] == 1
    assert server["spec"]["strategy"]["type"] == "Recreate"
    env = {e["name"]: e for e in containers(server)[0]["env"]}
    assert env["RESONATE_STORAGE__TYPE"]["value"] == "postgres"
    assert "secretKeyRef" in env["RESONATE_STORAGE__POSTGRES__URL"]["valueFrom"]


def test_the_dev_only_providers_are_in_a_file_of_their_own() -> None:
    for file, document in manifests():
        if document["metadata"]["name"] in DEV_ONLY:
            assert file == "sandbox.yaml", f"{file} carries the dev-only {document['kind']}"
            assert "DEV ONLY" in (DEPLOY / "kubernetes" / file).read_text()
