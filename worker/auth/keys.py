"""Issuers' signing keys, fetched from their JWKS without ever blocking the event loop.

Per issuer: the JWKS URL is configured or discovered from RFC 8414 / OpenID metadata; keys are
parsed once and kept by ``kid``; one fetch is in flight at a time; an unknown ``kid`` may cause a
refetch only once per cool-down; a failed fetch keeps the keys already had (stale-if-error); a
background task refreshes them on a TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWKError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from worker.auth.tokens import VerificationKey
from worker.errors import FetchError
from worker.support.backoff import wait_backoff
from worker.support.urls import HTTPS_REQUIRED, secure_url

log = logging.getLogger("warden.keys")

MIN_RSA_BITS = 2048
"""RFC 7518 section 3.3 and RFC 8725 section 3.5: a smaller RSA key is no key of the issuer's."""


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be: RFC 8414 section 3.1 first, then OpenID Discovery."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit(
        (parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")
    )
    oidc = issuer.rstrip("/") + "/.well-known/openid-configuration"
    return [rfc8414, oidc]


def parse_jwks(document: Any, issuer: str) -> dict[str, VerificationKey]:
    """The usable public signing keys of a JWKS document, by ``kid``."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise FetchError(f"the JWKS of {issuer} is not an object with a keys array")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping):
            continue
        kid, kty = jwk.get("kid"), jwk.get("kty")
        if (
            not isinstance(kid, str)
            or jwk.get("use", "sig") != "sig"
            or kty not in ("RSA", "EC", "OKP")
        ):
            continue
        if "d" in jwk or "p" in jwk:
            log.warning("jwks key has private parts; ignored", extra={"issuer": issuer, "kid": kid})
            continue
        if kid in keys:
            log.warning(
                "jwks kid appears twice; the first is kept", extra={"issuer": issuer, "kid": kid}
            )
            continue
        alg = jwk.get("alg")
        try:
            parsed = PyJWK(dict(jwk)).key
        except (PyJWKError, ValueError, TypeError) as exc:
            log.warning(
                "jwks key unusable; ignored",
                extra={"issuer": issuer, "kid": kid, "error": type(exc).__name__},
            )
            continue
        if kty == "RSA" and parsed.key_size < MIN_RSA_BITS:
            log.warning(
                "jwks RSA key under %d bits; ignored",
                MIN_RSA_BITS,
                extra={"issuer": issuer, "kid": kid, "bits": parsed.key_size},
            )
            continue
        crv = jwk.get("crv") if kty != "RSA" else None
        keys[kid] = VerificationKey(
            kid,
            kty,
            crv,
            alg if isinstance(alg, str) else None,
            parsed,
            jwk=json.dumps(jwk, sort_keys=True),
        )
    return keys


class IssuerKeys:
    """The keys of one issuer."""

    def __init__(
        self,
        issuer: str,
        jwks_url: str | None,
        http: httpx.AsyncClient,
        *,
        cooldown: float,
        refresh: float,
        attempts: int = 3,
        clock: Any = time.monotonic,
        wall: Any = time.time,
    ) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self._http = http
        self._cooldown = cooldown
        self._refresh = refresh
        self._attempts = attempts
        self._clock = clock
        self._wall = wall
        self.fetched_at: float | None = None
        """Wall-clock time at which the last successful fetch started."""
        self._keys: dict[str, VerificationKey] = {}
        self._loaded = False
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0
        self.failures = 0

    @property
    def loaded(self) -> bool:
        """Whether a JWKS was ever fetched."""
        return self._loaded

    def key(self, kid: str) -> VerificationKey | None:
        """The key called ``kid``, or None."""
        return self._keys.get(kid)

    async def fetch(self) -> None:
        """Fetch now, joining a fetch already in flight. Never raises for a failed fetch."""
        if self._inflight is None:
            self._last_attempt = self._clock()
            self._inflight = asyncio.create_task(self._fetch())
            self._inflight.add_done_callback(self._clear_inflight)
        await asyncio.shield(self._inflight)

    def _clear_inflight(self, _: asyncio.Task[None]) -> None:
        self._inflight = None

    async def refetch(self) -> None:
        """Fetch for an unknown ``kid``: join one in flight, else at most once a cool-down."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        last = self._last_attempt
        if last is not None and self._clock() - last < self._cooldown:
            return
        await self.fetch()

    async def refresh_forever(self) -> None:
        """Refresh on the TTL; while no key was ever had, retry once a cool-down."""
        while True:
            await asyncio.sleep(self._refresh if self._loaded else max(self._cooldown, 1.0))
            await self.fetch()

    async def _fetch(self) -> None:
        self.fetches += 1
        started = self._wall()
        try:
            url = self.jwks_url or await self._discover()
            if not secure_url(url):
                # Never contacted: keys fetched in the clear could be anyone's.
                raise FetchError(f"the JWKS URL {url} is refused: {HTTPS_REQUIRED}")
            self.jwks_url = url
            keys = parse_jwks(await fetch_json(self._http, url, self._attempts), self.issuer)
        except FetchError as exc:
            self.failures += 1
            log.warning(
                "jwks fetch failed; keeping %d cached keys",
                len(self._keys),
                extra={"issuer": self.issuer, "error": str(exc)},
            )
            return
        added = keys.keys() - self._keys.keys()
        # A key published again unchanged stays the same object: tokens it verified stay cached.
        old = self._keys
        self._keys = {
            kid: old[kid] if kid in old and old[kid].jwk == key.jwk else key
            for kid, key in keys.items()
        }
        self._loaded = True
        self.fetched_at = started
        log.info(
            "jwks fetched",
            extra={"issuer": self.issuer, "keys": len(keys), "new_kids": sorted(added)},
        )

    async def _discover(self) -> str:
        metadata = await fetch_metadata(self._http, self.issuer, self._attempts)
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise FetchError(f"the metadata of {self.issuer} has no jwks_uri")
        return jwks_uri


