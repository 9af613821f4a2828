"""Fixtures the sandbox's tests share."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process for a kill switch to kill; killed by its pid at teardown if it is not."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()
