"""Actions for tests that run ``warden run`` as a real process.

``work.slow`` takes about 10 ms and reports each job it ran to the queue named by
``WARDEN_TEST_RAN_QUEUE``, so the test can count runs across the process boundary.
``work.crash`` kills the process outright, as a segfaulting library would.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aio_pika

from worker import Job, action

_channel: aio_pika.abc.AbstractChannel | None = None


async def _report(job: Job) -> None:
    global _channel  # one connection per process, opened on first use
    if _channel is None:
        connection = await aio_pika.connect(os.environ["WARDEN_BROKER_URL"])
        _channel = await connection.channel(publisher_confirms=True)
    await _channel.default_exchange.publish(
        aio_pika.Message(job.id.encode(), headers={"redelivered": job.redelivered}),
        os.environ["WARDEN_TEST_RAN_QUEUE"],
    )


@action("work.slow", scopes={"work"})
async def slow(job: Job) -> None:
    await asyncio.sleep(0.01)
    await _report(job)


@action("work.crash", scopes={"work"})
async def crash(job: Job) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
