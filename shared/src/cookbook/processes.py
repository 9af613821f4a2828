"""Child processes that are started with a readiness line and always stopped by their pid.

Every server, worker and gateway the cookbook starts goes through `ManagedProcess`: it waits for
the process to say it is ready (no sleeps), keeps its output, and stops it with SIGTERM, then
SIGKILL, also when the caller fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, Self

type LineHandler = Callable[[str], None]


class Child(Protocol):
    """What ManagedProcess needs of a started process: a `subprocess.Popen`, or a forked one
    (cookbook.crash.zygote)."""

    @property
    def pid(self) -> int: ...
    @property
    def stdout(self) -> IO[str] | None: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class ProcessStartError(RuntimeError):
    """A child exited or stayed silent before it was ready; the message carries its last output."""


# Starts a process another way than `subprocess.Popen` (forked from a process that has imported
# what it imports: cookbook.crash.zygote), or returns None to leave it to Popen.
type Launcher = Callable[["ManagedProcess"], Child | None]
_launcher: Launcher | None = None


def launch_with(launcher: Launcher | None) -> Launcher | None:
    """From now on, start every ManagedProcess with `launcher` first (None: with Popen alone);
    returns the launcher this replaces.

    For a process that starts many processes of few kinds: the test suite forks the dev servers,
    sandboxes, workers and gateways its tests start (cookbook.testing.fixtures).
    """
    global _launcher
    replaced, _launcher = _launcher, launcher
    return replaced


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_line: LineHandler | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready_pattern = re.compile(ready)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.on_line = on_line
        self.pass_fds = tuple(pass_fds)
        self.output: deque[str] = deque(maxlen=400)
        self.ready_match: re.Match[str] | None = None
        self._popen: Child | None = None
        self._ready = threading.Event()
        self._settled = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._popen is not None, f"{self.name} was never started"
        return self._popen.pid

    def start(self, timeout: float = 20.0) -> Self:
        self._popen = self._launch()
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()
        # Set by the reader at the readiness line, or when the output ends (the process exited;
        # unless a child of its own still holds its output: then poll() says so).
        deadline = time.monotonic() + timeout
        while not self._settled.wait(0.5):
            if self._popen.poll() is not None or time.monotonic() > deadline:
                break
        if not self._ready.is_set():
            self.stop()
            state = (
                f"exited with code {self._popen.returncode}"
                if self._popen.returncode is not None
                else f"not ready after {timeout}s"
            )
            raise ProcessStartError(f"{self.name} {state}; last output:\n{self.tail()}")
        return self

    def _launch(self) -> Child:
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        if _launcher is not None and (child := _launcher(self)) is not None:
            return child
        return subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C in the terminal reaches the launcher, which then stops
            # its children in order, instead of every process at once.
            start_new_session=True,
            pass_fds=self.pass_fds,
        )

    def _read(self) -> None:
        assert self._popen is not None
        assert self._popen.stdout is not None
        for raw in self._popen.stdout:
            line = raw.rstrip("\n")
            self.output.append(line)
            if not self._ready.is_set() and (match := self.ready_pattern.search(line)):
                self.ready_match = match
                self._ready.set()
                self._settled.set()
            if self.on_line is not None:
                self.on_line(line)
        self._settled.set()

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float) -> int:
        assert self._popen is not None
        return self._popen.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would; reaps the process."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        if self._popen is not None:
            self._popen.wait()

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds. Safe to call twice."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._reader is not None:
            self._reader.join(timeout=2)
        return self._popen.returncode

    def tail(self, lines: int = 30) -> str:
        return "\n".join(list(self.output)[-lines:])

    def __enter__(self) -> Self:
        return self.start() if self._popen is None else self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def stopping(processes: list[ManagedProcess]) -> Iterator[list[ManagedProcess]]:
    """Stop every process in the list (last started first) on the way out, whatever happened."""
    try:
        yield processes
    finally:
        for process in reversed(processes):
            process.stop()
