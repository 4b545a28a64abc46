"""Hostile content headers, published through the broker as an attacker who may publish jobs
sends them (``docs/dead-letters.md``, "Headers AMQP cannot carry").

Every job of the corpus carries a valid token. Each runs as often as its action asks, or is
dead-lettered once; the worker's connection and channels stay open throughout, and every
``warden dlq`` command works on the dead-letter queue afterwards. The frames are built byte by
byte (``tests/support/hostile.py``): pamqp would refuse to encode most of these values.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiormq
import pytest

from tests.support.actions import ran
from tests.support.hostile import (
    array,
    deep_arrays,
    deep_tables,
    double,
    entry,
    long_long,
    longstr,
    nested,
    octet,
    properties,
    publish_raw,
    shortstr,
    stamp,
    table,
    timestamp,
)
from tests.support.issuer import Issuer, SigningKey
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import needs_rabbitmqctl, writing_user
from tests.support.schemas import DENIAL
from tests.test_operating import warden
from worker import names
from worker.amqp.outbound import CONTENT_HEADER_FIXED

pytestmark = [pytest.mark.broker, needs_rabbitmqctl]

YEAR_10000_MS = 253_402_300_800_000
"""The first millisecond of the year 10000 (pamqp reads a timestamp above 2**32 as ms)."""
NOT_UTF_8 = b"caf\xe9 \xc3\x28 \xff"
MALFORMED = "malformed_message"


@dataclass(frozen=True)
class Case:
    """One hostile job: its action, its hostile headers and properties, what should happen."""

    action: str
    entries: tuple[bytes, ...] = ()
    fields: dict[str, bytes] = field(default_factory=dict)
    runs: int = 0
    reason: str | None = None
    dropped: frozenset[str] = frozenset()
    as_user: bool = False
    """Published by a broker user of the test's own, with its ``user_id``."""
    late_key: bool = False
    """Signed with a key the issuer publishes only once the job has been put off."""
    fill: bool = False
    """Headers that fill the frame but for a few bytes."""


def _undecodable(*dropped: str, **fields: bytes) -> Case:
    return Case("reports.read", fields=fields, reason=MALFORMED, dropped=frozenset(dropped))


def _header(dropped: str, value: bytes, action: str = "reports.read", **outcome: Any) -> Case:
    expected = {"reason": MALFORMED, "dropped": frozenset({f"headers.{dropped}"}), **outcome}
    return Case(action, entries=(entry(dropped, value),), **expected)


