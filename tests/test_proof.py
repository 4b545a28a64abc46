"""Sender-constrained jobs (``docs/proof-of-possession.md``, check 17): a token bound to a key
by ``cnf.jkt`` runs a job only with an ``x-warden-proof`` signed by that key over that very job.

Decision-level cases cover each rule; the end-to-end cases send the must-show set through
RabbitMQ with proofs made by :mod:`worker.amqp.publisher`, as ``warden publish --proof-key`` does.
"""

from __future__ import annotations

import json
import time
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

from tests.attacks.world import WORLD
from tests.support.actions import ran
from tests.support.decision import (
    MemoryKeys,
    assert_allowed,
    assert_denied,
    clear_warden_environment,
    delivery,
    job_body,
    make_gate,
)
from tests.support.issuer import DROP, Issuer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from tests.support.schemas import DENIAL
from worker import errors
from worker.amqp.publisher import job_message, publish_jobs
from worker.auth.proof import ProofKey, b64url_sha256, check_proof, jwk_thumbprint
from worker.pipeline.decision import Gate
from worker.pipeline.delivery import Delivery


def pem(private: Any) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


BOUND = ProofKey.from_pem(pem(ec.generate_private_key(ec.SECP256R1())))
"""The publisher's key, which the tokens of these tests are bound to."""
STRANGER = ProofKey.from_pem(pem(ec.generate_private_key(ec.SECP256R1())))
"""Someone else's key."""
KEYS = {
    "es256": BOUND,
    "eddsa": ProofKey.from_pem(pem(ed25519.Ed25519PrivateKey.generate())),
    "rs256": ProofKey.from_pem(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))),
}
KEYS["ps256"] = ProofKey.from_pem(pem(KEYS["rs256"].private), alg="PS256")

ACTION = "reports.generate"
BODY = job_body(ACTION, {"report": "q3"})


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warden_environment(monkeypatch)


@pytest.fixture
def gate() -> Gate:
    return make_gate(WORLD.issuer, keys=MemoryKeys(WORLD.issuer))


def bound(key: ProofKey = BOUND, **claims: Any) -> str:
    """An access token bound to ``key``."""
    return WORLD.token(cnf={"jkt": key.thumbprint}, **claims)


def b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(
    token: str,
    *,
    signer: Any = None,
    alg: str = "ES256",
    header: dict[str, Any] | None = None,
    raw_claims: bytes | None = None,
    **claims: Any,
) -> str:
    """A proof for the default job made by hand: ``header`` and ``claims`` override (DROP
    removes) what :class:`ProofKey` would write; ``signer`` signs (default: the bound key)."""
    full_header = {"typ": "warden-proof+jwt", "alg": alg, "jwk": BOUND.jwk, **(header or {})}
    full_claims = {
        "iat": int(time.time()),
        "ath": b64url_sha256(token.encode()),
        "mid": "m1",
        "action": ACTION,
        "queue": "jobs",
        "bh": b64url_sha256(BODY),
        **claims,
    }
    full_header = {k: v for k, v in full_header.items() if v is not DROP}
    full_claims = {k: v for k, v in full_claims.items() if v is not DROP}
    payload = raw_claims if raw_claims is not None else json.dumps(full_claims).encode()
    signing_input = f"{b64(json.dumps(full_header).encode())}.{b64(payload)}".encode()
    if alg == "none":
        return signing_input.decode() + "."
    private = BOUND.private if signer is None else signer
    signature = get_default_algorithms()[alg].sign(signing_input, private)
    return f"{signing_input.decode()}.{b64(signature)}"


def job(
    token: str,
    proof: Any,
    *,
    body: bytes = BODY,
    message_id: str = "m1",
    queue: str = "jobs",
    action: str = ACTION,
) -> Delivery:
    headers: dict[str, Any] = {"authorization": f"Bearer {token}"}
    if proof is not None:
        headers["x-warden-proof"] = proof
    return delivery(
        token, content=body, headers=headers, message_id=message_id, queue=queue, action=action
    )


def signed(token: str, key: ProofKey = BOUND, **overrides: Any) -> str:
    """The proof :class:`ProofKey` makes for the default job (or for ``overrides`` of it)."""
    job_of = {"message_id": "m1", "action": ACTION, "queue": "jobs", "body": BODY} | overrides
    return key.sign(token=token, **job_of)


