"""The HTTP side of a worker: ``/metrics``, ``/healthz`` and ``/readyz`` on WARDEN_HTTP_PORT.

A small WSGI app served from a daemon thread by prometheus-client's threading server: the
endpoints only read state (a scrape or a probe never waits on the event loop).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

Check = Callable[[], str | None]
"""A readiness condition: None when met, else why not."""

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the logs; say nothing."""


class HealthServer:
    """Serves the three endpoints until :meth:`close`."""

    def __init__(
        self, registry: CollectorRegistry, checks: dict[str, Check], port: int, host: str = ""
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._checks = checks
        self._server = make_server(
            host, port, self._app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="warden-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def not_ready(self) -> dict[str, str]:
        """Every unmet readiness condition, with why."""
        failing = {name: check() for name, check in self._checks.items()}
        return {name: why for name, why in failing.items() if why is not None}

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "alive"})
        if path == "/readyz":
            failing = self.not_ready()
            if failing:
                return _json(start_response, "503 Service Unavailable", {"ready": False, **failing})
            return _json(start_response, "200 OK", {"ready": True})
        return _json(start_response, "404 Not Found", {"error": "not found"})


def _json(start_response: StartResponse, status: str, payload: dict[str, Any]) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
