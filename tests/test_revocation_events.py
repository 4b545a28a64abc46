"""Revocation events and the revocation list, without a broker.

``schemas/revocation.schema.json`` is what publishers of the feed validate against;
``worker.auth.revocation.Revocation`` is what warden enforces, and ``RevocationList`` is what
check 13 consults. The schema and the code must agree on every event; the list must deny exactly
what the events it holds cover, for as long as they hold. Time is plain POSIX floats throughout.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from tests.support.schemas import Validator, ecma_anchors
from worker import errors
from worker.auth.revocation import _RFC3339, Revocation, RevocationList, entry_key
from worker.errors import InvalidEvent

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "revocation.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


# `date-time` is only checked by jsonschema when rfc3339-validator is installed, and it is not a
# dependency: check RFC 3339 section 5.6 here, independently of worker.auth.revocation (no leap
# seconds, which warden does not take either).
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # formats only constrain strings
    match = _DATE_TIME.fullmatch(instance)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    datetime(year, month, day, hour, minute, second)  # ValueError when out of range
    off_hour, off_minute = match.group(8), match.group(9)
    return off_hour is None or (int(off_hour) <= 23 and int(off_minute) <= 59)


# `pattern` with ECMA-262 semantics (tests.support.schemas), formats asserted.
REVOCATION = Validator(SCHEMA, format_checker=FORMATS)

T0 = "2026-01-02T03:04:05Z"
T0_STAMP = 1767323045.0
LATER = "2026-01-03T03:04:05Z"
ISS = "https://issuer.test/a"
OTHER_ISS = "https://issuer.test/b"


def _at(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


# --- the schema file --------------------------------------------------------------------------


def test_schema_file_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "https://warden.dev/schemas/revocation.schema.json"
    for example in SCHEMA["examples"]:
        assert REVOCATION.is_valid(example), example
        Revocation.from_mapping(example)


def test_schema_members_are_the_members_the_code_takes() -> None:
    members = set(SCHEMA["properties"])
    assert members == {"jti", "sub", "client_id", "iss", "issued_before", "expires_at", "reason"}
    for name, member in SCHEMA["properties"].items():
        assert member.get("title"), name
        assert member.get("description"), name
        if name in {"jti", "sub", "client_id"}:
            accepted = Revocation.from_mapping(
                {name: "x", "expires_at": LATER} | ({} if name == "jti" else {"issued_before": T0})
            )
            assert (accepted.subject, accepted.value) == (name, "x")


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02T03:04:05Z",
        "2026-01-02t03:04:05z",
        "2026-01-02T03:04:05.123456789+05:30",
        "2026-01-02T03:04:05-00:00",
        "2026-01-02T03:04:05",
        "2026-01-02 03:04:05Z",
        "2026-01-02T03:04:05.Z",
        "2026-01-02T03:04:05,5Z",
        "2026-01-02T03:04:05+0100",
        "2026-1-02T03:04:05Z",
        "26-01-02T03:04:05Z",
        "2026-01-02T03:04Z",
        "2026-01-02T03:04:05Z\n",
        " 2026-01-02T03:04:05Z",
        "2026-01-02",
        "",
    ],
)
def test_schema_timestamp_pattern_is_the_code_pattern(text: str) -> None:
    # Over ASCII; beyond it, Python's \d takes other digits that fromisoformat then refuses.
    code = _RFC3339.fullmatch(text) is not None
    for member in ("issued_before", "expires_at"):
        pattern = SCHEMA["properties"][member]["pattern"]
        assert (re.search(ecma_anchors(pattern), text) is not None) == code, member


# --- events: the schema and Revocation.from_mapping agree --------------------------------------


def _jti(**changes: Any) -> dict[str, Any]:
    return {"jti": "jti-1", "expires_at": LATER, **changes}


def _sub(**changes: Any) -> dict[str, Any]:
    return {"sub": "alice", "issued_before": T0, "expires_at": LATER, **changes}


def _client(**changes: Any) -> dict[str, Any]:
    return {"client_id": "reporting", "issued_before": T0, "expires_at": LATER, **changes}


def _without(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in names}


EVENT_CORPUS = [
    # valid
    pytest.param(_jti(), True, id="jti"),
    pytest.param(_jti(iss=ISS), True, id="jti-with-iss"),
    pytest.param(_sub(), True, id="sub"),
    pytest.param(_sub(iss=ISS), True, id="sub-with-iss"),
    pytest.param(_client(), True, id="client_id"),
    pytest.param(_client(iss=ISS), True, id="client_id-with-iss"),
    pytest.param(_jti(reason="laptop stolen"), True, id="reason"),
    pytest.param(_jti(reason=""), True, id="reason-empty"),
    pytest.param(_sub(issued_before="2026-01-02T04:04:05.5+01:00"), True, id="offset-fraction"),
    pytest.param(_jti(expires_at="2026-01-03t03:04:05z"), True, id="lowercase-t-z"),
    pytest.param(_jti(expires_at="2026-01-03T03:04:05-00:00"), True, id="unknown-offset"),
    pytest.param(_jti(jti=" "), True, id="jti-blank-but-not-empty"),
    # exactly one subject
    pytest.param({"expires_at": LATER}, False, id="no-subject"),
    pytest.param({"iss": ISS, "issued_before": T0, "expires_at": LATER}, False, id="iss-alone"),
    pytest.param(_sub(jti="jti-1"), False, id="sub-and-jti"),
    pytest.param(_sub(client_id="reporting"), False, id="sub-and-client_id"),
    pytest.param(_jti(client_id="reporting"), False, id="jti-and-client_id"),
    pytest.param(_sub(jti="j", client_id="c"), False, id="all-three"),
    pytest.param(_sub(jti=None), False, id="second-subject-null"),
    # issued_before goes with sub and client_id only
    pytest.param(_jti(issued_before=T0), False, id="jti-with-issued_before"),
    pytest.param(_without(_sub(), "issued_before"), False, id="sub-without-issued_before"),
    pytest.param(_without(_client(), "issued_before"), False, id="client-without-issued_before"),
    pytest.param(_without(_jti(), "expires_at"), False, id="no-expires_at"),
    # empty strings and wrong types
    pytest.param(_jti(jti=""), False, id="jti-empty"),
    pytest.param(_sub(sub=""), False, id="sub-empty"),
    pytest.param(_client(client_id=""), False, id="client_id-empty"),
    pytest.param(_jti(iss=""), False, id="iss-empty"),
    pytest.param(_jti(jti=42), False, id="jti-number"),
    pytest.param(_sub(sub=["alice"]), False, id="sub-array"),
    pytest.param(_client(client_id=None), False, id="client_id-null"),
    pytest.param(_jti(iss={"url": ISS}), False, id="iss-object"),
    pytest.param(
        _jti(iss=None),
        False,
        id="iss-null",
    ),
    pytest.param(_jti(reason=7), False, id="reason-number"),
    pytest.param(_jti(reason=None), False, id="reason-null"),
    pytest.param(_jti(expires_at=1767409445), False, id="expires_at-epoch-number"),
    # bad timestamps
    pytest.param(_jti(expires_at="2026-01-03T03:04:05"), False, id="expires_at-no-offset"),
    pytest.param(_sub(issued_before="2026-01-02T03:04:05"), False, id="issued_before-no-offset"),
    pytest.param(_jti(expires_at="tomorrow"), False, id="expires_at-garbage"),
    pytest.param(_sub(issued_before=""), False, id="issued_before-empty"),
    pytest.param(_jti(expires_at="2026-01-03 03:04:05Z"), False, id="space-not-t"),
    pytest.param(_jti(expires_at="2026-01-03T03:04:05+0100"), False, id="offset-no-colon"),
    pytest.param(_jti(expires_at="2026-13-03T03:04:05Z"), False, id="month-13"),
    pytest.param(_sub(issued_before="2026-02-29T00:00:00Z"), False, id="not-a-leap-year"),
    pytest.param(_jti(expires_at="2026-01-03T24:00:00Z"), False, id="hour-24"),
    pytest.param(_jti(expires_at="2026-01-03T03:04:05+24:00"), False, id="offset-24h"),
    pytest.param(_jti(expires_at="2026-01-03T03:04:05Z\n"), False, id="trailing-newline"),
    pytest.param(_jti(expires_at="٢٠٢٦-01-03T03:04:05Z"), False, id="arabic-indic-digits"),
    # unknown members
    pytest.param(_jti(exp=1767409445), False, id="unknown-exp"),
    pytest.param(_sub(Sub="alice"), False, id="unknown-case-variant"),
    pytest.param(_client(token="eyJhbGciOiJFZERTQSJ9.e30.sig"), False, id="unknown-token"),
]


@pytest.mark.parametrize(("event", "valid"), EVENT_CORPUS)
def test_revocation_schema_and_from_mapping_agree(event: dict[str, Any], valid: bool) -> None:
    schema_says = REVOCATION.is_valid(event)
    try:
        revocation = Revocation.from_mapping(event)
    except InvalidEvent:
        code_says = False
    else:
        code_says = True
        # What passes is what the event says.
        [subject] = [s for s in ("jti", "sub", "client_id") if s in event]
        assert (revocation.subject, revocation.value) == (subject, event[subject])
        assert revocation.issuer == event.get("iss")
        assert (revocation.issued_before is None) == (subject == "jti")
        assert revocation.expires_at > T0_STAMP
    # The bytes on the feed are read the same way.
    try:
        Revocation.from_json(json.dumps(event, ensure_ascii=False).encode("utf-8"))
    except InvalidEvent:
        json_says = False
    else:
        json_says = True
    assert (schema_says, code_says, json_says) == (valid, valid, valid)


def test_timestamps_are_read_with_their_offset() -> None:
    event = Revocation.from_mapping(
        _sub(issued_before="2026-01-02T04:04:05.5+01:00", expires_at="2026-01-02T03:04:06z")
    )
    assert event.issued_before == T0_STAMP + 0.5
    assert event.expires_at == T0_STAMP + 1


# --- events on the wire: from_json and to_json -------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"sub": "andré", "issued_before": "x"}'.encode("latin-1"), id="latin-1"),
        pytest.param(json.dumps(_jti()).encode("utf-16"), id="utf-16"),
        pytest.param(b'{"jti": "\xff\xfe", "expires_at": "2026-01-03T03:04:05Z"}', id="bad-bytes"),
        pytest.param(
            b'{"jti": "\xed\xa0\x80", "expires_at": "2026-01-03T03:04:05Z"}',
            id="utf-8-encoded-surrogate",
        ),
        pytest.param(b"", id="empty"),
        pytest.param(b"jti-1", id="bare-text"),
        pytest.param(b'{"jti": "jti-1", "expires_at": "2026-01-03T03:04:05Z"', id="truncated"),
        pytest.param(b"{'jti': 'jti-1', 'expires_at': '2026-01-03T03:04:05Z'}", id="single-quotes"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
    ],
)
def test_from_json_refuses_what_is_not_utf8_json(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not UTF-8 JSON"):
        Revocation.from_json(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(json.dumps([_jti()]).encode(), id="array-of-an-event"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b'"jti-1"', id="string"),
        pytest.param(b"1767409445", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="true"),
    ],
)
def test_from_json_refuses_what_is_not_an_object(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not a JSON object"):
        Revocation.from_json(raw)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(_jti(), id="jti"),
        pytest.param(_jti(iss=ISS), id="jti-with-iss"),
        pytest.param(_sub(), id="sub"),
        pytest.param(_sub(iss=ISS), id="sub-with-iss"),
        pytest.param(_client(), id="client_id"),
        pytest.param(_client(iss=ISS, issued_before="2026-01-02T04:04:05+01:00"), id="offset"),
        pytest.param(_sub(sub="ünïcødé ✓", iss="https://é.test/"), id="non-ascii"),
    ],
)
def test_to_json_round_trips_and_follows_the_schema(event: dict[str, Any]) -> None:
    revocation = Revocation.from_mapping(event)
    raw = revocation.to_json()
    assert Revocation.from_json(raw) == revocation
    assert REVOCATION.is_valid(json.loads(raw))


def test_to_json_round_trips_fractional_seconds() -> None:
    revocation = Revocation.from_mapping(
        _sub(issued_before="2026-01-02T03:04:05.75Z", expires_at="2026-01-03T03:04:05.25Z")
    )
    assert Revocation.from_json(revocation.to_json()) == revocation


def test_a_published_cut_off_still_covers_tokens_of_its_own_second() -> None:
    revocation = Revocation.from_mapping(_sub(issued_before="2026-01-02T03:04:05.75Z"))
    token = {"sub": "alice", "iat": int(T0_STAMP)}  # iat 03:04:05 < 03:04:05.75
    direct, published = RevocationList(), RevocationList()
    direct.add(revocation, T0_STAMP)
    published.add(Revocation.from_json(revocation.to_json()), T0_STAMP)
    with pytest.raises(errors.TokenRevoked):
        direct.check(token, ISS)
    with pytest.raises(errors.TokenRevoked):
        published.check(token, ISS)


# --- the revocation list ----------------------------------------------------------------------

NOW = 1_800_000_000.0


def _jti_event(jti: str, *, iss: str | None = None, expires: float = NOW + 3600) -> Revocation:
    return Revocation("jti", jti, iss, None, expires)


def _cut(
    subject: str, value: str, before: float, *, iss: str | None = None, expires: float = NOW + 3600
) -> Revocation:
    assert subject in ("sub", "client_id")
    return Revocation(subject, value, iss, before, expires)  # type: ignore[arg-type]


def _token(**claims: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "alice",
        "client_id": "reporting",
        "jti": "jti-1",
        "iat": int(NOW) - 60,
        "exp": int(NOW) + 600,
    }
    return {k: v for k, v in (base | claims).items() if v is not None}


def revoked(revocations: RevocationList, claims: dict[str, Any], issuer: str = ISS) -> bool:
    try:
        revocations.check(claims, issuer)
    except errors.TokenRevoked:
        return True
    return False


def test_an_empty_list_allows_every_token() -> None:
    revocations = RevocationList()
    assert len(revocations) == 0
    assert not revoked(revocations, _token())
    assert not revoked(revocations, {})


def test_jti_revocation_denies_that_token_only() -> None:
    revocations = RevocationList()
    assert revocations.add(_jti_event("jti-1"), NOW)
    assert revoked(revocations, _token(jti="jti-1"))
    assert revoked(revocations, _token(jti="jti-1", iat=int(NOW) + 10))  # whenever issued
    assert revoked(revocations, _token(jti="jti-1", iat=None))
    assert not revoked(revocations, _token(jti="jti-2"))
    assert not revoked(revocations, _token(jti=None))


def test_subject_kinds_are_not_confused() -> None:
    revocations = RevocationList()
    revocations.add(_jti_event("alice"), NOW)
    revocations.add(_cut("sub", "reporting", NOW), NOW)
    revocations.add(_cut("client_id", "jti-1", NOW), NOW)
    # The token's sub, client_id and jti each equal the value of an entry of another kind.
    assert not revoked(revocations, _token(sub="alice", client_id="reporting", jti="jti-1"))


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(_jti_event("jti-1", iss=ISS), id="jti"),
        pytest.param(_cut("sub", "alice", NOW, iss=ISS), id="sub"),
        pytest.param(_cut("client_id", "reporting", NOW, iss=ISS), id="client_id"),
    ],
)
def test_an_issuer_scoped_entry_applies_to_that_issuer_only(event: Revocation) -> None:
    revocations = RevocationList()
    revocations.add(event, NOW)
    assert revoked(revocations, _token(), ISS)
    assert not revoked(revocations, _token(iss=OTHER_ISS), OTHER_ISS)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(_jti_event("jti-1"), id="jti"),
        pytest.param(_cut("sub", "alice", NOW), id="sub"),
        pytest.param(_cut("client_id", "reporting", NOW), id="client_id"),
    ],
)
def test_an_unscoped_entry_applies_to_every_issuer(event: Revocation) -> None:
    revocations = RevocationList()
    revocations.add(event, NOW)
    assert revoked(revocations, _token(), ISS)
    assert revoked(revocations, _token(iss=OTHER_ISS), OTHER_ISS)


@pytest.mark.parametrize("subject", ["sub", "client_id"])
def test_cut_off_denies_tokens_issued_before_and_allows_those_after(subject: str) -> None:
    value = _token()[subject]
    cut = NOW - 100
    revocations = RevocationList()
    revocations.add(_cut(subject, value, cut), NOW)
    assert revoked(revocations, _token(iat=int(cut) - 1))
    assert revoked(revocations, _token(iat=int(cut) - 86_400))
    assert not revoked(revocations, _token(iat=int(cut)))  # at the cut-off: re-issued, fine
    assert not revoked(revocations, _token(iat=int(cut) + 1))
    # Another subject of the same kind is untouched, whenever issued.
    assert not revoked(revocations, _token(**{subject: "someone-else", "iat": int(cut) - 1}))


def test_cut_off_with_a_fraction_compares_with_whole_second_iats() -> None:
    revocations = RevocationList()
    revocations.add(_cut("sub", "alice", NOW + 0.5), NOW)
    assert revoked(revocations, _token(iat=int(NOW)))  # NOW < NOW + 0.5
    assert not revoked(revocations, _token(iat=int(NOW) + 1))


def test_an_iat_with_a_fraction_is_a_date_against_the_cut_off() -> None:
    """RFC 7519 section 2: a NumericDate need not be whole; it is compared as the date it is."""
    revocations = RevocationList()
    revocations.add(_cut("sub", "alice", NOW), NOW)
    assert revoked(revocations, _token(iat=NOW - 0.5))
    assert not revoked(revocations, _token(iat=NOW + 600.5))


@pytest.mark.parametrize("subject", ["sub", "client_id"])
@pytest.mark.parametrize(
    "iat",
    [
        pytest.param(None, id="missing"),
        pytest.param(str(int(NOW) + 600), id="string"),
        pytest.param(True, id="bool"),
        pytest.param([int(NOW) + 600], id="array"),
        pytest.param(-1, id="before-1970"),
    ],
)
def test_a_token_without_a_numeric_date_iat_is_denied_by_a_cut_off_naming_it(
    subject: str, iat: Any
) -> None:
    revocations = RevocationList()
    revocations.add(_cut(subject, _token()[subject], NOW - 100), NOW)
    # Conservative: it cannot be shown to be newer than the cut-off.
    assert revoked(revocations, _token(iat=iat))
    # An entry that does not name the token leaves it alone.
    assert not revoked(revocations, _token(iat=iat, **{subject: "someone-else"}))


def test_entries_expire_and_are_pruned() -> None:
    revocations = RevocationList()
    assert revocations.add(_jti_event("jti-1", expires=NOW + 10), NOW)
    assert revocations.add(_cut("sub", "bob", NOW, expires=NOW + 20), NOW)
    assert len(revocations) == 2

    assert revocations.prune(NOW + 9) == 0
    assert len(revocations) == 2
    assert revoked(revocations, _token(jti="jti-1"))

    assert revocations.prune(NOW + 10) == 1  # forgotten at expires_at
    assert len(revocations) == 1
    assert not revoked(revocations, _token(jti="jti-1"))
    assert revoked(revocations, _token(sub="bob", jti="jti-9"))

    assert revocations.prune(NOW + 1000) == 1
    assert len(revocations) == 0
    assert not revoked(revocations, _token(sub="bob", jti="jti-9"))
    assert revocations.prune(NOW + 2000) == 0


def test_an_event_already_expired_is_ignored() -> None:
    revocations = RevocationList()
    assert revocations.add(_jti_event("jti-1", expires=NOW - 1), NOW) is False
    assert revocations.add(_cut("sub", "alice", NOW, expires=NOW), NOW) is False  # exactly now
    assert len(revocations) == 0
    assert not revoked(revocations, _token())
    assert revocations.add(_jti_event("jti-1", expires=NOW + 1), NOW) is True
    assert len(revocations) == 1


def test_a_later_event_widens_the_cut_off_and_the_expiry() -> None:
    revocations = RevocationList()
    revocations.add(_cut("sub", "alice", NOW - 100, expires=NOW + 100), NOW)
    assert not revoked(revocations, _token(iat=int(NOW) - 50))
    revocations.add(_cut("sub", "alice", NOW, expires=NOW + 200), NOW)
    assert len(revocations) == 1  # one key, one entry
    assert revoked(revocations, _token(iat=int(NOW) - 50))
    assert not revoked(revocations, _token(iat=int(NOW)))
    revocations.prune(NOW + 150)  # past the first expiry, not the second
    assert revoked(revocations, _token(iat=int(NOW) - 50))
    revocations.prune(NOW + 200)
    assert not revoked(revocations, _token(iat=int(NOW) - 50))


def test_a_later_event_never_narrows() -> None:
    revocations = RevocationList()
    revocations.add(_cut("client_id", "reporting", NOW, expires=NOW + 200), NOW)
    # Earlier cut-off and earlier expiry: neither is taken.
    assert revocations.add(_cut("client_id", "reporting", NOW - 100, expires=NOW + 100), NOW)
    assert len(revocations) == 1
    assert revoked(revocations, _token(iat=int(NOW) - 50))
    assert revocations.prune(NOW + 150) == 0
    assert revoked(revocations, _token(iat=int(NOW) - 50))
    assert revocations.prune(NOW + 200) == 1
    assert not revoked(revocations, _token(iat=int(NOW) - 50))


def test_jti_expiry_is_extended_by_a_later_event() -> None:
    revocations = RevocationList()
    revocations.add(_jti_event("jti-1", expires=NOW + 10), NOW)
    revocations.add(_jti_event("jti-1", expires=NOW + 5), NOW)
    revocations.add(_jti_event("jti-1", expires=NOW + 30), NOW)
    assert revocations.prune(NOW + 20) == 0
    assert revoked(revocations, _token())
    assert revocations.prune(NOW + 30) == 1
    assert not revoked(revocations, _token())


def test_scoped_and_unscoped_entries_are_separate() -> None:
    revocations = RevocationList()
    revocations.add(_cut("sub", "alice", NOW - 100, iss=ISS, expires=NOW + 10), NOW)
    revocations.add(_cut("sub", "alice", NOW, expires=NOW + 100), NOW)
    assert len(revocations) == 2
    revocations.prune(NOW + 10)
    # The unscoped entry still holds, with its own cut-off, for every issuer.
    assert revoked(revocations, _token(iat=int(NOW) - 50), ISS)
    assert revoked(revocations, _token(iat=int(NOW) - 50), OTHER_ISS)
    assert not revoked(revocations, _token(iat=int(NOW)), ISS)


SCALE = 200_000


def test_a_large_list_still_answers_correctly() -> None:
    revocations = RevocationList()
    issuers = (None, ISS, OTHER_ISS)
    for i in range(SCALE):
        kind = i % 3
        iss = issuers[i % 5 % 3]
        expires = NOW + 1000 + i
        if kind == 0:
            event = Revocation("jti", f"jti-{i}", iss, None, expires)
        elif kind == 1:
            event = Revocation("sub", f"user-{i}", iss, NOW, expires)
        else:
            event = Revocation("client_id", f"client-{i}", iss, NOW, expires)
        revocations.add(event, NOW)
    assert len(revocations) == SCALE

    def token(i: int, **claims: Any) -> dict[str, Any]:
        return {"jti": f"jti-{i}", "sub": f"user-{i}", "client_id": f"client-{i}"} | claims

    old, new = int(NOW) - 1, int(NOW)
    for i in [0, 1, 2, 3, 4, 5, 99_999, 100_000, 100_001, SCALE - 3, SCALE - 2, SCALE - 1]:
        scope = issuers[i % 5 % 3]
        own = scope or ISS
        foreign = OTHER_ISS if scope == ISS else ISS
        # A hit under its own issuer, whichever the kind; a jti hit whenever the token was issued.
        assert revoked(revocations, token(i, iat=old), own), i
        assert revoked(revocations, token(i, iat=new), own) == (i % 3 == 0), i
        # Under another issuer only when the entry is unscoped.
        assert revoked(revocations, token(i, iat=old), foreign) == (scope is None), i
        # Misses: values next to the entries, and values that were never added.
        assert not revoked(revocations, token(SCALE + i, iat=old), own), i
        near = {"jti": f"jti-{i}-", "sub": f"user-{i} ", "client_id": f"Client-{i}", "iat": old}
        assert not revoked(revocations, near, own), i
        # An entry's value under another kind's claim does not match it.
        crossed = {"jti": f"user-{i}", "sub": f"client-{i}", "client_id": f"jti-{i}", "iat": old}
        assert not revoked(revocations, crossed, own), i

    # Prune half of them: the first half goes, the second half still answers.
    assert revocations.prune(NOW + 1000 + SCALE // 2 - 1) == SCALE // 2
    assert len(revocations) == SCALE // 2
    for i in [0, 3, SCALE // 2 - 3]:
        assert not revoked(revocations, token(i, iat=old), issuers[i % 5 % 3] or ISS), i
    for i in [SCALE // 2, SCALE // 2 + 1, SCALE // 2 + 2, SCALE - 1]:
        assert revoked(revocations, token(i, iat=old), issuers[i % 5 % 3] or ISS), i


# --- the list against a reference model -------------------------------------------------------

_VALUES = ("a", "b")
_ISSUERS = (None, ISS, OTHER_ISS)
_EXPIRIES = (NOW - 1, NOW + 10, NOW + 20)
"""Few values, so that events collide on key and on expiry (the case that once broke the heap)."""


@st.composite
def _events(draw: st.DrawFn) -> Revocation:
    subject = draw(st.sampled_from(("jti", "sub", "client_id")))
    before = None if subject == "jti" else draw(st.sampled_from((NOW - 100, NOW - 50)))
    return Revocation(
        subject,
        draw(st.sampled_from(_VALUES)),
        draw(st.sampled_from(_ISSUERS)),
        before,
        draw(st.sampled_from(_EXPIRIES)),
    )


def _reference(events: list[Revocation], now: float) -> dict[Any, tuple[float | None, float]]:
    """What the list must hold: one entry per key, its widest cut-off and latest expiry."""
    model: dict[Any, tuple[float | None, float]] = {}
    for event in events:
        if event.expires_at <= now:
            continue
        key = entry_key(event.subject, event.issuer, event.value)
        before, expires = event.issued_before, float(math.ceil(event.expires_at))
        if key in model:
            old_before, old_expires = model[key]
            before = None if before is None else max(before, old_before or before)
            expires = max(expires, old_expires)
        model[key] = (before, expires)
    return model


@given(st.lists(_events(), max_size=40), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_any_sequence_of_events_builds_the_reference_list(
    events: list[Revocation], shuffler: Any
) -> None:
    expected = _reference(events, NOW)
    shuffled = list(events)
    shuffler.shuffle(shuffled)
    for order in (events, shuffled):
        revocations = RevocationList()
        for event in order:
            revocations.add(event, NOW)
        assert revocations.entries() == expected
        # Pruning forgets exactly what has expired by then, in any order of expiry.
        for later in (NOW + 10, NOW + 20):
            revocations.prune(later)
            assert revocations.entries() == {
                key: entry for key, entry in expected.items() if entry[1] > later
            }


def test_equal_expiries_with_and_without_an_issuer_are_both_held() -> None:
    revocations = RevocationList()
    assert revocations.add(Revocation("jti", "a", None, None, NOW + 60), NOW)
    assert revocations.add(Revocation("jti", "b", ISS, None, NOW + 60), NOW)
    assert revocations.add(Revocation("sub", "c", None, NOW, NOW + 60), NOW)
    assert revocations.add(Revocation("sub", "d", OTHER_ISS, NOW, NOW + 60), NOW)
    assert revoked(revocations, _token(jti="a"))
    assert revoked(revocations, _token(jti="b"))
    assert revoked(revocations, _token(sub="c"))
    assert revoked(revocations, _token(sub="d"), OTHER_ISS)
    assert revocations.prune(NOW + 60) == 4


# --- what a denial tells ----------------------------------------------------------------------

SECRETS: dict[str, Any] = {
    "iss": "https://issuer.test/secret-issuer-xyz",
    "sub": "sub-secret-7d1",
    "client_id": "client-secret-9f2",
    "jti": "jti-secret-4c8",
    "scope": "scope-secret-3a1 reports:write",
    "act": {"sub": "actor-secret-5e6"},
    "cnf": {"jkt": "thumbprint-secret-0b9"},
    "email": "alice-secret@example.test",
}
RAW_TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJzdWItc2VjcmV0In0.c2lnbmF0dXJlLXNlY3JldA"


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield str(value)
        yield from str(value).split()


@pytest.mark.parametrize("subject", ["jti", "sub", "client_id"])
@pytest.mark.parametrize("scoped", [False, True], ids=["unscoped", "scoped"])
def test_revoked_detail_holds_only_the_revoked_identifier(subject: str, scoped: bool) -> None:
    claims = SECRETS | {"iat": int(NOW) - 60, "exp": int(NOW) + 600, "raw": RAW_TOKEN}
    value: str = claims[subject]
    event: dict[str, Any] = {
        subject: value,
        "expires_at": _at(NOW + 3600),
        "reason": "reason-secret-8d2 ticket-4711",
    }
    if subject != "jti":
        event["issued_before"] = _at(NOW)
    if scoped:
        event["iss"] = SECRETS["iss"]
    revocations = RevocationList()
    revocations.add(Revocation.from_mapping(event), NOW)

    with pytest.raises(errors.TokenRevoked) as caught:
        revocations.check(claims, SECRETS["iss"])

    denial = caught.value
    assert (denial.reason, denial.error) == ("token_revoked", "invalid_token")
    assert denial.detail == str(denial)
    assert value in denial.detail
    others = {
        leaf
        for name, claim in claims.items()
        if name != subject
        for leaf in _leaves(claim)
        if leaf not in value
    }
    others |= set(_leaves(event["reason"]))
    assert sorted(leaf for leaf in others if leaf in denial.detail) == []


# --- timestamps at the edge of the calendar ----------------------------------------------------


def test_a_cut_off_at_the_end_of_the_calendar_still_denies() -> None:
    fields = _sub(issued_before="9999-12-31T23:59:59-01:00", expires_at=_at(NOW + 3600))
    assert REVOCATION.is_valid(fields)
    event = Revocation.from_mapping(fields)
    revocations = RevocationList()
    revocations.add(event, NOW)
    with pytest.raises(errors.TokenRevoked):
        revocations.check(_token(), ISS)
