"""Workers (and restarted dev servers) forked from a process that has imported what they import.

`python -m <worker>` spends most of its start-up importing (resonate, httpx, the example's
libraries: 0.4-0.6 CPU-seconds, k8s-drain's kubernetes client 1.8), and the crash matrix starts a
worker for nearly every crash point. A zygote is started once per harness with the workers' own
environment and directory, imports the modules the worker module imports (its top-level import
statements: nothing of the worker runs), and then forks one worker per request. A forked worker
is still a real process of its own that did not live through the run it takes over: it is forked
after the kill, in its own session, with its own environment, and it runs the worker module as
`python -m` would (`__main__`, argv, its own stdout and stderr, stdin from /dev/null; the zygote
refuses to fork if its imports started a thread, and it never creates an event loop or opens a
connection). It is a child of the zygote, not of the harness: the zygote reports its exit status,
which is how the harness sees a SIGKILL. What the zygote imported is frozen (`gc.freeze`) before
it forks: the forked process's garbage collector never walks it, and so never copies the pages
it shares with the zygote. The dev server the harness restarts after a server kill is forked the
same way, from a zygote of its own.

`Zygotes` keeps one zygote per kind of process (module, directory, environment) for a caller that
starts many: the crash harness, and every test process (cookbook.testing.fixtures), which also
keeps a base zygote that has imported only the libraries nearly every process imports, and forks
the first process of every kind from it.

Protocol, over a Unix socket the harness hands the zygote (`--control-fd`): the harness sends
`spawn {"args": [...], "env": {...}}\n` with the write end of a fresh pipe attached (SCM_RIGHTS),
which becomes the process's stdout and stderr; the zygote answers `pid <pid>\n`, and
`exit <pid> <code>\n` once it has reaped it (`<code>` as `subprocess.Popen.returncode` has it: -9
after a SIGKILL). When the harness goes away (end of file), the zygote SIGKILLs the processes it
still has, reaps them and exits.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import gc
import importlib
import importlib.util
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from cookbook.processes import Child, LineHandler, ManagedProcess, ProcessStartError

READY = r"zygote (\d+) ready"
PR_SET_PDEATHSIG = 1


def imported_by(module: str) -> list[str]:
    """The modules `module`'s top-level import statements name (absolute ones only); for a
    package, its `__main__`'s, which is what `python -m <package>` runs."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations is not None:
        spec = importlib.util.find_spec(f"{module}.__main__")
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return []
    tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import module` imports a module; `from module import name`, a name.
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


# What libraries import on first use rather than at import time, so every forked worker would
# import it again: httpx its transport (httpcore) when the first client is made, and httpcore
# anyio's asyncio backend on the first request. A third of a worker's CPU in the matrix.
IMPORTED_ON_FIRST_USE = ("httpcore", "anyio", "anyio._backends._asyncio")
# What nearly every process the cookbook starts imports (the SDK, HTTP clients and servers): 0.4
# of the 0.4-0.5 CPU-seconds a worker, a gateway, a sandbox or a dev server spends importing. A
# base zygote imports these alone, and forks processes of any module.
LIBRARIES = ("resonate", "httpx", "pydantic", "fastapi", "uvicorn", "aiohttp")


def preload(module: str) -> None:
    """Import what `module` imports, and what its libraries import on first use; a name that
    fails to import is left to the worker itself (or is no module: a name imported from one)."""
    for name in [*imported_by(module), *IMPORTED_ON_FIRST_USE]:
        if name == "__future__" or name.startswith("__future__."):
            continue
        try:
            importlib.import_module(name)
        except Exception:
            continue


def serve(control: socket.socket) -> dict[str, Any] | None:
    """Fork a process per request until the harness goes away.

    Returns, in a forked process only, the request it was forked for.
    """
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pidfd -> pid
    buffer = b""
    pipes: list[int] = []  # received with requests, one each
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is control:
                    message, fds, _, _ = socket.recv_fds(control, 1 << 16, 1)
                    if not message:
                        return None
                    buffer += message
                    pipes += fds
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        verb, _, arguments = line.partition(b" ")
                        assert verb == b"spawn", f"zygote: bad request {line!r}"
                        assert pipes, "zygote: a spawn request without its output pipe"
                        output = pipes.pop(0)
                        pid = os.fork()
                        if pid == 0:
                            selector.close()
                            for pidfd in children:
                                os.close(pidfd)
                            children.clear()  # the zygote's, not this worker's, to stop
                            control.close()
                            request: dict[str, Any] = json.loads(arguments)
                            _become_worker(output, request["env"])
                            return request
                        os.close(output)
                        pidfd = os.pidfd_open(pid)
                        children[pidfd] = pid
                        selector.register(pidfd, selectors.EVENT_READ)
                        control.sendall(f"pid {pid}\n".encode())
                else:
                    pidfd = key.fd
                    pid = children.pop(pidfd)
                    selector.unregister(pidfd)
                    os.close(pidfd)
                    _, status = os.waitpid(pid, 0)
                    code = os.waitstatus_to_exitcode(status)
                    control.sendall(f"exit {pid} {code}\n".encode())
    finally:
        if children:  # the harness went away (or this zygote failed): leave no worker behind
            for pidfd, pid in children.items():
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.waitpid(pid, 0)


def _become_worker(output: int, env: dict[str, str]) -> None:
    """In the forked child: the process `python -m <worker>` would have started."""
    os.environ.clear()
    os.environ.update(env)
    os.setsid()  # its own session, as ManagedProcess starts processes
    # Dies with the zygote, which the harness always outlives: no worker outlives its harness.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(null)
    os.close(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "module",
        nargs="?",
        help="the worker module, as `python -m` takes it; none: a base zygote (LIBRARIES)",
    )
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args()
    control = socket.socket(fileno=args.control_fd)
    if args.module is None:
        for library in [*LIBRARIES, *IMPORTED_ON_FIRST_USE]:
            importlib.import_module(library)
    else:
        preload(args.module)
    what = args.module or "the libraries"
    # Forking a process with threads would copy their locks in whatever state they were.
    if threading.active_count() != 1:
        sys.exit(f"zygote: importing {what}'s imports started threads; cannot fork")
    # A process forked from here finds its temporary directory in its own environment.
    if tempfile.tempdir is not None:
        sys.exit(f"zygote: importing {what} chose a temporary directory; cannot fork")
    # What the zygote imported, out of the garbage collector's sight in every process forked
    # from here: a collection there (one runs as the interpreter exits) would write to every
    # object header it inherited, and copy each page of them (devserver + sandbox, started and
    # stopped: 240 -> 115 ms of CPU). Modules, classes and functions: nothing there to collect.
    gc.freeze()
    print(f"zygote {os.getpid()} ready", flush=True)
    request = serve(control)
    if request is None:
        return
    if "cwd" in request:  # forked from a base zygote: where `python -m` would have started
        os.chdir(request["cwd"])
        if not sys.flags.safe_path:
            sys.path[0] = request["cwd"]
    # run_module sets argv[0] to the module's file, as -m does.
    sys.argv = [sys.argv[0], *request["args"]]
    runpy.run_module(request.get("module", args.module), run_name="__main__", alter_sys=True)


class Zygote:
    """The harness's side of a zygote: start it, fork workers from it, stop it.

    A zygote of a module (`python -m <module>`) has imported what that module imports; a base
    zygote (`module` None) only the LIBRARIES, and forks processes of any module.
    """

    def __init__(
        self,
        module: str | None,
        env: Mapping[str, str],
        cwd: Path | None = None,
        *,
        read_when_run: Collection[str] = (),
    ) -> None:
        self.module = module
        # Variables the module's imports do not read: a process forked from here may have
        # other values for them (a dev server's address, given to each worker as it starts).
        self.read_when_run = MAY_DIFFER | frozenset(read_when_run)
        self._control, self._theirs = socket.socketpair()
        fd = self._theirs.fileno()
        argv = [sys.executable, "-m", "cookbook.crash.zygote", *([module] if module else [])]
        argv += ["--control-fd", str(fd)]
        self.process = ManagedProcess(
            f"zygote-{module or 'base'}", argv, ready=READY, env=env, cwd=cwd, pass_fds=(fd,)
        )
        self._spawning = threading.Lock()
        self._state = threading.Condition()
        self._pids: list[int] = []  # answers to spawn requests, not yet taken
        self._children: dict[int, ForkedChild] = {}
        self._early_exits: dict[int, int] = {}  # reaped before their ForkedChild existed
        self._gone = False
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> Zygote:
        try:
            self.process.start(timeout)
        except BaseException:
            self._control.close()
            raise
        finally:
            self._theirs.close()
        self._reader = threading.Thread(target=self._read, name=self.process.name, daemon=True)
        self._reader.start()
        return self

    def stop(self) -> None:
        """Stop the zygote; it SIGKILLs whatever worker it still has first."""
        with self._spawning:
            self._control.close()
        self.process.stop()
        if self._reader is not None:
            self._reader.join(timeout=5)

    @classmethod
    def of(cls, process: ManagedProcess, read_when_run: Collection[str] = ()) -> Zygote:
        """A zygote for processes like `process` (`python -m <module> ...`, not started)."""
        if process.argv[1:2] != ["-m"]:
            raise ValueError(f"{process.name} is not started as `python -m <module>`")
        return cls(process.argv[2], process.env, process.cwd, read_when_run=read_when_run)

    def fork(self, process: ManagedProcess) -> ForkedProcess:
        """`process` (`python -m <this zygote's module> ...`, not started), forked from here.

        Its environment and directory must be the zygote's (`read_when_run` aside): what the
        zygote imported has read them already."""
        if self.module is None or process.argv[1:3] != ["-m", self.module]:
            raise ValueError(f"{process.name} does not run {self.module}")
        if process.cwd != self.process.cwd or _differences(
            process.env, self.process.env, self.read_when_run
        ):
            raise ValueError(
                f"{process.name} runs with another environment than {self.process.name}"
            )
        return ForkedProcess(
            process.name,
            self,
            process.argv[3:],
            ready=process.ready_pattern.pattern,
            env=process.env,
            on_line=process.on_line,
        )

    def spawn(
        self,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 20.0,
        *,
        module: str | None = None,
        cwd: Path | None = None,
    ) -> ForkedChild:
        """Fork `python -m <module> <args>`; its stdout and stderr are the child's `stdout`.

        From a base zygote, `module` is the one to run and `cwd` where (the caller's directory
        if None), as `python -m` would have been started there.
        """
        if (module is None) == (self.module is None):
            raise ValueError("a base zygote forks a module given; another, its own module")
        read_end, write_end = os.pipe()
        try:
            with self._spawning:
                environment = dict(self.process.env if env is None else env)
                fields: dict[str, Any] = {"args": list(args), "env": environment}
                if module is not None:
                    fields |= {"module": module, "cwd": str(cwd or Path.cwd())}
                request = f"spawn {json.dumps(fields)}\n"

                socket.send_fds(self._control, [request.encode()], [write_end])
                with self._state:
                    if not self._state.wait_for(lambda: self._pids or self._gone, timeout):
                        raise ProcessStartError(
                            f"{self.process.name} did not fork within {timeout}s"
                        )
                    if not self._pids:
                        raise ProcessStartError(
                            f"{self.process.name} exited:\n{self.process.tail()}"
                        )
                    pid = self._pids.pop(0)
                    child = ForkedChild(pid, os.fdopen(read_end, "r"), self._state)
                    self._children[pid] = child
                    if pid in self._early_exits:
                        child.returncode = self._early_exits.pop(pid)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        return child

    def _read(self) -> None:
        with self._control.makefile("r") as replies:
            for line in replies:
                kind, pid, *code = line.split()
                with self._state:
                    if kind == "pid":
                        self._pids.append(int(pid))
                    elif int(pid) in self._children:
                        self._children.pop(int(pid)).returncode = int(code[0])
                    else:
                        self._early_exits[int(pid)] = int(code[0])
                    self._state.notify_all()
        with self._state:  # the zygote is gone, and its workers with it (PR_SET_PDEATHSIG)
            self._gone = True
            for child in self._children.values():
                child.returncode = -signal.SIGKILL
            self._children.clear()
            self._state.notify_all()


class ForkedChild:
    """A forked worker as `ManagedProcess` sees a `subprocess.Popen`: pid, output, exit status."""

    def __init__(self, pid: int, stdout: IO[str], state: threading.Condition) -> None:
        self.pid = pid
        self.stdout: IO[str] | None = stdout
        self.returncode: int | None = None
        self._state = state

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._state:
            if not self._state.wait_for(lambda: self.returncode is not None, timeout):
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode


class ForkedProcess(ManagedProcess):
    """A process forked by a zygote; otherwise a ManagedProcess like any other."""

    def __init__(
        self,
        name: str,
        zygote: Zygote,
        args: Sequence[str] = (),
        *,
        ready: str,
        env: Mapping[str, str] | None = None,
        on_line: LineHandler | None = None,
    ) -> None:
        assert zygote.module is not None, "forked from a zygote of its module"
        argv = [sys.executable, "-m", zygote.module, *args]
        super().__init__(name, argv, ready=ready, env=env, on_line=on_line, cwd=zygote.process.cwd)
        self.zygote = zygote
        self.args = list(args)

    def _launch(self) -> Child:
        self.env.setdefault("PYTHONUNBUFFERED", "1")  # as for a process ManagedProcess starts
        return self.zygote.spawn(self.args, self.env)


# Variables that may differ between any zygote's environment and its children's: ManagedProcess
# adds PYTHONUNBUFFERED to the zygote's; pytest changes PYTEST_CURRENT_TEST with every test (the
# dev server's environment is the test process's). A child gets its own environment all the same.
MAY_DIFFER = frozenset({"PYTHONUNBUFFERED", "PYTEST_CURRENT_TEST"})


def _differences(
    ours: Mapping[str, str], theirs: Mapping[str, str], ignoring: Collection[str] = MAY_DIFFER
) -> set[str]:
    keys = (ours.keys() | theirs.keys()) - set(ignoring)
    return {key for key in keys if ours.get(key) != theirs.get(key)}


type Kind = tuple[str, Path | None, tuple[tuple[str, str], ...]]

# What the interpreter reads from the environment as it starts (sys.path, hash seed, warnings,
# stdio encoding, time zone, ...): a process forked from a base zygote must have the zygote's.
BASE_SETTINGS = ("PYTHON", "LANG", "LC_", "TZ")


def _settings(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(BASE_SETTINGS) and k not in MAY_DIFFER}


def _forkable(process: ManagedProcess) -> bool:
    """Started as `python -m <module>` by this interpreter, with no file descriptor to pass."""
    argv = process.argv
    return argv[:2] == [sys.executable, "-m"] and len(argv) >= 3 and not process.pass_fds


class Zygotes:
    """A zygote per kind of `python -m` process a caller starts, each started when first needed.

    A kind is a module, a directory and an environment (`read_when_run` aside). `launch` returns
    the process to start: forked from its kind's zygote, or as it was where it cannot be forked
    (another interpreter, file descriptors to pass, a zygote that failed to start). With
    `fork_after=n`, the first n processes of a kind start as they are: a zygote costs one start-up
    of its own, which a kind that is started once would never win back.

    With `base=True`, `child_for` forks those first processes from a base zygote (one for every
    kind, started when first needed, in the caller's environment), which has imported only the
    LIBRARIES: their import was most of their start-up. Only a process whose interpreter
    settings (BASE_SETTINGS) are the base zygote's: those are read as the interpreter starts.
    """

    def __init__(
        self, *, read_when_run: Collection[str] = (), fork_after: int = 0, base: bool = False
    ) -> None:
        self.read_when_run = MAY_DIFFER | frozenset(read_when_run)
        self.fork_after = fork_after
        self._zygotes: dict[Kind, Zygote] = {}
        self._failed: set[Kind] = set()
        self._started: Counter[Kind] = Counter()
        self._lock = threading.Lock()
        self._base: Zygote | None = None
        self._base_wanted = base

    def launch(self, process: ManagedProcess) -> ManagedProcess:
        """`process` (not started), forked from its kind's zygote where it can be."""
        zygote = self.zygote_for(process)
        return process if zygote is None else zygote.fork(process)

    def child_for(self, process: ManagedProcess) -> ForkedChild | None:
        """`process`, being started, forked from its kind's zygote; None where it cannot be (yet).

        A launcher for every process a caller starts (`cookbook.processes.launch_with`).
        """
        zygote = self.zygote_for(process)
        if zygote is not None:
            return zygote.spawn(process.argv[3:], process.env)
        base = self._base_for(process)
        if base is None:
            return None
        return base.spawn(process.argv[3:], process.env, module=process.argv[2], cwd=process.cwd)

    def zygote_for(self, process: ManagedProcess) -> Zygote | None:
        """The zygote for processes like `process`, started here if it is due; None if there is
        none (yet)."""
        if not _forkable(process):
            return None
        kind = self._kind(process)
        with self._lock:
            if kind in self._zygotes or kind in self._failed:
                return self._zygotes.get(kind)
            self._started[kind] += 1
            if self._started[kind] <= self.fork_after:
                return None
            try:
                zygote = Zygote.of(process, self.read_when_run).start()
            except ProcessStartError:
                self._failed.add(kind)
                return None
            self._zygotes[kind] = zygote
            return zygote

    def _base_for(self, process: ManagedProcess) -> Zygote | None:
        if not self._base_wanted or not _forkable(process):
            return None
        with self._lock:
            if self._base is None:
                if _settings(process.env) != _settings(os.environ):
                    return None  # it could not serve this process: not started for it
                try:
                    self._base = Zygote(None, os.environ).start()
                except ProcessStartError:
                    self._base_wanted = False
                    return None
            base = self._base
        return base if _settings(process.env) == _settings(base.process.env) else None

    def stop(self) -> None:
        """Stop every zygote, and with it whatever process forked from it is still running."""
        with self._lock:
            while self._zygotes:
                self._zygotes.popitem()[1].stop()
            if self._base is not None:
                self._base.stop()
                self._base = None

    def _kind(self, process: ManagedProcess) -> Kind:
        env = tuple(
            sorted(item for item in process.env.items() if item[0] not in self.read_when_run)
        )
        return process.argv[2], process.cwd, env


if __name__ == "__main__":
    main()
