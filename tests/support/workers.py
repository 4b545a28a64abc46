"""``warden run`` as real processes, for tests that kill, stop or move them: started with the
actions of :mod:`tests.support.process_actions` (which report every job they ran to a queue of
the test's), an HTTP port of their own, and whatever else a test sets."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.support.issuer import Issuer, JwksServer

ROOT = Path(__file__).parent.parent.parent


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
