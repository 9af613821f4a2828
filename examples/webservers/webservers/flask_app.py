"""`python -m webservers.flask_app`: the booking route in Flask (waitress); this process is the
worker.

Flask views are synchronous: the worker runs on an event loop of its own thread
(webservers.bridge), and a view blocks its request thread until the booking, run on that loop,
comes back. Routes and environment: see webservers.service.
"""

from __future__ import annotations

import signal
import sys

import waitress
from flask import Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from webservers.bridge import WSGI_THREADS, WorkerThread
from webservers.service import (
    MAX_BODY_BYTES,
    RESONATE_TIMEOUT,
    Answer,
    Settings,
    announce,
    book,
    parse_request,
    status,
    too_large,
    unavailable,
)


class _AsWritten(DefaultJSONProvider):
    sort_keys = False  # the ticket id and status first, as written


def _response(answer: Answer) -> tuple[Response, int]:
    response = jsonify(answer.body)
    if answer.location:
        response.headers["Location"] = answer.location
    return response, answer.status


def book_route() -> tuple[Response, int]:
    worker = _worker()
    parsed = parse_request(request.get_data(cache=False))
    if isinstance(parsed, Answer):
        return _response(parsed)
    return _response(worker.call(book(worker.worker, parsed), _timeout(worker)))


def status_route(ticket_id: str) -> tuple[Response, int]:
    worker = _worker()
    return _response(worker.call(status(worker.worker, ticket_id), _timeout(worker)))


def _worker() -> WorkerThread:
    worker: WorkerThread = current_app.extensions["webservers"]
    return worker


def _timeout(worker: WorkerThread) -> float:
    # A booking may take the whole wait, and the Resonate server its own timeout on top.
    return worker.worker.settings.wait_seconds + 2 * RESONATE_TIMEOUT


def create_app(worker: WorkerThread) -> Flask:
    app = Flask(__name__)
    app.extensions["webservers"] = worker
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json = _AsWritten(app)
    # `/tickets//x` is no ticket: a 404, not werkzeug's redirect to `/tickets/x`.
    app.url_map.merge_slashes = False
    app.add_url_rule("/tickets", view_func=book_route, methods=["POST"])
    app.add_url_rule("/tickets/<ticket_id>", view_func=status_route, methods=["GET"])

    @app.errorhandler(RequestEntityTooLarge)
    def body_too_large(_: RequestEntityTooLarge) -> tuple[Response, int]:
        return _response(too_large())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return _response(Answer(exc.code or 500, {"detail": exc.description or exc.name}))

    @app.errorhandler(TimeoutError)
    def resonate_down(_: TimeoutError) -> tuple[Response, int]:
        return _response(unavailable())

    return app


def main() -> None:
    settings = Settings.from_env("webservers.flask_app")
    worker = WorkerThread(settings)
    server = waitress.create_server(
        create_app(worker), host=settings.host, port=settings.port, threads=WSGI_THREADS
    )
    # waitress runs until interrupted: turn SIGTERM and SIGINT into a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    announce("flask", server.effective_host, server.effective_port)
    try:
        server.run()
    finally:
        server.close()
        worker.close()


if __name__ == "__main__":
    main()
