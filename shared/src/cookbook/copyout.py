"""An example copied out of the cookbook, as a user copies it: its folder alone, its own venv.

`cookbook run <example> --copy-out` (and `tests/test_demos.py`, for every example) copies the
example's folder to a temporary directory outside the workspace, installs it from its own
`pyproject.toml` into a fresh virtual environment, and runs the example's worker, gateway and demo
from there, in that directory. The dev server and the provider sandbox still come from the
cookbook: they stand in for the Resonate server and the third-party APIs, which a user has anyway.
Whatever an example silently borrowed from the workspace (a module of another package, a file
outside its folder, a dependency it does not declare) fails there.

The versions installed are the workspace's: the lock is exported as constraints (`uv export`),
so the copy runs on what the cookbook tested, resolved from the copy's own declared dependencies.

A copy carries the example's portable tests (`tests/*.py`: the SDK's `resonate.testing`, the
example's own package and dependencies, pytest) and runs them there (`run_tests`, `cookbook
copy-out <example>`). The tests that need the cookbook's harness live in `tests/cookbook/`, which
stays behind: they test the example in the cookbook, and would not import outside it.

The test suite copies every example out twice (its demo, its tests) in parallel test processes.
With `COOKBOOK_COPY_OUT_VENVS` set to a directory (the suite's pytest plugin sets it), copies of
the same sources pinned by the same `uv.lock` share one venv there; the first copy makes it,
under a file lock.

A copy's venv is installed without compiling its packages' bytecode. Where uv linked an installed
file from its cache, it is the very file the workspace's venv has, and so is its bytecode: the
copy gets the workspace's compiled file linked beside it (`reuse_bytecode`; Python still checks
it against the source, as any cached bytecode). The rest (the example's own package) is compiled
by the first of the copy's processes that imports it: they run with `environment()`, which lets
them write bytecode even where PYTHONDONTWRITEBYTECODE is set. Compiling every installed module
up front cost more than twice as much as compiling what is imported (k8s-drain: 3,222 modules,
7.7 CPU-seconds; its tests import 900 of them, 2.2 CPU-seconds); linking costs 0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Mapping
from importlib.util import cache_from_source
from pathlib import Path

from cookbook.catalog import Example, repo_root

# What a user's copy would not have: caches, the artefacts of runs, and the development key rings
# an example creates on first use (a copy makes its own).
_ARTEFACTS = shutil.ignore_patterns(
    "__pycache__",
    "*.pyc",
    ".venv",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "*.db",
    ".dev-keys",
)
# The tests that need the cookbook's harness: they stay in the cookbook.
HARNESS_TESTS = Path("tests") / "cookbook"


def _ignored(example: Path) -> Callable[[str, list[str]], set[str]]:
    def ignored(directory: str, names: list[str]) -> set[str]:
        left = set(_ARTEFACTS(directory, names))
        if Path(directory) == example / HARNESS_TESTS.parent:
            left |= {HARNESS_TESTS.name} & set(names)
        return left

    return ignored


class CopyOutError(RuntimeError):
    pass


def uv() -> list[str]:
    """The uv the Makefile uses: on PATH, or the module installed into the system's python3."""
    found = shutil.which("uv")
    if found:
        return [found]
    python3 = shutil.which("python3") or sys.executable
    return [python3, "-m", "uv"]


def _run(argv: list[str], what: str, env: Mapping[str, str] | None = None) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise CopyOutError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def constraints(root: Path, destination: Path) -> Path:
    """The workspace's locked versions as a pip constraints file."""
    _run(
        [
            *uv(),
            "export",
            "--frozen",
            "--all-packages",
            "--all-groups",
            "--no-hashes",
            "--no-emit-workspace",
            "--no-header",
            "--quiet",
            "--project",
            str(root),
            "-o",
            str(destination),
        ],
        "uv export (the workspace's lock as constraints)",
    )
    return destination


SHARED_VENVS = "COOKBOOK_COPY_OUT_VENVS"


