"""One revocation-feed scenario in a process of its own: follow a stream already holding events
until ready, optionally break the feed's connection a few times, then print one JSON line.

Run by ``bench/run.py``; not meant to be started by hand.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika

from worker.amqp.feed import RevocationFeed, publish_revocations
from worker.auth.revocation import Revocation, RevocationList

ARGS = json.loads(sys.argv[1])


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM)."""
    return _status("VmHWM:")


def rss_mb() -> float:
    """This process's resident set now (VmRSS)."""
    return _status("VmRSS:")


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def close_feed_connection(vhost: str) -> int:
    """Have the broker close this run's feed connection (the one of its virtual host)."""
    listing = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_connections",
            "--no-table-headers",
            "pid",
            "vhost",
            "client_properties",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = [
        line.split("\t", 2)[0]
        for line in listing.splitlines()
        if line.split("\t", 2)[1:2] == [vhost] and '"warden revocation feed"' in line
    ]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "bench"], check=True)
    return len(pids)


async def main() -> dict[str, Any]:
    url: str = ARGS["broker_url"]
    baseline_rss = rss_mb()
    feed = RevocationFeed(
        url,
        RevocationList(ARGS.get("max_entries", 2_000_000)),
        max_staleness=ARGS["max_staleness"],
        trusted=frozenset({ARGS["user"]}),
        user=ARGS["user"],
        window=ARGS["window"],
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    following = asyncio.create_task(feed.follow_forever())
    await feed.caught_up.wait()
    ready_s = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    result: dict[str, Any] = {
        "ready_s": ready_s,
        "events": feed.counts["events"],
        "messages": feed.counts["messages"],
        "entries": len(feed.revocations),
        "cpu_us_per_event": cpu / max(feed.counts["events"], 1) * 1e6,
        "peak_rss_mb": peak_rss_mb(),
        "rss_mb": rss_mb(),
        "rss_before_mb": baseline_rss,
    }
    reconnects = []
    if ARGS.get("reconnects"):
        connection = await aio_pika.connect(url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for round_ in range(ARGS["reconnects"]):
            attachments = feed.attachments
            rss_before = rss_mb()
            taken_before = feed.counts["events"]
            dropped = time.perf_counter()
            assert close_feed_connection(ARGS["vhost"]) == 1
            # Revocations keep coming while the feed is away.
            during = [
                Revocation("jti", f"during-{round_}-{i}", None, None, time.time() + 3600)
                for i in range(1000)
            ]
            await publish_revocations(channel, during, ARGS["user"])
            fresh_throughout = True
            while feed.attachments == attachments or feed.counts["events"] < taken_before + 1000:
                fresh_throughout &= feed.fresh()
                await asyncio.sleep(0.01)
            back = time.perf_counter() - dropped
            # The first marker of the new attachment has come back: current again.
            last_ok = feed._last_ok
            while feed._last_ok == last_ok:
                fresh_throughout &= feed.fresh()
                await asyncio.sleep(0.01)
            reconnects.append(
                {
                    "events_taken_s": back,
                    "current_again_s": time.perf_counter() - dropped,
                    "fresh_throughout": fresh_throughout,
                    "events_read": feed.counts["events"] - taken_before,
                    "rss_before_mb": rss_before,
                    "rss_after_mb": rss_mb(),
                }
            )
        await connection.close()
        result["reconnects"] = reconnects
        result["reread"] = feed.counts["reread"]
        result["entries_after"] = len(feed.revocations)
        result["peak_rss_mb"] = peak_rss_mb()
    following.cancel()
    await asyncio.gather(following, return_exceptions=True)
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
