"""pytest fixtures (a plugin, loaded automatically): dev servers, sandboxes and processes.

Every process a fixture starts is stopped by its pid when the test ends, passed or failed; every
port is picked free by the process itself and read back from its readiness line.

The suite starts a dev server, a sandbox, a worker or a gateway for most of its tests, and most
of such a process's start-up is importing (0.3-0.6 CPU-seconds). A test process forks every
`python -m` process it starts (a ManagedProcess, whoever starts it; cookbook.crash.zygote): the
first of a kind from a base zygote that has imported the libraries nearly all of them import, the
next ones from a zygote of their kind, which has imported what their module imports. Each is
still a process of its own, started for its test and SIGKILLable by its pid.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cookbook import clients, copyout, processes
from cookbook.crash.zygote import Zygotes
from cookbook.processes import ManagedProcess
from cookbook.sandbox import SandboxRecords
from cookbook.stack import (
    devserver_process,
    kafka_process,
    sandbox_process,
    url_of,
    worker_process,
)
from cookbook.testing import matrix


def wait_for_streams(
    url: str,
    group: str,
    count: int = 1,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Block until `count` workers of `group` hold an event stream (SSE) to the dev server at
    `url`, as its `/_cookbook/health` lists them.

    A worker prints its ready line once it has started, which may be before its stream reaches
    the server: work sent in between goes to the workers already there.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = clients.get(f"{url}/_cookbook/health", headers=headers).json()
        if sum(s["group"] == group for s in health["subscribers"]) >= count:
            return
        time.sleep(0.05)  # the server has no long poll for this
    raise TimeoutError(f"fewer than {count} streams of {group} within {timeout}s")


@dataclass
class RunningDevServer:
    process: ManagedProcess
    data_dir: Path
    fast_recovery: bool
    sse_rotate_seconds: float | None = None
    tokens: tuple[str, ...] = ()
    skip_time: bool = False

    @property
    def url(self) -> str:
        return url_of(self.process)

    @property
    def headers(self) -> dict[str, str]:
        """What the cookbook endpoints need: the first token, when auth is on."""
        return {"Authorization": f"Bearer {self.tokens[0]}"} if self.tokens else {}

    def state(self, origin: str | None = None) -> dict[str, object]:
        params = {"origin": origin} if origin else {}
        response = clients.get(f"{self.url}/_cookbook/state", params=params, headers=self.headers)
        result: dict[str, object] = response.json()
        return result

    def executions(self) -> set[str]:
        """The id of every execution the server holds: each promise's origin.

        "A rejected request stored nothing" is `executions()` unchanged. Counting promises
        instead flakes on a shared stack, where a job an earlier test started may still be
        creating its children.
        """
        promises = self.state()["promises"]
        assert isinstance(promises, list)
        return {p["tags"].get("resonate:origin", p["id"]) for p in promises}

    def journal(self, origin: str) -> list[dict[str, object]]:
        response = clients.get(
            f"{self.url}/_cookbook/journal", params={"origin": origin}, headers=self.headers
        )
        entries: list[dict[str, object]] = response.json()["entries"]
        return entries

    def kill_at(
        self, operation: str, promise_id: str, *, when: str = "before", pid: int | None = None
    ) -> None:
        """Arm a tripwire: SIGKILL worker `pid` (or this server, if no pid) at that request.

        `operation` is create, settle or suspend; `when` is before the request is applied or
        after it is durable (see cookbook.devserver.tripwires).
        """
        wire: dict[str, object] = {"operation": operation, "promise_id": promise_id, "when": when}
        wire |= {"victim": "worker", "pid": pid} if pid is not None else {"victim": "server"}
        response = clients.post(f"{self.url}/_cookbook/tripwires", json=wire, headers=self.headers)
        assert response.status_code == 201, response.text

    def wait_for(self, operation: str, promise_id: str, timeout: float = 30.0) -> dict[str, object]:
        """Block until the journal shows `operation` on `promise_id`; return that entry.

        A long poll on the dev server's journal: it returns as soon as the request lands.
        """
        origin = promise_id.split(":", 1)[0]
        deadline = time.monotonic() + timeout
        seen = 0
        while (remaining := deadline - time.monotonic()) > 0:
            page = clients.get(
                f"{self.url}/_cookbook/journal",
                params={"origin": origin, "after": seen, "wait": min(remaining, 10)},
                headers=self.headers,
                timeout=15,
            ).json()
            seen = page["last_seq"]
            for entry in page["entries"]:
                if entry["operation"] == operation and entry["promise_id"] == promise_id:
                    found: dict[str, object] = entry
                    return found
        raise TimeoutError(f"no {operation} of {promise_id} within {timeout}s")

    def wait_for_streams(self, group: str, count: int, timeout: float = 30.0) -> None:
        """Block until `count` workers of `group` hold an event stream to this server."""
        wait_for_streams(self.url, group, count, headers=self.headers, timeout=timeout)

    def kill(self) -> None:
        self.process.kill()

    def restart(self) -> None:
        """Start again on the same port and data directory, as after a crash."""
        port = int(self.url.rsplit(":", 1)[1])
        self.process.stop()
        self.process = devserver_process(
            self.data_dir,
            port=port,
            fast_recovery=self.fast_recovery,
            sse_rotate_seconds=self.sse_rotate_seconds,
            tokens=self.tokens,
            skip_time=self.skip_time,
        ).start()


@dataclass
class RunningSandbox:
    process: ManagedProcess
    records: SandboxRecords

    @property
    def url(self) -> str:
        return url_of(self.process)


type DevServerFactory = Callable[..., RunningDevServer]
type ProcessFactory = Callable[..., ManagedProcess]

# Where the services a process talks to are, and its credentials for them: what differs between
# the workers and gateways of two tests. The cookbook's processes and the examples' read them when
# they run, never when their modules are imported (tests/test_example_rules.py checks the
# examples), so a process forked from a zygote started for another test still runs with its own.
ADDRESSES = (
    "RESONATE_URL",
    "RESONATE_TOKEN",
    "RESONATE_DEVSERVER_TOKENS",
    "PROVIDER_API_URL",
    "KAFKA_BOOTSTRAP",
    "KUBE_API_URL",
    "OPENAI_BASE_URL",
)


@pytest.fixture
def start_process() -> Iterator[Callable[[ManagedProcess], ManagedProcess]]:
    """Start any ManagedProcess (a gateway, a consumer, ...); stopped by pid at teardown."""
    started: list[ManagedProcess] = []

    def start(process: ManagedProcess) -> ManagedProcess:
        started.append(process)
        return process.start()

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def start_devserver(tmp_path: Path) -> Iterator[DevServerFactory]:
    """Start dev servers (`fast_recovery=`, `sse_rotate_seconds=`, `tokens=`, `skip_time=`);
    all stopped at teardown. With tokens, requests need `Authorization: Bearer <one of them>`."""
    started: list[RunningDevServer] = []

    def start(
        *,
        fast_recovery: bool = True,
        sse_rotate_seconds: float | None = None,
        tokens: Sequence[str] = (),
        skip_time: bool = False,
    ) -> RunningDevServer:
        data_dir = tmp_path / f"devserver-{len(started)}"
        process = devserver_process(
            data_dir,
            fast_recovery=fast_recovery,
            sse_rotate_seconds=sse_rotate_seconds,
            tokens=tokens,
            skip_time=skip_time,
        )
        server = RunningDevServer(
            process.start(), data_dir, fast_recovery, sse_rotate_seconds, tuple(tokens), skip_time
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.process.stop()


@pytest.fixture
def devserver(start_devserver: DevServerFactory) -> RunningDevServer:
    """A dev server in fast-recovery mode on a free port, with its own data directory."""
    return start_devserver()


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    """One provider sandbox for the session; scope tests by idempotency-key prefix."""
    db = tmp_path_factory.mktemp("sandbox") / "sandbox.db"
    with sandbox_process(db) as process:
        yield RunningSandbox(process, SandboxRecords(db))


@pytest.fixture
def start_worker() -> Iterator[ProcessFactory]:
    """Start an example's worker (`start_worker("hello.worker", env)`); stopped at teardown."""
    started: list[ManagedProcess] = []

    def start(module: str, env: Mapping[str, str], name: str = "worker") -> ManagedProcess:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESONATE_")}
        process = worker_process(module, {**inherited, **env}, name=name)
        started.append(process)
        return process.start()

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def kafka_bootstrap() -> Iterator[str]:
    """A fresh in-memory Kafka-protocol broker (Tansu) for one test: `host:port`."""
    broker, bootstrap = kafka_process()
    with broker:
        yield bootstrap


