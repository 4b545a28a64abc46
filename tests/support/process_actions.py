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
from worker.amqp.connection import open_connection

_channel: aio_pika.abc.AbstractChannel | None = None


async def _report(job: Job) -> None:
    global _channel  # one connection per process, opened on first use and after a failure
    if _channel is None or _channel.is_closed:
        # WARDEN_TEST_REPORT_URL where a test breaks the worker's broker nodes; else the first
        # of the worker's addresses that answers.
        url = os.environ.get("WARDEN_TEST_REPORT_URL") or os.environ["WARDEN_BROKER_URL"]
        connection = await open_connection(url, "warden test report")
        _channel = await connection.channel(publisher_confirms=True)
    try:
        await _channel.default_exchange.publish(
            aio_pika.Message(job.id.encode(), headers={"redelivered": job.redelivered}),
            os.environ["WARDEN_TEST_RAN_QUEUE"],
        )
    except BaseException:
        # Not reported: the job fails, and runs again (reported then) on whatever node is up.
        _channel = None
        raise


@action("work.slow", scopes={"work"})
async def slow(job: Job) -> None:
    await asyncio.sleep(0.01)
    await _report(job)


@action("work.crash", scopes={"work"})
async def crash(job: Job) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
