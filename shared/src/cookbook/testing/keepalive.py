"""Does a server answer at once on a kept-alive connection, or 40 ms late (Nagle's algorithm)?

A server that leaves Nagle's algorithm on answers the first request of a connection at once and
most later ones 40 ms late: it writes an answer's head and body separately, the body waits for
the head's ACK, and the client delays that ACK by Linux's minimum of 40 ms. asyncio turns Nagle
off on the connections of a listening socket only if that socket was made with proto
IPPROTO_TCP, and `socket.create_server` makes them with proto 0: a uvicorn served on one needs
`sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)` (the connections inherit it).

Measured on one gateway: 44 ms a request on a kept-alive connection, 0.4 ms with Nagle off.
"""

from __future__ import annotations

import time

from cookbook import clients

# Below Linux's 40 ms delayed ACK, above what one local request takes on a loaded machine; the
# fastest of several requests is compared, so one that waited for a CPU does not decide.
HELD_BACK = 0.030
REQUESTS = 8


def fastest_answer(url: str, requests: int = REQUESTS) -> float:
    """Seconds the fastest of `requests` GETs of `url` took on one kept-alive connection (after
    a first GET that opens it, which is never held back)."""
    with clients.client(timeout=10) as client:
        client.get(url)
        timings = []
        for _ in range(requests):
            started = time.perf_counter()
            client.get(url)
            timings.append(time.perf_counter() - started)
    return min(timings)


def held_back(url: str) -> str | None:
    """Why `url`'s server looks like it leaves Nagle on (None if it answers at once)."""
    fastest = fastest_answer(url)
    if fastest < HELD_BACK:
        return None
    return (
        f"GET {url} on a kept-alive connection took {fastest * 1000:.0f} ms at the fastest of"
        f" {REQUESTS}: Nagle's algorithm is on (turn it off on the listening socket:"
        " sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))"
    )
