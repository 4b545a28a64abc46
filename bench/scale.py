"""How warden's costs grow: the revocation feed with more events, replicas starting together,
the verified-token cache with more distinct tokens than it holds, work queues per worker.

Run by ``bench/run.py`` for the scenarios it names ``feed-*``, ``replicas-*``, ``cache-*`` and
``queues-*``; each runs once (they are long), and the report gives each figure with its growth
from the smallest size.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika

from worker.amqp.feed import publish_revocation, publish_revocations
from worker.amqp.topology import declare_stream
from worker.auth.revocation import Revocation
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent

FEED_SIZES = {"feed-0": 0, "feed-1k": 1_000, "feed-10k": 10_000, "feed-100k": 100_000}
FEED_SIZES["feed-1M"] = 1_000_000
SCALE = (
    *FEED_SIZES,
    "feed-100k-unbatched",
    "feed-1M-reconnects",
    "replicas-3x100k",
    "cache-100k",
    "queues-1",
    "queues-10",
    "queues-100",
)


def ctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True
    ).stdout


class Vhost:
    """A virtual host of the run's own on the broker, deleted afterwards with its stream."""

    def __init__(self, broker_url: str) -> None:
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        parts = urlsplit(broker_url)
        self.user = parts.username or "guest"
        self.url = urlunsplit(parts._replace(path="/" + quote(self.name, safe="")))

    def __enter__(self) -> Vhost:
        ctl("add_vhost", self.name)
        ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        return self

    def __exit__(self, *_: object) -> None:
        ctl("delete_vhost", self.name)


def events(count: int, prefix: str = "e") -> list[Revocation]:
    """``count`` revocations of distinct jtis, three in four, and of subjects, one in four,
    holding for the default token lifetime: all within the window, all counted."""
    now = time.time()
    made = []
    for i in range(count):
        if i % 4 == 3:
            made.append(Revocation("sub", f"{prefix}-sub-{i}", None, now - 1, now + 43_200))
        else:
            made.append(Revocation("jti", uuid.uuid4().hex, None, None, now + 43_200))
    return made