CORPUS: dict[str, Case] = {
    # What pamqp cannot decode: left out when read, the job dead-lettered malformed_message.
    "timestamp-year-10000": _undecodable("timestamp", timestamp=timestamp(YEAR_10000_MS)),
    "timestamp-2^63": _undecodable("timestamp", timestamp=timestamp(2**63)),
    "timestamp-2^64-1": _undecodable("timestamp", timestamp=timestamp(2**64 - 1)),
    "header-timestamp-year-10000": _header("x-when", stamp(YEAR_10000_MS)),
    "header-timestamp-2^64-1": _header("x-when", stamp(2**64 - 1)),
    "timestamp-in-a-table": _header("x-meta", nested(entry("at", stamp(2**63)))),
    "timestamp-in-an-array": _header("x-list", array(longstr("a"), stamp(2**63))),
    "header-name-not-utf-8": Case(
        "reports.read",
        entries=(entry(b"x-caf\xe9", longstr("au lait")),),
        reason=MALFORMED,
        dropped=frozenset({"headers.x-caf\\xe9"}),
    ),
    "name-not-utf-8-in-a-table": _header("x-meta", nested(entry(b"\xff\xfe", long_long(1)))),
    "message-id-not-utf-8": _undecodable("message_id", message_id=shortstr(NOT_UTF_8)),
    "correlation-id-not-utf-8": _undecodable("correlation_id", correlation_id=shortstr(NOT_UTF_8)),
    "app-id-not-utf-8": _undecodable("app_id", app_id=shortstr(NOT_UTF_8)),
    "type-not-utf-8": _undecodable("type", message_type=shortstr(NOT_UTF_8)),
    "reply-to-not-utf-8": _undecodable("reply_to", reply_to=shortstr(NOT_UTF_8)),
    "content-encoding-not-utf-8": _undecodable(
        "content_encoding", content_encoding=shortstr(NOT_UTF_8)
    ),
    "content-type-not-utf-8": _undecodable(
        "content_type", content_type=shortstr(b"application/\xffjson")
    ),
    "cluster-id-not-utf-8": _undecodable("cluster_id", cluster_id=shortstr(NOT_UTF_8)),
    "tables-3000-deep": _header("x-deep", deep_tables(3000)),
    "arrays-5000-deep": _header("x-deep", deep_arrays(5000)),
    "all-at-once": Case(
        "reports.read",
        entries=(entry("x-when", stamp(2**63)), entry(b"\x80", longstr("v"))),
        fields={"timestamp": timestamp(2**64 - 1), "app_id": shortstr(NOT_UTF_8)},
        reason=MALFORMED,
        dropped=frozenset({"headers.x-when", "headers.\\x80", "timestamp", "app_id"}),
    ),
    # What pamqp decodes but cannot encode again: found when a copy is written.
    "long-string-not-utf-8-denied": _header("x-bin", longstr(NOT_UTF_8), "admin.purge"),
    "long-string-not-utf-8-allowed": Case(
        "reports.read", entries=(entry("x-bin", longstr(NOT_UTF_8)),), runs=1
    ),
    "long-string-not-utf-8-retried": _header("x-bin", longstr(NOT_UTF_8), "flaky.twice", runs=1),
    "double-1e300-denied": _header("x-big", double(1e300), "admin.purge"),
    "double-in-a-table-denied": _header(
        "x-meta", nested(entry("v", double(-1.7e308))), "admin.purge"
    ),
    "double-1e300-retried": _header("x-big", double(1e300), "flaky.twice", runs=1),
    # Counters warden reads: bounded, so that counting them up still encodes.
    "attempt-2^63-1": Case(
        "always.fails",
        entries=(entry(names.HEADER_ATTEMPT, long_long(2**63 - 1)),),
        runs=2,
        reason="action_failed",
    ),
    "attempt-negative": Case(
        "reports.read", entries=(entry(names.HEADER_ATTEMPT, long_long(-(2**63))),), runs=1
    ),
    "deferrals-2^63-1": Case(
        "reports.read",
        entries=(entry(names.HEADER_DEFERRALS, long_long(2**63 - 1)),),
        runs=1,
        late_key=True,
    ),
    # Another publisher's user_id: never copied onto what warden publishes.
    "another-user-allowed": Case("reports.read", runs=1, as_user=True),
    "another-user-denied": Case("admin.purge", reason="scope_insufficient", as_user=True),
    "another-user-retried": Case("always.fails", runs=2, reason="action_failed", as_user=True),
    "forged-publisher-user": Case(
        "admin.purge",
        entries=(entry(names.HEADER_PUBLISHER_USER, nested(entry("a", long_long(1)))),),
        reason="scope_insufficient",
    ),
    # Many and large headers.
    "4000-headers": Case(
        "admin.purge",
        entries=tuple(entry(f"h{n:04}", long_long(n)) for n in range(4000)),
        reason="scope_insufficient",
    ),
    "tables-100-deep": Case(
        "admin.purge", entries=(entry("x-deep", deep_tables(100)),), reason="scope_insufficient"
    ),
    "a-table-of-5000": Case(
        "reports.read",
        entries=(entry("x-wide", nested(*(entry(f"k{n}", longstr("v")) for n in range(5000)))),),
        runs=1,
    ),
    "headers-fill-a-frame-retried": Case(
        "flaky.twice", runs=1, reason=MALFORMED, dropped=frozenset({"headers.x-pad"}), fill=True
    ),
    # Odd, but AMQP can carry them.
    "priority-255": Case("reports.read", fields={"priority": octet(255)}, runs=1),
    "unsigned-long-long": Case(
        "admin.purge",
        entries=(entry("x-big", b"L" + (2**63 - 1).to_bytes(8, "big")),),
        reason="scope_insufficient",
    ),
    "timestamp-zero": Case(
        "admin.purge", fields={"timestamp": timestamp(0)}, reason="scope_insufficient"
    ),
    "name-of-200-bytes": Case(
        "admin.purge", entries=(entry("x-" + "n" * 198, longstr("v")),), reason="scope_insufficient"
    ),
}


