"""warden's pytest plugin (entry point ``pytest11``: ``warden``): fixtures for testing actions.

- ``warden_issuer``: a :class:`~worker.testing.TestIssuer` serving on loopback for the test;
- ``warden_broker_url``: the RabbitMQ of ``WARDEN_BROKER_URL`` (default
  ``amqp://guest:guest@localhost:5672/``); tests that need it are skipped when it does not answer;
- ``warden_queue``: a work queue name of the test's own, deleted with its dead letters afterwards;
- ``warden_worker``: ``await warden_worker(myapp.actions)`` starts a worker in the test's event
  loop on ``warden_queue``, trusting ``warden_issuer``; it is stopped after the test.

The async fixtures need pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import pytest

from worker.amqp.connection import probe
from worker.settings import BrokerSettings, load_settings
from worker.testing.broker import RunningWorker, running_worker, scratch_queue
from worker.testing.harness import Action
from worker.testing.issuers import TestIssuer

F = TypeVar("F", bound=Callable[..., Any])


def async_fixture(function: F) -> F:
    """An async fixture run in the test's own event loop, whatever loop scope a suite sets as
    its default (pytest-asyncio)."""
    try:
        import pytest_asyncio
    except ImportError:  # without pytest-asyncio, pytest says async fixtures need a plugin
        return cast(F, pytest.fixture(function))
    return cast(F, pytest_asyncio.fixture(function, loop_scope="function"))


StartWorker = Callable[..., Awaitable[RunningWorker]]
"""The type of the ``warden_worker`` fixture."""


@pytest.fixture
def warden_issuer() -> Iterator[TestIssuer]:
    """A development issuer serving discovery, JWKS and a token endpoint on 127.0.0.1."""
    with TestIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="session")
def warden_broker_url() -> str:
    """``WARDEN_BROKER_URL``, once a connection to it succeeds; else the test is skipped."""
    url = load_settings(BrokerSettings).broker_url.get_secret_value()
    try:
        asyncio.run(probe(url))
    except Exception as exc:
        pytest.skip(f"no RabbitMQ answers at WARDEN_BROKER_URL ({type(exc).__name__})")
    return url


@async_fixture
async def warden_queue(warden_broker_url: str) -> AsyncIterator[str]:
    """A work queue name of the test's own; deleted afterwards with its dead letters."""
    async with scratch_queue(warden_broker_url) as queue:
        yield queue


@async_fixture
async def warden_worker(
    warden_broker_url: str, warden_issuer: TestIssuer, warden_queue: str
) -> AsyncIterator[StartWorker]:
    """``await warden_worker(*actions, issuer=..., **settings)``: a worker on ``warden_queue``
    in the test's event loop, trusting ``warden_issuer`` (or ``issuer``), running ``actions``
    (modules, or decorated functions); stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *actions: Action, issuer: TestIssuer | None = None, **settings: Any
        ) -> RunningWorker:
            return await stack.enter_async_context(
                running_worker(
                    *actions,
                    broker_url=warden_broker_url,
                    issuer=issuer or warden_issuer,
                    queue=warden_queue,
                    **settings,
                )
            )

        yield start
