"""The warden headers of a dead letter as they go on the wire (``docs/dead-letters.md``).

What repeats from one refusal to the next is encoded once and kept, so these tests decode what
goes out and hold it against the denial record built afresh for the same refusal: a kept
encoding must never carry another refusal's facts, and a publisher's own ``x-warden-*`` headers
must never reach a dead letter.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands, encode
from pamqp.header import ContentHeader

from tests.support.decision import delivery, make_gate
from tests.support.issuer import Issuer
from tests.support.leaks import assert_no_leak
from tests.support.schemas import DENIAL
from tests.support.wire import decoded, denial_headers
from worker import errors
from worker.amqp.inbound import Inbound, to_delivery
from worker.amqp.outbound import carried, copy_properties
from worker.auth.tokens import TokenCheck
from worker.deadletters.write import DenialHeaders, kept_headers, uncarried
from worker.pipeline.decision import Denied
from worker.pipeline.delivery import Delivery

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def as_sent(denied: Denied, job: Delivery, now: datetime, **where: str) -> dict[str, Any]:
    return denial_headers(denied, job, now, worker="w-1", **where)


async def test_a_repeated_refusal_reads_as_its_own_record(issuer: Issuer) -> None:
    gate, headers = make_gate(issuer), DenialHeaders("w-1")
    token = issuer.token(scope="reports:read", client_id="reports-svc")
    job = delivery(token, action="admin.purge")
    for n in range(3):
        now = MOMENT + timedelta(seconds=n, milliseconds=n)
        denied = await gate.decide(job)
        assert isinstance(denied, Denied)
        sent = decoded(headers.encoded(denied, job, exchange="", routing_key="jobs", now=now))
        assert sent == as_sent(denied, job, now, exchange="", routing_key="jobs")
        DENIAL.validate(sent["x-warden-denial"])
        assert sent["x-warden-denial"]["denied_at"] == f"2026-01-02T03:04:0{5 + n}.{678 + n}Z"
        assert_no_leak(repr(sent), "a dead letter's headers")
    assert len(headers) == 1, "the second and third refusals reused the first one's encoding"


async def test_whatever_differs_between_refusals_shows_in_each(issuer: Issuer) -> None:
    """Each refusal below differs from the first in one fact; all are encoded with the same
    DenialHeaders, in an order that puts every kept encoding to the test."""
    gate, headers = make_gate(issuer), DenialHeaders("w-1")
    token = issuer.token(scope="reports:read")
    other = issuer.token(scope="reports:read", sub="someone-else")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    first = delivery(token, action="admin.purge")
    refusals = [
        (first, "", "jobs"),
        (delivery(token, action="reports.generate"), "", "jobs"),
        (delivery(token, action="admin.purge", queue="other-jobs"), "", "jobs"),
        (replace(first, attempt=2), "", "jobs"),
        (first, "jobs-exchange", "jobs"),
        (first, "", "jobs.eu"),
        (delivery(other, action="admin.purge"), "", "jobs"),
        (delivery(forged, action="admin.purge"), "", "jobs"),
        (delivery(None, action="admin.purge"), "", "jobs"),
        (delivery("not-a-jwt", action="admin.purge"), "", "jobs"),
    ]
    reasons = set()
    for _ in range(2):
        for job, exchange, routing_key in refusals:
            denied = await gate.decide(job)
            assert isinstance(denied, Denied)
            where = {"exchange": exchange, "routing_key": routing_key}
            sent = decoded(headers.encoded(denied, job, now=MOMENT, **where))
            assert sent == as_sent(denied, job, MOMENT, **where)
            reasons.add(sent["x-warden-reason"])
    assert {
        "scope_insufficient",
        "signature_invalid",
        "token_missing",
        "token_malformed",
    } <= reasons
    assert len(headers) == len(refusals)


async def test_kept_encodings_are_bounded(issuer: Issuer) -> None:
    gate, headers = make_gate(issuer), DenialHeaders("w-1", max_entries=2)
    jobs = [delivery(issuer.token(scope="reports:read"), action="admin.purge") for _ in range(3)]
    for job in [*jobs, jobs[0]]:
        denied = await gate.decide(job)
        assert isinstance(denied, Denied)
        sent = decoded(headers.encoded(denied, job, exchange="", routing_key="jobs", now=MOMENT))
        assert sent == as_sent(denied, job, MOMENT, exchange="", routing_key="jobs")
    assert len(headers) == 2


def test_claims_amqp_cannot_carry_leave_the_fingerprint(caplog: pytest.LogCaptureFixture) -> None:
    """An integer beyond 64 bits has no AMQP encoding; the dead letter still goes out."""
    raw = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJlLXRleHQtb2YtdGhlLXRva2Vu"
    check = TokenCheck(raw, claims={"sub": "svc", "exp": 2**70})
    denied = Denied(errors.SignatureInvalid("the signature does not verify"), "reports.read", check)
    job = delivery(raw)
    headers = DenialHeaders("w-1")
    with caplog.at_level(logging.WARNING, logger="warden.consumer"):
        for _ in range(2):
            sent = decoded(
                headers.encoded(denied, job, exchange="", routing_key="jobs", now=MOMENT)
            )
            assert sent["x-warden-denial"]["token"] == {
                "fingerprint": check.fingerprint(),
                "verified": False,
            }
            DENIAL.validate(sent["x-warden-denial"])
    [warning] = [r for r in caplog.records if "not encodable" in r.getMessage()]
    assert warning.message_id == "m1"  # type: ignore[attr-defined]
    assert raw not in caplog.text


def test_a_publishers_own_warden_headers_never_reach_a_dead_letter() -> None:
    forged = {"reason": "none", "detail": "trust me"}
    original = {
        "authorization": "Bearer abc.def.ghi",
        "x-warden-reason": "none",
        "X-Warden-Denial": forged,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "echo": "abc.def.ghi",
    }
    kept = kept_headers(original, "abc.def.ghi")
    assert kept == {"traceparent": original["traceparent"]}

    more = encode.short_string("x-warden-reason") + encode.encode_table_value("token_revoked")
    message = Inbound(_delivered(original))
    wire = copy_properties(message, kept, user_id="guest", more_headers=more).marshal()
    properties = commands.Basic.Properties()
    properties.unmarshal(struct.unpack(">H", wire[:2])[0], wire[2:])
    assert properties.headers == {**kept, "x-warden-reason": "token_revoked"}
    assert wire.count(b"x-warden-reason") == 1
    assert properties.message_id == "m-7"
    assert properties.app_id == "billing"
    assert properties.delivery_mode == 2


def _delivered(headers: dict[str, Any]) -> DeliveredMessage:
    """An aiormq delivery as the transport hands it over, with these headers."""
    return DeliveredMessage(
        delivery=commands.Basic.Deliver(
            consumer_tag="c", delivery_tag=1, redelivered=False, exchange="", routing_key="jobs"
        ),
        header=_header(headers),
        body=b"{}",
        channel=None,  # type: ignore[arg-type]
    )


def _header(headers: dict[str, Any]) -> ContentHeader:
    return ContentHeader(
        body_size=2,
        properties=commands.Basic.Properties(
            headers=headers, message_id="m-7", app_id="billing", content_type="application/json"
        ),
    )


# --- headers a copy cannot carry ----------------------------------------------------------------

NOT_UTF_8 = b"caf\xe9"


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"d": value}
    return value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(NOT_UTF_8, id="long-string-not-utf-8"),
        pytest.param(1e300, id="double-beyond-a-float"),
        pytest.param({"t": [1, NOT_UTF_8]}, id="nested-bytes"),
        pytest.param(2**63, id="integer-beyond-64-bits"),
        pytest.param(_deep(5000), id="tables-5000-deep"),
    ],
)
def test_a_copy_that_cannot_be_encoded_raises_before_anything_is_sent(value: Any) -> None:
    message = Inbound(_delivered({"x-bad": value, "traceparent": "00-abc"}))
    copy = copy_properties(message, dict(message.properties.headers or {}), user_id="warden")
    with pytest.raises(errors.TableNotEncodable):
        copy.marshal()
    kept, lost = carried(message.properties.headers or {})
    assert kept == {"traceparent": "00-abc"}
    assert lost == ["headers.x-bad"]
    copy_properties(message, kept, user_id="warden").marshal()


def test_a_copy_larger_than_a_frame_raises_and_the_largest_headers_go_first() -> None:
    headers = {"small": "s" * 10, "large": "l" * 3000, "middle": "m" * 1000, "x-deep": _deep(40)}
    message = Inbound(_delivered(headers))
    copy = copy_properties(message, headers, user_id="warden")
    copy.limit = len(copy.marshal()) - 1
    with pytest.raises(errors.TableNotEncodable, match="bytes of properties"):
        copy.marshal()
    kept, lost = carried(headers, room=1100)
    assert lost == ["headers.x-deep", "headers.large"]
    assert kept == {"small": headers["small"], "middle": headers["middle"]}
    kept, lost = carried(headers, room=0)
    assert kept == {}
    assert sorted(lost) == ["headers.large", "headers.middle", "headers.small", "headers.x-deep"]


def test_a_copy_never_takes_the_publishers_user_id() -> None:
    delivered = _delivered({"traceparent": "00-abc"})
    delivered.header.properties.user_id = "billing-publisher"
    message = Inbound(delivered)
    for copy in (
        copy_properties(message, {}, user_id="warden"),
        copy_properties(
            message, {}, user_id="warden", more_headers=encode.short_string("a") + b"V"
        ),
    ):
        wire = copy.marshal()
        properties = commands.Basic.Properties()
        properties.unmarshal(struct.unpack(">H", wire[:2])[0], wire[2:])
        assert properties.user_id == "warden"
        assert properties.message_id == "m-7"
    assert to_delivery(message, "jobs", TRUSTED).publisher_user == "billing-publisher"


TRUSTED = frozenset({"warden"})


@pytest.mark.parametrize(
    ("user_id", "headers", "publisher"),
    [
        pytest.param("billing", {}, "billing", id="the-publisher"),
        pytest.param("mallory", {"x-warden-publisher-user": "billing"}, "mallory", id="forged"),
        pytest.param(None, {"x-warden-publisher-user": "billing"}, None, id="forged-no-user-id"),
        pytest.param("warden", {"x-warden-publisher-user": "billing"}, "billing", id="warden-copy"),
        pytest.param("warden", {}, None, id="warden-copy-of-no-one"),
        pytest.param("warden", {"x-warden-publisher-user": {"a": 1}}, None, id="not-a-name"),
    ],
)
def test_who_published_is_the_user_id_or_on_wardens_own_copy_its_header(
    user_id: str | None, headers: dict[str, Any], publisher: str | None
) -> None:
    delivered = _delivered(headers)
    delivered.header.properties.user_id = user_id
    assert to_delivery(Inbound(delivered), "jobs", TRUSTED).publisher_user == publisher


async def test_a_record_lists_what_was_dropped_and_who_published(issuer: Issuer) -> None:
    gate, headers = make_gate(issuer), DenialHeaders("w-1")
    job = replace(
        delivery(issuer.token(scope="reports:read"), action="admin.purge"),
        publisher_user="billing-publisher",
        dropped=("timestamp", "headers.x-when"),
    )
    denied = await gate.decide(job)
    assert isinstance(denied, Denied)
    assert denied.denial.reason == "malformed_message"
    assert "headers.x-when" in denied.denial.detail
    lost = [f"headers.h{n}" for n in range(40)]
    record = decoded(
        headers.encoded(
            uncarried(denied, lost), job, exchange="", routing_key="jobs", now=MOMENT, dropped=lost
        )
    )["x-warden-denial"]
    DENIAL.validate(record)
    assert record["publisher_user"] == "billing-publisher"
    assert record["dropped"] == ["timestamp", "headers.x-when", *lost[:14]]
    assert record["detail"].startswith("40 headers could not be encoded again")
    assert len(headers) == 0, "a record that lists dropped values is not kept"