# --- the rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KEYS))
async def test_a_proof_by_the_bound_key_lets_the_job_run(gate: Gate, name: str) -> None:
    key = KEYS[name]
    raw = bound(key)
    verdict = assert_allowed(await gate.decide(job(raw, signed(raw, key))), raw)
    assert verdict.job.id == "m1"


async def test_a_token_without_cnf_needs_no_proof_and_ignores_one(gate: Gate) -> None:
    raw = WORLD.token()
    assert_allowed(await gate.decide(job(raw, None)), raw)
    assert_allowed(await gate.decide(job(raw, "not even a JWS")), raw)


async def test_a_proof_header_as_bytes_is_read(gate: Gate) -> None:
    raw = bound()
    assert_allowed(await gate.decide(job(raw, signed(raw).encode())), raw)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        pytest.param(lambda t: job(t, None), "no x-warden-proof", id="no-proof"),
        pytest.param(lambda t: job(t, ""), "not a compact JWS", id="empty-proof"),
        pytest.param(lambda t: job(t, signed(t, STRANGER)), "not the key", id="another-key"),
        pytest.param(
            lambda t: job(t, forged(t, signer=STRANGER.private)),
            "signature",
            id="bound-jwk-signed-by-another-key",
        ),
        pytest.param(
            lambda t: job(t, signed(t), body=job_body(ACTION, {"report": "q4"})),
            "bh",
            id="another-body",
        ),
        pytest.param(lambda t: job(t, signed(t), message_id="m2"), "mid", id="another-message-id"),
        pytest.param(lambda t: job(t, signed(t), queue="jobs-eu"), "queue", id="another-queue"),
        pytest.param(
            lambda t: job(t, signed(t, action="reports.read")), "action", id="another-action"
        ),
        pytest.param(
            lambda t: job(t, signed(bound(scope="reports:write"))), "ath", id="another-token"
        ),
        pytest.param(lambda t: job(t, t), "typ", id="the-access-token-as-proof"),
        pytest.param(lambda t: job(t, forged(t, header={"typ": DROP})), "typ", id="no-typ"),
        pytest.param(lambda t: job(t, forged(t, header={"typ": "JWT"})), "typ", id="typ-jwt"),
        pytest.param(lambda t: job(t, forged(t, header={"typ": "dpop+jwt"})), "typ", id="typ-dpop"),
        pytest.param(lambda t: job(t, forged(t, alg="none")), "alg", id="alg-none"),
        pytest.param(
            lambda t: job(t, forged(t, alg="HS256", signer=json.dumps(BOUND.jwk).encode())),
            "alg",
            id="alg-hs256-keyed-with-the-jwk",
        ),
        pytest.param(
            lambda t: job(t, forged(t, header={"alg": "ES384"})), "alg", id="alg-not-allowed"
        ),
        pytest.param(
            lambda t: job(t, forged(t, header={"crit": ["exp"]})), "crit", id="crit-header"
        ),
        pytest.param(lambda t: job(t, forged(t, header={"jwk": DROP})), "jwk", id="no-jwk"),
        pytest.param(
            lambda t: job(t, forged(t, header={"jwk": {**BOUND.jwk, "d": "AAAA"}})),
            "private",
            id="jwk-with-private-key",
        ),
        pytest.param(
            lambda t: job(t, forged(t, header={"jwk": {**BOUND.jwk, "alg": "ES384"}})),
            "fit",
            id="jwk-alg-says-otherwise",
        ),
        pytest.param(
            lambda t: job(t, forged(t, header={"jwk": {"kty": "oct", "k": "c2VjcmV0"}})),
            "private",
            id="jwk-symmetric",
        ),
        pytest.param(
            lambda t: job(t, forged(t, header={"jwk": "eyJrdHkiOiJFQyJ9"})), "jwk", id="jwk-string"
        ),
        pytest.param(
            lambda t: job(t, forged(t, iat=int(time.time()) + 3600)), "future", id="iat-in-future"
        ),
        pytest.param(
            lambda t: job(t, forged(t, iat=str(int(time.time())))), "iat", id="iat-string"
        ),
        pytest.param(lambda t: job(t, forged(t, iat=DROP)), "iat", id="no-iat"),
        pytest.param(lambda t: job(t, forged(t, ath=DROP)), "no ath", id="no-ath"),
        pytest.param(lambda t: job(t, forged(t, mid=DROP)), "no mid", id="no-mid"),
        pytest.param(lambda t: job(t, forged(t, action=DROP)), "no action", id="no-action"),
        pytest.param(lambda t: job(t, forged(t, queue=DROP)), "no queue", id="no-queue"),
        pytest.param(lambda t: job(t, forged(t, bh=DROP)), "no bh", id="no-bh"),
        pytest.param(lambda t: job(t, forged(t, mid=["m1"])), "mid", id="mid-array"),
        pytest.param(
            lambda t: job(t, forged(t, raw_claims=b'{"mid": "m2", "mid": "m1"}')),
            "duplicate",
            id="duplicate-mid",
        ),
        pytest.param(
            lambda t: job(t, signed(t) + "." + "A" * 10), "3 segments", id="four-segments"
        ),
        pytest.param(lambda t: job(t, signed(t) + "A" * 9000), "bytes", id="oversized-proof"),
        pytest.param(lambda t: job(t, 42), "not a string", id="proof-not-a-string"),
        pytest.param(
            lambda t: job(t, signed(t).rsplit(".", 1)[0] + "."), "signature", id="empty-signature"
        ),
    ],
)
async def test_proof_invalid(gate: Gate, make: Any, why: str) -> None:
    raw = bound()
    verdict = assert_denied(await gate.decide(make(raw)), "proof_invalid", raw)
    assert why in verdict.denial.detail
    assert verdict.denial.error == "invalid_token"


