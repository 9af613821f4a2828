"""The suite's pytest plugins are the ones `pyproject.toml` names; none is auto-loaded.

pytest assertion-rewrites the whole package of every auto-loaded plugin, and where bytecode is
not written (CI) every test process rewrote and compiled hypothesis, schemathesis and anyio again.
"""

from __future__ import annotations

import importlib

import pytest

NAMED = ("xdist", "timeout", "hypothesispytest", "anyio.pytest_plugin", "cookbook.testing.fixtures")
# Installed, each with a pytest11 entry point, and not wanted.
INSTALLED_NOT_NAMED = ("schemathesis", "platformdirs")


def test_the_named_plugins_are_loaded_and_no_other_installed_one(
    pytestconfig: pytest.Config,
) -> None:
    plugins = pytestconfig.pluginmanager
    assert [name for name in NAMED if not plugins.has_plugin(name)] == []
    assert [name for name in INSTALLED_NOT_NAMED if plugins.has_plugin(name)] == []


@pytest.mark.parametrize("library", ["hypothesis", "anyio"])
def test_a_plugins_library_is_imported_as_installed_not_rewritten(library: str) -> None:
    module = importlib.import_module(library)
    assert type(module.__loader__).__name__ != "AssertionRewritingHook"