def _as_delivered(case: Case, stamping: bool) -> Case:
    """What a broker that stamps arrivals delivers of ``case``: it replaces the ``timestamp``
    property with its own, so a publisher's undecodable one never reaches a consumer (and a job
    that was malformed only for it runs)."""
    if not stamping or "timestamp" not in case.fields:
        return case
    dropped = case.dropped - {"timestamp"}
    if case.reason == MALFORMED and not dropped:
        return dataclasses.replace(case, runs=1, reason=None, dropped=dropped)
    return dataclasses.replace(case, dropped=dropped)


def _wire(case: Case, name: str, token: str, mid: str, user: str | None, room: int) -> bytes:
    """The job's properties as they go on the wire; with ``fill``, ``room`` bytes in all."""
    fields = {
        "content_type": shortstr(b"application/json"),
        "delivery_mode": octet(2),
        "message_id": shortstr(mid.encode()),
        "timestamp": timestamp(int(time.time())),
        **({"user_id": shortstr(user.encode())} if user else {}),
        **case.fields,
    }
    entries = [
        entry(names.HEADER_AUTHORIZATION, longstr(f"Bearer {token}")),
        entry("x-case", longstr(name)),
        *case.entries,
    ]
    wire = properties(**fields, headers=table(*entries))
    if case.fill:
        pad = room - len(wire) - len(entry("x-pad", longstr(""))) - 5
        wire = properties(**fields, headers=table(*entries, entry("x-pad", longstr("p" * pad))))
        assert len(wire) == room - 5
    return wire