@pytest.mark.parametrize(
    "cnf",
    [
        pytest.param({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}, id="x5t-only"),
        pytest.param(
            {"jkt": BOUND.thumbprint, "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"},
            id="jkt-and-x5t",
        ),
        pytest.param({"jwk": BOUND.jwk}, id="jwk-instead-of-jkt"),
        pytest.param({}, id="empty-cnf"),
        pytest.param({"jkt": ""}, id="empty-jkt"),
    ],
)
async def test_a_binding_warden_cannot_check_is_refused(gate: Gate, cnf: dict[str, Any]) -> None:
    raw = WORLD.token(cnf=cnf)
    assert_denied(await gate.decide(job(raw, signed(raw))), "proof_invalid", raw)


@pytest.mark.parametrize(
    ("age", "allowed"),
    [
        pytest.param(-31, False, id="31-s-ahead"),
        pytest.param(-30, True, id="30-s-ahead-within-leeway"),
        pytest.param(0, True, id="now"),
        pytest.param(86_400, True, id="a-day-old"),
    ],
)
async def test_proof_iat_needs_only_not_be_in_the_future(
    gate: Gate, age: int, allowed: bool
) -> None:
    """No maximum age: a job may wait in its queue as long as its token is valid."""
    clock = float(int(time.time()))
    gate = Gate(gate.trust, gate.keys, gate.registry, clock=lambda: clock)
    raw = bound()
    verdict = await gate.decide(job(raw, forged(raw, iat=int(clock) - age)))
    if allowed:
        assert_allowed(verdict, raw)
    else:
        assert_denied(verdict, "proof_invalid", raw)


async def test_weak_and_ill_fitting_proof_keys_are_refused(gate: Gate) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = get_default_algorithms()["RS256"].to_jwk(weak.public_key(), as_dict=True)
    raw = WORLD.token(cnf={"jkt": jwk_thumbprint(jwk)})
    proof = forged(raw, alg="RS256", signer=weak, header={"jwk": jwk})
    verdict = assert_denied(await gate.decide(job(raw, proof)), "proof_invalid", raw)
    assert "2048" in verdict.denial.detail

    p384 = ec.generate_private_key(ec.SECP384R1())
    jwk = get_default_algorithms()["ES384"].to_jwk(p384.public_key(), as_dict=True)
    raw = WORLD.token(cnf={"jkt": jwk_thumbprint(jwk)})
    allowing = make_gate(
        WORLD.issuer, keys=MemoryKeys(WORLD.issuer), algorithms="RS256,ES256,ES384"
    )
    proof = forged(raw, alg="ES256", signer=p384, header={"jwk": jwk})
    assert_denied(await allowing.decide(job(raw, proof)), "proof_invalid", raw)
    proof = forged(raw, alg="ES384", signer=p384, header={"jwk": jwk})
    assert_allowed(await allowing.decide(job(raw, proof)), raw)