# -- pytest-xdist: one set of golden runs per session ---------------------------------------------

_GOLDEN_DIR = pytest.StashKey[Path]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller side: hand every test process the directory their golden runs are shared in."""
    config = node.config
    if _GOLDEN_DIR not in config.stash:
        config.stash[_GOLDEN_DIR] = Path(tempfile.mkdtemp(prefix="cookbook-goldens-"))
    node.workerinput["cookbook_golden_dir"] = str(config.stash[_GOLDEN_DIR])


_COPY_OUT_VENVS = pytest.StashKey[Path]()
_ZYGOTES = pytest.StashKey[Zygotes]()


def pytest_configure(config: pytest.Config) -> None:
    # Installed for the whole test process, not as a session fixture: the crash matrix's stacks
    # outlive the session's fixtures (they stop in pytest_unconfigure), and what is forked from
    # a zygote dies with it.
    config.stash[_ZYGOTES] = Zygotes(read_when_run=ADDRESSES, fork_after=1, base=True)
    processes.launch_with(config.stash[_ZYGOTES].child_for)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None and copyout.SHARED_VENVS not in os.environ:
        # Set before the test processes start, which inherit it: an example's demo and its
        # copy-out test then install the example's venv once between them.
        config.stash[_COPY_OUT_VENVS] = Path(tempfile.mkdtemp(prefix="cookbook-copy-out-"))
        os.environ[copyout.SHARED_VENVS] = str(config.stash[_COPY_OUT_VENVS])
    if workerinput is not None and "cookbook_golden_dir" in workerinput:
        matrix.share_goldens_through(Path(workerinput["cookbook_golden_dir"]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` that runs the tests sharing a costly set-up in one test process.

    - All of an example's crash points, and its pin test, go to one process, which makes the
      example's golden runs and starts its stack once. pytest-xdist's own loadgroup marks a
      group by appending `@<group>` to a test's node id, which pytest 9 no longer carries to the
      controller: the points were spread over every process, and each of them started the stack.
    - The tests of a module with a module-scoped fixture (an example's stack: a dev server, a
      sandbox, workers and gateways) go to one process too. Spread, each process set the stack
      up again: three or four times per module, 2-5 s each.
    - Every other test is a group of its own, so the independent ones (a demo, a copy-out, a
      chaos run) spread over every process.
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    scheduler = LoadScopeScheduling(config, log)
    shared = SharedSetUps(config.rootpath)
    # Its one extension point is this method; xdist ships no types to subclass it under mypy.
    scheduler._split_scope = lambda nodeid: crash_matrix_group(nodeid) or shared.group(nodeid)
    return scheduler


def crash_matrix_group(nodeid: str) -> str | None:
    """The example a crash-matrix test belongs to: its ids read `<example>[<crash point>]`, and
    the pin test's `[<example>]`."""
    module, _, name = nodeid.partition("::")
    if not module.endswith("test_crash_matrix.py") or "[" not in name:
        return None
    return "crash-matrix:" + name.split("[", 1)[1].split("[", 1)[0].removesuffix("]")


