"""A real headless Chromium for tests: Debian's `chromium` and `chromium-driver`, with selenium.

Playwright's own browser download cannot be reached where the cookbook is tested, but Debian's
packages can. `chromium()` finds the two binaries, or installs them with apt when they are
missing and apt can be used (root, `apt-get` on PATH: as on CI's machines); elsewhere it says why
not, and the test is skipped with that reason. The install takes about a minute (apt-get update
included) and happens once per machine: pytest processes running in parallel take a lock on a
file, and the ones that wait find the binaries installed when they get it.

    def test_a_page(browser: Callable[[], WebDriver]) -> None: ...

with `from cookbook.testing.browser import browser_fixture  # noqa: F401` in the test module: a
session fixture named `browser` that yields a factory; each driver it makes is quit at the end.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # selenium is a test dependency of the examples that use this, imported late
    from selenium.webdriver import Chrome

PACKAGES = ("chromium", "chromium-driver")
INSTALL_TIMEOUT_SECONDS = 240  # per apt-get command; under pytest-timeout's 300 s per test
LOCK = Path(tempfile.gettempdir()) / "cookbook-chromium-install.lock"


@dataclass(frozen=True)
class Chromium:
    browser: str  # the chromium binary
    driver: str  # chromedriver, the WebDriver server selenium talks to


def installed() -> Chromium | None:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return Chromium(browser, driver) if browser and driver else None


def chromium() -> Chromium | str:
    """Chromium and its driver, installed first if need be; or why they cannot be had here."""
    if (found := installed()) is not None:
        return found
    if shutil.which("apt-get") is None:
        return "no chromium/chromedriver, and no apt-get to install Debian's chromium-driver"
    if os.geteuid() != 0:
        return (
            "no chromium/chromedriver; install them as root: apt-get install chromium"
            " chromium-driver (this test installs them itself only when it runs as root)"
        )
    LOCK.touch(exist_ok=True)
    with LOCK.open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if (found := installed()) is not None:  # another process installed them meanwhile
            return found
        environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        commands = (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
        )
        for command in commands:
            done = subprocess.run(
                command,
                env=environ,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
            if done.returncode != 0:
                # apt is there and we are root: a failure is a broken machine, not "not here".
                pytest.fail(
                    f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stderr[-2000:]}"
                )
    found = installed()
    if found is None:
        pytest.fail(f"apt installed {' '.join(PACKAGES)} but chromium/chromedriver are not on PATH")
    return found


@pytest.fixture(scope="session", name="browser")
def browser_fixture() -> Iterator[Callable[[], Chrome]]:
    """A factory of headless Chromium WebDrivers (selenium), each quit at the end of the session.

    Skips the test, with the reason, where Chromium is missing and cannot be installed."""
    found = chromium()
    if isinstance(found, str):
        pytest.skip(f"a real browser is needed: {found}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[Chrome] = []

    def start() -> Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = found.browser
        for argument in (
            "--headless=new",
            "--no-sandbox",  # Chromium's sandbox refuses to run as root, as tests do on CI
            "--disable-dev-shm-usage",  # /dev/shm is small in containers
            "--disable-gpu",
            "--window-size=1000,800",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options, service=Service(found.driver))
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()