async def test_hostile_content_headers_neither_stop_a_worker_nor_its_tools(
    start_worker: Any,
    rabbit: Rabbit,
    issuer: Issuer,
    queue_name: str,
    broker_url: str,
    logwatch: LogWatch,
    broker_stamping: tuple[bool, str],
) -> None:
    assert len(CORPUS) >= 30
    delivered = {name: _as_delivered(case, broker_stamping[0]) for name, case in CORPUS.items()}
    handle = await start_worker(max_attempts=2)
    worker = handle.worker
    transport = worker.connection.transport.connection
    channels = dict(transport.channels)
    own = await rabbit.channel.get_underlay_channel()
    room = own.max_content_size - CONTENT_HEADER_FIXED  # what properties may take in a frame
    late = SigningKey.generate("RS256")
    mids: dict[str, str] = {}

    # Another publisher, with the permissions a publisher gets: jobs through warden.jobs.
    async with writing_user(broker_url, "^warden\\.jobs$") as (user, user_url):
        other = await aiormq.connect(user_url)
        try:
            theirs = await other.channel(publisher_confirms=True)
            for name, case in CORPUS.items():
                if case.late_key:
                    token = issuer.token(key=late, iat=int(time.time()) + 25)
                else:
                    token = issuer.token()
                mid = mids[name] = f"{name}-{uuid.uuid4().hex[:8]}"
                body = json.dumps({"action": case.action, "payload": {}}).encode()
                wire = _wire(case, name, token, mid, user if case.as_user else None, room)
                if case.as_user:
                    await publish_raw(theirs, queue_name, body, wire, names.JOBS_EXCHANGE)
                else:
                    await publish_raw(own, queue_name, body, wire)
        finally:
            await other.close()

        # The job signed with a key not yet published waits; then the issuer publishes it.
        late_mid = mids["deferrals-2^63-1"]
        await logwatch.wait_for(
            lambda r: (
                r.getMessage() == "no verdict yet; the message waits"
                and getattr(r, "message_id", None) == late_mid
            ),
            timeout=30,
        )
        issuer.keys.insert(0, late)

        runs = sum(case.runs for case in delivered.values())
        expected = {name: case for name, case in delivered.items() if case.reason}
        letters = await rabbit.peek(names.dead_letter_queue(queue_name), len(expected), 60)
        await ran.wait_for(runs, timeout=60)

    by_mid = {mid: name for name, mid in mids.items()}
    assert Counter(by_mid[mid] for mid in ran.ids()) == {
        name: case.runs for name, case in delivered.items() if case.runs
    }
    seen: Counter[str] = Counter()
    for letter in letters:
        headers = dict(letter.headers)
        name = headers.get("x-case") or by_mid[letter.message_id or ""]
        assert isinstance(name, str)
        seen[name] += 1
        case = delivered[name]
        denial = headers[names.HEADER_DENIAL]
        DENIAL.validate(denial)
        assert (headers[names.HEADER_REASON], denial["reason"]) == (case.reason, case.reason)
        if case.fill:
            assert set(denial["dropped"]) <= case.dropped, name
        else:
            assert set(denial["dropped"]) == case.dropped, name
        assert letter.user_id == worker.settings.broker_user(), name
        assert denial["publisher_user"] == (user if case.as_user else None), name
        assert names.HEADER_AUTHORIZATION not in headers
        assert names.HEADER_DELIVERY_COUNT not in headers, f"{name} was delivered more than once"
        assert letter.timestamp is not None
        if name == "attempt-2^63-1":
            assert denial["attempts"] == 2, "a publisher's own count is not warden's"
    assert seen == dict.fromkeys(expected, 1)

    # Nothing else: no job waiting, nothing handled twice, no fault of warden's own.
    assert await rabbit.depth(queue_name) == 0
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == len(expected)
    assert not [r for r in logwatch.records if r.getMessage() == "handling failed"]
    assert worker.connection.transport.connection is transport
    assert not transport.is_closed
    assert dict(transport.channels) == channels, "a channel of the worker was closed"
    assert all(not channel.is_closed for channel in channels.values() if channel is not None)
    await handle.stop()

    await _every_dlq_command_works(rabbit, issuer, queue_name, broker_url, expected)


async def _every_dlq_command_works(
    rabbit: Rabbit, issuer: Issuer, queue: str, broker_url: str, expected: dict[str, Case]
) -> None:
    env = {"WARDEN_BROKER_URL": broker_url}
    code, out, err = await warden("dlq", "stats", queue, "--json", env=env)
    assert code == 0, err
    assert json.loads(out) == {queue: dict(Counter(case.reason for case in expected.values()))}

    code, out, err = await warden("dlq", "list", queue, "--json", env=env)
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == len(expected)
    code, out, err = await warden("dlq", "list", queue, env=env)
    assert code == 0, err

    # One letter of each reason, the first listed: each shows its whole record.
    for row in {row["reason"]: row for row in reversed(listed)}.values():
        code, out, err = await warden("dlq", "show", queue, row["message_id"], env=env)
        assert code == 0, err
        assert json.loads(out)["denial"]["reason"] == row["reason"]

    malformed = sum(1 for case in expected.values() if case.reason == MALFORMED)
    fresh = issuer.token(scope="admin reports:read")
    code, out, err = await warden(
        "dlq", "replay", queue, "--reason", MALFORMED, env={**env, "WARDEN_TOKEN": fresh}
    )
    assert code == 0, err
    assert f"replayed {malformed}, left {len(expected) - malformed}" in out
    assert await rabbit.depth(queue) == malformed

    code, out, err = await warden("dlq", "purge", queue, "--all", "--yes", env=env)
    assert code == 0, err
    assert f"purged {len(expected) - malformed}, kept 0" in out
    assert await rabbit.depth(names.dead_letter_queue(queue)) == 0


