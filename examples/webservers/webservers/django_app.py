"""`python -m webservers.django_app`: the booking route in Django (WSGI, on waitress); this
process is the worker. Django in one file: the settings, the URLs and the views are all here.

Django views under WSGI are synchronous: the worker runs on an event loop of its own thread
(webservers.bridge), and a view blocks its request thread until the booking, run on that loop,
comes back. (An `async def` view would not help under WSGI: Django runs each one on an event
loop of its own, made for that request, where the process's Resonate client does not live.)
Routes and environment: see webservers.service; also DJANGO_ALLOWED_HOSTS (comma-separated,
default: 127.0.0.1,localhost), the Host headers it answers.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import Callable
from typing import Any

import django
import waitress
from django.conf import settings as django_settings
from django.core.exceptions import RequestDataTooBig
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

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

type View = Callable[..., HttpResponse]

# This module is the URLconf (ROOT_URLCONF); `create_app` fills it in, and hands the views this
# process's worker (one per process, for as long as it runs).
urlpatterns: list[Any] = []
_running: dict[str, WorkerThread] = {}


def _configure() -> None:
    """The whole settings module: no database, no sessions, no templates, no CSRF (a JSON API
    that takes no cookies), and Django's own limit on a body's size."""
    if django_settings.configured:
        return
    django_settings.configure(
        DEBUG=False,
        # Nothing here is signed (no sessions, no CSRF tokens): a key made up per process.
        SECRET_KEY=secrets.token_urlsafe(32),
        ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(","),
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
        APPEND_SLASH=False,
        USE_TZ=True,
        DATA_UPLOAD_MAX_MEMORY_SIZE=MAX_BODY_BYTES,
    )
    django.setup()


def _response(answer: Answer) -> HttpResponse:
    response = JsonResponse(answer.body, status=answer.status)
    if answer.location:
        response["Location"] = answer.location
    return response


def _only(method: str, view: View) -> View:
    def checked(request: HttpRequest, **kwargs: str) -> HttpResponse:
        if request.method != method:
            answer = _response(Answer(405, {"detail": f"use {method}"}))
            answer["Allow"] = method
            return answer
        return view(request, **kwargs)

    return checked


def book_view(request: HttpRequest) -> HttpResponse:
    worker = _running["worker"]
    try:
        body = request.body
    except RequestDataTooBig:  # Django would answer 400; it is a 413
        return _response(too_large())
    parsed = parse_request(body)
    if isinstance(parsed, Answer):
        return _response(parsed)
    try:
        return _response(worker.call(book(worker.worker, parsed), _timeout(worker)))
    except TimeoutError:
        return _response(unavailable())


def status_view(request: HttpRequest, ticket_id: str) -> HttpResponse:
    worker = _running["worker"]
    try:
        return _response(worker.call(status(worker.worker, ticket_id), _timeout(worker)))
    except TimeoutError:
        return _response(unavailable())


def _timeout(worker: WorkerThread) -> float:
    # A booking may take the whole wait, and the Resonate server its own timeout on top.
    return worker.worker.settings.wait_seconds + 2 * RESONATE_TIMEOUT


def create_app(worker: WorkerThread) -> Callable[..., Any]:
    """Configure Django, route the URLs to the views, and return the WSGI app."""
    _configure()
    _running["worker"] = worker
    urlpatterns[:] = [
        path("tickets", _only("POST", book_view)),
        path("tickets/<str:ticket_id>", _only("GET", status_view)),
    ]
    wsgi: Callable[..., Any] = get_wsgi_application()
    return wsgi


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's answer for a URL no pattern matches: JSON, like every other answer here."""
    return JsonResponse({"detail": "no such route"}, status=404)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    return JsonResponse({"detail": "bad request"}, status=400)


def handler500(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"detail": "internal error"}, status=500)


def main() -> None:
    settings = Settings.from_env("webservers.django_app")
    worker = WorkerThread(settings)
    server = waitress.create_server(
        create_app(worker), host=settings.host, port=settings.port, threads=WSGI_THREADS
    )
    # waitress runs until interrupted: turn SIGTERM and SIGINT into a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    announce("django", server.effective_host, server.effective_port)
    try:
        server.run()
    finally:
        server.close()
        worker.close()


if __name__ == "__main__":
    main()
