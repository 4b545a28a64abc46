"""Fixtures: one real RabbitMQ for the session, unique queues per test, a local issuer, workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.cluster import Cluster, RabbitNodes
from tests.support.issuer import Issuer, JwksServer, TestIssuer, jwks_server
from tests.support.logwatch import LogWatch
from tests.support.nodes import Node, NodeError
from tests.support.rabbit import Rabbit
from tests.support.stamping import broker_stamps
from worker.amqp.connection import probe
from worker.auth.revocation import RevocationList
from worker.ops.tracing import NO_TRACING, Tracing
from worker.pipeline.actions import Registry
from worker.service.runner import Worker
from worker.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """RABBITMQ_URL, or a testcontainers RabbitMQ where Docker runs; skip (fail in CI) otherwise."""
    url = os.environ.get("RABBITMQ_URL")
    container = None
    if url is None and shutil.which("docker"):
        try:
            from testcontainers.rabbitmq import RabbitMqContainer

            container = RabbitMqContainer("rabbitmq:3.13-management").start()
            host = container.get_container_host_ip()
            port = container.get_exposed_port(5672)
            url = f"amqp://guest:guest@{host}:{port}/"
        except Exception as exc:
            container = None
            reason = f"no RABBITMQ_URL and testcontainers failed: {type(exc).__name__}"
    else:
        reason = "no RABBITMQ_URL and no Docker"
    if url is None:
        if IN_CI:
            pytest.fail(f"CI needs a broker: {reason}")
        pytest.skip(reason)
    try:
        asyncio.run(probe(url))
    except Exception as exc:
        if IN_CI:
            raise
        pytest.skip(f"RabbitMQ at RABBITMQ_URL does not answer: {type(exc).__name__}")
    yield url
    if container is not None:
        container.stop()


@pytest.fixture(scope="session")
def broker_stamping(broker_url: str) -> tuple[bool, str]:
    """Whether the session's broker stamps every message it receives, overwriting a forged stamp
    (RabbitMQ's message interceptor, ``overwrite = true``: what a queueing allowance needs); and
    its version."""
    return asyncio.run(broker_stamps(broker_url))


@pytest.fixture(scope="session")
def witnessing_broker(broker_url: str, broker_stamping: tuple[bool, str]) -> str:
    """The session's broker where it stamps arrivals; skipped on one that does not (the suite's
    3.10 run), but in CI a RabbitMQ 4 without the interceptor fails: the arrival tests must run
    against the 4.0 broker ``.ci/run`` starts with it."""
    stamps, version = broker_stamping
    if not stamps:
        if IN_CI and not version.startswith("3."):
            pytest.fail(
                f"RabbitMQ {version} does not stamp arrivals: CI runs it with "
                "message_interceptors.incoming.set_header_timestamp.overwrite = true"
            )
        pytest.skip(f"RabbitMQ {version} does not stamp arrivals (needs 3.12+ and the interceptor)")
    return broker_url


@pytest.fixture
async def rabbit(broker_url: str) -> AsyncIterator[Rabbit]:
    """A connection for the test's own publishing and reading; deletes the queues it was told of."""
    async with Rabbit(broker_url) as client:
        yield client


@pytest.fixture
def queue_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with jwks_server() as server:
        yield server


@pytest.fixture
def issuer(jwks: JwksServer) -> Issuer:
    return jwks.issuer("main")


@pytest.fixture
def warden_issuer() -> Iterator[TestIssuer]:
    """The plugin's fixture, with every token it mints known to the leak checks."""
    with TestIssuer() as served:
        yield served


@pytest.fixture(scope="session")
def warden_broker_url(broker_url: str) -> str:
    """The plugin's fixtures on the session's broker (which CI requires rather than skips)."""
    return broker_url


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    ran.reset()


@pytest.fixture
def logwatch() -> Iterator[LogWatch]:
    """Every record of the ``warden`` loggers during the test, awaitable."""
    watch = LogWatch()
    logger = logging.getLogger("warden")
    logger.addHandler(watch)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(previous)


REGISTRY = Registry.from_modules(["tests.support.actions"])


def worker_settings(
    broker_url: str, jwks: JwksServer, issuer: Issuer, queue: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "broker_url": broker_url,
        "queues": (queue,),
        "issuer": issuer.url,
        "audience": issuer.audience,
        "jwks_cooldown_seconds": 1.0,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 1.0,
        "defer_max_seconds": 0.5,
        "prefetch": 32,
        "worker_id": f"test-{uuid.uuid4().hex[:6]}",
        "shutdown_grace_seconds": 5.0,
        "http_port": 0,
    }
    values.update(overrides)
    return Settings(**values)


