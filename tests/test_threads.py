"""The pool blocking calls run in: bounded, in line beyond its size, in the caller's context."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from worker.support.threads import Threads


async def test_the_pool_runs_at_most_its_size_at_once_and_in_the_callers_context() -> None:
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who")
    pool: Threads[str] = Threads(2, "test-pool")
    release = threading.Event()
    started = threading.Semaphore(0)

    def blocked() -> str:
        started.release()
        release.wait(10)
        return who.get()

    calls = []
    for name in ("a", "b", "c", "d"):
        who.set(name)
        calls.append(asyncio.ensure_future(pool.run(blocked, name)))
    for _ in range(2):
        assert await asyncio.to_thread(started.acquire, True, 10)
    assert pool.busy() == 2
    assert sorted(label for label, _ in pool.running()) in (["a", "b"], ["a", "c"], ["b", "c"])
    calls[3].cancel()  # still in line: it never starts
    release.set()
    assert await asyncio.gather(*calls[:3]) == ["a", "b", "c"]
    assert calls[3].cancelled()
    assert pool.busy() == 0
    pool.close()


async def test_an_error_in_a_blocking_call_reaches_its_awaiter() -> None:
    pool: Threads[str] = Threads(1)

    def fails() -> None:
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        await pool.run(fails, "x")
    pool.close()
