"""The feed reads what can still matter, once: a replica starts at the lifetime window, not at
the stream's start; after a break it resumes where it stopped, reading no event twice and
holding no entry twice; many events may travel in one message.

Each test has a virtual host of its own, so its revocation stream stays out of the shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.support.logwatch import LogWatch
from tests.support.rabbitmqctl import (
    close_connections_of_vhost,
    needs_rabbitmqctl,
    scratch_vhost,
)
from worker import errors
from worker.amqp.connection import open_connection
from worker.amqp.feed import RevocationFeed, publish_revocation, publish_revocations
from worker.amqp.topology import declare_stream
from worker.auth.revocation import Revocation, RevocationList
from worker.errors import BrokerUnresponsive

ISS = "https://issuer.test"


@pytest.fixture
async def vhost_url(broker_url: str) -> AsyncIterator[str]:
    async with scratch_vhost(broker_url) as url:
        yield url


@pytest.fixture
async def revoker(vhost_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel that declares the stream and publishes events, as ``warden revoke`` does."""
    connection = await aio_pika.connect(vhost_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_stream(channel, "24h")
        yield channel


def _jti(value: str, lasts: float = 3600) -> Revocation:
    return Revocation("jti", value, None, None, time.time() + lasts)


def _revoked(feed: RevocationFeed, jti: str) -> bool:
    try:
        feed.check({"jti": jti, "iat": int(time.time())}, ISS)
    except errors.TokenRevoked:
        return True
    return False


@contextlib.asynccontextmanager
async def _following(feed: RevocationFeed) -> AsyncIterator[RevocationFeed]:
    task = asyncio.create_task(feed.follow_forever())
    try:
        async with asyncio.timeout(20):
            await feed.caught_up.wait()
        yield feed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _feed(url: str, window: float | None = None) -> RevocationFeed:
    return RevocationFeed(
        url,
        RevocationList(),
        max_staleness=5.0,
        trusted=frozenset({"guest"}),
        user="guest",
        window=window,
        probe_every=0.2,
    )


@pytest.mark.broker
@needs_rabbitmqctl
async def test_a_replica_started_after_the_lifetime_reads_none_of_the_older_events(
    vhost_url: str, revoker: aio_pika.abc.AbstractChannel
) -> None:
    # A token lives 2 s at most (no leeway): an event older than that can deny nothing, even
    # one whose expires_at is an hour away.
    window = 2.0
    for value in ("old-1", "old-2", "old-3"):
        await publish_revocation(revoker, _jti(value), "guest")
    # The broker's timestamps are whole seconds: past the window, and past its second.
    await asyncio.sleep(window + 1.5)
    await publish_revocation(revoker, _jti("new"), "guest")

    async with _following(_feed(vhost_url, window)) as feed:
        assert feed.counts["messages"] == 1  # "new"; the broker did not even send the others
        assert feed.counts["too_old"] == 0
        assert _revoked(feed, "new")
        assert not any(_revoked(feed, v) for v in ("old-1", "old-2", "old-3"))
        assert len(feed.revocations) == 1
        # And what is revoked after it started is denied too.
        await publish_revocation(revoker, _jti("newer"), "guest")
        async with asyncio.timeout(10):
            await feed.wait_until_revoked({"jti": "newer"}, ISS)

    # Without the window (the stream read from its start), the old events are all held.
    async with _following(_feed(vhost_url)) as everything:
        assert all(_revoked(everything, v) for v in ("old-1", "old-2", "old-3", "new"))


@pytest.mark.broker
@needs_rabbitmqctl
async def test_after_a_broken_connection_the_feed_resumes_reading_no_event_twice(
    vhost_url: str, revoker: aio_pika.abc.AbstractChannel, logwatch: LogWatch
) -> None:
    await publish_revocations(revoker, [_jti(f"before-{i}") for i in range(500)], "guest")
    async with _following(_feed(vhost_url, window=3600)) as feed:
        assert feed.counts["events"] == 500
        for round_ in range(3):
            attached = feed.attachments
            assert await close_connections_of_vhost(vhost_url, "warden revocation feed") == 1
            await publish_revocation(revoker, _jti(f"during-{round_}"), "guest")
            async with asyncio.timeout(20):
                await feed.wait_until_revoked({"jti": f"during-{round_}"}, ISS)
                await feed.wait_reliable()
            assert feed.attachments == attached + 1
        # Every event was taken once: none read again after any of the three breaks.
        assert feed.counts["events"] == 503
        assert feed.counts["applied"] == 503
        assert feed.counts["reread"] == 0
        assert len(feed.revocations) == 503
        resumed = [r for r in logwatch.records if r.getMessage() == "revocation feed attached"]
        assert [type(getattr(r, "from")) for r in resumed[1:]] == [int, int, int]


@pytest.mark.broker
@needs_rabbitmqctl
async def test_events_packed_in_one_message_are_each_applied_and_a_bad_one_is_skipped(
    vhost_url: str, revoker: aio_pika.abc.AbstractChannel, logwatch: LogWatch
) -> None:
    exchange = await revoker.get_exchange("warden.revoke", ensure=False)
    body = (
        b'[{"jti":"a","expires_at":"2099-01-01T00:00:00Z"},'
        b'{"jti":"b"},'
        b'{"sub":"c","issued_before":"2020-01-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z"}]'
    )
    await exchange.publish(aio_pika.Message(body, user_id="guest"), "")
    async with _following(_feed(vhost_url)) as feed:
        assert _revoked(feed, "a")
        assert not _revoked(feed, "b")
        with pytest.raises(errors.TokenRevoked):
            feed.check({"sub": "c", "iat": 1_500_000_000}, ISS)
        assert feed.counts["events"] == 3
        assert feed.counts["invalid"] == 1
    [skipped] = [r for r in logwatch.records if "skipped" in r.getMessage()]
    assert "expires_at" in skipped.error  # type: ignore[attr-defined]


async def test_a_broker_that_never_answers_the_handshake_is_given_up_on_and_said(
    logwatch: LogWatch,
) -> None:
    # A listener that accepts the connection and never speaks: a broker out of file handles.
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        started = time.monotonic()
        with pytest.raises(BrokerUnresponsive, match="did not complete the handshake"):
            await open_connection(f"amqp://guest:guest@127.0.0.1:{port}/", "warden test", 3.0)
        assert time.monotonic() - started < 4.0
        assert accepted
        for writer in accepted:
            writer.close()
    [waiting] = [r for r in logwatch.records if "waiting for the broker" in r.getMessage()]
    assert waiting.levelno == logging.WARNING
    assert waiting.connection == "warden test"  # type: ignore[attr-defined]
