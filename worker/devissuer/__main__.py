"""``python -m worker.devissuer``: the development issuer as a process of its own, not for
production. The compose stack's local issuer (deploy/compose/local.yaml) runs it in a container:

    python -m worker.devissuer --bind 0.0.0.0 --port 8443 --origin https://authz:8443 \\
        --path /dev --tls-cert /certs/authz.pem --tls-key /certs/authz-key.pem \\
        --client reporter "reports:read reports:write" --client reader "reports:read"

Each client's secret comes from the environment, ``<CLIENT>_CLIENT_SECRET`` (``reporter``:
``REPORTER_CLIENT_SECRET``), never from the command line. Keys are generated at start and live
in memory: a restart makes new ones, which workers fetch when they meet a token signed by one.
It serves until SIGTERM or SIGINT. Beyond loopback it serves https only.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import ssl
import threading
from collections.abc import Sequence
from types import FrameType

from worker.devissuer.issuer import DEFAULT_AUDIENCE, DEFAULT_LIFETIME, NOT_FOR_PRODUCTION
from worker.devissuer.server import LOOPBACK, DevIssuer
from worker.ops import logs


def secret_variable(client_id: str) -> str:
    """The environment variable holding ``client_id``'s secret: ``reporter`` ->
    ``REPORTER_CLIENT_SECRET``."""
    return re.sub(r"[^A-Z0-9]", "_", client_id.upper()) + "_CLIENT_SECRET"


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m worker.devissuer",
        description=f"warden's development issuer, {NOT_FOR_PRODUCTION}.",
    )
    p.add_argument("--bind", default=LOOPBACK, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: one the system picks)")
    p.add_argument("--path", default="", help="the issuer URL's path, e.g. /dev")
    p.add_argument(
        "--origin", help="scheme://host:port clients reach it at, e.g. https://authz:8443"
    )
    p.add_argument("--tls-cert", help="PEM certificate (chain) to serve https with")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--audience", default=DEFAULT_AUDIENCE, help="the `aud` of its tokens")
    p.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME, help="token lifetime (s)")
    p.add_argument(
        "--client",
        nargs=2,
        action="append",
        default=[],
        metavar=("ID", "SCOPES"),
        help="a client of the client-credentials grant and the scopes it may ask for "
        "(space-separated); its secret is in <ID>_CLIENT_SECRET",
    )
    p.add_argument(
        "--resource",
        nargs=2,
        action="append",
        default=[],
        metavar=("ID", "AUDIENCE"),
        help="another audience client ID may ask for with an RFC 8707 `resource`",
    )
    return p


def build(args: argparse.Namespace, environ: dict[str, str]) -> DevIssuer:
    """The issuer the command line describes; SystemExit with one line naming what is wrong."""
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("devissuer: --tls-cert and --tls-key go together")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(f"devissuer: cannot load {args.tls_cert}: {exc}") from None
    try:
        issuer = DevIssuer(
            host=args.bind,
            port=args.port,
            path=args.path,
            origin=args.origin,
            tls=tls,
            audience=args.audience,
            token_lifetime=args.lifetime,
        )
    except (ValueError, OSError) as exc:
        raise SystemExit(f"devissuer: {exc}") from None
    resources: dict[str, list[str]] = {}
    for client_id, audience in args.resource:
        resources.setdefault(client_id, []).append(audience)
    for client_id, scopes in args.client:
        name = secret_variable(client_id)
        secret = environ.get(name)
        if not secret:
            issuer.stop()
            raise SystemExit(f"devissuer: set {name} to the secret of client {client_id}")
        issuer.register(
            client_id,
            scopes=scopes.split(),
            secret=secret,
            resources=resources.pop(client_id, ()),
        )
    if resources:
        issuer.stop()
        raise SystemExit(f"devissuer: --resource names no --client: {', '.join(sorted(resources))}")
    return issuer


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    args = parser().parse_args(argv)
    logs.configure(os.environ.get("WARDEN_LOG_LEVEL", "INFO"))
    issuer = build(args, dict(os.environ))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with issuer:
        stop.wait()


if __name__ == "__main__":
    main()
