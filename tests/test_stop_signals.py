"""SIGTERM is heeded at every stage of ``warden run``: while it fetches keys, while it connects
to a broker that is down or does not answer, while it waits to read the revocation feed to its
end, and while it reconnects; each time it exits 0 within the grace period, having taken
nothing it could lose."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.support.issuer import Issuer, JwksServer
from tests.support.leaks import assert_no_leak
from tests.support.nodes import Node
from tests.support.processes import WorkerProcess, worker_environment, worker_processes
from worker.amqp.feed import revoke
from worker.auth.revocation import Revocation
from worker.settings import Settings

GRACE = 5.0
"""WARDEN_SHUTDOWN_GRACE_SECONDS of every worker here."""

RETENTION = Settings.model_fields["revocation_retention"].default

UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"
"""A broker address where nothing listens: connecting is refused, again and again."""

Spawn = Callable[..., Any]


@pytest.fixture
async def spawn(jwks: JwksServer, issuer: Issuer) -> AsyncIterator[Spawn]:
    """Start ``warden run`` on a queue of the test's own, on ``broker_url``."""
    queue = f"t-stop-{uuid.uuid4().hex[:10]}"
    async with worker_processes() as start:

        async def spawn(broker_url: str, **env: str) -> WorkerProcess:
            environment = worker_environment(
                broker_url,
                queue,
                jwks,
                issuer,
                WARDEN_SHUTDOWN_GRACE_SECONDS=str(GRACE),
                **env,
            )
            worker: WorkerProcess = await start(environment)
            return worker

        yield spawn


async def stopped_cleanly(worker: WorkerProcess) -> None:
    """SIGTERM: exit status 0 within the grace period, said in one line, no traceback."""
    assert await worker.stop(within=GRACE) == 0, worker.other[-20:]
    assert not worker.other, f"not a log record: {worker.other[:5]}"
    assert_no_leak("\n".join(map(str, worker.records)), "the output of warden run")


@pytest.fixture
async def silent_jwks() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A JWKS URL whose server accepts connections and never answers; an event set once a
    request came in."""
    asked = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        asked.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/jwks.json", asked
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_sigterm_while_fetching_keys_exits_0(
    spawn: Spawn, silent_jwks: tuple[str, asyncio.Event]
) -> None:
    url, asked = silent_jwks
    worker = await spawn(UNREACHABLE, WARDEN_JWKS_URL=url, WARDEN_JWKS_TIMEOUT_SECONDS="60")
    await asyncio.wait_for(asked.wait(), 30)
    status, body = await worker.readyz()
    assert status == 503
    assert body["consuming"] == "not consuming: fetching the issuers' keys"
    await stopped_cleanly(worker)
    assert "stopped while starting" in worker.events()


async def test_sigterm_while_the_broker_refuses_connections_exits_0(spawn: Spawn) -> None:
    worker = await spawn(UNREACHABLE)
    await worker.logged("no broker address answers; retrying")
    status, body = await worker.readyz()
    assert status == 503
    assert body["broker"] == "not connected to the broker"
    await stopped_cleanly(worker)
    assert "stopped while starting" in worker.events()


@pytest.mark.cluster
async def test_sigterm_while_connecting_to_a_frozen_node_exits_0(
    spawn: Spawn, standalone_node: Node
) -> None:
    await standalone_node.freeze()  # the port accepts; the handshake never comes
    worker = await spawn(standalone_node.url)
    await worker.logged("serving /metrics, /healthz and /readyz")
    await worker.logged("jwks fetched")
    status, body = await worker.readyz()
    assert status == 503
    assert body["consuming"] == "not consuming: connecting to the broker"
    await stopped_cleanly(worker)
    assert "stopped while starting" in worker.events()


@pytest.mark.cluster
async def test_sigterm_while_reading_the_revocation_feed_to_its_end_exits_0(
    spawn: Spawn, standalone_node: Node, issuer: Issuer
) -> None:
    # Two revocations for a list that holds one: every reading of the stream stops at the
    # second, short of the end, and the worker waits before taking jobs.
    expires = time.time() + 3600
    for jti in ("first", "second"):
        await revoke(
            standalone_node.url,
            Revocation("jti", jti, issuer.url, None, expires),
            RETENTION,
            "guest",
        )
    worker = await spawn(standalone_node.url, WARDEN_REVOCATION_MAX_ENTRIES="1")
    await worker.logged("reading the revocation feed before taking jobs")
    await worker.logged("revocation event could not be applied; no job is decided until it is")
    status, body = await worker.readyz()
    assert status == 503
    assert body["consuming"] == "not consuming: reading the revocation feed to its end"
    await stopped_cleanly(worker)
    assert "stopped while starting" in worker.events()


@pytest.mark.cluster
async def test_sigterm_while_reconnecting_exits_0(spawn: Spawn, standalone_node: Node) -> None:
    worker = await spawn(standalone_node.url)
    await worker.logged("consuming")
    await standalone_node.stop_app()
    status, body = await worker.readyz()
    assert status == 503
    assert "connection to the broker is lost" in body["broker"]
    await stopped_cleanly(worker)
    assert "stopped" in worker.events()