async def test_the_checks_before_come_first(gate: Gate) -> None:
    raw = bound(scope="reports:read")
    assert_denied(await gate.decide(job(raw, None)), "scope_insufficient", raw)
    raw = bound(act={"sub": "agent-y"})
    assert_denied(await gate.decide(job(raw, None)), "delegation_not_allowed", raw)


def test_the_thumbprint_is_rfc_7638() -> None:
    """The example of RFC 7638 section 3.1."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_check_proof_alone() -> None:
    """The verifier is a pure function: no broker, no gate."""
    raw = bound()
    common: dict[str, Any] = {
        "message_id": "m1",
        "action": ACTION,
        "queue": "jobs",
        "body": BODY,
        "algorithms": {"ES256"},
        "leeway": 30,
        "now": time.time(),
    }
    claims = {"cnf": {"jkt": BOUND.thumbprint}}
    check_proof(claims, raw, signed(raw), **common)
    check_proof({}, raw, None, **common)
    with pytest.raises(errors.ProofInvalid):
        check_proof(claims, raw, signed(raw), **(common | {"algorithms": {"EdDSA"}}))


proof_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=5,
)


@st.composite
def hostile_proofs(draw: st.DrawFn) -> tuple[str, str]:
    """A token bound to BOUND, and a proof for it with members replaced or dropped at random."""
    raw = bound()
    header: dict[str, Any] = {"typ": "warden-proof+jwt", "alg": "ES256", "jwk": dict(BOUND.jwk)}
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "ath": b64url_sha256(raw.encode()),
        "mid": "m1",
        "action": ACTION,
        "queue": "jobs",
        "bh": b64url_sha256(BODY),
    }
    for target in (header, header["jwk"], claims):
        for name in draw(st.lists(st.sampled_from(sorted(target)), max_size=2, unique=True)):
            if draw(st.booleans()):
                target[name] = draw(proof_values)
            else:
                del target[name]
        target.update(
            draw(
                st.dictionaries(
                    st.sampled_from(["d", "crit", "x", "n", "k"]), proof_values, max_size=1
                )
            )
        )
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = get_default_algorithms()["ES256"].sign(signing_input.encode(), BOUND.private)
    return raw, f"{signing_input}.{b64(signature)}"


@settings(max_examples=300, deadline=None)
@given(hostile_proofs())
def test_any_proof_is_accepted_or_proof_invalid(case: tuple[str, str]) -> None:
    raw, proof = case
    detail = ""
    try:
        check_proof(
            {"cnf": {"jkt": BOUND.thumbprint}},
            raw,
            proof,
            message_id="m1",
            action=ACTION,
            queue="jobs",
            body=BODY,
            algorithms={"ES256", "EdDSA", "RS256"},
            leeway=30,
            now=time.time(),
        )
    except errors.ProofInvalid as exc:
        detail = exc.detail
    assert_no_leak(detail, "a proof_invalid detail")


# --- the publisher's side ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", id="junk"),
        pytest.param(
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            id="public-key",
        ),
        pytest.param(
            pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), id="rsa-1024"
        ),
        pytest.param(pem(ec.generate_private_key(ec.SECP256K1())), id="secp256k1"),
    ],
)
def test_an_unusable_proof_key_is_a_configuration_error(data: bytes) -> None:
    with pytest.raises(errors.ConfigurationError, match="proof key"):
        ProofKey.from_pem(data)


def test_a_proof_key_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "publisher.pem"
    path.write_bytes(pem(BOUND.private))
    key = ProofKey.from_file(path)
    assert key.thumbprint == BOUND.thumbprint
    assert key.alg == "ES256"
    assert "d" not in key.jwk
    assert "private" not in repr(key)
    with pytest.raises(errors.ConfigurationError, match="cannot read"):
        ProofKey.from_file(tmp_path / "missing.pem")
    with pytest.raises(errors.ConfigurationError, match="alg"):
        ProofKey.from_pem(pem(BOUND.private), alg="RS256")


def test_job_message_signs_the_proof_for_its_queue() -> None:
    raw = bound()
    message = job_message(ACTION, {"report": "q3"}, raw, proof_key=BOUND, queue="jobs")
    headers = message.headers
    assert message.message_id is not None
    check_proof(
        {"cnf": {"jkt": BOUND.thumbprint}},
        raw,
        headers["x-warden-proof"],
        message_id=message.message_id,
        action=ACTION,
        queue="jobs",
        body=message.body,
        algorithms={"ES256"},
        leeway=30,
        now=time.time(),
    )
    with pytest.raises(ValueError, match="queue"):
        job_message(ACTION, {}, raw, proof_key=BOUND)


# --- through RabbitMQ -------------------------------------------------------------------------


async def _send(rabbit: Rabbit, queue: str, message: aio_pika.Message) -> str:
    await rabbit.channel.default_exchange.publish(message, queue, mandatory=True)
    assert message.message_id is not None
    return message.message_id


def _like(message: aio_pika.Message, **changes: Any) -> aio_pika.Message:
    """A copy of ``message`` with ``changes`` (body, message_id, headers)."""
    values: dict[str, Any] = {
        "body": message.body,
        "headers": dict(message.headers),
        "message_id": message.message_id,
        "content_type": message.content_type,
        "delivery_mode": message.delivery_mode,
    }
    values.update(changes)
    return aio_pika.Message(values.pop("body"), **values)


@pytest.mark.broker
async def test_proof_of_possession_end_to_end(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker()
    token = issuer.token(cnf={"jkt": BOUND.thumbprint})
    payload = {"report": "q3"}

    def make(**kw: Any) -> aio_pika.Message:
        return job_message(ACTION, payload, token, proof_key=BOUND, queue=queue_name, **kw)

    good = make()
    other_body = job_body(ACTION, {"report": "q4-everything"})
    other_action = make()
    other_action.headers["x-warden-proof"] = BOUND.sign(
        token=token,
        message_id=other_action.message_id or "",
        action="reports.read",
        queue=queue_name,
        body=other_action.body,
    )
    denied = {
        "no proof": job_message(ACTION, payload, token),
        "another key": job_message(ACTION, payload, token, proof_key=STRANGER, queue=queue_name),
        "another body": _like(make(), body=other_body),
        "another message_id": _like(make(), message_id=str(uuid.uuid4())),
        "another queue": job_message(
            ACTION, payload, token, proof_key=BOUND, queue=queue_name + "-eu"
        ),
        "another action": other_action,
    }
    good_id = await _send(rabbit, queue_name, good)
    ids = {await _send(rabbit, queue_name, message): case for case, message in denied.items()}

    letters = await rabbit.dead_letters(queue_name, len(denied))
    assert {letter.message_id for letter in letters} == set(ids)
    for letter in letters:
        headers = dict(letter.headers)
        case = ids[letter.message_id]
        assert headers["x-warden-reason"] == "proof_invalid", case
        record = headers["x-warden-denial"]
        assert DENIAL.is_valid(record)
        assert record["token"]["verified"] is True
        assert "authorization" not in headers
        assert_no_leak(repr(headers) + letter.body.decode(), "a dead letter")

    # A copy of the exact message is the same job again, never a new one.
    await _send(rabbit, queue_name, _like(good))
    jobs = await ran.wait_for(2)
    assert [j.id for j in jobs] == [good_id, good_id]
    assert all(j.payload == payload for j in jobs)
    assert await rabbit.depth(f"{queue_name}.dlq") == 0


@pytest.mark.broker
async def test_publish_jobs_with_a_proof_key(
    broker_url: str, start_worker: Any, issuer: Issuer, queue_name: str
) -> None:
    await start_worker()
    key = KEYS["eddsa"]
    token = issuer.token(cnf={"jkt": key.thumbprint})
    ids = await publish_jobs(
        broker_url, queue_name, ACTION, {"report": "q3"}, token, count=3, proof_key=key
    )
    jobs = await ran.wait_for(3)
    assert sorted(j.id for j in jobs) == sorted(ids)


@pytest.mark.broker
async def test_warden_publish_with_proof_key_runs_the_jobs(
    broker_url: str, start_worker: Any, issuer: Issuer, queue_name: str, tmp_path: Path
) -> None:
    import asyncio
    import os
    import sys

    await start_worker()
    private = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "publisher.pem"
    key_file.write_bytes(pem(private))
    token = issuer.token(cnf={"jkt": ProofKey.from_pem(pem(private)).thumbprint})
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
    env |= {"WARDEN_BROKER_URL": broker_url, "WARDEN_TOKEN": token}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "publish",
        queue_name,
        ACTION,
        "--payload",
        '{"report": "q3"}',
        "--count",
        "3",
        "--proof-key",
        str(key_file),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert f"published 3 jobs to {queue_name}" in out.decode()
    jobs = await ran.wait_for(3)
    assert {j.action for j in jobs} == {ACTION}
