"""Operating warden: ``warden dlq`` and ``warden explain`` as an operator runs them, ``/metrics``
and ``/readyz``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.actions import ran
from tests.support.issuer import Issuer, JwksServer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from worker import names
from worker.deadletters import admin
from worker.settings import BrokerSettings

ROOT = Path(__file__).parent.parent


async def warden(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real ``warden`` command; return its exit code, stdout and stderr."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    environment |= {"PYTHONPATH": str(ROOT), **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=environment,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()  # a command that does not end must not outlive the test
        await process.wait()
        raise
    assert process.returncode is not None
    assert_no_leak(out.decode() + err.decode(), f"the output of warden {' '.join(args[:2])}")
    return process.returncode, out.decode(), err.decode()


DENIALS = {"scope_insufficient": 3, "action_unknown": 2, "token_expired": 1}


async def _fill_dead_letters(start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue: str) -> Any:
    """Three reasons' worth of dead letters; returns the running worker once all are in."""
    handle = await start_worker(prefetch=1)
    expired = issuer.token(exp=int(time.time()) - 3600)
    for _ in range(DENIALS["scope_insufficient"]):
        await rabbit.job(queue, "admin.purge", issuer.token())
    for _ in range(DENIALS["action_unknown"]):
        await rabbit.job(queue, "reports.delete", issuer.token())
    await rabbit.job(queue, "reports.read", expired)
    # With prefetch 1 the worker takes one message at a time, in order: once this last job
    # has run, every denial before it has been dead-lettered.
    await rabbit.job(queue, "reports.read", issuer.token())
    await ran.wait_for(1)
    ran.reset()
    return handle


