"""The stack's embedded services start, answer, and stop by pid."""

from __future__ import annotations

import socket

from cookbook.stack import free_port


def test_the_embedded_kafka_broker_accepts_connections(kafka_bootstrap: str) -> None:
    host, port = kafka_bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=2):
        pass


def test_free_port_is_bindable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
