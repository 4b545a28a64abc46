"""Actions written as users coming from other job queues write them: blocking functions and
typed payloads. Blocking ones record into :data:`seen`, which threads may write to."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from worker import Job, action

SLEEP_SECONDS = 3.0
"""How long ``blocking.sleep`` blocks its thread."""


class Seen:
    """Jobs the actions of this module ran, from whichever thread; awaitable from the loop."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.jobs: list[Job[Any]] = []
        self.payloads: list[Any] = []
        self.threads: list[str] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.stuck = threading.Event()
        self._changed = threading.Condition()

    def record(self, job: Job[Any], payload: Any = None) -> None:
        with self._changed:
            self.jobs.append(job)
            self.payloads.append(payload)
            self.threads.append(threading.current_thread().name)
            self._changed.notify_all()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Job[Any]]:
        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: len(self.jobs) >= count, timeout)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"{len(self.jobs)} of {count} jobs ran")
        return list(self.jobs)

    async def wait_entered(self, timeout: float = 10.0) -> None:
        if not await asyncio.to_thread(self.entered.wait, timeout):
            raise TimeoutError("no blocking action started")


seen = Seen()


class Customer(BaseModel):
    email: str
    vip: bool = False


class Order(BaseModel):
    """An order to place."""

    sku: str
    quantity: Annotated[int, Field(gt=0)]
    customer: Customer


class Card(BaseModel):
    kind: Literal["card"]
    last4: str


class Voucher(BaseModel):
    kind: Literal["voucher"]


class Cancellation(BaseModel):
    order_id: int
    reason: str = ""
    refund: Annotated[Card | Voucher, Field(discriminator="kind")] | None = None
    notes: dict[str, int] = {}


@action("blocking.sleep", scopes=set())
def sleep_a_while(job: Job) -> None:
    """Blocks its thread for SLEEP_SECONDS, as blocking library code does."""
    seen.entered.set()
    time.sleep(SLEEP_SECONDS)
    seen.record(job)


@action("blocking.gated", scopes=set())
def wait_for_the_gate(job: Job) -> None:
    """Blocks until the test opens ``seen.gate``."""
    seen.entered.set()
    if seen.gate.wait(30):
        seen.record(job)


@action("blocking.stuck", scopes=set())
def never_finishes(job: Job) -> None:
    """Blocks until the test ends (``seen.stuck``), far past any grace period."""
    seen.entered.set()
    seen.stuck.wait(60)


@action("orders.place", scopes={"orders:write"})
async def place(job: Job[Order]) -> None:
    """Place an order."""
    seen.record(job, job.payload)


@action("orders.ship", scopes={"orders:write"})
def ship(job: Job[Order]) -> None:
    """Ship an order (blocking code, with a typed payload)."""
    seen.record(job, job.payload)


@action("orders:cancel", scopes={"orders:write", "orders:cancel"})
async def cancel(job: Job, payload: Cancellation) -> None:
    """Cancel an order."""
    seen.record(job, payload)