@pytest.mark.broker
async def test_stats_and_list_count_exactly_and_never_disturb_the_queue(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    await _fill_dead_letters(start_worker, rabbit, issuer, queue_name)
    env = {"WARDEN_BROKER_URL": broker_url}

    code, out, err = await warden("dlq", "stats", queue_name, "--json", env=env)
    assert code == 0, err
    assert json.loads(out) == {queue_name: DENIALS}

    code, out, _ = await warden(
        "dlq", "list", queue_name, "--reason", "action_unknown", "--json", env=env
    )
    listed = json.loads(out)
    assert [row["reason"] for row in listed] == ["action_unknown"] * 2
    assert all(row["action"] == "reports.delete" for row in listed)
    assert all(row["client_id"] == "reports-service" for row in listed)

    first = json.loads((await warden("dlq", "list", queue_name, "--json", env=env))[1])
    second = json.loads((await warden("dlq", "list", queue_name, "--json", env=env))[1])
    assert first == second
    assert len(first) == sum(DENIALS.values())
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == sum(DENIALS.values())

    code, out, _ = await warden("dlq", "show", queue_name, listed[0]["message_id"], env=env)
    shown = json.loads(out)
    assert shown["denial"]["reason"] == "action_unknown"
    assert shown["body"] == {"action": "reports.delete", "payload": {}}
    assert "authorization" not in shown["headers"]

    code, out, _ = await warden("dlq", "list", queue_name, env=env)
    assert code == 0
    assert "scope_insufficient" in out
    assert "action_unknown" in out


@pytest.mark.broker
async def test_looking_more_often_than_a_brokers_default_delivery_limit_loses_no_dead_letter(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    # Each look returns every dead letter to its queue, and the broker counts that as a
    # delivery; RabbitMQ 4 drops a quorum queue's message after 20 (its default limit).
    await _fill_dead_letters(start_worker, rabbit, issuer, queue_name)
    everything = sum(DENIALS.values())
    settings = BrokerSettings(broker_url=broker_url)
    reader = admin.Reader(broker_url, settings.broker_user(), settings.trusted())
    first = [letter.message_id for letter in await admin.letters(reader, queue_name)]
    assert len(set(first)) == everything
    for _ in range(24):
        again = [letter.message_id for letter in await admin.letters(reader, queue_name)]
        assert again == first
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == everything


@pytest.mark.broker
async def test_purge_removes_only_the_reason_asked_for(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    await _fill_dead_letters(start_worker, rabbit, issuer, queue_name)
    env = {"WARDEN_BROKER_URL": broker_url}
    code, _, err = await warden(
        "dlq", "purge", queue_name, "--reason", "scope_insufficient", env=env
    )
    assert code == 2
    assert "--yes" in err
    code, out, err = await warden(
        "dlq", "purge", queue_name, "--reason", "scope_insufficient", "--yes", env=env
    )
    assert code == 0, err
    assert "purged 3" in out
    stats = json.loads((await warden("dlq", "stats", queue_name, "--json", env=env))[1])
    assert stats == {queue_name: {"action_unknown": 2, "token_expired": 1}}


@pytest.mark.broker
async def test_replay_killed_partway_then_rerun_moves_each_job_once(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    await start_worker(prefetch=1)
    token = issuer.token()
    lacking = [await rabbit.job(queue_name, "admin.purge", token) for _ in range(30)]
    await rabbit.job(queue_name, "reports.delete", token)  # another reason, which stays
    await rabbit.job(queue_name, "reports.read", token)
    await ran.wait_for(1)
    ran.reset()

    fresh = issuer.token(scope="admin reports:read")
    env = {"WARDEN_BROKER_URL": broker_url, "WARDEN_TOKEN": fresh, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "dlq",
        "replay",
        queue_name,
        "--reason",
        "scope_insufficient",
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    moved = 0
    while moved < 5:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, "replay ended early"
        moved += line.startswith(b"moved ")
    process.send_signal(signal.SIGKILL)
    await process.wait()

    code, out, err = await warden(
        "dlq", "replay", queue_name, "--reason", "scope_insufficient", env=env
    )
    assert code == 0, err
    assert "left 1 " in out

    jobs = await ran.wait_for(30, timeout=30)
    runs = Counter(job.id for job in jobs)
    assert set(runs) == set(lacking)
    assert set(runs.values()) == {1}, "a replayed job ran twice"
    left = json.loads((await warden("dlq", "stats", queue_name, "--json", env=env))[1])
    assert left == {queue_name: {"action_unknown": 1}}
    assert all("admin" in job.principal.scopes for job in jobs), "replayed with the new token"


@pytest.mark.broker
async def test_broker_dead_lettered_message_is_replayed_to_its_queue(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    await start_worker()
    death = [
        {
            "queue": queue_name,
            "reason": "delivery_limit",
            "count": 5,
            "exchange": "",
            "routing-keys": [queue_name],
        }
    ]
    # A letter as the broker left it, written into the dead-letter queue by a trusted user
    # (the tools' own, guest): tools read its reason from x-death.
    mid = await rabbit.publish(
        names.dead_letter_queue(queue_name),
        {"action": "reports.read", "payload": {"n": 1}},
        headers={"x-death": death, "x-delivery-count": 5},
        user_id="guest",
    )
    env = {"WARDEN_BROKER_URL": broker_url}
    listed = json.loads((await warden("dlq", "list", queue_name, "--json", env=env))[1])
    assert [(row["message_id"], row["reason"]) for row in listed] == [(mid, "delivery_limit")]
    code, out, err = await warden(
        "dlq", "replay", queue_name, "--all", "--token", issuer.token(), env=env
    )
    assert code == 0, err
    assert f"moved {mid} to {queue_name}" in out
    [job] = await ran.wait_for(1)
    assert job.id == mid
    assert job.payload == {"n": 1}


@pytest.mark.parametrize(
    ("claims", "expected_code", "failing"),
    [
        pytest.param({}, 0, None, id="allowed"),
        pytest.param({"exp": int(time.time()) - 3600}, 1, "token_expired", id="expired"),
        pytest.param({"aud": "https://other.example"}, 1, "audience_mismatch", id="audience"),
        pytest.param({"scope": "reports:read"}, 1, "scope_insufficient", id="lacking-scope"),
    ],
)
async def test_explain_names_the_failing_check(
    jwks: JwksServer,
    issuer: Issuer,
    claims: dict[str, Any],
    expected_code: int,
    failing: str | None,
) -> None:
    token = issuer.token(**claims)
    env = {
        "WARDEN_ISSUER": issuer.url,
        "WARDEN_JWKS_URL": jwks.jwks_url(issuer),
        "WARDEN_AUDIENCE": issuer.audience,
        "WARDEN_ACTIONS": "tests.support.actions",
    }
    code, out, err = await warden(
        "explain", "--token", token, "--action", "reports.generate", "--json", env=env
    )
    assert code == expected_code, err
    report = json.loads(out)
    results = {row["reason"]: row["result"] for row in report["checks"]}
    if failing is None:
        assert report["verdict"] == "allowed"
        assert results["signature_invalid"] == "passed"
        assert results["token_revoked"] == "not checked"
    else:
        assert report["verdict"] == f"denied: {failing}"
        assert results[failing] == "failed"
        assert [r for r, res in results.items() if res == "failed"] == [failing]
        assert results["malformed_message"] == "passed"
    assert token not in out + err
    assert token.rsplit(".", 1)[1][:16] not in out + err

    code, out, _ = await warden("explain", "--action", "reports.generate", env=env)
    assert code == 2, "no token given, none on stdin: a usage error"


@pytest.mark.broker
async def test_metrics_count_decisions_by_reason_and_readyz_follows_readiness(
    start_worker: Any, rabbit: Rabbit, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    jwks.down = True
    handle = await start_worker(jwks_cooldown_seconds=60)
    base = f"http://127.0.0.1:{handle.worker.http.port}"
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{base}/healthz")).status_code == 200
        not_ready = await http.get(f"{base}/readyz")
        assert not_ready.status_code == 503
        assert "keys" in not_ready.json()

        jwks.down = False
        await handle.worker.keyring.load()
        assert (await http.get(f"{base}/readyz")).status_code == 200

        await rabbit.job(queue_name, "admin.purge", issuer.token())
        await rabbit.job(queue_name, "reports.delete", issuer.token())
        await rabbit.job(queue_name, "reports.delete", issuer.token())
        await rabbit.job(queue_name, "reports.read", issuer.token())
        await rabbit.dead_letters(queue_name, 3)
        await ran.wait_for(1)
        text = (await http.get(f"{base}/metrics")).text

    decisions = {
        (s.labels["outcome"], s.labels["reason"], s.labels["action"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "warden_decisions"
        for s in family.samples
        if s.name == "warden_decisions_total" and s.labels["queue"] == queue_name
    }
    assert decisions == {
        ("denied", "scope_insufficient", "admin.purge"): 1,
        ("denied", "action_unknown", "unregistered"): 2,
        ("allowed", "", "reports.read"): 1,
    }
    assert_no_leak(text, "/metrics")
    assert "warden_decision_seconds_bucket" in text
    assert "warden_jwks_fetches_total" in text
    assert "warden_in_flight" in text


async def test_readyz_is_503_while_the_broker_cannot_be_reached(
    jwks: JwksServer, issuer: Issuer
) -> None:
    from worker.pipeline.actions import Registry
    from worker.service.runner import Worker
    from worker.settings import Settings

    settings = Settings(
        broker_url="amqp://guest:guest@127.0.0.1:1/",
        issuer=issuer.url,
        jwks_url=jwks.jwks_url(issuer),
        audience=issuer.audience,
        http_port=0,
    )
    worker = Worker(settings, Registry.from_modules(["tests.support.actions"]))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await jwks.wait_for_requests(1, timeout=10)  # past start-up: keys, then the broker
        assert worker.http is not None
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"http://127.0.0.1:{worker.http.port}/readyz")
        assert answer.status_code == 503
        assert answer.json()["broker"] == "not connected to the broker"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
