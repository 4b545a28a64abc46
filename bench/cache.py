"""The verified-token cache when more distinct tokens cycle than it holds (``cache-100k``):
100,000 ES256 tokens decided in turn, twice over, by a gate with the default cache of
10,000; the hit rate of the second round (beside least-recently-used eviction alone), and what a
hit and a miss cost."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from bench.run import tokens
from tests.support.decision import REGISTRY, MemoryKeys, delivery
from tests.support.issuer import JwksServer, SigningKey
from worker.auth.setup import build_trust
from worker.auth.verified import VerifiedTokens
from worker.pipeline.decision import Gate
from worker.pipeline.delivery import Delivery
from worker.settings import Settings
from worker.support.cache import BoundedCache

TOKENS, CACHE, ROUNDS = 100_000, 10_000, 2


async def _rounds(
    gate: Gate, cache: VerifiedTokens, jobs: list[tuple[bytes, Delivery]]
) -> dict[str, float]:
    """Decide every job ``ROUNDS`` times over; count the hits of all rounds but the first."""
    hits = total = 0
    hit_s = miss_s = 0.0
    for round_ in range(ROUNDS):
        for digest, job in jobs:
            known = digest in cache._entries
            started = time.perf_counter()
            await gate.decide(job)
            spent = time.perf_counter() - started
            if round_ == 0:
                continue
            total += 1
            if known:
                hits += 1
                hit_s += spent
            else:
                miss_s += spent
    return {
        "hit_rate": hits / total,
        "hit_us": hit_s / max(hits, 1) * 1e6,
        "miss_us": miss_s / max(total - hits, 1) * 1e6,
    }


def cache_scenario() -> dict[str, Any]:
    server = JwksServer()
    server.start()
    try:
        issuer = server.issuer("bench", SigningKey.generate("ES256"))
        minted = tokens(issuer, "ES256", "reports:read", TOKENS)
        jobs = [
            (hashlib.sha256(t.encode()).digest(), delivery(t, action="reports.read"))
            for t in minted
        ]
        settings = Settings(issuer=issuer.url, audience=issuer.audience)
        measured: dict[str, dict[str, float]] = {}
        for name in ("lru", "warden"):
            cache = VerifiedTokens(CACHE)
            if name == "lru":
                BoundedCache.__init__(cache, CACHE)  # the same cache without admission
            gate = Gate(build_trust(settings), MemoryKeys(issuer), REGISTRY, cache=cache)
            measured[name] = asyncio.run(_rounds(gate, cache, jobs))
        return {
            "tokens": TOKENS,
            "cache": CACHE,
            **measured["warden"],
            "lru_hit_rate": measured["lru"]["hit_rate"],
        }
    finally:
        server.stop()
