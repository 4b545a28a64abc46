"""``warden run`` as real processes, for tests that kill, stop or move them: started with the
actions of :mod:`tests.support.process_actions` (which report every job they ran to a queue of
the test's), an HTTP port of their own, and whatever else a test sets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.issuer import Issuer, JwksServer

ROOT = Path(__file__).parent.parent.parent


@dataclass
class Worker:
    """One ``warden run`` process and every line it wrote, read as it writes them (so that a
    full pipe never blocks it); a line of JSON is also kept parsed."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reading: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._reading = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                self.records.append(record)
            self._changed.set()
        self._changed.set()

    async def logged(
        self, match: Callable[[dict[str, Any]], bool], timeout: float, after: int = 0
    ) -> dict[str, Any]:
        """The first record from the ``after``-th on that ``match`` accepts, once written."""
        try:
            async with asyncio.timeout(timeout):
                seen = after
                while True:
                    for record in self.records[seen:]:
                        if match(record):
                            return record
                    seen = max(seen, len(self.records))
                    if self._reading is not None and self._reading.done():
                        raise AssertionError(f"the worker ended: {self.output()[-3000:]}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"not logged within {timeout:g} s; the worker wrote: {self.output()[-3000:]}"
            ) from None

    def output(self) -> str:
        return "\n".join(self.lines)

    async def stop(self, timeout: float = 60) -> None:
        """SIGTERM the worker; return once it exited 0 (or raise, with what it wrote)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.ended(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"still running {timeout:g} s after SIGTERM; it wrote: {self.output()[-3000:]}"
            ) from None
        assert code == 0, self.output()[-3000:]

    async def ended(self) -> int:
        """Wait for the process to end and its output to be read; its exit code."""
        code = await self.process.wait()
        if self._reading is not None:
            await self._reading
        return code


class WorkerProcesses:
    """Starts ``warden run`` processes on one queue and kills those left at :meth:`close`."""

    def __init__(
        self, broker_url: str, queue: str, ran_queue: str, issuer: Issuer, jwks: JwksServer
    ) -> None:
        self.environment = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        self.environment |= {
            "PYTHONPATH": str(ROOT),
            "WARDEN_BROKER_URL": broker_url,
            "WARDEN_QUEUES": queue,
            "WARDEN_ACTIONS": "tests.support.process_actions",
            "WARDEN_ISSUER": issuer.url,
            "WARDEN_JWKS_URL": jwks.jwks_url(issuer),
            "WARDEN_AUDIENCE": issuer.audience,
            "WARDEN_RETRY_BASE_SECONDS": "0.05",
            "WARDEN_RETRY_MAX_SECONDS": "1",
            "WARDEN_DEFER_MAX_SECONDS": "0.5",
            "WARDEN_TEST_RAN_QUEUE": ran_queue,
            "WARDEN_LOG_LEVEL": "WARNING",
            # A port of its own: another worker on this machine may hold the default one.
            "WARDEN_HTTP_PORT": "0",
        }
        self.started: list[asyncio.subprocess.Process] = []

    async def run(self, **env: str) -> Worker:
        """One more ``warden run`` as :meth:`start`, its output read as it comes."""
        return Worker(await self.start(**env))

    async def start(self, **env: str) -> asyncio.subprocess.Process:
        """One more ``warden run``, with ``env`` over the common environment; its stderr piped."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            env=self.environment | env,
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )
        self.started.append(process)
        return process

    async def stop(self, process: asyncio.subprocess.Process, timeout: float = 60) -> str:
        """SIGTERM ``process``; what it wrote on stderr once it exited (0, or AssertionError)."""
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
        said = stderr.decode(errors="replace") if stderr else ""
        assert process.returncode == 0, said[-3000:]
        return said

    async def close(self) -> None:
        for process in self.started:
            if process.returncode is None:
                process.kill()
                await process.wait()
