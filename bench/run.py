"""warden's benchmark: side by side, in one run, against the same RabbitMQ.

    python -m bench.run                      # every scenario, 50,000 messages each
    python -m bench.run --messages 20000 --only a,b

Scenarios (each consumes messages already waiting in a fresh quorum queue, in a process of its
own, with the same prefetch, bodies and headers):

  a       a bare aio-pika consume-and-ack loop (the baseline)
  a-relay a bare aio-pika loop that republishes each message to <queue>.dlq with a confirm, then
          acks: the floor under any consumer that dead-letters, for reading (d)
  b       warden, allowed path, a no-op action, 10 tokens reused over all jobs
  c-ALG   warden, allowed path, every job its own token, signed with ALG (RS256, ES256, EdDSA)
  d       warden, denied path (scope_insufficient), dead letters included
  e-b     FastStream + PyJWT middleware doing the same checks, tokens as in b
  e-c     the same peer, tokens as in c-RS256

For each: messages per second, the ratio to (a) of this run, decision latency p50/p99 measured
inside the consuming process, and its peak RSS. Results go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import DeliveryMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.issuer import Issuer, JwksServer, SigningKey  # noqa: E402
from worker.broker import declare_topology  # noqa: E402
from worker.names import retry_queue  # noqa: E402
from worker.settings import Settings  # noqa: E402

SCENARIOS = ("a", "a-relay", "b", "c-RS256", "c-ES256", "c-EdDSA", "d", "e-b", "e-c")
_ISSUER: Issuer | None = None


def _mint(args: tuple[str, str, int, str]) -> list[str]:
    """Tokens minted in a pool process (RS256 signing is the slow part of preparing)."""
    alg, scope, count, _ = args
    assert _ISSUER is not None
    key = next(k for k in _ISSUER.keys if k.alg == alg)
    return [_ISSUER.token(key=key, scope=scope, exp=int(time.time()) + 3600) for _ in range(count)]


def _init(issuer: Issuer) -> None:
    global _ISSUER
    _ISSUER = issuer


def tokens(issuer: Issuer, alg: str, scope: str, count: int) -> list[str]:
    """``count`` distinct tokens, minted on every core."""
    chunks = [(alg, scope, count // 4 + (i < count % 4), str(i)) for i in range(4)]
    with ProcessPoolExecutor(2, initializer=_init, initargs=(issuer,)) as pool:
        return [t for chunk in pool.map(_mint, chunks) for t in chunk]


async def fill(url: str, queue: str, action: str, tokens_: list[str], count: int) -> None:
    """A fresh quorum work queue holding ``count`` jobs, cycling through ``tokens_``."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, (queue,), 5, (1000,))
        window: list[Any] = []
        for i in range(count):
            body = json.dumps({"action": action, "payload": {"report": "q3", "n": i}}).encode()
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=uuid.uuid4().hex,
                headers={
                    "authorization": f"Bearer {tokens_[i % len(tokens_)]}",
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                },
            )
            window.append(channel.default_exchange.publish(message, queue))
            if len(window) >= 2000:
                await asyncio.gather(*window)
                window.clear()
        await asyncio.gather(*window)


