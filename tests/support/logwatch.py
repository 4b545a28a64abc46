"""Await log records instead of sleeping: a handler that wakes waiters on each record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable


class LogWatch(logging.Handler):
    """Keeps every record of a logger tree; ``wait_for`` returns the first that matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()

    async def wait_for(
        self, match: Callable[[logging.LogRecord], bool], timeout: float = 10.0
    ) -> logging.LogRecord:
        async with asyncio.timeout(timeout):
            while True:
                for record in self.records:
                    if match(record):
                        return record
                self._changed.clear()
                await self._changed.wait()

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]
