"""As the RFCs say, no more: each point where warden accepted more than they allow, from the
attacker's side (``docs/checks.md``).

Where the behaviour crosses RabbitMQ (opaque tokens routed to their own issuer's introspection
endpoint, headers that repeat the token, claims of a token that did not verify), the test goes
through a worker and the broker; the rest is the decision over real keys.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from tests.attacks.world import WORLD
from tests.support.actions import ran
from tests.support.decision import (
    REGISTRY,
    MemoryKeys,
    assert_allowed,
    assert_denied,
    clear_warden_environment,
    delivery,
    make_gate,
)
from tests.support.issuer import (
    AUDIENCE,
    DROP,
    Issuer,
    JwksServer,
    SigningKey,
    b64,
    jwks_server,
    sign,
)
from tests.support.leaks import assert_no_leak, minted
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from tests.test_operating import warden
from worker import Job, action, errors, names
from worker.auth.introspection import Introspector
from worker.auth.keys import IssuerKeys, parse_jwks
from worker.auth.revocation import Revocation, RevocationList
from worker.auth.setup import build_introspector, build_trust
from worker.auth.verified import VerifiedTokens
from worker.deadletters.write import kept_headers
from worker.errors import ConfigurationError
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Gate
from worker.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warden_environment(monkeypatch)


def gate() -> Gate:
    return make_gate(WORLD.issuer, keys=MemoryKeys(WORLD.issuer))


# --- RFC 7519 section 2: a NumericDate may be non-integer --------------------------------------


async def test_a_non_integer_numeric_date_is_a_date_and_buys_no_time() -> None:
    later = WORLD.token(exp=int(time.time()) + 300.5, iat=time.time() - 0.25)
    who = assert_allowed(await gate().decide(delivery(later)), later).job.principal
    assert who.expires_at is not None
    assert who.expires_at.microsecond == 500_000
    passed = WORLD.token(exp=time.time() - 60.5)
    assert_denied(await gate().decide(delivery(passed)), "token_expired", passed)
    ahead = WORLD.token(iat=time.time() + 120.5)
    assert_denied(await gate().decide(delivery(ahead)), "token_not_yet_valid", ahead)


async def test_a_client_revocation_cuts_off_a_token_whose_iat_has_a_fraction() -> None:
    revocations = RevocationList()
    cut = {
        "client_id": "reports-service",
        "issued_before": "2999-01-01T00:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
    }
    revocations.add(Revocation.from_mapping(cut), time.time())
    guarded = Gate(gate().trust, MemoryKeys(WORLD.issuer), REGISTRY, revocations=revocations)
    raw = WORLD.token(iat=time.time() - 1.5)
    assert_denied(await guarded.decide(delivery(raw)), "token_revoked", raw)


# --- RFC 6749 section 3.3: scopes split on U+0020, scope-tokens of its character set ----------


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("reports:read\u00a0reports:write", id="no-break-space"),
        pytest.param("reports:read\treports:write", id="tab"),
        pytest.param("reports:read\nreports:write", id="line-feed"),
        pytest.param("reports:read\u3000reports:write", id="ideographic-space"),
        pytest.param("reports:read\u2028reports:write", id="line-separator"),
        pytest.param("reports:read\x1freports:write", id="unit-separator"),
    ],
)
async def test_a_scope_string_split_by_anything_but_a_space_grants_nothing(scope: str) -> None:
    raw = WORLD.token(scope=scope)
    for action_name in ("reports.generate", "reports.read"):
        verdict = await gate().decide(delivery(raw, action=action_name))
        assert_denied(verdict, "scope_insufficient", raw)


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param("reports:write\u200b", id="zero-width-space"),
        pytest.param('reports:write"', id="quote"),
        pytest.param("reports:write\\", id="backslash"),
        pytest.param("r\u00e9ports:write", id="non-ascii"),
    ],
)
async def test_a_scope_outside_the_scope_token_characters_grants_nothing(odd: str) -> None:
    for claims in ({"scope": f"reports:read {odd}"}, {"scope": DROP, "scp": ["reports:read", odd]}):
        raw = WORLD.token(**claims)
        verdict = await gate().decide(delivery(raw, action="reports.read"))
        assert assert_allowed(verdict, raw).job.principal.scopes == {"reports:read"}
    # Nor can an action ask for it: it would wait for a grant no token can make.
    with pytest.raises(ConfigurationError, match="scope-token"):
        action("reports.odd", scopes={odd})


# --- RFC 4648 section 3.5: one spelling per signature ------------------------------------------


async def test_only_the_canonical_spelling_of_a_signature_verifies() -> None:
    raw = WORLD.token()
    head, signature = raw.rsplit(".", 1)
    assert len(signature) % 4 == 2, "an RS256 signature leaves four spare bits"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    spellings = [
        minted(f"{head}.{signature[:-1]}{alphabet[(last & ~0b1111) | spare]}")
        for spare in range(16)
    ]
    assert raw in spellings
    cache = VerifiedTokens()
    cached = Gate(gate().trust, MemoryKeys(WORLD.issuer), REGISTRY, cache=cache)
    for spelling in spellings:
        verdict = await cached.decide(delivery(spelling))
        if spelling == raw:
            assert_allowed(verdict, spelling)
        else:
            assert_denied(verdict, "token_malformed", spelling)
    assert len(cache) == 1, "one signature, one cache entry"


async def test_a_header_or_payload_with_spare_bits_set_is_malformed() -> None:
    header = b64(json.dumps(WORLD.head()).encode())
    assert len(header) % 4 in (2, 3)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bumped = header[:-1] + alphabet[alphabet.index(header[-1]) | 1]
    _, payload, signature = WORLD.token().split(".")
    raw = minted(f"{bumped}.{payload}.{signature}")
    assert_denied(await gate().decide(delivery(raw)), "token_malformed", raw)


# --- RFC 8725 section 3.5, RFC 7518 section 3.3: RSA keys of 2048 bits or more -----------------


async def test_an_rsa_key_under_2048_bits_is_left_out_of_the_key_set(
    logwatch: LogWatch,
) -> None:
    weak = SigningKey("weak-1024", "RS256", rsa.generate_private_key(65537, 1024))
    issuer = Issuer(WORLD.issuer.url, [*WORLD.issuer.keys, weak])
    keys = parse_jwks(issuer.jwks(), issuer.url)
    assert "weak-1024" not in keys
    assert WORLD.rs.kid in keys
    [line] = [r for r in logwatch.records if r.getMessage().startswith("jwks RSA key under 2048")]
    assert line.kid == "weak-1024"  # type: ignore[attr-defined]

    # A token signed with the weak key, whose private half an attacker may have factored.
    raw = sign(
        {"typ": "at+jwt", "alg": "RS256", "kid": "weak-1024"},
        issuer.claims(iat=int(time.time()) - 120),
        weak,
    )
    weakened = make_gate(issuer, keys=MemoryKeys(issuer))
    assert_denied(await weakened.decide(delivery(raw)), "key_unknown", raw)


# --- https for keys and introspection ----------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "refused", "loopback"),
    [
        pytest.param("jwks_url", "http://issuer.example/jwks", "http://127.0.0.1:8080/jwks"),
        pytest.param(
            "introspection_endpoint",
            "http://issuer.example/introspect",
            "http://localhost:8080/introspect",
        ),
        pytest.param("jwks_url", "http://127.0.0.1.attacker.example/jwks", "http://[::1]/jwks"),
        pytest.param("jwks_url", "http://localhost.attacker.example/jwks", "http://127.9.9.9/j"),
        pytest.param("jwks_url", "http://10.0.0.7/jwks", "https://10.0.0.7/jwks"),
    ],
)
@pytest.mark.parametrize("where", ["variable", "issuers-entry"])
def test_a_configured_url_without_https_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, refused: str, loopback: str, where: str
) -> None:
    monkeypatch.setenv("WARDEN_AUDIENCE", AUDIENCE)

    def configure(url: str) -> str:
        if where == "variable":
            monkeypatch.setenv("WARDEN_ISSUER", "https://as.example/")
            monkeypatch.setenv(f"WARDEN_{variable.upper()}", url)
            return f"WARDEN_{variable.upper()}"
        entry = {"issuer": "https://as.example/", variable: url}
        monkeypatch.setenv("WARDEN_ISSUERS", json.dumps([entry]))
        return "WARDEN_ISSUERS"

    name = configure(refused)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(Settings)
    message = str(caught.value)
    assert name in message
    assert "https is required" in message
    assert "\n" not in message
    configure(loopback)
    [entry] = load_settings(Settings).trusted_issuers()
    assert str(getattr(entry, variable)) == loopback


async def test_warden_run_stops_with_a_line_that_says_https_is_required() -> None:
    code, _, err = await warden(
        "run",
        env={
            "WARDEN_ISSUER": "https://as.example/",
            "WARDEN_AUDIENCE": AUDIENCE,
            "WARDEN_JWKS_URL": "http://as.example/jwks",
            "WARDEN_ACTIONS": "tests.support.actions",
            "WARDEN_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/",
            "WARDEN_HTTP_PORT": "0",
        },
    )
    assert code != 0
    assert "WARDEN_JWKS_URL" in err
    assert "https is required" in err
    assert "Traceback" not in err


def _address_off_loopback() -> str:
    """An address of this machine that is not loopback (where a server can listen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing
            address = str(probe.getsockname()[0])
        except OSError:
            address = ""
    if not address or ipaddress.ip_address(address).is_loopback:
        pytest.skip("this machine has no address off loopback to listen on")
    return address


class Recorder:
    """An HTTP server on every address of the machine that records whatever reaches it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append(f"GET {self.path}")
                self.send_error(404)

            def do_POST(self) -> None:
                recorder.requests.append(f"POST {self.path}")
                self.send_error(404)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("0.0.0.0", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


async def test_discovered_urls_without_https_are_never_contacted(
    jwks: JwksServer, recorder: Recorder, logwatch: LogWatch
) -> None:
    """The issuer's metadata (over loopback) names a JWKS and an introspection endpoint over
    plain http on another address: warden refuses both before sending anything there."""
    issuer = jwks.issuer("plain")
    elsewhere = f"http://{_address_off_loopback()}:{recorder.port}"
    served = jwks.document

    def document(path: str) -> dict[str, Any] | None:
        found = served(path)
        if found is not None and "jwks_uri" in found:
            found |= {
                "jwks_uri": f"{elsewhere}/jwks",
                "introspection_endpoint": f"{elsewhere}/introspect",
            }
        return found

    jwks.document = document  # type: ignore[method-assign]
    async with httpx.AsyncClient(timeout=5) as http:
        keys = IssuerKeys(issuer.url, None, http, cooldown=0, refresh=300, attempts=1)
        await keys.fetch()
        assert not keys.loaded
        line = await logwatch.wait_for(lambda r: r.getMessage().startswith("jwks fetch failed"))
        assert "https is required" in line.error  # type: ignore[attr-defined]

        trust = build_trust(Settings(issuer=issuer.url, audience=AUDIENCE))
        introspector = Introspector(
            http,
            jwks.client[0],
            SecretStr(jwks.client[1]),
            {issuer.url: None},
            trust.policies,
            ceiling=60,
            leeway=30,
        )
        opaque = minted("opaque-" + secrets.token_urlsafe(24))
        with pytest.raises(errors.IntrospectionUnavailable, match="https is required"):
            await introspector.verify_opaque(opaque)
    assert recorder.requests == []


# --- opaque tokens ------------------------------------------------------------------------------

INTROSPECTED = Registry.from_modules(["tests.support.actions", "tests.support.introspected"])


@pytest.fixture
def second_server() -> Iterator[JwksServer]:
    with jwks_server() as server:
        yield server


async def test_a_token_with_one_dot_is_opaque_and_introspected(
    jwks: JwksServer, issuer: Issuer
) -> None:
    settings = Settings(
        issuer=issuer.url,
        audience=AUDIENCE,
        introspection_client_id=jwks.client[0],
        introspection_client_secret=jwks.client[1],
    )
    token = minted("ory_at_" + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(12))
    jwks.active[token] = {"active": True, **issuer.claims(sub="svc-ory")}
    async with httpx.AsyncClient(timeout=5) as http:
        trust = build_trust(settings)
        introspecting = Gate(
            trust,
            MemoryKeys(issuer),
            REGISTRY,
            introspector=build_introspector(settings, trust, http),
        )
        verdict = await introspecting.decide(delivery(token))
    assert verdict.job.principal.sub == "svc-ory"  # type: ignore[union-attr]
    assert jwks.introspected == [token]


@pytest.mark.broker
async def test_an_opaque_token_goes_to_its_own_issuers_introspection_only(
    start_worker: Any,
    rabbit: Rabbit,
    jwks: JwksServer,
    second_server: JwksServer,
    queue_name: str,
) -> None:
    """Two issuers, each with its own introspection endpoint that records what it is sent.

    Each opaque token reaches its own issuer's endpoint and nothing else; a token no issuer's
    prefix claims is sent nowhere and is denied ``issuer_untrusted``.
    """
    first, second = jwks.issuer("alpha"), second_server.issuer("beta")
    second_server.client = jwks.client
    a_token = minted("a_at_" + secrets.token_urlsafe(24))
    b_token = minted("b_at_" + secrets.token_urlsafe(24) + "." + secrets.token_urlsafe(8))
    stray = minted("c_at_" + secrets.token_urlsafe(24))
    jwks.active[a_token] = {"active": True, **first.claims(sub="svc-a")}
    second_server.active[b_token] = {"active": True, **second.claims(sub="svc-b")}
    # Were b's token shown to the first issuer, it would answer too: it must never be asked.
    jwks.active[b_token] = {"active": True, **first.claims(sub="svc-a-imposter")}
    for server in (jwks, second_server):
        server.active[stray] = {"active": True, **first.claims(sub="svc-stray")}

    await start_worker(
        INTROSPECTED,
        issuers=[
            {"issuer": first.url, "opaque_prefix": "a_at_"},
            {"issuer": second.url, "opaque_prefix": "b_at_"},
        ],
        introspection_client_id=jwks.client[0],
        introspection_client_secret=jwks.client[1],
    )
    a_id = await rabbit.job(queue_name, "reports.generate", a_token)
    b_id = await rabbit.job(queue_name, "reports.generate", b_token)
    stray_id = await rabbit.job(queue_name, "reports.generate", stray)

    jobs = {job.id: job for job in await ran.wait_for(2)}
    assert jobs.keys() == {a_id, b_id}
    assert jobs[a_id].principal.sub == "svc-a"
    assert jobs[b_id].principal.sub == "svc-b"
    assert jobs[b_id].principal.issuer == second.url
    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == stray_id
    assert letter.headers["x-warden-reason"] == "issuer_untrusted"
    assert jwks.introspected == [a_token]
    assert second_server.introspected == [b_token]


# --- delegation: actors per issuer ----------------------------------------------------------------

ISSUER_A, ISSUER_B = WORLD.issuer.url, WORLD.other.url


@action("reports.agent_x_of_a", scopes={"reports:write"}, actors={ISSUER_A: {"agent-x"}})
async def agent_x_of_a(job: Job) -> None:
    ran.record(job)


@action("reports.agent_x_anywhere", scopes={"reports:write"}, actors={"agent-x"})
async def agent_x_anywhere(job: Job) -> None:
    ran.record(job)


async def test_an_actor_allow_list_names_the_issuer_of_each_actor() -> None:
    keys = MemoryKeys(WORLD.issuer, WORLD.other)
    both = make_gate(WORLD.issuer, WORLD.other, keys=keys, registry=Registry.of(agent_x_of_a))
    cases = [
        (WORLD.issuer, {"sub": "agent-x"}, True),  # agent-x of A, on a token of A
        (WORLD.other, {"sub": "agent-x"}, False),  # agent-x of B, on a token of B
        (WORLD.issuer, {"sub": "agent-x", "iss": ISSUER_B}, False),  # of B, on a token of A
        (WORLD.other, {"sub": "agent-x", "iss": ISSUER_A}, True),  # of A, on a token of B
    ]
    for token_issuer, act, allowed in cases:
        raw = token_issuer.token(sub="alice", act=act)
        verdict = await both.decide(delivery(raw, action="reports.agent_x_of_a"))
        if allowed:
            assert assert_allowed(verdict, raw).job.principal.actor_issuer == ISSUER_A
        else:
            assert_denied(verdict, "delegation_not_allowed", raw)


def test_actors_without_their_issuer_stop_start_up_where_several_issuers_are_trusted() -> None:
    with pytest.raises(ConfigurationError, match=r"reports\.agent_x_anywhere"):
        make_gate(WORLD.issuer, WORLD.other, registry=Registry.of(agent_x_anywhere))
    one = make_gate(WORLD.issuer, registry=Registry.of(agent_x_anywhere))
    assert one.registry.get("reports.agent_x_anywhere") is not None


async def test_actors_without_issuer_are_the_one_trusted_issuers() -> None:
    one = make_gate(WORLD.issuer, registry=Registry.of(agent_x_anywhere))
    own = WORLD.token(act={"sub": "agent-x"})
    assert_allowed(await one.decide(delivery(own, action="reports.agent_x_anywhere")), own)
    foreign = WORLD.token(act={"sub": "agent-x", "iss": "https://elsewhere.example/"})
    verdict = await one.decide(delivery(foreign, action="reports.agent_x_anywhere"))
    assert_denied(verdict, "delegation_not_allowed", foreign)


# --- claims of a token that did not verify ------------------------------------------------------


@pytest.mark.broker
async def test_claims_of_a_token_that_did_not_verify_are_never_the_jobs_client(
    start_worker: Any,
    rabbit: Rabbit,
    issuer: Issuer,
    queue_name: str,
    broker_url: str,
    logwatch: LogWatch,
) -> None:
    await start_worker(prefetch=1)
    forger = Issuer("https://forger.example/", [SigningKey.generate("RS256")])
    forged = forger.token(client_id="reports-service", sub="alice", jti="forged-1")
    honest = issuer.token(scope="reports:read", client_id="reports-service")
    forged_id = await rabbit.job(queue_name, "reports.generate", forged)
    honest_id = await rabbit.job(queue_name, "reports.generate", honest)
    await rabbit.job(queue_name, "reports.read", issuer.token())
    await ran.wait_for(1)

    line = await logwatch.wait_for(
        lambda r: r.getMessage() == "denied" and getattr(r, "message_id", None) == forged_id
    )
    assert line.client_id is None  # type: ignore[attr-defined]
    assert line.jti is None  # type: ignore[attr-defined]
    assert line.unverified == {"client_id": "reports-service", "jti": "forged-1"}  # type: ignore[attr-defined]
    line = await logwatch.wait_for(
        lambda r: r.getMessage() == "denied" and getattr(r, "message_id", None) == honest_id
    )
    assert line.client_id == "reports-service"  # type: ignore[attr-defined]
    assert line.unverified is None  # type: ignore[attr-defined]

    env = {"WARDEN_BROKER_URL": broker_url}
    code, out, err = await warden("dlq", "list", queue_name, "--json", env=env)
    assert code == 0, err
    rows = {row["message_id"]: row for row in json.loads(out)}
    assert rows[forged_id]["client_id"] is None
    assert rows[forged_id]["sub"] is None
    assert rows[forged_id]["unverified"] == {"client_id": "reports-service", "sub": "alice"}
    assert rows[honest_id]["client_id"] == "reports-service"
    assert rows[honest_id]["unverified"] is None

    code, out, _ = await warden("dlq", "list", queue_name, env=env)
    [forged_row] = [row for row in out.splitlines() if forged_id in row]
    assert "unverified: reports-service" in forged_row

    code, out, _ = await warden("dlq", "show", queue_name, forged_id, env=env)
    shown = json.loads(out)
    assert shown["client_id"] is None
    assert shown["unverified"]["client_id"] == "reports-service"
    assert shown["denial"]["token"]["verified"] is False


# --- headers that repeat the token ---------------------------------------------------------------


def _echoes(token: str) -> dict[str, Any]:
    return {
        "x-echo-table": {"request": {"headers": [{"name": "authorization", "value": token}]}},
        "x-echo-array": ["first", ["second", f"Bearer {token}"]],
        "x-echo-bytes": bytearray(b"prefix " + token.encode() + b" suffix"),
        "x-echo-nested-bytes": {"raw": [bytearray(token.encode())]},
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-tenant": {"name": "acme", "tags": ["a", "b"]},
    }


@pytest.mark.broker
async def test_headers_that_repeat_the_token_at_any_depth_never_reach_a_dead_letter(
    start_worker: Any,
    rabbit: Rabbit,
    issuer: Issuer,
    queue_name: str,
    broker_stamping: tuple[bool, str],
) -> None:
    await start_worker()
    token = issuer.token()
    # Refused before its token is read: the body is no job.
    before = await rabbit.publish(queue_name, b"not a job", token=token, headers=_echoes(token))
    # Refused after: no such action.
    after = await rabbit.job(queue_name, "reports.delete", token, headers=_echoes(token))
    letters = {m.message_id: m for m in await rabbit.dead_letters(queue_name, 2)}
    assert letters[before].headers["x-warden-reason"] == "malformed_message"
    assert letters[after].headers["x-warden-reason"] == "action_unknown"
    for letter in letters.values():
        headers = dict(letter.headers)
        kept = set(headers) - {"x-warden-reason", "x-warden-denial"}
        # A broker that stamps arrivals stamps the dead letter too, as it enters warden.dlx.
        stamped = {names.HEADER_BROKER_TIMESTAMP} if broker_stamping[0] else set()
        assert kept == {"traceparent", "x-tenant", *stamped}
        assert headers["x-tenant"] == {"name": "acme", "tags": ["a", "b"]}
        assert token.encode() not in repr(headers).encode()
        assert_no_leak(repr(headers), "a dead letter's headers")


def test_a_header_repeating_the_token_is_dropped_even_when_no_token_was_parsed() -> None:
    token = WORLD.token()
    headers = {"authorization": f"Bearer {token}", **_echoes(token)}
    assert set(kept_headers(headers, None)) == {"traceparent", "x-tenant"}
