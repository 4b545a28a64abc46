"""The tests' authorization servers: warden's development issuer (:mod:`worker.devissuer`)
with every token it mints remembered (:func:`tests.support.leaks.minted`), so that no output of
the run may show it; hand-made tokens no issuer would sign; a JWKS server that can fail.
"""

from __future__ import annotations

import asyncio
import json
import threading
from base64 import urlsafe_b64encode
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from jwt.algorithms import get_default_algorithms

from tests.support.leaks import minted
from worker import devissuer, testing
from worker.devissuer import DROP, SigningKey
from worker.devissuer.issuer import overridden

__all__ = [
    "AUDIENCE",
    "DROP",
    "Issuer",
    "JwksServer",
    "SigningKey",
    "TestIssuer",
    "b64",
    "encoded",
    "jwks_server",
    "overridden",
    "sign",
    "unsigned",
]

AUDIENCE = "https://warden.test/jobs"
DEFAULTS = {
    "sub": "service-account-reports",
    "client_id": "reports-service",
    "scope": "reports:write reports:read",
}
"""What a test's token says unless the test says otherwise."""


def b64(data: bytes) -> str:
    """base64url without padding, as JOSE writes it."""
    return urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer(devissuer.Issuer):
    """The development issuer's authority, for the tests' audience and defaults, every token
    it signs remembered as minted."""

    def __init__(
        self, url: str, keys: list[SigningKey] | None = None, audience: str = AUDIENCE
    ) -> None:
        super().__init__(url, keys or (), audience, defaults=DEFAULTS)

    def sign(self, claims: Mapping[str, Any], **options: Any) -> str:
        return minted(super().sign(claims, **options))


class TestIssuer(testing.TestIssuer):
    """:class:`worker.testing.TestIssuer`, every token it signs remembered as minted."""

    def sign(self, claims: Mapping[str, Any], **options: Any) -> str:
        return minted(super().sign(claims, **options))


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS assembled by hand, for tokens no library would sign."""
    return minted(
        ".".join(
            (
                b64(json.dumps(header).encode()),
                b64(json.dumps(claims).encode()),
                b64(signature),
            )
        )
    )


def encoded(value: Any) -> bytes:
    """JSON of ``value``, or ``value`` itself when it is already bytes (JSON no encoder writes)."""
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def sign(header: Any, claims: Any, key: SigningKey, alg: str | None = None) -> str:
    """A compact JWS over exactly these header and claims (dicts, or raw JSON as bytes), signed
    with ``key`` by ``alg`` (default: the key's own) whatever the header says."""
    signing_input = f"{b64(encoded(header))}.{b64(encoded(claims))}"
    signature = get_default_algorithms()[alg or key.alg].sign(signing_input.encode(), key.private)
    return minted(f"{signing_input}.{b64(signature)}")


class JwksServer:
    """A local HTTP server publishing issuers' metadata and JWKS; it counts what it is asked."""

    def __init__(self) -> None:
        self.issuers: dict[str, Issuer] = {}
        self.requests: list[str] = []
        self.down = False
        self.introspection_down = False
        self.active: dict[str, dict[str, Any]] = {}
        """Introspection answers by token; a token not listed is inactive."""
        self.client = ("warden", "s3cret-introspection")
        self.introspections = 0
        self.introspected: list[str] = []
        """Every token posted to an introspection endpoint of this server, in order."""
        self._lock = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append(self.path)
                    server._lock.notify_all()
                if server.down:
                    self.send_error(503)
                    return
                document = server.document(self.path)
                if document is None:
                    self.send_error(404)
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                import base64
                from urllib.parse import parse_qs

                length = int(self.headers.get("content-length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                with server._lock:
                    server.requests.append("POST " + self.path)
                    server.introspected.extend(form.get("token", []))
                    server.introspections += 1
                    server._lock.notify_all()
                if server.introspection_down or not self.path.endswith("/introspect"):
                    self.send_error(503)
                    return
                expected = base64.b64encode(":".join(server.client).encode()).decode()
                if self.headers.get("authorization") != f"Basic {expected}":
                    self.send_error(401)
                    return
                token = form.get("token", [""])[0]
                answer = server.active.get(token, {"active": False})
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def issuer(self, name: str = "main", *keys: SigningKey) -> Issuer:
        """A new issuer served under ``/<name>``."""
        issuer = Issuer(f"{self.base}/{name}", list(keys))
        self.issuers[name] = issuer
        return issuer

    def jwks_url(self, issuer: Issuer) -> str:
        return f"{issuer.url}/jwks"

    def jwks_requests(self, issuer: Issuer) -> int:
        path = issuer.url.removeprefix(self.base) + "/jwks"
        with self._lock:
            return sum(1 for p in self.requests if p == path)

    def document(self, path: str) -> dict[str, Any] | None:
        for name, issuer in self.issuers.items():
            if path == f"/{name}/jwks":
                return issuer.jwks()
            if path in (
                f"/.well-known/oauth-authorization-server/{name}",
                f"/{name}/.well-known/openid-configuration",
            ):
                return {
                    "issuer": issuer.url,
                    "jwks_uri": self.jwks_url(issuer),
                    "introspection_endpoint": f"{issuer.url}/introspect",
                    "token_endpoint": f"{issuer.url}/token",
                }
        return None

    async def wait_for_requests(self, count: int, timeout: float) -> None:
        """Return once the server has been asked ``count`` times in all; TimeoutError after."""

        def wait() -> bool:
            with self._lock:
                return self._lock.wait_for(lambda: len(self.requests) >= count, timeout)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"the JWKS server got {len(self.requests)} of {count} requests")

    async def wait_for_introspections(self, count: int, timeout: float) -> None:
        """Return once the introspection endpoint has been asked ``count`` times in all."""

        def wait() -> bool:
            with self._lock:
                return self._lock.wait_for(lambda: self.introspections >= count, timeout)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"introspected {self.introspections} of {count} times")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
