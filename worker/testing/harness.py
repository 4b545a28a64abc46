"""A job through the whole decision and its action, without a broker: :class:`TestWorker`.

What a worker does with a delivery, minus RabbitMQ: the same checks (``docs/checks.md``) with
the same settings, keys parsed from the issuer's JWKS exactly as a worker parses what it fetches,
a revocation list, the action run as a worker runs it. The job's bytes and headers are built as
:class:`worker.Publisher` builds them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from types import ModuleType
from typing import Any, ClassVar, Protocol

from worker import errors
from worker.auth.keys import parse_jwks
from worker.auth.proof import ProofKey
from worker.auth.revocation import Revocation, RevocationList
from worker.auth.setup import build_trust
from worker.auth.tokens import VerificationKey
from worker.auth.verified import VerifiedTokens
from worker.pipeline.actions import Handler, Registry
from worker.pipeline.decision import Denied, Gate
from worker.pipeline.delivery import Delivery, job_body, job_headers
from worker.pipeline.execution import ActionThreads, run_action
from worker.pipeline.outcomes import DeadLetter, Defer
from worker.pipeline.results import JobResult
from worker.settings import Settings
from worker.support.clock import rfc3339
from worker.support.threads import Threads

Action = ModuleType | str | Handler
"""What a test worker runs: modules that register actions (or their names), or the decorated
action functions themselves."""


def registry_of(actions: tuple[Action, ...]) -> Registry:
    """The registry of ``actions``: modules, or decorated functions, not both."""
    modules = [a.__name__ if isinstance(a, ModuleType) else a for a in actions]
    names = [m for m in modules if isinstance(m, str)]
    handlers = [a for a in modules if not isinstance(a, str)]
    if not actions or (names and handlers):
        raise errors.ConfigurationError(
            "give the modules that register actions, or the decorated action functions"
        )
    return Registry.from_modules(names) if names else Registry.of(*handlers)


class PublishesKeys(Protocol):
    """An issuer as a key store sees one: its ``iss`` and its JWKS document."""

    url: str

    def jwks(self) -> dict[str, Any]:
        """The issuer's JWKS."""
        ...


class LocalKeys:
    """A key store over issuers' JWKS documents held in memory: a fetch is
    ``parse_jwks(issuer.jwks(), issuer.url)``, so a key an issuer adds later is found by a
    refetch, as a worker would find it over HTTP."""

    def __init__(self, *issuers: PublishesKeys) -> None:
        self._issuers = {issuer.url: issuer for issuer in issuers}
        self._keys: dict[str, dict[str, VerificationKey]] = {}
        self._fetched: dict[str, float] = {}
        self.refetches: list[str] = []
        """Issuers whose keys were fetched again for an unknown ``kid``."""
        for url in self._issuers:
            self._fetch(url)

    def _fetch(self, issuer: str) -> None:
        self._fetched[issuer] = time.time()
        self._keys[issuer] = parse_jwks(self._issuers[issuer].jwks(), issuer)

    def key(self, issuer: str, kid: str) -> VerificationKey | None:
        """The key ``kid`` of ``issuer``."""
        return self._keys.get(issuer, {}).get(kid)

    def loaded(self, issuer: str) -> bool:
        """Whether ``issuer``'s keys were read."""
        return issuer in self._keys

    def fetched_at(self, issuer: str) -> float | None:
        """When ``issuer``'s keys were last read."""
        return self._fetched.get(issuer)

    async def refetch(self, issuer: str) -> None:
        """Read ``issuer``'s JWKS again."""
        self.refetches.append(issuer)
        if issuer in self._issuers:
            self._fetch(issuer)


class TestWorker:
    """Runs jobs through every check and the action, as a worker would, with no broker.

    ::

        worker = TestWorker(myapp.actions, issuer=issuer)
        result = await worker.run("reports.generate", {"report": "q3"}, token=issuer.token(...))
        assert result.done

    ``actions`` are modules that register actions (or their names), or decorated functions.
    ``issuer`` is trusted for its own audience (a :class:`~worker.testing.TestIssuer`, which
    need not be serving). ``settings`` are any :class:`~worker.settings.Settings` fields
    (``max_attempts=1``, ``leeway_seconds=0`` ...). Actions that ask for introspection are not
    supported here.
    """

    __test__: ClassVar[bool] = False

    def __init__(
        self,
        *actions: Action,
        issuer: PublishesKeys,
        audience: str | None = None,
        queue: str = "jobs",
        **settings: Any,
    ) -> None:
        self.registry = registry_of(actions)
        self.queue = queue
        self.settings = Settings(
            **{
                "issuer": issuer.url,
                "issuers": (),
                "audience": audience or getattr(issuer, "audience", None),
                "queues": (queue,),
                **settings,
            }
        )
        self.revocations = RevocationList()
        self.keys = LocalKeys(issuer)
        self.threads: ActionThreads = Threads(self.settings.action_threads, "warden-test-action")
        """Where a blocking action runs, as in a worker."""
        self.gate = Gate(
            build_trust(self.settings),
            self.keys,
            self.registry,
            revocations=self.revocations,
            cache=VerifiedTokens(self.settings.token_cache_size)
            if self.settings.token_cache_size
            else None,
        )

    async def run(
        self,
        action: str,
        payload: Mapping[str, Any] | None = None,
        *,
        token: str | None,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        proof_key: ProofKey | None = None,
        attempt: int = 1,
    ) -> JobResult:
        """Decide one job and, if it is allowed, run its action once. ``token`` None sends no
        ``authorization`` header; ``proof_key`` signs the job's proof of possession;
        ``attempt`` is which attempt this is (``max_attempts`` ends the retries)."""
        mid = message_id or str(uuid.uuid4())
        body = job_body(action, payload or {})
        sent = (
            dict(headers or {})
            if token is None
            else job_headers(
                token,
                message_id=mid,
                action=action,
                queue=self.queue,
                body=body,
                proof_key=proof_key,
                headers=headers,
            )
        )
        delivery = Delivery(body, sent, mid, "application/json", self.queue, attempt=attempt)
        try:
            verdict = await self.gate.decide(delivery)
        except errors.Unavailable as exc:
            return JobResult.of(mid, Defer(str(exc)))
        if isinstance(verdict, Denied):
            return JobResult.of(mid, DeadLetter(verdict))
        return JobResult.of(
            mid, await run_action(verdict, self.settings.max_attempts, self.threads)
        )

    def revoke(
        self,
        *,
        jti: str | None = None,
        sub: str | None = None,
        client_id: str | None = None,
        issued_before: float | None = None,
    ) -> None:
        """Revoke as ``warden revoke`` would: one token by ``jti``, or a subject's or client's
        tokens issued before ``issued_before`` (default: now)."""
        now = time.time()
        chosen = {k: v for k, v in {"jti": jti, "sub": sub, "client_id": client_id}.items() if v}
        event: dict[str, Any] = {
            **chosen,
            "expires_at": rfc3339(now + self.settings.revocation_lifetime(), "auto"),
        }
        if not jti:
            event["issued_before"] = rfc3339(
                now if issued_before is None else issued_before, "auto"
            )
        self.revocations.add(Revocation.from_mapping(event), now)
