"""A Resonate worker inside a synchronous web app (Flask, Django under WSGI).

Views of a WSGI app run on the server's threads and cannot await; the SDK is asyncio, and its
client, its connection to the server and every execution it runs live on the event loop that
started it. So the process runs one event loop on a thread of its own, for as long as it lives,
and starts the worker on it; a view hands its coroutine to that loop and blocks its own thread
until the answer comes. The loop keeps running between requests: that is where the worker
listens for work (a booking another process left behind when it died), and where a booking
that outlived its request (a 202) goes on.

A fresh `asyncio.run` per request would not do: it would need a new client and connection per
request, and close the loop, and every execution on it, when the view returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from webservers.service import Settings, Worker, start_worker

# A request waiting for its booking holds one of the WSGI server's threads for as long as the
# booking takes (up to WAIT_SECONDS), doing nothing: waitress's default of 4 would queue the
# fifth concurrent booking behind them. Threads that wait are cheap; the work is on the loop.
WSGI_THREADS = 32


class WorkerThread:
    """An event loop on a thread of its own, with this process's Resonate worker on it."""

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="resonate", daemon=True)
        self._thread.start()
        self.worker = self.call(self._start(settings), timeout=None)

    @staticmethod
    async def _start(settings: Settings) -> Worker:
        return start_worker(settings)

    def call[T](self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run a coroutine on the worker's loop and wait for its result (from any thread)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.call(self.worker.stop(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