class SharedSetUps:
    """Which test modules share a module-scoped fixture, read from their source (the controller
    has node ids, not fixtures): the module's own file, or a conftest.py on its way up."""

    MODULE_SCOPE = re.compile(r"""scope\s*=\s*["'](module|package)["']""")

    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: dict[Path, bool] = {}

    def group(self, nodeid: str) -> str:
        module = nodeid.partition("::")[0]
        return f"module:{module}" if self._shares_set_up(self.root / module) else nodeid

    def _shares_set_up(self, module: Path) -> bool:
        if self._declares(module):
            return True
        return any(
            self._declares(directory / "conftest.py")
            for directory in module.parents
            if directory.is_relative_to(self.root)
        )

    def _declares(self, path: Path) -> bool:
        if path not in self._known:
            text = path.read_text() if path.is_file() else ""
            self._known[path] = self.MODULE_SCOPE.search(text) is not None
        return self._known[path]


def pytest_unconfigure(config: pytest.Config) -> None:
    # Not left to atexit: a test process that takes long to exit is killed by pytest-xdist's
    # controller, and the stacks it still held outlived the session.
    matrix.stop_all()
    zygotes = config.stash.get(_ZYGOTES, None)
    if zygotes is not None:
        processes.launch_with(None)
        zygotes.stop()
    venvs = config.stash.get(_COPY_OUT_VENVS, None)
    if venvs is not None:
        os.environ.pop(copyout.SHARED_VENVS, None)
        shutil.rmtree(venvs, ignore_errors=True)
    directory = config.stash.get(_GOLDEN_DIR, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
