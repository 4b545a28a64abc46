"""warden's benchmark: side by side, in one run, against the same RabbitMQ.

    python -m bench.run                      # every scenario, 50,000 messages each, 3 rounds
    python -m bench.run --messages 20000 --only a,b --rounds 1

Scenarios (each consumes messages already waiting in a fresh quorum queue, in a process of its
own, with the same prefetch, bodies and headers):

  a       a bare aio-pika consume-and-ack loop (the baseline)
  a-relay warden's transport without the decision: each message copied to <queue>.dlq with a
          confirm, then acked. The floor under (d), whose dead letters cost the same publish
  b       warden, allowed path, a no-op action, 10 tokens reused over all jobs
  c-ALG   warden, allowed path, every job its own token, signed with ALG (RS256, ES256, EdDSA)
  d       warden, denied path (scope_insufficient), dead letters included
  d-undecided  (d) with every job given the first job's verdict: what the denied path costs
          besides the decision. Not warden as it runs; only with --only
  b-blocked  (b) with one more job at the head of the queue, a blocking action that sleeps 3 s
          in warden's thread pool while the N others flow; compared to (b) of the same round.
          Only with --only, e.g. --only b,b-blocked --messages 1000
  e-b     FastStream + PyJWT middleware doing the same checks, tokens as in b
  e-c     the same peer, tokens as in c-RS256

How costs grow (``bench/scale.py``; each run once, and only when named in --only), e.g.
    python -m bench.run --only feed-0,feed-1M,feed-1M-reconnects,cache-100k,queues-100
  feed-N  N revocation events in the stream (0, 1k, 10k, 100k, 1M): ready after, peak RSS
  feed-100k-unbatched  100k events published one per message
  feed-1M-reconnects   the feed's connection closed three times at 1M events: events read
          again, RSS after each, the longest a job waited
  replicas-3x100k      three workers starting together on 100k events
  cache-100k           100k distinct tokens cycling over a cache of 10,000: hit rate
  queues-N             a worker serving N work queues (1, 10, 100) on a node of the run's own
          with the installed RabbitMQ's default limits: ready after, broker queues

Each round runs every scenario once, in this order, so a shared machine's noise falls on all of
them alike. For each scenario the report takes its median round:
  - messages per second, and the ratio to (a): the median of the rounds' ratios, each to the (a)
    of the same round, with their range;
  - decision latency p50/p99, measured inside the consuming process; its peak RSS;
  - its CPU time per message, and the broker's when RabbitMQ runs on this machine. The two say
    which side bounds a scenario (here they share two cores).
Results go to bench/results/ as JSON, every round included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from bench import scale as scale_scenarios  # noqa: E402
from tests.support.issuer import Issuer, JwksServer, SigningKey  # noqa: E402
from worker.amqp.topology import declare_topology  # noqa: E402

SCENARIOS = ("a", "a-relay", "b", "c-RS256", "c-ES256", "c-EdDSA", "d", "e-b", "e-c")
EXTRA = ("d-undecided", "b-blocked")
"""Run only when named in --only."""
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


FIRST = {"b-blocked": "bench.sleep"}
"""Scenarios whose queue holds one more job, of this action, ahead of the N counted."""


async def fill(
    url: str, queue: str, action: str, tokens_: list[str], count: int, first: str | None = None
) -> None:
    """A fresh quorum work queue holding ``count`` jobs, cycling through ``tokens_``, after one
    job of ``first`` when given."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, (queue,), 5, (1000,))
        window: list[Any] = []
        actions = [first] * (first is not None) + [action] * count
        for i, job_action in enumerate(actions):
            body = json.dumps({"action": job_action, "payload": {"report": "q3", "n": i}}).encode()
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
        for name in (queue, f"{queue}.dlq"):
            await channel.queue_delete(name)


def broker_cpu_seconds() -> float | None:
    """CPU time used so far by a RabbitMQ running on this machine (None if there is none)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "(beam.smp)" in text:
            fields = text.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def consume(kind: str, queue: str, messages: int, common: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario process; its last stdout line is its result, to which the broker's CPU
    time per message is added when the broker runs on this machine."""
    broker_before = broker_cpu_seconds()
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
    broker_after = broker_cpu_seconds()
    result["broker_cpu_us_per_message"] = (
        None
        if broker_before is None or broker_after is None
        else (broker_after - broker_before) / messages * 1e6
    )
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
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run every scenario this many times, interleaved; report each one's median round",
    )
    options = parser.parse_args()
    wanted = options.only.split(",")
    n = options.messages
    scale = [name for name in wanted if name in scale_scenarios.SCALE]
    wanted = [name for name in wanted if name not in scale_scenarios.SCALE]
    scaled = scale_scenarios.run(scale, options.broker_url) if scale else {}
    if not wanted:
        report({}, n, options.prefetch, scaled)
        return

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
        "d-undecided": ("warden-undecided", "bench.admin", reused, n),
        "b-blocked": ("warden-blocked", "bench.noop", reused, n),
        "e-b": ("faststream", "bench.noop", reused, n),
    }
    for alg, minted in distinct.items():
        plan[f"c-{alg}"] = ("warden", "bench.noop", minted, n)
    if "RS256" in distinct:
        plan["e-c"] = ("faststream", "bench.noop", distinct["RS256"], n)
    if options.growth:
        plan["b-x4"] = ("warden", "bench.noop", reused, 4 * n)
        wanted.append("b-x4")

    order = [s for s in (*SCENARIOS, *EXTRA) if s in wanted and s in plan]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    for round_ in range(1, options.rounds + 1):
        # b-x4 only compares memory: once, in the last round.
        extra = ["b-x4"] if "b-x4" in plan and round_ == options.rounds else []
        for name in [*order, *extra]:
            kind, action, tokens_, count = plan[name]
            queue = f"bench-{name.lower()}-{uuid.uuid4().hex[:6]}"
            print(f"round {round_} {name}: filling {queue} with {count} ...", file=sys.stderr)
            asyncio.run(fill(options.broker_url, queue, action, tokens_, count, FIRST.get(name)))
            if options.profile:
                (ROOT / "bench" / "results").mkdir(exist_ok=True)
                common["profile"] = str(ROOT / "bench" / "results" / f"profile-{name}.pstats")
            try:
                result = consume(kind, queue, count, common)
            finally:
                asyncio.run(drop(options.broker_url, queue))
            rounds.setdefault(name, []).append(result)
            print(f"round {round_} {name}: {result['rate']:.0f} msg/s", file=sys.stderr)
    with_server.stop()

    report(rounds, n, options.prefetch, scaled)


