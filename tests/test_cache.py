"""The verified-token cache: a hit skips checks 3 to 12, never revocation, expiry or key loss."""

from __future__ import annotations

import hashlib
import time

import jwt

from tests.support.decision import REGISTRY, MemoryKeys, delivery
from tests.support.issuer import Issuer, JwksServer, SigningKey
from worker.auth.revocation import Revocation, RevocationList
from worker.auth.setup import build_trust
from worker.auth.verified import Entry, VerifiedTokens
from worker.pipeline.decision import Allowed, Denied, Gate
from worker.settings import Settings


def _reason(verdict: object) -> str:
    return "allowed" if isinstance(verdict, Allowed) else verdict.denial.reason  # type: ignore[attr-defined]


async def test_a_token_revoked_after_it_was_cached_is_denied_on_its_next_job(
    jwks: JwksServer, issuer: Issuer
) -> None:
    revoked = RevocationList()
    cache = VerifiedTokens()
    settings = Settings(issuer=issuer.url, audience=issuer.audience)
    gate = Gate(
        build_trust(settings), MemoryKeys(issuer), REGISTRY, revocations=revoked, cache=cache
    )
    token = issuer.token()
    assert _reason(await gate.decide(delivery(token))) == "allowed"
    assert _reason(await gate.decide(delivery(token))) == "allowed"
    assert len(cache) == 1, "the second job was decided from the cache"

    claims = jwt.decode(token, options={"verify_signature": False})
    revoked.add(
        Revocation.from_mapping({"jti": claims["jti"], "expires_at": "2999-01-01T00:00:00Z"}),
        time.time(),
    )
    verdict = await gate.decide(delivery(token))
    assert isinstance(verdict, Denied)
    assert verdict.denial.reason == "token_revoked"
    assert verdict.token is not None
    assert verdict.token.verified


async def test_a_cached_token_expires_with_its_exp(jwks: JwksServer, issuer: Issuer) -> None:
    now = [time.time()]
    settings = Settings(issuer=issuer.url, audience=issuer.audience, leeway_seconds=5)
    gate = Gate(
        build_trust(settings), MemoryKeys(issuer), REGISTRY, lambda: now[0], cache=VerifiedTokens()
    )
    token = issuer.token(exp=int(now[0]) + 10)
    assert _reason(await gate.decide(delivery(token))) == "allowed"
    now[0] += 14
    assert _reason(await gate.decide(delivery(token))) == "allowed", "within exp + leeway"
    now[0] += 2
    assert _reason(await gate.decide(delivery(token))) == "token_expired"


async def test_a_cached_token_whose_key_was_withdrawn_is_no_longer_accepted(
    jwks: JwksServer, issuer: Issuer
) -> None:
    old = issuer.key
    keys = MemoryKeys(issuer)
    settings = Settings(issuer=issuer.url, audience=issuer.audience)
    gate = Gate(build_trust(settings), keys, REGISTRY, cache=VerifiedTokens())
    token = issuer.token(iat=int(time.time()) - 120)
    assert _reason(await gate.decide(delivery(token))) == "allowed"

    issuer.keys[:] = [SigningKey.generate("ES256")]  # the issuer withdraws the key
    await keys.refetch(issuer.url)
    assert old.kid not in {k.kid for k in issuer.keys}
    assert _reason(await gate.decide(delivery(token))) == "key_unknown"


async def test_the_cache_is_bounded_and_holds_no_token(jwks: JwksServer, issuer: Issuer) -> None:
    cache = VerifiedTokens(max_entries=3)
    settings = Settings(issuer=issuer.url, audience=issuer.audience)
    gate = Gate(build_trust(settings), MemoryKeys(issuer), REGISTRY, cache=cache)
    tokens = [issuer.token() for _ in range(5)]
    for token in tokens:
        assert _reason(await gate.decide(delivery(token))) == "allowed"
    assert len(cache) == 3
    stored = repr(list(cache._entries))
    assert not any(token in stored or token.rsplit(".", 1)[1][:16] in stored for token in tokens)


async def test_a_cache_hit_still_checks_the_action_and_its_scopes(
    jwks: JwksServer, issuer: Issuer
) -> None:
    settings = Settings(issuer=issuer.url, audience=issuer.audience)
    gate = Gate(build_trust(settings), MemoryKeys(issuer), REGISTRY, cache=VerifiedTokens())
    token = issuer.token(scope="reports:read")
    assert _reason(await gate.decide(delivery(token, action="reports.read"))) == "allowed"
    assert _reason(await gate.decide(delivery(token, action="reports.generate"))) == (
        "scope_insufficient"
    )
    assert _reason(await gate.decide(delivery(token, action="reports.nope"))) == "action_unknown"


async def _one_entry(issuer: Issuer) -> tuple[VerifiedTokens, Entry]:
    """A real verified-token entry (what the gate remembers), to fill a cache with."""
    seed = VerifiedTokens()
    settings = Settings(issuer=issuer.url, audience=issuer.audience)
    gate = Gate(build_trust(settings), MemoryKeys(issuer), REGISTRY, cache=seed)
    assert _reason(await gate.decide(delivery(issuer.token()))) == "allowed"
    (digest,) = list(seed)
    entry = seed.get(digest)
    assert entry is not None
    return seed, entry


async def test_more_tokens_cycling_than_the_cache_holds_still_hit_its_share(
    jwks: JwksServer, issuer: Issuer
) -> None:
    _, entry = await _one_entry(issuer)
    cache = VerifiedTokens(max_entries=100)
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(1000)]
    rounds = []
    for _ in range(4):
        hits = 0
        for digest in digests:
            if cache.get(digest, 0.0) is not None:
                hits += 1
            else:
                cache.remember(digest, entry)
        rounds.append(hits / len(digests))
    # Least-recently-used alone evicts every token before it comes again: no hit at all.
    assert rounds[0] == 0
    assert all(rate >= 0.09 for rate in rounds[1:]), rounds
    assert len(cache) == 100


async def test_a_token_asked_for_more_often_takes_the_place_of_the_least_recent_one(
    jwks: JwksServer, issuer: Issuer
) -> None:
    _, entry = await _one_entry(issuer)
    cache = VerifiedTokens(max_entries=3)
    for name in (b"a", b"b", b"c"):
        assert cache.get(name, 0.0) is None
        cache.remember(name, entry)
    assert cache.get(b"d", 0.0) is None
    cache.remember(b"d", entry)
    assert b"d" not in list(cache)  # asked for no more often than those held: not admitted
    for _ in range(2):
        assert cache.get(b"d", 0.0) is None
        cache.remember(b"d", entry)
    # Asked for more often than the least recently used one: that one went.
    assert list(cache) == [b"b", b"c", b"d"]
    assert cache.get(b"d", 0.0) is entry
