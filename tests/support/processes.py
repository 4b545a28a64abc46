"""``warden run`` as a process of the test's own: what it logs (one JSON object a line), as it
logs it, the port it serves ``/readyz`` on, and its stop by signal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.issuer import Issuer, JwksServer

ROOT = Path(__file__).parent.parent.parent

Record = dict[str, Any]


def worker_environment(
    broker_url: str, queue: str, jwks: JwksServer, issuer: Issuer, **env: str
) -> dict[str, str]:
    """The environment of a worker process on ``queue`` that trusts ``issuer``'s tokens and
    logs at INFO, on a free HTTP port."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    return environment | {
        "PYTHONPATH": str(ROOT),
        "WARDEN_BROKER_URL": broker_url,
        "WARDEN_QUEUES": queue,
        "WARDEN_ACTIONS": "tests.support.actions",
        "WARDEN_ISSUER": issuer.url,
        "WARDEN_JWKS_URL": jwks.jwks_url(issuer),
        "WARDEN_AUDIENCE": issuer.audience,
        "WARDEN_LOG_LEVEL": "INFO",
        "WARDEN_HTTP_PORT": "0",
        **env,
    }


class WorkerProcess:
    """One ``warden run`` process; its log records are read as they are written."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.records: list[Record] = []
        self.other: list[str] = []
        """Lines that were not a JSON log record (a traceback would be)."""
        self._changed = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, environment: dict[str, str]) -> WorkerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            env=environment,
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").strip()
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict):
                self.records.append(record)
            elif text:
                self.other.append(text)
            self._changed.set()
        self._changed.set()

    async def logged(self, match: str | Callable[[Record], bool], timeout: float = 30.0) -> Record:
        """The first record whose event is ``match`` (or that ``match`` accepts), once written;
        raise if the process ends or ``timeout`` passes first."""
        accept = match if callable(match) else (lambda r: r.get("event") == match)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for record in self.records:
                        if accept(record):
                            return record
                    if self._reading.done():
                        raise AssertionError(
                            f"the worker ended without logging {match!r}: "
                            f"{self.events()[-10:]} {self.other[-10:]}"
                        )
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"the worker did not log {match!r} within {timeout:g} s; it logged "
                f"{[r.get('event') for r in self.records][-20:]} {self.other[-5:]}"
            ) from None

    def events(self) -> list[str]:
        return [str(record.get("event")) for record in self.records]

    async def port(self) -> int:
        record = await self.logged("serving /metrics, /healthz and /readyz")
        return int(record["port"])

    async def readyz(self) -> tuple[int, Record]:
        """``/readyz``: its status and body."""
        async with httpx.AsyncClient(timeout=2) as http:
            answer = await http.get(f"http://127.0.0.1:{await self.port()}/readyz")
        body: Record = answer.json()
        return answer.status_code, body

    async def stop(self, within: float, sig: int = signal.SIGTERM) -> int:
        """Send ``sig``; the exit status, once the process has ended (within ``within`` s)."""
        self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"the worker did not exit within {within:g} s of signal {sig}; last records: "
                f"{self.events()[-10:]}"
            ) from None
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reading, 5)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@contextlib.asynccontextmanager
async def worker_processes() -> AsyncIterator[Callable[[dict[str, str]], Any]]:
    """Start worker processes; kill whichever still runs at the end."""
    started: list[WorkerProcess] = []

    async def start(environment: dict[str, str]) -> WorkerProcess:
        worker = await WorkerProcess.start(environment)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.kill()
            await worker.process.wait()
            worker._reading.cancel()
