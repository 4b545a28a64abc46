"""The job contract from outside Python: ``examples/node-publisher`` (amqplib, the
client-credentials grant) publishes jobs that a worker runs or refuses exactly as it does
Python's, and reports the broker's refusals. Runs where Node.js and npm are installed."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.issuer import TestIssuer
from worker.testing.plugin import StartWorker

pytestmark = pytest.mark.broker

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node-publisher"
NODE, NPM = shutil.which("node"), shutil.which("npm")


@pytest.fixture(scope="module")
def publisher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, installed from its lockfile (``npm ci``) in a folder of its own."""
    if NODE is None or NPM is None:
        pytest.skip("Node.js and npm are not installed")
    folder = tmp_path_factory.mktemp("node-publisher")
    for name in ("package.json", "package-lock.json", "publish.mjs"):
        shutil.copy(EXAMPLE / name, folder / name)
    installed = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    return folder


async def node_publish(
    folder: Path, broker_url: str, issuer: TestIssuer, secret: str, *args: str
) -> tuple[int, str, str]:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        "publish.mjs",
        "--broker-url",
        broker_url,
        "--token-url",
        issuer.token_url,
        "--client-id",
        "node-publisher",
        *args,
        cwd=folder,
        env={"PATH": os.environ["PATH"], "WARDEN_CLIENT_SECRET": secret},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_jobs_published_from_node_run_and_one_token_serves_them_all(
    publisher_dir: Path, warden_worker: StartWorker, warden_issuer: TestIssuer, broker_url: str
) -> None:
    client = warden_issuer.register("node-publisher", scopes={"reports:write", "reports:read"})
    worker = await warden_worker("tests.support.actions")
    code, out, err = await node_publish(
        publisher_dir,
        broker_url,
        warden_issuer,
        client.secret,
        "--scope",
        "reports:write",
        "--count",
        "20",
        worker.queue,
        "reports.generate",
        '{"report": "q3"}',
    )
    assert code == 0, err
    ids = out.split()
    assert len(set(ids)) == 20
    results = [await worker.result(mid) for mid in ids]
    assert [r.outcome for r in results] == ["done"] * 20
    assert len(warden_issuer.issued) == 1, "one token for all the jobs"
    assert "token requests: 1" in err
    assert client.secret not in out + err
    assert "eyJ" not in out + err


async def test_a_node_job_without_the_scope_is_refused_as_any_other(
    publisher_dir: Path, warden_worker: StartWorker, warden_issuer: TestIssuer, broker_url: str
) -> None:
    client = warden_issuer.register("node-publisher", scopes={"reports:read"})
    worker = await warden_worker("tests.support.actions")
    code, out, err = await node_publish(
        publisher_dir, broker_url, warden_issuer, client.secret, worker.queue, "reports.generate"
    )
    assert code == 0, err
    refused = await worker.result(out.strip())
    assert (refused.outcome, refused.reason) == ("denied", "scope_insufficient")
    [letter] = await worker.dead_letters()
    assert letter.client_id == "node-publisher"


async def test_node_reports_a_queue_that_does_not_exist_as_unroutable(
    publisher_dir: Path, warden_worker: StartWorker, warden_issuer: TestIssuer, broker_url: str
) -> None:
    client = warden_issuer.register("node-publisher", scopes={"reports:write"})
    await warden_worker("tests.support.actions")
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    code, out, err = await node_publish(
        publisher_dir, broker_url, warden_issuer, client.secret, missing, "reports.generate"
    )
    assert code == 1
    assert out.strip() == ""
    assert "refused (unroutable)" in err
    assert "NO_ROUTE" in err
    assert missing in err
