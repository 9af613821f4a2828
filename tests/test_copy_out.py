"""A copy of an example, taken out of the cookbook, carries tests that pass there.

For every example: its folder alone is copied outside the workspace and installed from its own
pyproject.toml (and its `dev` group) into a fresh venv, as `make copy-out-<example>` does, and the
tests it carries (`tests/*.py`: the SDK's `resonate.testing`, its own package and dependencies,
pytest) run there. The tests that need the cookbook's harness (`tests/cookbook/`) stay behind.
A test that borrows from the cookbook (an import, a fixture of its pytest plugin) fails in the
copy: the last two tests plant one of each and see it fail.
"""

from __future__ import annotations

import re
import shutil
from importlib.util import cache_from_source
from pathlib import Path

import pytest
import resonate.resonate
from cookbook import catalog, copyout

EXAMPLES = [example.name for example in catalog.examples()]


def copy_and_test(example: str, destination: Path, planted: str | None = None) -> str:
    """Copy `example` out, optionally plant a test file, run the copy's tests; their output."""
    python = copyout.copy_out(catalog.example(example), destination)
    copy = destination / example
    assert not (copy / copyout.HARNESS_TESTS).exists(), "tests/cookbook/ was copied out"
    assert not (copy / ".dev-keys").exists(), "a development key ring was copied out"
    if planted is not None:
        (copy / "tests" / "test_planted.py").write_text(planted)
    done = copyout.run_tests(copy, python)
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("example", EXAMPLES)
def test_a_copy_passes_the_tests_it_carries(example: str, tmp_path: Path) -> None:
    output = copy_and_test(example, tmp_path)

    assert output.startswith("exit 0\n"), output
    assert re.search(r"\b\d+ passed\b", output), output
    # A portable test that skips itself in the copy tests nothing there.
    assert not re.search(r"\b\d+ (skipped|xfailed|deselected)\b", output), output


def test_a_copied_test_that_imports_the_cookbook_fails_there(tmp_path: Path) -> None:
    planted = "from cookbook import catalog\n\n\ndef test_borrowed() -> None:\n    assert catalog\n"

    output = copy_and_test("hello", tmp_path, planted)

    assert not output.startswith("exit 0\n"), output
    assert "No module named 'cookbook'" in output, output


def test_a_copied_test_that_uses_a_cookbook_fixture_fails_there(tmp_path: Path) -> None:
    planted = "def test_borrowed(devserver: object) -> None:\n    assert devserver\n"

    output = copy_and_test("hello", tmp_path, planted)

    assert not output.startswith("exit 0\n"), output
    assert "fixture 'devserver' not found" in output, output


def test_copies_of_the_same_sources_share_one_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(copyout.SHARED_VENVS, str(tmp_path / "venvs"))
    hello = catalog.example("hello")

    first = copyout.copy_out(hello, tmp_path / "first")
    second = copyout.copy_out(hello, tmp_path / "second")

    assert first == second
    assert first.is_relative_to(tmp_path / "venvs")
    assert (tmp_path / "second" / "hello" / "pyproject.toml").exists(), "each copy is its own"


def test_a_venv_is_shared_only_by_copies_of_the_same_sources(tmp_path: Path) -> None:
    copy = tmp_path / "hello"
    shutil.copytree(catalog.example("hello").path, copy)
    root = catalog.repo_root()
    before = copyout.sources_digest(copy, root)

    (copy / "hello" / "steps.py").write_text("# changed\n", encoding="utf-8")

    assert copyout.sources_digest(copy, root) != before


def test_a_copy_compiles_what_it_imports_even_where_bytecode_writing_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(copyout.SHARED_VENVS, str(tmp_path / "venvs"))
    monkeypatch.setenv("UV_COMPILE_BYTECODE", "1")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    python = copyout.copy_out(catalog.example("hello"), tmp_path)
    site_packages = next(python.parent.parent.glob("lib/python*/site-packages"))
    # The example's own modules, which nothing shares: its tests import them from the copy.
    package = tmp_path / "hello" / "hello"

    assert not list((site_packages / "hello").rglob("*.pyc")), "installed with modules compiled"
    assert not list(package.rglob("*.pyc")), "copied with its bytecode"

    done = copyout.run_tests(tmp_path / "hello", python)

    assert done.returncode == 0, done.stdout + done.stderr
    assert list(package.rglob("*.pyc")), "the copy's tests left no bytecode of what they imported"


def test_a_copy_loads_the_workspace_bytecode_of_the_files_it_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(copyout.SHARED_VENVS, str(tmp_path / "venvs"))
    python = copyout.copy_out(catalog.example("hello"), tmp_path)
    site_packages = next(python.parent.parent.glob("lib/python*/site-packages"))
    source = site_packages / "resonate" / "resonate.py"
    if not source.samefile(resonate.resonate.__file__):
        pytest.skip("uv copied its cache into the venv (another filesystem): nothing is shared")
    ours = Path(cache_from_source(str(source)))
    theirs = Path(cache_from_source(resonate.resonate.__file__))
    assert theirs.is_file(), "the workspace's venv is compiled (make setup)"

    assert ours.is_file(), "the copy has no bytecode of resonate.py"
    assert ours.samefile(theirs), "linked, not compiled again"
    done = copyout.run_tests(tmp_path / "hello", python)

    assert done.returncode == 0, done.stdout + done.stderr
    # Python replaces a compiled file it finds stale (by a new one): this one was loaded as it is.
    assert ours.samefile(theirs), "the copy compiled resonate.py again"
