"""The decision: the ordered checks of ``docs/checks.md`` over one message, free of any transport.

:func:`read_job` and :func:`bearer_token` are checks 1 and 2; :mod:`worker.auth.tokens` does 3
to 12; :class:`Gate` ties them to the key store, the revocation list (13) and the action
registry and adds 14 (the action), 15 (scopes), 16 (delegation,
:meth:`~worker.pipeline.actions.ActionSpec.allows_actor`), 17 (proof of possession,
:mod:`worker.auth.proof`) and 18 (the payload fits the action's model,
:meth:`~worker.pipeline.actions.ActionSpec.read_payload`; last, so that only a publisher allowed
to run the action learns how its payload failed). The result is an :class:`Allowed` or a
:class:`Denied`; a verdict that cannot be reached raises :class:`~worker.errors.Unavailable`.

Checks 16 and 17 cost nothing for tokens without ``act`` or ``cnf``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from worker import errors
from worker.auth.introspection import Introspector, is_opaque
from worker.auth.principal import Principal, principal
from worker.auth.proof import check_proof
from worker.auth.tokens import (
    NOT_QUEUED,
    KeyLookup,
    Queued,
    TokenCheck,
    Trust,
    Verified,
    is_numeric_date,
    shown,
    verify,
)
from worker.auth.verified import Entry, VerifiedTokens
from worker.names import HEADER_AUTHORIZATION, HEADER_PROOF
from worker.pipeline.actions import ACTION_NAME, ActionSpec, Job, Registry
from worker.pipeline.delivery import Delivery
from worker.support import strictjson

_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9._~+/-]+=*) *$")
_JSON_TYPES = ("application/json",)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A body that passed check 1."""

    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Allowed:
    """Every check passed: run ``spec`` with ``job`` (and ``payload``, its validated payload)."""

    job: Job[Any]
    spec: ActionSpec
    token: TokenCheck
    payload: Any = None


@dataclass(frozen=True, slots=True)
class Denied:
    """A check failed: dead-letter the message with ``denial``."""

    denial: errors.Denial
    action: str | None
    token: TokenCheck | None


Verdict = Allowed | Denied


class RevocationCheck(Protocol):
    """Check 13 over verified claims."""

    def check(self, claims: dict[str, Any], issuer: str) -> None:
        """Raise TokenRevoked when revoked, or Unavailable when the list cannot be trusted now.

        ``claims`` are what revocation events name, read where the issuer puts them
        (:meth:`~worker.auth.tokens.IssuerPolicy.identity`)."""
        ...


class KeyStore(KeyLookup, Protocol):
    """Keys already fetched, and a way to ask for a rate-limited refetch."""

    def loaded(self, issuer: str) -> bool:
        """Whether any key of ``issuer`` was ever fetched."""
        ...

    def fetched_at(self, issuer: str) -> float | None:
        """When the last successful fetch of ``issuer``'s keys started (wall clock)."""
        ...

    async def refetch(self, issuer: str) -> None:
        """Fetch ``issuer``'s keys again, unless a fetch is cooling down (then return at once)."""
        ...


def read_job(delivery: Delivery) -> JobRequest:
    """Check 1: every property and header could be decoded; the body is a job object
    (``schemas/job.schema.json``) with a ``message_id``."""
    if delivery.dropped:
        raise errors.MalformedMessage(
            f"{len(delivery.dropped)} properties or headers could not be decoded and were "
            f"dropped: {shown(list(delivery.dropped), 120)}"
        )
    message_id = delivery.message_id
    if not message_id or len(message_id) > 128:
        raise errors.MalformedMessage("message_id must be 1 to 128 characters")
    content_type = delivery.content_type
    if content_type and content_type.split(";", 1)[0].strip().lower() not in _JSON_TYPES:
        raise errors.MalformedMessage(f"content_type {shown(content_type)} is not application/json")
    try:
        body = strictjson.loads(delivery.body)
    except errors.NotStrictJSON as exc:
        what = "JSON without duplicate members" if exc.utf8 else "UTF-8"
        raise errors.MalformedMessage(f"the body is not {what}") from None
    if not isinstance(body, dict):
        raise errors.MalformedMessage("the body is not a JSON object")
    if body.keys() != {"action", "payload"}:
        extra = sorted(body.keys() - {"action", "payload"})
        missing = sorted({"action", "payload"} - body.keys())
        what = f"unexpected members {extra}" if extra else f"missing members {missing}"
        raise errors.MalformedMessage(f"the job has {shown(what, 120)}")
    action, payload = body["action"], body["payload"]
    if not isinstance(action, str) or not ACTION_NAME.fullmatch(action):
        raise errors.MalformedMessage(
            f"action {shown(action)} does not match {ACTION_NAME.pattern}"
        )
    if not isinstance(payload, dict):
        raise errors.MalformedMessage("payload is not an object")
    return JobRequest(action, payload)


