"""Every example's `make run-<example>` works as its README shows it (CRASH= included), and works
copied out: each demo runs from a copy of the example's folder alone, installed from its own
pyproject.toml into a fresh venv outside the workspace (`--copy-out`, cookbook.copyout), so an
example that silently borrows a module, a file or a dependency from the workspace fails here."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cookbook import catalog

ROOT = catalog.repo_root(Path(__file__))
# The console script `make run-<example>` calls.
COOKBOOK = str(Path(sys.executable).with_name("cookbook"))
DEMO_TIMEOUT_SECONDS = 120
CRASH_COMMAND = re.compile(r"make run-(?P<example>[a-z0-9-]+) CRASH=(?P<spec>[a-z][a-z0-9.#]*)")
# A README whose demo needs the dev server to skip time (an every-minute schedule) shows it so.
SKIP_TIME_COMMAND = re.compile(r"make run-(?P<example>[a-z0-9-]+)( CRASH=\S+)? SKIP_TIME=1")


def documented_runs() -> list[object]:
    """Each example's demo, with the CRASH= its README shows if it shows one, and with SKIP_TIME=1
    if its README runs it so.

    A crash run is the plain demo plus a kill and a take-over: running both would run the demo
    twice to learn little more.
    """
    runs: list[object] = []
    for example in catalog.examples():
        if example.demo is None:
            continue
        readme = (example.path / "README.md").read_text()
        specs = {m["spec"] for m in CRASH_COMMAND.finditer(readme) if m["example"] == example.name}
        skip = any(m["example"] == example.name for m in SKIP_TIME_COMMAND.finditer(readme))
        runs += [
            pytest.param(example.name, spec, skip, id=f"{example.name}-CRASH={spec}")
            for spec in sorted(specs)
        ] or [pytest.param(example.name, None, skip, id=example.name)]
    return runs


def cookbook_run(
    example: str, crash: str | None, tmp: Path, skip_time: bool = False
) -> subprocess.CompletedProcess[str]:
    """`make run-<example> COPY_OUT=1 [CRASH=...] [SKIP_TIME=1]`, with a TMPDIR of its own (where
    the copy goes too), so that what a demo keeps in temporary files is not shared with a demo
    another test process is running."""
    command = [COOKBOOK, "run", example, "--copy-out", *(["--crash", crash] if crash else [])]
    command += ["--skip-time"] if skip_time else []
    environ = {k: v for k, v in os.environ.items() if k != "RESONATE_URL"}
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env={**environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=DEMO_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            # Terminated, `cookbook run` stops every process it started (each runs in a session
            # of its own, so a SIGKILL of `cookbook` alone would leave them running).
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=30)
            pytest.fail(f"the demo took more than {DEMO_TIMEOUT_SECONDS} s:\n{stdout}{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.parametrize(("example", "crash", "skip_time"), documented_runs())
def test_the_demo_runs_as_its_readme_says(
    example: str, crash: str | None, skip_time: bool, tmp_path: Path
) -> None:
    run = cookbook_run(example, crash, tmp_path, skip_time)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Traceback" not in output, output
    assert f"· copied out: {tmp_path}" in run.stdout, output
    assert run.stdout.rstrip().splitlines()[-1].endswith("every process stopped"), output
    if crash:
        assert f"💥 worker-1 was SIGKILLed: {crash} acted" in run.stdout, output
        assert "· worker-2 started" in run.stdout, output
    else:
        assert "💥" not in run.stdout, output


def test_a_crash_that_never_fires_says_so(tmp_path: Path) -> None:
    run = cookbook_run("hello", "sms#2", tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "CRASH=sms#2 never fired: the demo applied no such effect" in run.stdout
    assert "💥" not in run.stdout


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_text():
                found.append(int(proc.name))
        except OSError:
            continue  # it ended meanwhile
    return found


def test_a_terminated_run_stops_every_process_it_started(tmp_path: Path) -> None:
    # countdown's real-time demo runs for about 9 s: long enough to be stopped in the middle.
    environ = {k: v for k, v in os.environ.items() if k not in ("RESONATE_URL", "SKIP_TIME")}
    run = subprocess.Popen(
        [COOKBOOK, "run", "countdown"],
        cwd=ROOT,
        env={**environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its demo shares its process group: both stopped at the end
    )
    worker_pid = 0
    try:
        assert run.stdout is not None
        for line in run.stdout:
            if match := re.search(r"worker-1 \(pid (\d+)\)", line):
                worker_pid = int(match[1])
            if "push to" in line:  # the demo is under way
                break
        assert worker_pid
        assert len(_processes_mentioning(str(tmp_path))) >= 2  # the dev server, the sandbox
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 128 + signal.SIGTERM
        leftovers = _processes_mentioning(str(tmp_path))
        assert not leftovers, "still running after `cookbook run` was terminated"
        assert not Path(f"/proc/{worker_pid}").exists(), "the worker outlived `cookbook run`"
    finally:  # whatever happened, nothing this test started keeps running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        for pid in [*_processes_mentioning(str(tmp_path)), *([worker_pid] if worker_pid else [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run.wait()
        if run.stdout is not None:
            run.stdout.close()
