"""The stack's embedded services start, answer, and stop by pid."""

from __future__ import annotations

import socket

from cookbook.stack import Stack, free_port


def test_the_embedded_kafka_broker_accepts_connections(kafka_bootstrap: str) -> None:
    host, port = kafka_bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=2):
        pass


def test_free_port_is_bindable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_skip_time_is_announced_to_the_example_only_where_the_server_skips() -> None:
    # Said by `make run-<x> SKIP_TIME=1` (make exports it) or set by the stack itself.
    with Stack(skip_time=True, environ={"PATH": "/usr/bin:/bin"}) as embedded:
        assert embedded.env()["SKIP_TIME"] == "1"
    external = Stack(skip_time=True, environ={"RESONATE_URL": "http://x:8001", "SKIP_TIME": "1"})
    assert "SKIP_TIME" not in external.env(), "an external server runs in real time"
    assert "SKIP_TIME" not in Stack(environ={"SKIP_TIME": "1"}).env()
