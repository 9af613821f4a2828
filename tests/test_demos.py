"""Every example's `make run-<example>` works as its README shows it (CRASH= included)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cookbook import catalog

ROOT = catalog.repo_root(Path(__file__))
# The console script `make run-<example>` calls.
COOKBOOK = str(Path(sys.executable).with_name("cookbook"))
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
    """`make run-<example> [CRASH=...] [SKIP_TIME=1]`, with a TMPDIR of its own, so that what a
    demo keeps in temporary files is not shared with a demo another test process is running."""
    command = [COOKBOOK, "run", example, *(["--crash", crash] if crash else [])]
    command += ["--skip-time"] if skip_time else []
    environ = {k: v for k, v in os.environ.items() if k != "RESONATE_URL"}
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("example", "crash", "skip_time"), documented_runs())
def test_the_demo_runs_as_its_readme_says(
    example: str, crash: str | None, skip_time: bool, tmp_path: Path
) -> None:
    run = cookbook_run(example, crash, tmp_path, skip_time)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "Traceback" not in output, output
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