async def fetch_metadata(
    http: httpx.AsyncClient, issuer: str, attempts: int = 3
) -> Mapping[str, Any]:
    """The issuer's RFC 8414 (or OpenID) metadata, which must name the issuer itself."""
    for url in metadata_urls(issuer):
        try:
            metadata = await fetch_json(http, url, attempts)
        except FetchError:
            continue
        if not isinstance(metadata, Mapping) or metadata.get("issuer") != issuer:
            raise FetchError(f"metadata at {url} does not name issuer {issuer}")
        return metadata
    raise FetchError(f"no authorization server metadata found for {issuer}")


async def fetch_json(http: httpx.AsyncClient, url: str, attempts: int = 3) -> Any:
    """GET a JSON document, retrying transport errors with backoff; FetchError otherwise."""
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_backoff(0.1, 2.0),
            retry=retry_if_exception_type(httpx.TransportError),
            reraise=True,
        ):
            with attempt:
                response = await http.get(url, headers={"accept": "application/json"})
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {url}: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise FetchError(f"GET {url}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError as exc:
        raise FetchError(f"GET {url}: not JSON") from exc


class Keyring:
    """The keys of every trusted issuer (a worker's :class:`~worker.pipeline.decision.KeyStore`)."""

    def __init__(self, issuers: Iterable[IssuerKeys]) -> None:
        self._issuers = {keys.issuer: keys for keys in issuers}

    @classmethod
    def for_issuers(
        cls,
        issuers: Iterable[tuple[str, str | None]],
        http: httpx.AsyncClient,
        *,
        cooldown: float,
        refresh: float,
    ) -> Keyring:
        """One :class:`IssuerKeys` per ``(issuer, jwks_url or None)``."""
        return cls(
            IssuerKeys(issuer, url, http, cooldown=cooldown, refresh=refresh)
            for issuer, url in issuers
        )

    def key(self, issuer: str, kid: str) -> VerificationKey | None:
        """The issuer's key called ``kid``, or None."""
        keys = self._issuers.get(issuer)
        return None if keys is None else keys.key(kid)

    def loaded(self, issuer: str) -> bool:
        """Whether any key of ``issuer`` was ever fetched."""
        keys = self._issuers.get(issuer)
        return keys is not None and keys.loaded

    def fetched_at(self, issuer: str) -> float | None:
        """When the last successful fetch of ``issuer``'s keys started (wall clock)."""
        keys = self._issuers.get(issuer)
        return None if keys is None else keys.fetched_at

    def unloaded(self) -> list[str]:
        """Issuers of which no key was ever fetched."""
        return [issuer for issuer, keys in self._issuers.items() if not keys.loaded]

    def fetch_counts(self) -> list[tuple[str, int, int]]:
        """``(issuer, fetches, failed fetches)`` of every issuer."""
        return [(issuer, k.fetches, k.failures) for issuer, k in self._issuers.items()]

    async def refetch(self, issuer: str) -> None:
        """Rate-limited refetch of one issuer's keys."""
        keys = self._issuers.get(issuer)
        if keys is not None:
            await keys.refetch()

    async def load(self) -> None:
        """First fetch of every issuer, side by side; failures leave that issuer unloaded."""
        await asyncio.gather(*(keys.fetch() for keys in self._issuers.values()))

    async def refresh_forever(self) -> None:
        """Keep every issuer's keys fresh until cancelled."""
        async with asyncio.TaskGroup() as group:
            for keys in self._issuers.values():
                group.create_task(keys.refresh_forever())
