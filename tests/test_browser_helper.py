"""cookbook.testing.browser: Chromium is found, installed once under a lock, or skipped with why."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cookbook.testing import browser


class FakeMachine:
    """No chromium until `apt-get install` has run; apt takes a moment, as the real one does."""

    def __init__(self, *, apt: bool = True) -> None:
        self.apt = apt
        self.installed = False
        self.commands: list[list[str]] = []
        self.lock = threading.Lock()

    def which(self, name: str) -> str | None:
        if name == "apt-get":
            return "/usr/bin/apt-get" if self.apt else None
        return f"/usr/bin/{name}" if self.installed else None

    def run(self, command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        with self.lock:
            self.commands.append(command)
        time.sleep(0.05)  # long enough for every other caller to reach the lock
        if command[1] == "install":
            self.installed = True
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeMachine:
    fake = FakeMachine()
    # browser calls these through their modules (`shutil.which`): patched there, for it too.
    monkeypatch.setattr(shutil, "which", fake.which)
    monkeypatch.setattr(subprocess, "run", fake.run)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(browser, "LOCK", tmp_path / "install.lock")
    return fake


def test_parallel_callers_install_once(machine: FakeMachine) -> None:
    found: list[browser.Chromium | str] = []
    callers = [threading.Thread(target=lambda: found.append(browser.chromium())) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    assert found == [browser.Chromium("/usr/bin/chromium", "/usr/bin/chromedriver")] * 6
    assert machine.commands == [
        ["apt-get", "update", "-q"],
        [
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "chromium",
            "chromium-driver",
        ],
    ]


def test_installed_binaries_are_used_as_they_are(machine: FakeMachine) -> None:
    machine.installed = True

    assert browser.chromium() == browser.Chromium("/usr/bin/chromium", "/usr/bin/chromedriver")
    assert machine.commands == []


def test_without_apt_or_root_it_says_why(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine.apt = False
    without_apt = browser.chromium()
    machine.apt = True
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    not_root = browser.chromium()

    assert without_apt == (
        "no chromium/chromedriver, and no apt-get to install Debian's chromium-driver"
    )
    assert isinstance(not_root, str)
    assert "install them as root" in not_root
    assert machine.commands == []


def test_a_failing_apt_fails_the_test_with_its_output(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package")

    monkeypatch.setattr(subprocess, "run", failing)

    with pytest.raises(pytest.fail.Exception, match="Unable to locate package"):
        browser.chromium()
