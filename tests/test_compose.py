"""docker-compose.yml and the Dockerfile, checked statically: no Docker engine runs here.

- The compose file is valid against the Compose Specification's JSON schema (the copy that
  check-jsonschema vendors as `vendor.compose-spec`).
- Every example in the catalog has its worker (and gateway) under a profile of its own, each
  command names a module that exists in the repository and is packaged into the image, every
  environment variable the example's code reads is set, every address it is given is a service it
  waits for, and every profile starts everything its services depend on.
- The Dockerfile parses, copies only paths that exist and are not ignored, installs the locked
  workspace without dev tools, and runs a Python the workspace supports.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cookbook import catalog
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from ruamel.yaml import YAML

ROOT = catalog.repo_root(Path(__file__))
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLES = catalog.examples(ROOT)

# Profiles that start infrastructure only, for examples run on the host (see the Makefile).
INFRASTRUCTURE_PROFILES = {"kafka", "tigerbeetle"}

# Variables an example may read without compose setting them: their defaults are right there.
SAFE_DEFAULTS = {
    "RESONATE_GROUP": "the example's own group, which its clients target",
    "RESONATE_TTL_SECONDS": "the worker's lease; the default suits a long-running worker",
    "TIGERBEETLE_CLUSTER_ID": "0, the cluster the compose TigerBeetle replica is formatted with",
    "REFERENCE_DB": "a file inside WLRF_DATA_DIR",
    "LEDGER_STANDIN_DB": "a file inside WLRF_DATA_DIR (unused when TIGERBEETLE_ADDRESS is set)",
    "PROVIDER_TIMEOUT_SECONDS": "saga's 10 s per provider call suits the sandbox and most APIs",
    "RESONATE_TOKEN": "unset: no token, as the compose server runs without auth (token-auth's "
    "README says how to turn it on)",
}

# What an example's `[tool.cookbook] services` entry needs from compose: the service it waits
# for, and the variable that tells it where that service is. None: no compose service (a
# Kubernetes cluster is the user's own, e.g. kind; its URL is passed through).
CATALOG_SERVICES: dict[str, tuple[str | None, str]] = {
    "sandbox": ("sandbox", "PROVIDER_API_URL"),
    "kafka": ("redpanda", "KAFKA_BOOTSTRAP"),
    "kubernetes": (None, "KUBE_API_URL"),
    # The stand-in model is served by the sandbox, under /v1.
    "model": ("sandbox", "OPENAI_BASE_URL"),
}


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(COMPOSE_FILE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """The services it waits for, and the condition for each."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def python_module(service: dict[str, Any]) -> str | None:
    """`python -m <module>` -> the module; None for services that run something else."""
    command = service.get("command")
    if isinstance(command, list) and command[:2] == ["python", "-m"] and len(command) > 2:
        return str(command[2])
    return None


# -- the Compose Specification ------------------------------------------------------------------


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_compose_file_matches_the_compose_specification_schema() -> None:
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_an_invalid_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  worker:\n    image: cookbook\n"
        "    depends_on: {resonate: {condition: when_it_feels_like_it}}\n"
        "    restart_policy: always\n"
    )
    result = check_jsonschema(broken)
    assert result.returncode != 0, "the schema check accepted an invalid file"


# -- every example has its services ---------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    example: catalog.Example
    role: str  # worker | gateway
    module: str

    @property
    def service(self) -> str:
        return f"{self.example.name}-{self.role}"

    def __str__(self) -> str:
        return self.service


def processes() -> Iterator[Process]:
    for example in EXAMPLES:
        yield Process(example, "worker", example.worker)
        if example.gateway:
            yield Process(example, "gateway", example.gateway)


@pytest.mark.parametrize("process", list(processes()), ids=str)
def test_every_example_process_is_a_service_under_the_examples_profile(process: Process) -> None:
    service = services().get(process.service)
    assert service is not None, (
        f"docker-compose.yml has no service {process.service!r} for `python -m {process.module}` "
        "(see the pattern at the top of docker-compose.yml)"
    )
    assert service.get("profiles") == [process.example.name]
    assert service.get("command") == ["python", "-m", process.module]
    assert service.get("build") == ".", "example processes run in the cookbook image"
    if process.role == "gateway":
        env = environment(service)
        assert env.get("GATEWAY_HOST") == "0.0.0.0", "in a container a gateway must listen on all"
        port = env.get("GATEWAY_PORT", "")
        assert port.isdigit(), "a gateway in compose needs a fixed GATEWAY_PORT"
        assert any(str(p).endswith(f":{port}") for p in service.get("ports", [])), (
            f"publish the gateway's port {port}"
        )
        assert "healthcheck" in service


