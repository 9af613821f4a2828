"""`make new NAME=...` scaffolds an example that runs and passes its crash matrix out of the box."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cookbook import catalog, copyout
from cookbook.scaffold import ScaffoldError, scaffold

ROOT = catalog.repo_root(Path(__file__))


def tracked_copy(destination: Path) -> Path:
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    # mypy's cache from `make types`, so that checking the copy only has to look at the new
    # example: about 1 s instead of 19. `make test` starts mypy alongside the tests, so a cache
    # may not be there yet, or be partial: the copy's check then takes longer, and is as strict.
    # A file mypy replaces while it is copied is left out: the copy's check remakes it.
    if (ROOT / ".mypy_cache").is_dir():
        with contextlib.suppress(shutil.Error):
            shutil.copytree(ROOT / ".mypy_cache", destination / ".mypy_cache")
    return destination


def copy_env() -> dict[str, str]:
    """The environment for commands in the copy: a copied-out example's (cookbook.copyout), whose
    processes write the bytecode of what they import, and whose venv is made without compiling
    every installed package (most are never imported here: 20-30 CPU-seconds saved)."""
    dropped = {"VIRTUAL_ENV", "RESONATE_URL"}
    environ = {k: v for k, v in copyout.environment().items() if k not in dropped}
    return environ | {"UV_COMPILE_BYTECODE": "0"}


def make(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=copy,
        env=copy_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


NEW_EXAMPLE_CODE = ("examples/demo-app/demo_app", "examples/demo-app/tests")


# Make runs in a fresh copy (new, run, crash, lint), then mypy and the new example's tests: over
# a minute on a quiet machine, and more than the suite's 300 s default on a loaded one.
@pytest.mark.timeout(900)
def test_a_scaffolded_example_runs_and_survives_its_crash_matrix(tmp_path: Path) -> None:
    copy = tracked_copy(tmp_path / "cookbook")

    created = make(copy, "new", "NAME=demo-app")
    assert created.returncode == 0, created.stdout + created.stderr
    run = make(copy, "run-demo-app")
    crash = make(copy, "crash-demo-app")
    checks = make(copy, "lint")
    # Its code typed as strictly as the rest. Only its own: the whole tree is `make types`' job,
    # which runs alongside the suite, so its cache is not there yet and a second whole check here
    # cost 28 CPU-seconds of the suite's CPU-bound run.
    typed = subprocess.run(
        [copy / ".venv" / "bin" / "mypy", "--strict", *NEW_EXAMPLE_CODE],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # The scaffolded tests: among them, that a refusal is not retried and an outage is.
    tests = subprocess.run(
        [copy / ".venv" / "bin" / "pytest", "-q", "-p", "no:cacheprovider", "examples/demo-app"],
        cwd=copy,
        env=copy_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "✓ {'first':" in run.stdout
    assert crash.returncode == 0, crash.stdout + crash.stderr
    assert crash.stdout.strip().endswith("8 passed, 0 failed")
    assert checks.returncode == 0, checks.stdout + checks.stderr
    assert typed.returncode == 0, typed.stdout + typed.stderr
    assert "no issues found in 7 source files" in typed.stdout  # the package and its tests
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # 5 in process (tests/test_demo_app_workflow.py), 3 on the real stack (tests/cookbook/).
    assert "8 passed" in tests.stdout
    assert "[demo-app](examples/demo-app)" in (copy / "README.md").read_text()
    assert "  demo-app-worker:\n" in (copy / "docker-compose.yml").read_text()


@pytest.mark.parametrize("name", ["Demo", "demo_app", "-demo", "demo--app", "hello", ""])
def test_bad_or_taken_names_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(ScaffoldError):
        scaffold(name, ROOT)
