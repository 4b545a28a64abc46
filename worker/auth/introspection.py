"""RFC 7662 token introspection: for opaque tokens, and for actions registered ``introspect=True``.

warden authenticates to the issuer's ``introspection_endpoint`` with its own client credentials
(HTTP Basic, RFC 7662 section 2.1). ``active: false`` means the token is revoked. An answer is
cached no longer than the token's ``exp`` nor ``WARDEN_INTROSPECTION_CACHE_SECONDS``; an endpoint
that cannot be reached means wait, not deny.

An opaque token is sent to one issuer only, the one it belongs to (:meth:`Introspector.owner`):
asking every issuer in turn would show each of them every other issuer's tokens.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from worker import errors
from worker.auth.keys import fetch_metadata
from worker.auth.tokens import (
    IssuerPolicy,
    Verified,
    check_claim_types,
    check_claim_values,
    check_claims,
    is_numeric_date,
)
from worker.errors import FetchError
from worker.support.cache import BoundedCache
from worker.support.urls import HTTPS_REQUIRED, secure_url

log = logging.getLogger("warden.introspection")


def is_opaque(token: str) -> bool:
    """Anything but a compact JWS (three segments) is opaque: ``ory_at_x.y`` is, ``a.b.c`` is
    not (it is checked as a JWT and may be malformed)."""
    return token.count(".") != 2


class Introspector:
    """Asks issuers whether tokens are active; remembers answers briefly."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        client_id: str,
        client_secret: SecretStr,
        endpoints: Mapping[str, str | None],
        policies: Mapping[str, IssuerPolicy],
        *,
        owners: Mapping[str, str | None] | None = None,
        ceiling: float,
        leeway: int,
        max_lifetime: float = math.inf,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._auth = httpx.BasicAuth(client_id, client_secret.get_secret_value())
        self._endpoints = dict(endpoints)
        self._policies = policies
        self._owners = dict(owners if owners is not None else dict.fromkeys(endpoints))
        """The issuers an opaque token may belong to, each with its ``opaque_prefix`` or None."""
        self._ceiling = ceiling
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._clock = clock
        self._cache: BoundedCache[tuple[str, str], dict[str, Any]] = BoundedCache(max_entries)

    def owner(self, token: str) -> str | None:
        """The one issuer an opaque token belongs to, or None.

        The issuer whose ``opaque_prefix`` starts the token; else, where only one issuer can
        introspect opaque tokens and it declares no prefix, that issuer.
        """
        for issuer, prefix in self._owners.items():
            if prefix is not None and token.startswith(prefix):
                return issuer
        if len(self._owners) == 1:
            [(issuer, prefix)] = self._owners.items()
            if prefix is None:
                return issuer
        return None

    async def verify_opaque(self, token: str) -> Verified:
        """Checks 6 and 9 to 13 for an opaque token, by introspection at the issuer it belongs
        to, and nowhere else."""
        issuer = self.owner(token)
        if issuer is None:
            raise errors.IssuerUntrusted(
                "the opaque token belongs to no issuer warden may introspect at (no "
                "opaque_prefix of a trusted issuer starts it)"
            )
        answer = await self.introspect(token, issuer)
        if answer.get("active") is not True:
            raise errors.TokenRevoked(f"{issuer} reports the opaque token inactive")
        return self._accept(answer, issuer)

    async def confirm_active(self, token: str, issuer: str) -> None:
        """For ``introspect=True`` actions: the issuer must still report the token active."""
        if issuer not in self._endpoints:
            raise errors.IntrospectionUnavailable(f"no introspection configured for {issuer}")
        answer = await self.introspect(token, issuer)
        if answer.get("active") is not True:
            raise errors.TokenRevoked(f"{issuer} reports the token inactive")

    def _accept(self, answer: dict[str, Any], issuer: str) -> Verified:
        claims = {k: v for k, v in answer.items() if k != "active"}
        claims.setdefault("iss", issuer)
        policy = self._policies[issuer]
        check_claim_types(claims, policy)
        if claims["iss"] != issuer:
            raise errors.IssuerUntrusted(f"{issuer} answered for another issuer")
        check_claim_values(claims, policy)
        check_claims(claims, policy, self._clock(), self._leeway, self._max_lifetime)
        return Verified(policy, claims)

    async def introspect(self, token: str, issuer: str) -> dict[str, Any]:
        """The issuer's answer for ``token``, from the cache while it may be trusted."""
        key = (issuer, hashlib.sha256(token.encode("ascii", "replace")).hexdigest())
        now = self._clock()
        cached = self._cache.get(key, now)
        if cached is not None:
            return cached
        answer = await self._ask(token, issuer)
        exp = answer.get("exp")
        until = now + self._ceiling
        if is_numeric_date(exp):
            until = min(until, exp)
        if until > now:
            self._cache.put(key, answer, until)
        return answer

    async def _endpoint(self, issuer: str) -> str:
        endpoint = self._endpoints.get(issuer)
        if endpoint is None:
            try:
                metadata = await fetch_metadata(self._http, issuer)
            except FetchError as exc:
                raise errors.IntrospectionUnavailable(str(exc)) from None
            found = metadata.get("introspection_endpoint")
            if not isinstance(found, str):
                raise errors.IntrospectionUnavailable(
                    f"the metadata of {issuer} has no introspection_endpoint"
                )
            if not secure_url(found):
                # Never contacted: the token would travel in the clear, to anyone on the path.
                log.error(
                    "introspection endpoint refused: %s",
                    HTTPS_REQUIRED,
                    extra={"issuer": issuer, "endpoint": found},
                )
                raise errors.IntrospectionUnavailable(
                    f"the introspection_endpoint of {issuer} is refused: {HTTPS_REQUIRED}"
                )
            endpoint = self._endpoints[issuer] = found
        return endpoint

    async def _ask(self, token: str, issuer: str) -> dict[str, Any]:
        endpoint = await self._endpoint(issuer)
        try:
            response = await self._http.post(
                endpoint,
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._auth,
                headers={"accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise errors.IntrospectionUnavailable(
                f"POST {endpoint}: {type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            # 401/403: warden's own credentials are wrong; that is not the token's fault.
            raise errors.IntrospectionUnavailable(f"POST {endpoint}: HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise errors.IntrospectionUnavailable(f"POST {endpoint}: not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("active"), bool):
            raise errors.IntrospectionUnavailable(f"POST {endpoint}: no boolean 'active'")
        return answer
