"""The peer for scenario (e): what a user might build with FastStream and PyJWT.

A RabbitMQ subscriber whose middleware checks the bearer token with ``jwt.decode`` (signature,
issuer, audience, expiry, required claims) and the action's scope, against keys fetched once
with ``PyJWKClient``; the handler validates the job body with pydantic. Allowed jobs are acked
by FastStream after the handler returns.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from faststream import BaseMiddleware
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from pydantic import BaseModel, ConfigDict, Field

SCOPES = {"bench.noop": {"bench:run"}, "bench.admin": {"bench:admin"}}


class JobBody(BaseModel):
    """The job body, validated as the user's handler would."""

    model_config = ConfigDict(extra="forbid")
    action: str = Field(pattern=r"^[a-z][a-z0-9_.:-]{0,127}$")
    payload: dict[str, Any]


async def serve(args: dict[str, Any], clock: Any) -> None:
    """Consume until the clock has seen every message."""
    keys = jwt.PyJWKClient(args["jwks_url"])
    keys.get_jwk_set()  # fetched once, before the clock starts, as a user would at start-up
    issuer, audience = args["issuer"], args["audience"]

    class TokenMiddleware(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            clock.started()
            started = time.perf_counter()
            header = (msg.raw_message.headers or {}).get("authorization", "")
            token = header.split(" ", 1)[1]
            key = keys.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "PS256", "ES256", "EdDSA"],
                audience=audience,
                issuer=issuer,
                options={"require": ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]},
            )
            action = json.loads(msg.body)["action"]
            granted = set(claims.get("scope", "").split())
            if not SCOPES.get(action, {"-"}) <= granted:
                raise PermissionError("scope")
            clock.decisions.append(time.perf_counter() - started)
            try:
                return await call_next(msg)
            finally:
                clock.one_settled()

    broker = RabbitBroker(args["broker_url"], middlewares=[TokenMiddleware], logger=None)

    @broker.subscriber(
        RabbitQueue(args["queue"], declare=False),
        channel=Channel(prefetch_count=args["prefetch"]),
    )
    async def handle(body: JobBody) -> None:
        """Runs the (no-op) action."""

    async with broker:
        await broker.start()
        await clock.done.wait()