def copy_out(example: Example, destination: Path) -> Path:
    """The example's folder, alone, at `destination/<name>`, installed into `destination/venv`
    (or into a shared venv: see `SHARED_VENVS`).

    Returns the python of that venv. Its dependency group `dev`, if it declares one, is installed
    too: the tests a copy carries may need it.
    """
    root = repo_root(example.path)
    copy = destination / example.name
    shutil.copytree(example.path, copy, ignore=_ignored(example.path))
    shared = os.environ.get(SHARED_VENVS)
    if not shared:
        return _install(copy, root, destination / "venv")
    Path(shared).mkdir(parents=True, exist_ok=True)
    venv = Path(shared) / f"{example.name}-{sources_digest(copy, root)}"
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed; a crashed holder's too
        complete = venv / "complete"
        if not complete.exists():
            shutil.rmtree(venv, ignore_errors=True)  # a half-made one, if its maker failed
            venv.mkdir(parents=True)
            _install(copy, root, venv / "venv")
            complete.touch()
    return venv / "venv" / "bin" / "python"


def _install(copy: Path, root: Path, venv: Path) -> Path:
    """`copy` installed into a new venv at `venv`, pinned to the workspace's lock; its python."""
    _run([*uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], "uv venv")
    python = venv / "bin" / "python"
    pins = constraints(root, venv.parent / "constraints.txt")
    # Not compiled here, even if UV_COMPILE_BYTECODE is set: the copy's processes compile what
    # they import, once (see `environment`).
    install = [*uv(), "pip", "install", "--quiet", "--python", str(python)]
    install += ["-c", str(pins)]
    install.append(str(copy))
    if "[dependency-groups]" in (copy / "pyproject.toml").read_text():
        install += ["--group", f"{copy / 'pyproject.toml'}:dev"]
    lazily = {**os.environ, "UV_COMPILE_BYTECODE": "0"}  # over a uv.toml's setting too
    _run(install, f"installing {copy.name} from its own pyproject.toml", env=lazily)
    reuse_bytecode(_site_packages(venv), Path(sysconfig.get_path("purelib")))
    return python


def _site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


def reuse_bytecode(site_packages: Path, compiled_from: Path) -> int:
    """Link into `site_packages` the bytecode `compiled_from` (another venv's site-packages, of
    this interpreter) holds for every source file the two share: the same file, linked into both
    from uv's cache. Returns how many were linked.

    A compiled file records its source's modification time and size; both are the shared file's,
    so the copy's processes load it as their own. One that stops matching is compiled again and
    replaced (by a new file: the other venv's stays as it was).
    """
    linked = 0
    for directory, _, names in os.walk(site_packages):
        for name in names:
            if not name.endswith(".py"):
                continue
            source = Path(directory, name)
            theirs = compiled_from / source.relative_to(site_packages)
            compiled = Path(cache_from_source(str(theirs)))
            if not compiled.is_file() or not os.path.samefile(source, theirs):
                continue
            ours = Path(cache_from_source(str(source)))
            ours.parent.mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):  # linked by an earlier call
                os.link(compiled, ours)
                linked += 1
    return linked


def sources_digest(copy: Path, root: Path) -> str:
    """What the venv is made from: the copy's files (the package is installed from them) and the
    workspace's lock (the versions)."""
    digest = hashlib.sha256((root / "uv.lock").read_bytes())
    for path in sorted(p for p in copy.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(copy)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def environment() -> dict[str, str]:
    """The environment a copy's processes run with: the caller's without PYTHONDONTWRITEBYTECODE,
    so that each module a copy imports is compiled once, by the first of its processes to import
    it, and the others load its bytecode (k8s-drain's worker starts in 1.2 s with it, 2.6 s
    without)."""
    environ = dict(os.environ)
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return environ


def run_tests(copy: Path, python: Path) -> subprocess.CompletedProcess[str]:
    """The copy's own tests, run as its user would run them: `python -m pytest tests` in the copy.

    The environment is the caller's without the variables that would let a test reach back into
    the workspace (PYTHONPATH) or at a server (RESONATE_URL): portable tests run in process.
    """
    environ = environment()
    for reach_back in ("PYTHONPATH", "RESONATE_URL"):
        environ.pop(reach_back, None)
    return subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=copy,
        env=environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