FOREIGN: dict[str, tuple[dict[str, bytes], tuple[bytes, ...]]] = {
    "undecodable-timestamp": ({"timestamp": timestamp(2**64 - 1)}, ()),
    "header-timestamp-max": ({}, (entry("x-when", stamp(2**64 - 1)),)),
    "app-id-not-utf-8": ({"app_id": shortstr(NOT_UTF_8)}, ()),
    "header-not-utf-8": ({}, (entry("x-bin", longstr(NOT_UTF_8)),)),
    "header-double-1e300": ({}, (entry("x-big", double(1e300)),)),
    "header-tables-3000-deep": ({}, (entry("x-deep", deep_tables(3000)),)),
    "header-name-not-utf-8": ({}, (entry(b"\xff", longstr("v")),)),
    "another-user": ({}, ()),
}
"""Letters by name: their hostile properties and headers."""


async def test_every_dlq_command_works_on_letters_it_did_not_write(
    rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    """Letters placed in a dead-letter queue by someone else, as hostile as the broker lets
    them be: the tools count, list, show, move and remove them all the same, and a moved one
    carries neither the values AMQP cannot carry nor anyone's ``user_id`` but the tool's."""
    await rabbit.declare_work_queue(queue_name)
    dlq = names.dead_letter_queue(queue_name)
    body = json.dumps({"action": "reports.read", "payload": {}}).encode()
    verdict = (
        entry(names.HEADER_REASON, longstr(MALFORMED)),
        entry(names.HEADER_DENIAL, nested(entry("queue", longstr(queue_name)))),
    )
    own = await rabbit.channel.get_underlay_channel()
    # All but one written as warden's own (the URL's user, which warden trusts): those a replay
    # moves. The last is another user's, which no tool believes.
    trusted = urlsplit(broker_url).username or "guest"
    async with writing_user(broker_url, "^amq\\.default$") as (user, user_url):
        other = await aiormq.connect(user_url)
        try:
            theirs = await other.channel(publisher_confirms=True)
            for name, (fields, entries) in FOREIGN.items():
                by_user = name == "another-user"
                wire = properties(
                    message_id=shortstr(name.encode()),
                    user_id=shortstr((user if by_user else trusted).encode()),
                    **fields,
                    headers=table(*verdict, *entries),
                )
                await publish_raw(theirs if by_user else own, dlq, body, wire)
        finally:
            await other.close()
    env = {"WARDEN_BROKER_URL": broker_url}

    code, out, err = await warden("dlq", "stats", queue_name, "--json", env=env)
    assert code == 0, err
    assert sum(json.loads(out)[queue_name].values()) == len(FOREIGN)
    code, out, err = await warden("dlq", "list", queue_name, "--json", env=env)
    assert code == 0, err
    assert sorted(row["message_id"] for row in json.loads(out)) == sorted(FOREIGN)
    for name in ("undecodable-timestamp", "header-not-utf-8"):
        code, out, err = await warden("dlq", "show", queue_name, name, env=env)
        assert code == 0, err

    fresh = issuer.token()
    code, out, err = await warden(
        "dlq", "replay", queue_name, "--all", env={**env, "WARDEN_TOKEN": fresh}
    )
    assert code == 0, err
    assert f"replayed {len(FOREIGN) - 1}, left 1" in out
    moved = await rabbit.get_all(queue_name)
    assert sorted(m.message_id or "" for m in moved) == sorted(set(FOREIGN) - {"another-user"})
    assert await rabbit.depth(dlq) == 1
    for message in moved:
        headers = dict(message.headers)
        assert message.user_id == trusted
        assert headers[names.HEADER_AUTHORIZATION] == f"Bearer {fresh}"
        assert not headers.keys() & {"x-bin", "x-big", "x-deep"}, message.message_id

    code, out, err = await warden("dlq", "purge", queue_name, "--all", "--yes", env=env)
    assert code == 0, err
    assert await rabbit.depth(dlq) == 0
