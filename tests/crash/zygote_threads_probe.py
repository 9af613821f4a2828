"""`python -m tests.crash.zygote_threads_probe`: its import of a library starts a thread."""

from __future__ import annotations

from tests.crash import zygote_threads_probe_dependency

if __name__ == "__main__":
    print(f"threads probe worker {zygote_threads_probe_dependency.STARTED} ready", flush=True)