async def drop(url: str, queue: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        tiers = Settings(issuer="-", audience="-").retry_tiers()  # what the worker declared
        for name in (queue, f"{queue}.dlq", *(retry_queue(queue, ttl) for ttl in tiers)):
            await channel.queue_delete(name)


def consume(kind: str, queue: str, messages: int, common: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario process; its last stdout line is its result."""
    args = {**common, "kind": kind, "queue": queue, "messages": messages}
    done = subprocess.run(
        [sys.executable, "-m", "bench.scenario", json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    if done.stderr.strip():
        print(f"{kind} said:\n{done.stderr[-2000:]}", file=sys.stderr)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument(
        "--profile", action="store_true", help="write a cProfile of each scenario to bench/results/"
    )
    parser.add_argument(
        "--growth", action="store_true", help="also run b with 4x the messages and compare peak RSS"
    )
    options = parser.parse_args()
    wanted = options.only.split(",")
    n = options.messages

    with_server = JwksServer()
    with_server.start()
    issuer = with_server.issuer(
        "bench", *(SigningKey.generate(alg) for alg in ("ES256", "EdDSA", "RS256"))
    )
    common = {
        "broker_url": options.broker_url,
        "prefetch": options.prefetch,
        "issuer": issuer.url,
        "jwks_url": with_server.jwks_url(issuer),
        "audience": issuer.audience,
    }
    print(f"preparing tokens for {n} messages per scenario ...", file=sys.stderr)
    reused = tokens(issuer, "RS256", "bench:run", 10)
    distinct = {
        alg: tokens(issuer, alg, "bench:run", n)
        for alg in ("RS256", "ES256", "EdDSA")
        if f"c-{alg}" in wanted or (alg == "RS256" and "e-c" in wanted)
    }
    plan: dict[str, tuple[str, str, list[str], int]] = {
        "a": ("baseline", "bench.noop", reused, n),
        "a-relay": ("relay", "bench.admin", reused, n),
        "b": ("warden", "bench.noop", reused, n),
        "d": ("warden", "bench.admin", reused, n),
        "e-b": ("faststream", "bench.noop", reused, n),
    }
    for alg, minted in distinct.items():
        plan[f"c-{alg}"] = ("warden", "bench.noop", minted, n)
    if "RS256" in distinct:
        plan["e-c"] = ("faststream", "bench.noop", distinct["RS256"], n)
    if options.growth:
        plan["b-x4"] = ("warden", "bench.noop", reused, 4 * n)
        wanted.append("b-x4")

    results: dict[str, dict[str, Any]] = {}
    for name in [s for s in (*SCENARIOS, "b-x4") if s in wanted and s in plan]:
        kind, action, tokens_, count = plan[name]
        queue = f"bench-{name.lower()}-{uuid.uuid4().hex[:6]}"
        print(f"{name}: filling {queue} with {count} ...", file=sys.stderr)
        asyncio.run(fill(options.broker_url, queue, action, tokens_, count))
        if options.profile:
            (ROOT / "bench" / "results").mkdir(exist_ok=True)
            common["profile"] = str(ROOT / "bench" / "results" / f"profile-{name}.pstats")
        try:
            results[name] = consume(kind, queue, count, common)
        finally:
            asyncio.run(drop(options.broker_url, queue))
        print(f"{name}: {results[name]['rate']:.0f} msg/s", file=sys.stderr)
    with_server.stop()

    report(results, n, options.prefetch)


def report(results: dict[str, dict[str, Any]], n: int, prefetch: int) -> None:
    """Ratios to (a) of this run; the JSON file; the table."""
    base = results.get("a", {}).get("rate")
    for result in results.values():
        result["ratio_to_a"] = result["rate"] / base if base else None
    summary: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": n,
        "prefetch": prefetch,
        "results": results,
    }
    if "b" in results and "b-x4" in results:
        summary["rss_growth_b_to_b_x4"] = (
            results["b-x4"]["peak_rss_mb"] / results["b"]["peak_rss_mb"] - 1
        )
    if "b" in results and "e-b" in results:
        summary["warden_over_peer_b"] = results["b"]["rate"] / results["e-b"]["rate"]
    if "c-RS256" in results and "e-c" in results:
        summary["warden_over_peer_c"] = results["c-RS256"]["rate"] / results["e-c"]["rate"]
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(summary, indent=2))

    print(f"{'scenario':10} {'msg/s':>8} {'vs a':>6} {'p50 µs':>8} {'p99 µs':>8} {'RSS MB':>7}")
    for name, r in results.items():
        p50, p99 = r["decision_p50_us"], r["decision_p99_us"]
        print(
            f"{name:10} {r['rate']:8.0f} {r['ratio_to_a'] or 0:6.2f} "
            f"{_us(p50):>8} {_us(p99):>8} "
            f"{r['peak_rss_mb']:7.1f}"
        )
    for key in ("warden_over_peer_b", "warden_over_peer_c", "rss_growth_b_to_b_x4"):
        if key in summary:
            print(f"{key}: {summary[key]:.2f}")
    print(f"written to {path.relative_to(ROOT)}")


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