def test_every_profile_belongs_to_an_example_or_to_infrastructure() -> None:
    known = {e.name for e in EXAMPLES} | INFRASTRUCTURE_PROFILES
    for name, service in services().items():
        unknown = set(service.get("profiles", [])) - known
        assert not unknown, f"{name}: profiles {sorted(unknown)} name no example"
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^COMPOSE_PROFILES_ALL := (.*)$", makefile, re.MULTILINE)
    assert listed is not None, "the Makefile lists every profile for `make down`"
    assert set(listed[1].replace("$(EXAMPLES)", "").split()) == INFRASTRUCTURE_PROFILES


def test_every_profile_starts_what_its_services_depend_on() -> None:
    everything = services()
    profiles = {p for s in everything.values() for p in s.get("profiles", [])}
    for profile in sorted(profiles | {""}):
        active = {
            name
            for name, s in everything.items()
            if not s.get("profiles") or profile in s["profiles"]
        }
        for name in sorted(active):
            for dependency, condition in depends_on(everything[name]).items():
                assert dependency in active, (
                    f"`docker compose --profile {profile} up` starts {name}, which depends on "
                    f"{dependency}: add {profile!r} to {dependency}'s profiles"
                )
                if condition == "service_healthy":
                    assert "healthcheck" in everything[dependency], (
                        f"{name} waits for {dependency} to be healthy; it has no healthcheck"
                    )


# -- commands name modules that exist and are in the image -----------------------------------


def module_file(module: str) -> Path | None:
    """The file `python -m <module>` runs, among the workspace's packages."""
    relative = Path(*module.split("."))
    for base in [ROOT / "shared" / "src", *sorted((ROOT / "examples").iterdir())]:
        for candidate in (base / relative.with_suffix(".py"), base / relative / "__main__.py"):
            if candidate.is_file():
                return candidate
    return None


def packaged(path: Path) -> bool:
    """The file is inside a package its workspace member's wheel ships (the image has wheels)."""
    member = next(p for p in path.parents if (p / "pyproject.toml").is_file())
    table = tomllib.loads((member / "pyproject.toml").read_text())
    wheel = table["tool"]["hatch"]["build"]["targets"]["wheel"]
    return any(path.is_relative_to(member / package) for package in wheel["packages"])


@pytest.mark.parametrize("name", sorted(services()))
def test_every_command_runs_a_module_that_exists_in_the_image(name: str) -> None:
    service = services()[name]
    module = python_module(service)
    if module is None:
        assert "image" in service, f"{name}: runs an image, or `python -m <module>`"
        assert "build" not in service, f"{name}: a cookbook-image service runs a python module"
        return
    path = module_file(module)
    assert path is not None, f"{name}: no module {module} in shared/src or examples/*"
    assert packaged(path), f"{name}: {path.relative_to(ROOT)} is not in its package's wheel"
    assert path.name == "__main__.py" or '__name__ == "__main__"' in path.read_text(), (
        f"{name}: `python -m {module}` would import {path.name} and do nothing"
    )


# -- the environment: every variable read is set; every address is a service waited for -------


def package_modules(entry: Path) -> list[Path]:
    """The module and every module of its own package that it imports, transitively."""
    package_dir = next(p for p in entry.parents if not (p.parent / "__init__.py").is_file())
    package = package_dir.name
    seen: list[Path] = []
    pending = [entry, package_dir / "__init__.py"]
    while pending:
        path = pending.pop()
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith(package + "."):  # the package itself is pending already
                    relative = Path(*name.split(".")[1:])
                    pending += [
                        package_dir / relative.with_suffix(".py"),
                        package_dir / relative / "__init__.py",
                    ]
    return seen


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id in ("environ", "env")
    )


