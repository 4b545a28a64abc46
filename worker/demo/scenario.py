"""The jobs ``warden demo`` publishes: some allowed, and one for each of nine reasons to refuse.

Allowed jobs carry tokens that the development issuer hands out through the client-credentials
grant, as a real authorization server would; the refused ones carry what goes wrong in practice:
a token without the scope, for another audience, expired, forged, revoked, an agent acting for
its subject, a sender-constrained token without its proof, an action nobody registered, and a
payload the action refuses.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from worker.auth.credentials import ClientCredentials, TokenLike
from worker.auth.proof import ProofKey
from worker.devissuer import DevIssuer, SigningKey

ALLOWED = "allowed"
"""What a job whose action ran is expected to show."""

GENERATE, READ = "reports.generate", "reports.read"
"""The actions of :mod:`worker.examples`."""
WRITE_SCOPE, READ_SCOPE = "reports:write", "reports:read"

REPORTER, READER, SIGNER = "demo-reporter", "demo-reader", "demo-signer"
"""The demo's clients: one that writes reports, one that reads them, and one whose tokens are
bound to its key (sender-constrained)."""
TOKEN_DEFAULTS = {"sub": f"service-account-{READER}", "client_id": READER}
"""Who the tokens minted outside the grant name: the reader."""


@dataclass(frozen=True)
class DemoJob:
    """One job of the demo and what it shows."""

    what: str
    action: str
    token: TokenLike = field(repr=False)
    expected: str
    payload: dict[str, Any] = field(default_factory=dict)
    proof_key: ProofKey | None = None
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class Scenario:
    """The demo's jobs, and the ``jti`` whose token is revoked before the worker starts."""

    jobs: list[DemoJob]
    revoked_jti: str


def register_clients(issuer: DevIssuer, signer_key: ProofKey) -> None:
    """The demo's clients at its issuer."""
    issuer.register(REPORTER, scopes={WRITE_SCOPE, READ_SCOPE})
    issuer.register(READER, scopes={READ_SCOPE})
    issuer.register(SIGNER, scopes={WRITE_SCOPE}, bound_to=signer_key)


def grant(issuer: DevIssuer, client_id: str, scope: str) -> ClientCredentials:
    """A token source for one of the demo's clients, through the issuer's token endpoint."""
    return ClientCredentials(
        issuer.token_url, client_id, issuer.clients[client_id].secret, scope=scope
    )


def scenario(issuer: DevIssuer) -> Scenario:
    """Register the demo's clients at ``issuer`` and make its jobs."""
    signer_key = ProofKey.generate()
    register_clients(issuer, signer_key)
    reporter = grant(issuer, REPORTER, WRITE_SCOPE)
    reader = grant(issuer, READER, READ_SCOPE)
    signer = grant(issuer, SIGNER, WRITE_SCOPE)
    now = int(time.time())
    revoked_jti = uuid.uuid4().hex
    revoked = issuer.token(jti=revoked_jti, scope=READ_SCOPE)
    stranger = SigningKey.generate("RS256")
    jobs = [
        DemoJob(
            "reporter, reports:write (client credentials)",
            GENERATE,
            reporter,
            ALLOWED,
            {"report": "q1"},
        ),
        DemoJob(
            "reporter, the same token again (cached)", GENERATE, reporter, ALLOWED, {"report": "q2"}
        ),
        DemoJob("reader, reports:read (client credentials)", READ, reader, ALLOWED),
        DemoJob(
            "signer, token bound to its key, with its proof",
            GENERATE,
            signer,
            ALLOWED,
            {"report": "q3"},
            proof_key=signer_key,
        ),
        DemoJob(
            "reader asks to generate: no reports:write",
            GENERATE,
            reader,
            "scope_insufficient",
            {"report": "q4"},
        ),
        DemoJob(
            "a token for https://billing.example.com",
            READ,
            issuer.token(aud="https://billing.example.com", scope=READ_SCOPE),
            "audience_mismatch",
        ),
        DemoJob(
            "a token that expired five minutes ago",
            READ,
            issuer.token(iat=now - 600, exp=now - 300, scope=READ_SCOPE),
            "token_expired",
        ),
        DemoJob(
            "signed by a key the issuer never published",
            READ,
            issuer.token(key=stranger, header={"kid": issuer.key.kid}, scope=READ_SCOPE),
            "signature_invalid",
        ),
        DemoJob("a token revoked with warden revoke --jti", READ, revoked, "token_revoked"),
        DemoJob(
            "an agent acting for the subject (act)",
            READ,
            issuer.token(scope=READ_SCOPE, act={"sub": "agent-7"}),
            "delegation_not_allowed",
        ),
        DemoJob(
            "signer's bound token, without the proof",
            GENERATE,
            signer,
            "proof_invalid",
            {"report": "q5"},
        ),
        DemoJob(
            "an action no worker registered",
            "reports.delete",
            reporter,
            "action_unknown",
            {"report": "q1"},
        ),
        DemoJob(
            "the action refuses the payload (Reject)",
            GENERATE,
            reporter,
            "action_rejected",
            {"report": 42},
        ),
    ]
    return Scenario(jobs, revoked_jti)