def bearer_token(headers: Mapping[str, Any]) -> str:
    """Check 2: the ``authorization`` header holds ``Bearer <token>`` (RFC 6750 section 2.1)."""
    value = headers.get(HEADER_AUTHORIZATION)
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise errors.TokenMissing("the authorization header is not ASCII") from None
    if not isinstance(value, str) or not value:
        raise errors.TokenMissing("no authorization header")
    match = _BEARER.fullmatch(value)
    if match is None:
        if value[:7].lower() == "bearer ":
            if not value[7:].strip(" "):
                raise errors.TokenMissing("the Bearer credential holds no token")
            raise errors.TokenMalformed("the Bearer token is not RFC 6750 token syntax")
        raise errors.TokenMissing("the authorization header is not a Bearer credential")
    return match.group(1)


def _delegation_detail(spec: ActionSpec, who: Principal) -> str:
    """Why check 16 failed: the current actor, and the prior ones the token names."""
    if not spec.actors:
        detail = f"action {spec.name!r} allows no delegation, and actor {shown(who.actor)} acts"
    else:
        detail = f"actor {shown(who.actor)} may not act on action {spec.name!r}"
    if who.actor_issuer != who.issuer:
        detail += f" (identified by {shown(who.actor_issuer, 120)})"
    detail += f" for subject {shown(who.sub)}"
    if len(who.actor_chain) > 1:
        detail += " (prior actors: " + shown(list(who.actor_chain[1:]), 120) + ")"
    return detail


NO_EXP_CACHE_SECONDS = 300.0
"""How long a verified token without ``exp`` (where an issuer's policy allows that) is cached."""


