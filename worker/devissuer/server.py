"""The development issuer on HTTP: metadata, JWKS and a token endpoint, on loopback unless told.

Every log line it writes says it is not for production, and so does every token it mints
(:data:`~worker.devissuer.issuer.LABEL_CLAIM`). Its keys are generated when it is made and live
only in memory. It binds 127.0.0.1, on a port the system picks unless told; it serves another
address only over https (``python -m worker.devissuer``, the compose stack's local issuer).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import ssl
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote

from worker.devissuer.issuer import (
    DEFAULT_AUDIENCE,
    DEFAULT_LIFETIME,
    NOT_FOR_PRODUCTION,
    GrantRefused,
    Issuer,
)
from worker.devissuer.keys import SigningKey

log = logging.getLogger("warden.devissuer")

LOOPBACK = "127.0.0.1"
MAX_FORM_BYTES = 16_384
REQUEST_TIMEOUT = 10.0
"""Seconds a connection may stay silent (a TLS handshake included) before it is dropped."""


def _log(level: int, event: str, **fields: Any) -> None:
    """A log line of the development issuer: its text and its fields say what it is."""
    log.log(
        level,
        f"development issuer, {NOT_FOR_PRODUCTION}: {event}",
        extra={"development_issuer": NOT_FOR_PRODUCTION, **fields},
    )


class DevIssuer(Issuer):
    """An :class:`~worker.devissuer.issuer.Issuer` served on ``http://127.0.0.1:<port><path>``:
    RFC 8414 and OpenID discovery, the JWKS at ``/jwks``, and the client-credentials grant at
    ``/token`` (client secret in HTTP Basic or in the form).

    The port is bound when the issuer is made (0: the system picks one, so that its URL, the
    tokens' ``iss``, is known at once); :meth:`start` serves it from a thread of its own, so it
    answers whatever the caller's event loop is doing. Use it as a context manager, or
    :meth:`start` and :meth:`stop`.

    ``tls`` serves https with that server context; ``host`` binds another address than
    127.0.0.1, only with ``tls``; ``origin`` (``https://authz:8443``) is the scheme, host and
    port its URL names instead of the bound ones, for clients that reach it by another name.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        path: str = "",
        keys: Iterable[SigningKey] = (),
        audience: str = DEFAULT_AUDIENCE,
        token_lifetime: int = DEFAULT_LIFETIME,
        defaults: Mapping[str, Any] | None = None,
        host: str = LOOPBACK,
        tls: ssl.SSLContext | None = None,
        origin: str | None = None,
    ) -> None:
        if path and (not path.startswith("/") or path.endswith("/")):
            raise ValueError("path starts with / and does not end with one, e.g. /realms/demo")
        if tls is None and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(
                f"the development issuer serves {host}, beyond loopback, only over https"
            )
        if origin is not None and (origin.endswith("/") or "://" not in origin):
            raise ValueError("origin is a scheme, a host and a port, e.g. https://authz:8443")
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        if tls is not None:
            # The handshake happens in the request's thread, on its first read, not in accept().
            self._httpd.socket = tls.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.path = path
        self.port: int = self._httpd.server_address[1]
        scheme = "http" if tls is None else "https"
        super().__init__(
            f"{origin or f'{scheme}://{host}:{self.port}'}{path}",
            keys,
            audience,
            token_lifetime=token_lifetime,
            defaults=defaults,
        )
        self.requests: list[str] = []
        """Every request so far, as ``METHOD /path``."""
        self._thread: threading.Thread | None = None

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return f"{self.url}/token"

    @property
    def jwks_url(self) -> str:
        """The JWKS endpoint."""
        return f"{self.url}/jwks"

    def start(self) -> Self:
        """Serve from a thread of its own until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"development issuer {self.port}",
                daemon=True,
            )
            self._thread.start()
            _log(logging.WARNING, "serving", issuer=self.url, keys=[k.kid for k in self.keys])
        return self

    def stop(self) -> None:
        """Stop serving and release the port; the keys are forgotten with the object."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
            _log(logging.INFO, "stopped", issuer=self.url)
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def document(self, path: str) -> dict[str, Any] | None:
        """What a GET of ``path`` answers, or None (404)."""
        if path in (
            f"/.well-known/oauth-authorization-server{self.path}",
            f"{self.path}/.well-known/openid-configuration",
        ):
            return self.metadata()
        if path == f"{self.path}/jwks":
            return self.jwks()
        return None

    def answer_token_request(self, authorization: str | None, form: bytes) -> dict[str, Any]:
        """The client-credentials grant over HTTP: the token response, or GrantRefused."""
        fields = {k: v[-1] for k, v in parse_qs(form.decode("utf-8", "replace")).items()}
        if fields.get("grant_type") != "client_credentials":
            raise GrantRefused("unsupported_grant_type", "only client_credentials is supported")
        client_id, secret = fields.get("client_id"), fields.get("client_secret")
        if authorization and authorization[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except ValueError:
                raise GrantRefused("invalid_client", "malformed Basic credentials", 401) from None
            user, _, password = decoded.partition(":")
            client_id, secret = unquote(user), unquote(password)
        if not client_id or secret is None:
            raise GrantRefused("invalid_client", "no client credentials", 401)
        try:
            answer = self.grant(
                client_id,
                secret,
                scope=fields.get("scope"),
                resource=fields.get("resource") or fields.get("audience"),
            )
        except GrantRefused as refused:
            _log(logging.WARNING, "token refused", client_id=client_id, error=refused.error)
            raise
        _log(logging.INFO, "token issued", client_id=client_id, scope=answer["scope"])
        return answer

    def _seen(self, request: str) -> None:
        with self._lock:
            self.requests.append(request)


def _handler(issuer: DevIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "warden-development-issuer"
        timeout = REQUEST_TIMEOUT

        def do_GET(self) -> None:
            issuer._seen(f"GET {self.path}")
            document = issuer.document(self.path)
            if document is None:
                self._json(404, {"error": "not_found"})
            else:
                self._json(200, document)

        def do_POST(self) -> None:
            issuer._seen(f"POST {self.path}")
            if self.path != f"{issuer.path}/token":
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_FORM_BYTES:
                self._json(413, {"error": "invalid_request"})
                return
            try:
                answer = issuer.answer_token_request(
                    self.headers.get("authorization"), self.rfile.read(length)
                )
            except GrantRefused as refused:
                body = {"error": refused.error, "error_description": refused.description}
                self._json(refused.status, body)
                return
            self._json(200, answer)

        def _json(self, status: int, document: Mapping[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("cache-control", "no-store")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # The request line only: a method and a path, never a form or a header.
            _log(logging.DEBUG, "request", request=self.requestline)

    return Handler
