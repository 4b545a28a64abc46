"""A bounded pool of daemon threads for blocking calls awaited from the event loop.

Not ``concurrent.futures.ThreadPoolExecutor``: the interpreter joins that pool's threads at exit,
so one call that never returns would keep the process alive past any shutdown grace period. A
daemon thread ends with the process; what it was doing is named by :meth:`Threads.running`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
L = TypeVar("L")


@dataclass(eq=False)
class _Call(Generic[T, L]):
    """One call handed to the pool, with the future its caller awaits."""

    call: Callable[[], T]
    label: L
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    started: float | None = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Threads(Generic[L]):
    """At most ``size`` blocking calls at once, each in a daemon thread; the rest wait in line.

    Threads start on first use, so a worker without blocking actions has none. A call runs in a
    copy of its caller's context (as :func:`asyncio.to_thread` does), so what the caller set in
    context variables, a current span included, holds inside it. Each call carries a label, of
    type ``L``, to say what it is.
    """

    def __init__(self, size: int, name: str = "warden-thread") -> None:
        if size < 1:
            raise ValueError("a pool needs at least one thread")
        self.size = size
        self._name = name
        self._waiting: queue.SimpleQueue[_Call[Any, L] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, _Call[Any, L]] = {}
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, call: Callable[[], T], label: L) -> T:
        """Run ``call`` in a thread of the pool and return what it returned (or raise what it
        raised). Cancelled while still in line, the call never starts; cancelled while running,
        it runs to its end, since a thread cannot be stopped, and its result is dropped."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        loop = asyncio.get_running_loop()
        item: _Call[T, L] = _Call(call, label, loop, loop.create_future())
        self._grow()
        self._waiting.put(item)
        return await item.future

    def running(self) -> list[tuple[L, float]]:
        """The label of each call running now, and for how many seconds it has run."""
        now = time.monotonic()
        with self._lock:
            calls = list(self._running.values())
        return [(c.label, now - c.started) for c in calls if c.started is not None]

    def busy(self) -> int:
        """How many threads are running a call now."""
        with self._lock:
            return len(self._running)

    def close(self) -> None:
        """Take no more calls; idle threads end, busy ones end with their call (or the process)."""
        self._closed = True
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._waiting.put(None)

    def _grow(self) -> None:
        with self._lock:
            if len(self._threads) - len(self._running) > self._waiting.qsize():
                return
            if len(self._threads) >= self.size:
                return
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.get_ident()
        while (item := self._waiting.get()) is not None:
            if item.future.done():  # cancelled while in line
                continue
            item.started = time.monotonic()
            with self._lock:
                self._running[me] = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = item.context.run(item.call)
            except Exception as exc:
                error = exc
            except BaseException as exc:
                # SystemExit or KeyboardInterrupt raised by the call: its awaiter gets an error
                # it can handle, and the thread stays in the pool.
                error = RuntimeError(f"{type(exc).__name__} raised in a pool thread")
            finally:
                with self._lock:
                    del self._running[me]
            # A closed loop raises RuntimeError: nobody awaits the result any more.
            with contextlib.suppress(RuntimeError):
                item.loop.call_soon_threadsafe(_settle, item.future, result, error)