class Gate:
    """Decides messages: checks 1 to 18 of ``docs/checks.md``."""

    def __init__(
        self,
        trust: Trust,
        keys: KeyStore,
        registry: Registry,
        clock: Callable[[], float] = time.time,
        *,
        revocations: RevocationCheck | None = None,
        introspector: Introspector | None = None,
        cache: VerifiedTokens | None = None,
        queued_for: float = 0.0,
    ) -> None:
        self.trust = trust
        self.queued_for = queued_for
        """The queueing allowance (seconds) of actions that name none of their own."""
        self.keys = keys
        self.registry = registry
        self.clock = clock
        self.revocations = revocations
        self.introspector = introspector
        self.cache = cache
        if introspector is None and registry.introspected():
            raise errors.ConfigurationError(
                "actions " + ", ".join(registry.introspected()) + " need introspection: set "
                "WARDEN_INTROSPECTION_CLIENT_ID and WARDEN_INTROSPECTION_CLIENT_SECRET"
            )
        if len(trust.policies) > 1 and registry.actors_without_issuer():
            raise errors.ConfigurationError(
                "actions " + ", ".join(registry.actors_without_issuer()) + " name actors "
                "without their issuer while several issuers are trusted: write "
                'actors={"<issuer>": {"<act.sub>", ...}}'
            )

    async def decide(self, delivery: Delivery) -> Verdict:
        """The verdict on one message; raises :class:`~worker.errors.Unavailable` to wait."""
        action: str | None = None
        check: TokenCheck | None = None
        try:
            request = read_job(delivery)
            action = request.action
            check = TokenCheck(bearer_token(delivery.headers))
            spec = self.registry.get(request.action)
            introspector = self.introspector
            opaque = introspector is not None and is_opaque(check.raw)
            if introspector is not None and opaque:
                verified = await introspector.verify_opaque(check.raw)
                check.claims, check.verified = verified.claims, True
                check.policy = verified.policy
                who = principal(verified.claims, verified.policy)
            else:
                allowance = self.queued_for if spec is None else spec.allowance(self.queued_for)
                queued = Queued(delivery.arrived_at, allowance) if allowance else NOT_QUEUED
                verified, who = await self._verify(check, queued)
            if self.revocations is not None:
                self.revocations.check(
                    verified.policy.identity(verified.claims), verified.policy.issuer
                )
            if spec is None:
                raise errors.ActionUnknown(f"no action {request.action!r} is registered")
            if spec.introspect and introspector is not None and not opaque:
                await introspector.confirm_active(check.raw, verified.policy.issuer)
            lacking = spec.scopes - who.scopes
            if lacking:
                raise errors.ScopeInsufficient(
                    f"action {spec.name!r} requires scopes missing from the token: "
                    + " ".join(sorted(lacking))
                )
            if who.actor is not None and not spec.allows_actor(
                who.actor, who.actor_issuer, who.issuer
            ):
                raise errors.DelegationNotAllowed(_delegation_detail(spec, who))
            if "cnf" in verified.claims:
                check_proof(
                    verified.claims,
                    check.raw,
                    delivery.headers.get(HEADER_PROOF),
                    message_id=delivery.message_id or "",
                    action=request.action,
                    queue=delivery.queue,
                    body=delivery.body,
                    algorithms=verified.policy.algorithms,
                    leeway=self.trust.leeway,
                    now=self.clock(),
                )
            payload = spec.read_payload(request.payload)
        except errors.Denial as denial:
            return Denied(denial, action, check)
        job: Job[Any] = Job(
            id=delivery.message_id or "",
            action=request.action,
            payload=request.payload if spec.model_argument else payload,
            principal=who,
            attempt=delivery.attempt,
            redelivered=delivery.redelivered,
            replayed_by=delivery.replayed_by,
        )
        return Allowed(job, spec, check, payload)

    async def _verify(self, check: TokenCheck, queued: Queued) -> tuple[Verified, Principal]:
        """Checks 3 to 12, from the cache of verified tokens when it knows the token (until
        it expires: an expired token is judged by ``queued`` afresh every time)."""
        cache = self.cache
        if cache is None:
            verified = await self._verify_fully(check, queued)
            return verified, principal(verified.claims, verified.policy)
        digest = check.digest()
        now = self.clock()
        entry = cache.get(digest, now)
        if entry is not None:
            issuer = entry.verified.policy.issuer
            if self.keys.key(issuer, entry.header.get("kid", "")) is entry.key:
                check.header, check.claims = entry.header, entry.verified.claims
                check.verified, check.policy = True, entry.verified.policy
                return entry.verified, entry.principal
            cache.pop(digest)  # the key that verified it was withdrawn: check it afresh
        verified = await self._verify_fully(check, queued)
        exp = verified.claims.get("exp")
        until = exp + self.trust.leeway if is_numeric_date(exp) else now + NO_EXP_CACHE_SECONDS
        header = check.header or {}
        key = self.keys.key(verified.policy.issuer, header.get("kid", ""))
        who = principal(verified.claims, verified.policy)
        cache.remember(digest, Entry(verified, who, header, key, until))
        return verified, who

    async def _verify_fully(self, check: TokenCheck, queued: Queued) -> Verified:
        try:
            return verify(check, self.trust, self.keys, self.clock(), queued)
        except errors.KeyUnknown:
            policy, kid = check.policy, (check.header or {}).get("kid")
            if policy is None or kid is None:
                raise
            await self.keys.refetch(policy.issuer)
            if self.keys.key(policy.issuer, kid) is not None:
                return verify(check, self.trust, self.keys, self.clock(), queued)
            if not self.keys.loaded(policy.issuer):
                raise errors.KeysUnavailable(
                    f"no key of {policy.issuer} could be fetched"
                ) from None
            if self._key_may_be_newer(check, policy.issuer):
                raise errors.KeysUnavailable(
                    f"kid {shown(kid)} may be newer than the keys of {policy.issuer} fetched so "
                    "far; waiting for the next fetch"
                ) from None
            raise

    def _key_may_be_newer(self, check: TokenCheck, issuer: str) -> bool:
        """Whether the token may have been signed after our last look at the issuer's JWKS.

        An issuer may sign with a key the moment it publishes it; such a token waits for the next
        fetch (one per cool-down) rather than being denied. ``iat`` is unverified here, so only
        an ``iat`` no later than now plus the leeway counts: a token can wait only boundedly.
        """
        iat = (check.claims or {}).get("iat")
        fetched = self.keys.fetched_at(issuer)
        if not is_numeric_date(iat) or fetched is None:
            return False
        return iat <= self.clock() + self.trust.leeway and fetched <= iat + 1
