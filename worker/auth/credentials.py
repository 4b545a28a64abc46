"""Where a publisher's access token comes from: a token source.

A source is anything with ``async def token() -> str`` (:class:`TokenSource`): a static token
(:class:`StaticToken`), a function of the caller's (:class:`CallableToken`), or the
client-credentials grant (RFC 6749 section 4.4, :class:`ClientCredentials`), which caches the
token and fetches the next one before the current one expires, so that a publisher asks the
authorization server once per token lifetime, never once per job.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from base64 import urlsafe_b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from worker.errors import TokenRequestFailed


@runtime_checkable
class TokenSource(Protocol):
    """Gives the access token to send with the next job."""

    async def token(self) -> str:
        """The token to use now."""
        ...


TokenLike = str | TokenSource | Callable[[], str | Awaitable[str]]
"""What a publisher accepts as its token: a token, a source, or a function returning one."""


class StaticToken:
    """The same token for every job."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the token is empty")
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(...)"

    async def token(self) -> str:
        """The token given."""
        return self._token


class CallableToken:
    """A token from the caller's function (plain or async), asked for every job: the function
    does its own caching."""

    def __init__(self, function: Callable[[], str | Awaitable[str]]) -> None:
        self._function = function

    def __repr__(self) -> str:
        return f"CallableToken({getattr(self._function, '__qualname__', '...')})"

    async def token(self) -> str:
        """What the function returns (awaited if it returns an awaitable)."""
        value = self._function()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value:
            raise TokenRequestFailed("the token function returned no token")
        return value


def token_source(token: TokenLike) -> TokenSource:
    """The source for what a publisher was given."""
    if isinstance(token, str):
        return StaticToken(token)
    if isinstance(token, TokenSource):
        return token
    if callable(token):
        return CallableToken(token)
    raise TypeError("a token is a string, a TokenSource, or a function returning a token")


@dataclass(frozen=True)
class Granted:
    """A token response: the token and how long it lives (None when the answer does not say
    and the token is not a JWT with ``exp``)."""

    token: str
    lifetime: float | None


async def request_token(
    token_url: str,
    client_id: str,
    client_secret: str,
    *,
    scope: str | None = None,
    resource: str | None = None,
    http_timeout: float = 10.0,
) -> Granted:
    """One client-credentials request; ``resource`` is the RFC 8707 resource indicator (also
    sent as ``audience``, which some servers expect instead). Raises
    :class:`~worker.errors.TokenRequestFailed`, whose text never holds a secret."""
    form = {"grant_type": "client_credentials"}
    if scope:
        form["scope"] = scope
    if resource:
        form["resource"] = resource
        form["audience"] = resource
    async with httpx.AsyncClient(timeout=http_timeout) as http:
        try:
            response = await http.post(
                token_url,
                data=form,
                auth=httpx.BasicAuth(client_id, client_secret),
                headers={"accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise TokenRequestFailed(f"POST {token_url}: {type(exc).__name__}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise TokenRequestFailed(f"POST {token_url}: HTTP {response.status_code} {error or ''}")
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenRequestFailed(f"POST {token_url}: no access_token in the answer")
    # The sooner of expires_in and the JWT's exp: an exp in whole seconds may come up to a
    # second sooner than expires_in says.
    expires_in = answer.get("expires_in")
    lifetimes = [_lifetime_of(token)]
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetimes.append(float(expires_in))
    known = [lifetime for lifetime in lifetimes if lifetime is not None]
    return Granted(token, min(known) if known else None)


def _lifetime_of(token: str) -> float | None:
    """Seconds until a JWT's ``exp``, read without verifying it: a publisher only needs to know
    when to ask again, and the worker verifies the token anyway."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims: Any = json.loads(urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    return max(float(exp) - time.time(), 0.0)


class ClientCredentials:
    """Tokens from the client-credentials grant, cached until shortly before they expire.

    A token is used until ``refresh_before`` seconds before its expiry (the sooner of the
    answer's ``expires_in`` and the JWT's ``exp``), but never past half its lifetime, so that a
    short-lived token is still fetched again before it expires; then the next call fetches a new
    one. Concurrent calls share one request. A token whose lifetime is unknown is used for
    ``refresh_before`` seconds.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        resource: str | None = None,
        refresh_before: float = 30.0,
        http_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.resource = resource
        self.refresh_before = refresh_before
        self._http_timeout = http_timeout
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.requests = 0
        """Token requests made so far."""

    def __repr__(self) -> str:
        return f"ClientCredentials({self.token_url!r}, {self.client_id!r}, scope={self.scope!r})"

    async def token(self) -> str:
        """The cached token, or a new one once the cached one is due for renewal."""
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        async with self._lock:
            if self._token is not None and self._clock() < self._renew_at:
                return self._token
            asked = self._clock()
            self.requests += 1
            granted = await request_token(
                self.token_url,
                self.client_id,
                self._secret,
                scope=self.scope,
                resource=self.resource,
                http_timeout=self._http_timeout,
            )
            lifetime = granted.lifetime
            if lifetime is None:
                used_for = self.refresh_before
            else:
                used_for = max(lifetime - self.refresh_before, lifetime / 2)
            self._token, self._renew_at = granted.token, asked + used_for
            return granted.token