async def fill(url: str, count: int, batched: bool) -> int:
    """The stream of ``url`` holding ``count`` events; return the messages that took."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_stream(channel, "24h")
        user = urlsplit(url).username or "guest"
        if batched:
            sent = 0
            for start in range(0, count, 100_000):
                chunk = events(min(100_000, count - start), f"e{start}")
                sent += await publish_revocations(channel, chunk, user)
            return sent
        pending = []
        for event in events(count):
            pending.append(publish_revocation(channel, event, user))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return count


def broker_cpu_seconds() -> float | None:
    from bench.run import broker_cpu_seconds as measure

    return measure()


def feed_process(url: str, vhost: str, **extra: Any) -> subprocess.Popen[str]:
    settings = Settings(issuer="-", audience="-")
    args = {
        "broker_url": url,
        "vhost": vhost,
        "user": urlsplit(url).username or "guest",
        "window": settings.revocation_window(),
        "max_staleness": settings.revocation_max_staleness,
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bench.feed", json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise RuntimeError(f"feed scenario failed:\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def feed_scenario(
    broker_url: str, count: int, *, batched: bool = True, **extra: Any
) -> dict[str, Any]:
    with Vhost(broker_url) as vhost:
        filled = time.perf_counter()
        messages = asyncio.run(fill(vhost.url, count, batched))
        print(
            f"  {count} events in {messages} messages, {time.perf_counter() - filled:.0f}s",
            file=sys.stderr,
        )
        before = broker_cpu_seconds()
        result = finish(feed_process(vhost.url, vhost.name, **extra))
        after = broker_cpu_seconds()
    result["stream_messages"] = messages
    if before is not None and after is not None and count:
        result["broker_cpu_us_per_event"] = (after - before) / count * 1e6
    return result


def replicas_scenario(broker_url: str, count: int, replicas: int) -> dict[str, Any]:
    with Vhost(broker_url) as vhost:
        messages = asyncio.run(fill(vhost.url, count, True))
        before = broker_cpu_seconds()
        started = [feed_process(vhost.url, vhost.name) for _ in range(replicas)]
        results = [finish(process) for process in started]
        after = broker_cpu_seconds()
    return {
        "ready_s": [r["ready_s"] for r in results],
        "peak_rss_mb": [r["peak_rss_mb"] for r in results],
        "events": count,
        "stream_messages": messages,
        "broker_cpu_us_per_event": None
        if before is None or after is None
        else (after - before) / count / replicas * 1e6,
    }


def run(wanted: list[str], broker_url: str) -> dict[str, Any]:
    """Run the scale scenarios in ``wanted``; return their results by name."""
    results: dict[str, Any] = {}
    try:
        _run(wanted, broker_url, results)
    finally:
        if any(name.startswith("queues-") for name in wanted):
            from bench.queues import BenchNode

            BenchNode.stop()
    return results


def _run(wanted: list[str], broker_url: str, results: dict[str, Any]) -> None:
    for name in wanted:
        print(f"{name} ...", file=sys.stderr)
        if name in FEED_SIZES:
            results[name] = feed_scenario(broker_url, FEED_SIZES[name])
        elif name == "feed-100k-unbatched":
            results[name] = feed_scenario(broker_url, 100_000, batched=False)
        elif name == "feed-1M-reconnects":
            results[name] = feed_scenario(broker_url, 1_000_000, reconnects=3)
        elif name == "replicas-3x100k":
            results[name] = replicas_scenario(broker_url, 100_000, 3)
        elif name == "cache-100k":
            from bench.cache import cache_scenario

            results[name] = cache_scenario()
        elif name.startswith("queues-"):
            from bench.queues import queues_scenario

            results[name] = queues_scenario(int(name.split("-")[1]))


def report(results: dict[str, Any]) -> list[str]:  # noqa: C901
    """The table lines: each figure, and its growth from the smallest size measured."""
    lines = []
    feeds = [n for n in FEED_SIZES if n in results and FEED_SIZES[n]]
    if feeds:
        empty = results.get("feed-0")
        lines.append(
            f"{'feed':22} {'events':>9} {'messages':>8} {'ready s':>8} {'x':>6} {'peak RSS':>9}"
            f" {'+ empty':>8} {'B/entry':>8} {'µs/event':>9} {'broker':>7}"
        )
        first = results[feeds[0]]
        for name in [*feeds, "feed-100k-unbatched", "feed-1M-reconnects"]:
            if name not in results:
                continue
            r = results[name]
            above = r["peak_rss_mb"] - empty["peak_rss_mb"] if empty else None
            per_entry = above * 2**20 / r["entries"] if above is not None and r["entries"] else None
            lines.append(
                f"{name:22} {r['events']:9} {r['stream_messages']:8} {r['ready_s']:8.2f}"
                f" {r['ready_s'] / first['ready_s']:6.1f} {r['peak_rss_mb']:9.1f}"
                f" {_f(above):>8} {_f(per_entry, 0):>8} {r['cpu_us_per_event']:9.1f}"
                f" {_f(r.get('broker_cpu_us_per_event'), 1):>7}"
            )
        if empty:
            lines.append(
                f"{'feed-0 (empty stream)':22} ready {empty['ready_s']:.2f}s,"
                f" peak RSS {empty['peak_rss_mb']:.1f} MB"
            )
    if "feed-1M-reconnects" in results:
        r = results["feed-1M-reconnects"]
        for i, one in enumerate(r["reconnects"], 1):
            lines.append(
                f"reconnect {i}: {one['events_read']} events read, current again after"
                f" {one['current_again_s']:.2f}s, fresh throughout: {one['fresh_throughout']},"
                f" RSS {one['rss_before_mb']:.1f} -> {one['rss_after_mb']:.1f} MB"
            )
        lines.append(f"events read twice over the reconnects: {r['reread']}")
    if "replicas-3x100k" in results:
        r = results["replicas-3x100k"]
        lines.append(
            "replicas-3x100k: ready after "
            + " / ".join(f"{s:.2f}" for s in r["ready_s"])
            + f" s; broker {_f(r['broker_cpu_us_per_event'], 1)} µs per event per replica"
        )
    if "cache-100k" in results:
        r = results["cache-100k"]
        lines.append(
            f"cache-100k: {r['tokens']} tokens cycling over a cache of {r['cache']}: hit rate"
            f" {r['hit_rate'] * 100:.1f} % (LRU alone: {r['lru_hit_rate'] * 100:.1f} %);"
            f" a hit {r['hit_us']:.0f} µs, a miss {r['miss_us']:.0f} µs"
        )
    queues = [n for n in ("queues-1", "queues-10", "queues-100") if n in results]
    for name in queues:
        r = results[name]
        if r["ready_s"] is None:
            lines.append(f"{name}: NOT ready within 120 s; consumed: {r['consumed']}")
            continue
        growth = r["ready_s"] / results[queues[0]]["ready_s"]
        lines.append(
            f"{name}: ready after {r['ready_s']:.2f}s ({growth:.1f}x),"
            f" {r['broker_queues']} broker queues ({r['per_work_queue']:.1f} per work queue"
            f" + {r['shared']} shared), consumed: {r['consumed']}"
        )
    return lines


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
