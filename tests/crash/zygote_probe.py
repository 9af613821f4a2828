"""`python -m tests.crash.zygote_probe [exit N]`: a worker that says how it was started.

It prints one JSON line (what `python -m` decides: `__name__`, argv, cwd, environment, session,
threads, stdin; which process imported its dependency; how many objects the garbage collector
leaves alone), then `probe worker <pid> ready`, then serves until SIGTERM, or exits with N at
once when asked to.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading

from tests.crash import zygote_probe_dependency


def main() -> None:
    report = {
        "name": __name__,
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "marker": os.environ.get("ZYGOTE_PROBE_MARKER"),
        "current_test": os.environ.get("PYTEST_CURRENT_TEST"),
        "session_leader": os.getsid(0) == os.getpid(),
        "threads": threading.active_count(),
        "stdin": os.readlink("/proc/self/fd/0"),
        "dependency_imported_by": zygote_probe_dependency.IMPORTED_BY,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "frozen_objects": gc.get_freeze_count(),
        "lazy_imports_loaded": sorted(
            name for name in ("httpcore", "anyio._backends._asyncio") if name in sys.modules
        ),
    }
    print(json.dumps(report))
    if sys.argv[1:2] == ["exit"]:
        sys.exit(int(sys.argv[2]))
    print(f"probe worker {os.getpid()} ready", flush=True)
    signal.sigwait({signal.SIGTERM})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    main()