def median(values: list[float]) -> float:
    """The middle value (the lower middle one of an even count)."""
    return sorted(values)[(len(values) - 1) // 2]


def ratios(runs: list[dict[str, Any]], of: list[dict[str, Any]]) -> list[float]:
    """Rate over rate, round by round. Rounds are paired from the last, where b-x4 runs."""
    return [x["rate"] / y["rate"] for x, y in zip(reversed(runs), reversed(of), strict=False)][::-1]


def report(  # noqa: C901
    rounds: dict[str, list[dict[str, Any]]],
    n: int,
    prefetch: int,
    scaled: dict[str, Any] | None = None,
) -> None:
    """Each scenario's median round; its ratio to (a) is the median of the ratios of the rounds
    (each measured side by side with that round's (a)); the JSON file; the table. Then the
    scale scenarios (``bench/scale.py``), each figure with its growth."""
    base = rounds.get("a", [])
    results: dict[str, dict[str, Any]] = {}
    for name, runs in rounds.items():
        chosen = dict(sorted(runs, key=lambda r: float(r["rate"]))[(len(runs) - 1) // 2])
        chosen["rates"] = [run["rate"] for run in runs]
        chosen["ratios_to_a"] = ratios(runs, base)
        chosen["ratio_to_a"] = median(chosen["ratios_to_a"]) if base else None
        chosen["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
        results[name] = chosen
    summary: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": n,
        "prefetch": prefetch,
        "rounds": max((len(runs) for runs in rounds.values()), default=0),
        "results": results,
        "scale": scaled or {},
    }
    if "b" in results and "b-x4" in results:
        summary["rss_growth_b_to_b_x4"] = (
            results["b-x4"]["peak_rss_mb"] / results["b"]["peak_rss_mb"] - 1
        )
    for key, ours, peer in (
        ("warden_over_peer_b", "b", "e-b"),
        ("warden_over_peer_c", "c-RS256", "e-c"),
        ("b_blocked_over_b", "b-blocked", "b"),
    ):
        if ours in rounds and peer in rounds:
            summary[key] = median(ratios(rounds[ours], rounds[peer]))
    if "b-blocked" in rounds:
        summary["b_blocked_sleeper_settled_after_the_others_s"] = [
            run["uncounted_settled_after_last_s"] for run in rounds["b-blocked"]
        ]
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(summary, indent=2))

    for line in scale_scenarios.report(scaled or {}):
        print(line)
    if results:
        print(
            f"{'scenario':11} {'msg/s':>8} {'vs a':>6} {'(range)':>11} {'p50 µs':>7}"
            f" {'p99 µs':>7} {'RSS MB':>7} {'CPU µs/msg':>11} {'broker':>7}"
        )
    for name, r in results.items():
        p50, p99 = r["decision_p50_us"], r["decision_p99_us"]
        spread = r["ratios_to_a"]
        span = f"{min(spread):.2f}-{max(spread):.2f}" if spread else "-"
        print(
            f"{name:11} {r['rate']:8.0f} {r['ratio_to_a'] or 0:6.2f} {span:>11} "
            f"{_us(p50):>7} {_us(p99):>7} "
            f"{r['peak_rss_mb']:7.1f} {r['cpu_us_per_message']:11.0f} "
            f"{_us(r['broker_cpu_us_per_message']):>7}"
        )
    if "b-blocked" in results:
        after = summary["b_blocked_sleeper_settled_after_the_others_s"]
        print("b-blocked: the sleeper settled " + ", ".join(f"{s:.2f}" for s in after) + " s")
        print("  after the last of the others (positive: they all flowed while it slept)")
    for key in (
        "warden_over_peer_b",
        "warden_over_peer_c",
        "b_blocked_over_b",
        "rss_growth_b_to_b_x4",
    ):
        if key in summary:
            print(f"{key}: {summary[key]:.2f}")
    print(f"written to {path.relative_to(ROOT)}")


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