class Running:
    """A worker started by a test, with a way to stop it and wait until it has."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(worker.run(self.stop_event))

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(asyncio.shield(self.task), 30)


StartWorker = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_worker(
    broker_url: str, jwks: JwksServer, issuer: Issuer, queue_name: str, rabbit: Rabbit
) -> AsyncIterator[StartWorker]:
    """Start in-process workers on the test's queue; stop them and delete the queue afterwards."""
    running: list[Running] = []

    async def start(
        registry: Registry = REGISTRY,
        *,
        revocations: RevocationList | None = None,
        tracing: Tracing = NO_TRACING,
        **overrides: Any,
    ) -> Running:
        url = overrides.pop("broker_url", broker_url)
        settings = worker_settings(url, jwks, issuer, queue_name, **overrides)
        for queue in settings.queues:
            rabbit.forget_later(queue)
        worker = Worker(settings, registry, revocations=revocations, tracing=tracing)
        handle = Running(worker)
        running.append(handle)
        task = handle.task
        ready = asyncio.create_task(worker.ready.wait())
        # Bounded, not timed: a worker on a new virtual host declares a stream, which a loaded
        # RabbitMQ 4 can take many seconds to start.
        done, _ = await asyncio.wait({ready, task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()
        if ready not in done:
            raise TimeoutError("worker did not start consuming")
        return handle

    yield start
    for handle in running:
        handle.stop_event.set()
    for handle in running:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(handle.task, 30)


# --- RabbitMQ nodes of the tests' own: a three-node cluster and a standalone node --------------


@pytest.fixture(scope="session")
def rabbit_nodes() -> Iterator[RabbitNodes]:
    """The cluster c1-c3 and the standalone node s1, booted once for the session by the installed
    rabbitmq-server; skip (fail in CI) where it is missing or cannot boot them. Every node is
    stopped at the end, whatever the tests did to it."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        if IN_CI:
            pytest.fail("CI needs RabbitMQ nodes of its own: rabbitmq-server is not installed")
        pytest.skip("rabbitmq-server is not installed")
    nodes = RabbitNodes()
    try:
        try:
            asyncio.run(nodes.start())
        except NodeError as exc:
            if IN_CI:
                raise
            pytest.skip(f"RabbitMQ nodes of the tests' own did not start: {exc}")
        yield nodes
    finally:
        asyncio.run(nodes.stop())


@pytest.fixture
async def healthy_nodes(rabbit_nodes: RabbitNodes) -> AsyncIterator[RabbitNodes]:
    """The session's nodes; after the test, back to health (every node up, unfrozen, unalarmed,
    the cluster whole, no queue left), or rebuilt from scratch if that fails."""
    yield rabbit_nodes
    try:
        await rabbit_nodes.restore()
    except NodeError:
        await rabbit_nodes.rebuild()
        raise


@pytest.fixture
def cluster(healthy_nodes: RabbitNodes) -> Cluster:
    """The three-node cluster c1-c3 (AMQP ports 5701-5703), healthy; restored after the test."""
    return healthy_nodes.cluster


@pytest.fixture
def standalone_node(healthy_nodes: RabbitNodes) -> Node:
    """The node s1 (AMQP port 5704), in no cluster, for faults that must not reach the cluster
    (an alarm on a member blocks publishers on every member); restored after the test."""
    return healthy_nodes.standalone


# --- no token in any log line -----------------------------------------------------------------

_LOG_GUARD: list[Any] = []
_CAPPED_LIBRARIES = ("aiormq", "aio_pika", "httpx", "httpcore")
"""Loggers ``worker.ops.logs.configure`` holds at WARNING even with WARDEN_LOG_LEVEL=DEBUG: at
DEBUG, aio-pika logs every message it publishes, headers and all, the test's own jobs included."""


def _attach_log_guard() -> None:
    root = logging.getLogger()
    for guard in _LOG_GUARD:
        if guard not in root.handlers:
            root.addHandler(guard)
    if _LOG_GUARD:
        root.setLevel(logging.DEBUG)
        for name in _CAPPED_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="session", autouse=True)
def _no_token_in_any_log_line() -> Iterator[None]:
    """Across the whole run, every log record warden's logging lets through at DEBUG, formatted
    as warden writes it (extra fields, exception and stack included), must show no token minted
    by the tests and no 16-character run of one's signature (``tests/support/leaks.py``)."""
    from tests.support.leaks import LogGuard

    guard = LogGuard()
    _LOG_GUARD.append(guard)
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *_CAPPED_LIBRARIES)}
    _attach_log_guard()
    try:
        yield
    finally:
        root.removeHandler(guard)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        _LOG_GUARD.clear()
    guard.check()


@pytest.fixture(autouse=True)
def _log_guard_stays_attached() -> None:
    """A test that reconfigures logging (``worker.ops.logs.configure``) must not blind the guard."""
    _attach_log_guard()