def variables_read(path: Path) -> set[str]:
    """Environment variables a module reads: os.environ[...], .get(...), os.getenv(...)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = getattr(func, "attr", getattr(func, "id", ""))
            environ_get = (
                name == "get" and isinstance(func, ast.Attribute) and _is_environ(func.value)
            )
            if environ_get or name == "getenv":
                key = node.args[0]
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            found.add(key.value)
    return found


def example_variables(process: Process) -> set[str]:
    entry = module_file(process.module)
    assert entry is not None
    return set().union(*(variables_read(p) for p in package_modules(entry)))


def test_the_variable_finder_sees_every_way_of_reading_one(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom os import getenv\n"
        "a = os.environ['A']\nb = os.environ.get('B', '')\nc = os.getenv('C')\nd = getenv('D')\n"
        "def f(environ):\n    return environ.get('E'), 'F' in os.environ\n"
    )
    assert variables_read(source) == {"A", "B", "C", "D", "E", "F"}


@pytest.mark.parametrize("process", list(processes()), ids=str)
def test_every_variable_an_example_reads_is_set(process: Process) -> None:
    service = services()[process.service]
    provided = environment(service)
    missing = example_variables(process) - provided.keys() - SAFE_DEFAULTS.keys()
    assert not missing, (
        f"{process.service} reads {sorted(missing)} but docker-compose.yml does not set them "
        "(set them, or add them to SAFE_DEFAULTS here with the reason the default is right)"
    )
    if process.role == "gateway":
        assert "GATEWAY_HOST" in example_variables(process), (
            f"{process.module} must read GATEWAY_HOST to listen on 0.0.0.0 in a container"
        )


def addressed_host(value: str) -> str | None:
    """The host of a URL (`http://host:port/...`) or `host:port` address; None if neither."""
    if "://" in value:
        return urlsplit(value).hostname
    match = re.fullmatch(r"([A-Za-z0-9.-]+):\d+", value.split(",")[0])
    return match[1] if match else None


@pytest.mark.parametrize("name", sorted(services()))
def test_every_address_a_service_is_given_is_a_service_it_waits_for(name: str) -> None:
    everything = services()
    by_address = {name: name for name in everything}
    for other, service in everything.items():
        for network in (service.get("networks") or {}).values():
            if isinstance(network, dict) and network.get("ipv4_address"):
                by_address[network["ipv4_address"]] = other
    waits_for = depends_on(everything[name])
    for variable, value in environment(everything[name]).items():
        host = addressed_host(value)
        if host is None or host in ("0.0.0.0", "localhost", "127.0.0.1"):
            continue
        target = by_address.get(host)
        assert target is not None, f"{name}: {variable}={value} names no service"
        assert target in waits_for, f"{name}: {variable} points at {target}; depend on it"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_the_example_gets_what_the_catalog_says_it_needs(example: catalog.Example) -> None:
    worker = services()[f"{example.name}-worker"]
    assert depends_on(worker).get("resonate") == "service_healthy"
    assert environment(worker).get("RESONATE_URL") == "http://resonate:8001"
    # What the example needs is used by one of its processes (a Kafka consumer, not the worker).
    own = [s for name, s in services().items() if name.startswith(f"{example.name}-")]
    for needed in example.services:
        assert needed in CATALOG_SERVICES, (
            f"{example.name} needs {needed!r}: say in CATALOG_SERVICES how compose provides it"
        )
        service, variable = CATALOG_SERVICES[needed]
        users = [s for s in own if variable in environment(s)]
        assert users, f"{example.name}: set {variable} for {needed} on the process that uses it"
        if service is not None:
            assert all(service in depends_on(s) for s in users), (
                f"{example.name}: every process with {variable} must depend on {service}"
            )


# -- the Dockerfile ------------------------------------------------------------------------------


@cache
def dockerfile() -> DockerfileParser:
    # Reads the file; (setting `.content` would write it).
    return DockerfileParser(path=str(DOCKERFILE))


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch(prefix, pattern)
        for pattern in patterns
        for prefix in prefixes
    )


def test_every_build_uses_the_dockerfile_at_the_root() -> None:
    for name, service in services().items():
        if "build" in service:
            assert service["build"] == ".", f"{name}: build the one cookbook image"
            assert service.get("image") == "resonate-cookbook:local"
    assert DOCKERFILE.is_file()


def test_the_dockerfile_copies_paths_that_exist_and_are_not_ignored() -> None:
    patterns = dockerignore()
    copies = [i for i in dockerfile().structure if i["instruction"] == "COPY"]
    assert copies
    for instruction in copies:
        words = instruction["value"].split()
        if any(w.startswith("--from=") for w in words):
            continue
        *sources, _destination = [w for w in words if not w.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile: COPY {source}: no such path"
            assert not ignored(source, patterns), f"Dockerfile: COPY {source} is .dockerignored"
    for local in (".venv", ".git", ".cookbook"):
        assert ignored(local, patterns), f"{local} should not be sent to the Docker daemon"


def test_the_dockerfile_installs_the_locked_workspace_without_dev_tools() -> None:
    runs = [i["value"] for i in dockerfile().structure if i["instruction"] == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs, "the image installs the workspace with `uv sync`"
    for sync in syncs:
        for flag in ("--frozen", "--all-packages", "--no-dev"):
            assert flag in sync, f"`{sync}` lacks {flag}"
    installs_uv = next((r for r in runs if "pip install" in r and "uv" in r), "")
    assert re.search(r"\buv==\d+\.\d+\.\d+", installs_uv), "pin uv's version in the image"


def test_the_image_runs_a_python_the_workspace_supports_with_the_venv_on_path() -> None:
    parser = dockerfile()
    assert len(set(parser.parent_images)) == 1, "both stages on the same Python image"
    base = parser.parent_images[-1]
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim-\w+", base)
    assert match, f"pin the Python base image by version: {base!r}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(n) for n in re.findall(r"\d+", requires)[:2])
    assert (int(match[1]), int(match[2])) >= minimum
    stages = [i for i in parser.structure if i["instruction"] == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    final = [i for i in parser.structure if i["startline"] > stages[-1]["startline"]]
    env = " ".join(i["value"] for i in final if i["instruction"] == "ENV")
    assert "PATH=/app/.venv/bin:" in env
    assert any(i["instruction"] == "USER" for i in final), "run as an unprivileged user"
