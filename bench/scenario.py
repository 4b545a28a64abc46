"""One benchmark scenario in a process of its own: consume N messages already waiting in a
queue, then print one JSON line with the rate, the decision latency and the peak RSS.

Run by ``bench/run.py``; not meant to be started by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika

ARGS = json.loads(sys.argv[1])
N: int = ARGS["messages"]
QUEUE: str = ARGS["queue"]
PREFETCH: int = ARGS["prefetch"]
URL: str = ARGS["broker_url"]


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that across
    exec, so it would report the orchestrator's peak, which holds every prepared token."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Reservoir:
    """A uniform sample of at most ``size`` latencies: constant memory however long the run, so
    that the harness itself does not grow between a short run and a long one."""

    def __init__(self, size: int) -> None:
        self.samples = array("d")
        self._size = size
        self._seen = 0
        self._random = random.Random(7)

    def append(self, value: float) -> None:
        self._seen += 1
        if len(self.samples) < self._size:
            self.samples.append(value)
        else:
            slot = self._random.randrange(self._seen)
            if slot < self._size:
                self.samples[slot] = value


class Clock:
    """Counts settled messages; knows when the first came and the last was settled."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.settled = 0
        self.uncounted_at: float | None = None
        """When the one job not counted (b-blocked's sleeper) was settled."""
        self.done = asyncio.Event()
        self.decisions = Reservoir(50_000)

    def started(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()

    def one_settled(self) -> None:
        self.settled += 1
        if self.settled >= N:
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            self.done.set()

    def result(self) -> dict[str, Any]:
        assert self.first is not None
        elapsed = self.last - self.first
        latencies = sorted(self.decisions.samples)

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(int(len(latencies) * p), len(latencies) - 1)] * 1e6

        return {
            "uncounted_settled_after_last_s": None
            if self.uncounted_at is None
            else self.uncounted_at - self.last,
            "messages": self.settled,
            "seconds": elapsed,
            "rate": self.settled / elapsed,
            "cpu_us_per_message": (self.cpu_last - self.cpu_first) / self.settled * 1e6,
            "decision_p50_us": pct(0.50),
            "decision_p99_us": pct(0.99),
            "peak_rss_mb": peak_rss_mb(),
        }


async def baseline(clock: Clock) -> None:
    """A bare aio-pika consume-and-ack loop."""
    connection = await aio_pika.connect_robust(URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(QUEUE, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            clock.started()
            await message.ack()
            clock.one_settled()

        await queue.consume(on_message)
        await clock.done.wait()


async def relay(clock: Clock) -> None:
    """The floor under (d): warden's own transport with no decision. Each delivery is copied to
    ``<queue>.dlq`` with a confirm, as a dead letter is, then acked; nothing else is done."""
    from worker.amqp.inbound import Inbound, Subscriptions
    from worker.amqp.outbound import Acker, copy_properties, send_copy

    connection = await aio_pika.connect_robust(URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        acks = Acker(linger=0.002, batch=max(1, PREFETCH // 4))  # as warden's defaults

        async def on_message(message: Inbound) -> None:
            clock.started()
            acks.delivered(message)
            copy = copy_properties(message, dict(message.properties.headers or {}), user_id="guest")
            await send_copy(publisher, message.body, copy, "", f"{QUEUE}.dlq")
            acks.ack(message)
            clock.one_settled()

        subscriptions = Subscriptions(channel, {QUEUE: on_message})  # type: ignore[arg-type]
        await subscriptions.start()
        await clock.done.wait()
        await subscriptions.stop()
        await acks.flushed()


async def warden(
    clock: Clock, *, first_verdict_only: bool = False, uncounted: bytes | None = None
) -> None:
    """warden's worker, with the decision timed and settlements counted.

    With ``first_verdict_only``, every job gets the verdict decided for the first one: not
    warden as it runs, but what the rest of its path costs without the decision. A job whose
    body holds ``uncounted`` is not one of the N counted: its settling is timed apart.
    """
    from worker.pipeline.actions import Registry
    from worker.pipeline.decision import Gate
    from worker.service.consumer import Consumer
    from worker.service.runner import Worker, steady_collector
    from worker.settings import Settings

    decide = Gate.decide
    if first_verdict_only:
        decided = Gate.decide
        first: list[Any] = []

        async def decide(self: Gate, delivery: Any) -> Any:
            if not first:
                first.append(await decided(self, delivery))
            return first[0]

    async def timed_decide(self: Gate, delivery: Any) -> Any:
        clock.started()
        started = time.perf_counter()
        try:
            return await decide(self, delivery)
        finally:
            clock.decisions.append(time.perf_counter() - started)

    settle = Consumer.settle

    async def counted_settle(
        self: Consumer, message: Any, delivery: Any, outcome: Any, **options: Any
    ) -> None:
        await settle(self, message, delivery, outcome, **options)
        if uncounted is not None and uncounted in delivery.body:
            clock.uncounted_at = time.perf_counter()
        else:
            clock.one_settled()

    Gate.decide = timed_decide  # type: ignore[method-assign]
    Consumer.settle = counted_settle  # type: ignore[method-assign]
    settings = Settings(
        broker_url=URL,
        queues=(QUEUE,),
        issuer=ARGS["issuer"],
        jwks_url=ARGS["jwks_url"],
        audience=ARGS["audience"],
        prefetch=PREFETCH,
        http_port=0,
        worker_id="bench",
        log_level="WARNING",
    )
    stop = asyncio.Event()
    worker = Worker(settings, Registry.from_modules(["bench.actions"]))
    steady_collector()  # as warden run does
    task = asyncio.create_task(worker.run(stop))
    await clock.done.wait()
    stop.set()
    await task


async def warden_blocked(clock: Clock) -> None:
    """warden while the first job, a blocking action, sleeps in a thread (b-blocked): the N
    others are counted; the sleeper settles on its own, and the worker waits for it to stop."""
    await warden(clock, uncounted=b'"bench.sleep"')
    if clock.uncounted_at is None:
        raise RuntimeError("the sleeping job was not settled")


async def faststream(clock: Clock) -> None:
    """A peer: a FastStream subscriber doing the same checks with PyJWT in a middleware."""
    from bench.peer import serve

    await serve(ARGS, clock)


async def warden_undecided(clock: Clock) -> None:
    """warden, every job given the first job's verdict (see :func:`warden`)."""
    await warden(clock, first_verdict_only=True)


KINDS: dict[str, Callable[[Clock], Any]] = {
    "baseline": baseline,
    "relay": relay,
    "warden": warden,
    "warden-undecided": warden_undecided,
    "warden-blocked": warden_blocked,
    "faststream": faststream,
}


def main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    clock = Clock()
    profile = ARGS.get("profile")
    if profile:
        import cProfile

        cProfile.runctx("asyncio.run(KINDS[ARGS['kind']](clock))", globals(), locals(), profile)
    else:
        asyncio.run(KINDS[ARGS["kind"]](clock))
    print(json.dumps(clock.result()), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
