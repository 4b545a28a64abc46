"""Issuer profiles (``docs/profiles/``): tokens as each vendor mints them, and nothing more.

For every profile, an access token shaped as the vendor documents it (header and claims, signed
by a test key) runs its job; the same token with the wrong audience or client, without the
scope, or of the wrong kind (``token_use``, Keycloak's ``typ``), and the vendor's ID token, are
each refused with their reason. Without the profile, warden refuses the vendor's token: the
profile is what admits it, and only it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.decision import (
    MemoryKeys,
    assert_allowed,
    assert_denied,
    clear_warden_environment,
    delivery,
)
from tests.support.vendors import ENTRA_USER, Vendor, vendors
from worker import Job, action
from worker.auth.revocation import Revocation, RevocationList
from worker.auth.setup import build_trust
from worker.errors import ConfigurationError
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Gate
from worker.settings import PROFILES, Settings, load_settings

VENDORS = vendors()


def _register(vendor: Vendor) -> Any:
    @action(f"profiles.{vendor.profile}", scopes={vendor.scope})
    async def run(job: Job) -> None:
        ran.record(job)

    return run


REGISTRY = Registry.of(*(_register(vendor) for vendor in VENDORS.values()))


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warden_environment(monkeypatch)


def gate_for(vendor: Vendor, entry: dict[str, Any] | None = None, **more: Any) -> Gate:
    settings = Settings(
        broker_url="amqp://guest:guest@localhost/",
        audience="https://warden.test/jobs",
        issuers=[entry or vendor.entry_for_warden()],
    )
    return Gate(build_trust(settings), MemoryKeys(vendor.issuer), REGISTRY, **more)


async def decide(gate: Gate, vendor: Vendor, raw: str) -> Any:
    return await gate.decide(delivery(raw, action=f"profiles.{vendor.profile}"))


def cases() -> list[Any]:
    out = []
    for name, vendor in VENDORS.items():
        out += [
            pytest.param(vendor, {}, None, id=f"{name}-access-token"),
            *(
                pytest.param(vendor, claims, None, id=f"{name}-{shape}")
                for shape, claims in vendor.other_access.items()
            ),
            pytest.param(
                vendor, vendor.wrong_audience, vendor.wrong_audience_reason, id=f"{name}-audience"
            ),
            pytest.param(
                vendor, vendor.without_client, vendor.without_client_reason, id=f"{name}-client"
            ),
            pytest.param(vendor, vendor.without_scope, "scope_insufficient", id=f"{name}-scope"),
        ]
        if vendor.wrong_use is not None:
            out.append(
                pytest.param(vendor, vendor.wrong_use, "token_type_invalid", id=f"{name}-use")
            )
    return out


@pytest.mark.parametrize(("vendor", "claims", "reason"), cases())
async def test_a_vendors_access_token_is_read_as_its_profile_says(
    vendor: Vendor, claims: dict[str, Any], reason: str | None
) -> None:
    raw = vendor.token(**claims)
    verdict = await decide(gate_for(vendor), vendor, raw)
    if reason is not None:
        assert_denied(verdict, reason, raw)
        return
    who = assert_allowed(verdict, raw).job.principal
    minted = vendor.claims_of(raw)
    preset = PROFILES[vendor.profile]
    assert who.client_id == next(minted[c] for c in preset.client_id_claims if c in minted)
    assert who.jti == next((minted[c] for c in preset.token_id_claims if c in minted), None)
    assert vendor.scope in who.scopes
    assert who.issuer == vendor.issuer.url


@pytest.mark.parametrize("vendor", VENDORS.values(), ids=VENDORS.keys())
async def test_a_vendors_id_token_is_refused(vendor: Vendor) -> None:
    raw = vendor.token(vendor.id_token)
    assert_denied(await decide(gate_for(vendor), vendor, raw), vendor.id_token_reason, raw)


@pytest.mark.parametrize(
    "vendor", [v for v in VENDORS.values() if v.profile != "rfc9068"], ids=lambda v: v.profile
)
async def test_without_its_profile_a_vendors_token_is_refused(vendor: Vendor) -> None:
    raw = vendor.token()
    plain = {"issuer": vendor.issuer.url, "audience": vendor.entry.get("audience", None)}
    entry = {k: v for k, v in plain.items() if v is not None}
    assert_denied(await decide(gate_for(vendor, entry), vendor, raw), "token_type_invalid", raw)


async def test_entra_claims_are_read_from_where_entra_puts_them() -> None:
    entra = VENDORS["entra"]
    app = entra.token()
    user = entra.token(**ENTRA_USER)
    gate = gate_for(entra)
    app_who = assert_allowed(await decide(gate, entra, app), app).job.principal
    user_who = assert_allowed(await decide(gate, entra, user), user).job.principal
    assert app_who.scopes == {"Reports.Write"}
    assert user_who.scopes == {"Reports.Read", "Reports.Write"}
    assert app_who.client_id == user_who.client_id == "2d4d11a2-f814-46a7-890a-274a72a7309e"
    assert app_who.jti is not None
    assert app_who.jti != user_who.jti


async def test_revocation_by_token_id_reaches_a_profile_whose_token_id_is_uti() -> None:
    """Entra tokens carry no ``jti``: ``warden revoke --jti <uti>`` is what revokes one."""
    entra = VENDORS["entra"]
    revoked, kept = entra.token(), entra.token()
    uti = entra.claims_of(revoked)["uti"]
    revocations = RevocationList()
    event = {"jti": uti, "expires_at": "2999-01-01T00:00:00Z"}
    assert revocations.add(Revocation.from_mapping(event), time.time())
    gate = gate_for(entra, revocations=revocations)
    assert_denied(await decide(gate, entra, revoked), "token_revoked", revoked)
    assert_allowed(await decide(gate, entra, kept), kept)


async def test_revocation_by_client_reaches_a_profile_whose_client_is_azp() -> None:
    entra = VENDORS["entra"]
    before = entra.token(iat=int(time.time()) - 60)
    revocations = RevocationList()
    event = {
        "client_id": "2d4d11a2-f814-46a7-890a-274a72a7309e",
        "issued_before": "2999-01-01T00:00:00Z",
        "expires_at": "2999-01-01T00:00:00Z",
    }
    assert revocations.add(Revocation.from_mapping(event), time.time())
    gate = gate_for(entra, revocations=revocations)
    assert_denied(await decide(gate, entra, before), "token_revoked", before)


# --- configuration ----------------------------------------------------------------------------


def test_every_profile_keeps_the_issuer_expiry_and_audience_or_clients_checks() -> None:
    for name, preset in PROFILES.items():
        assert "exp" in preset.required_claims, name
        assert "iss" in preset.required_claims, name
        assert ("aud" in preset.required_claims) is preset.has_aud, name


def test_a_field_set_on_the_entry_overrides_its_profiles_preset() -> None:
    okta = VENDORS["okta"]
    entry = {**okta.entry_for_warden(), "client_id_claims": ["uid"]}
    policy = build_trust(Settings(audience="https://warden.test/jobs", issuers=[entry])).policies[
        okta.issuer.url
    ]
    _, claims = okta.access(okta)
    assert policy.client_id(claims) == claims["uid"]
    assert policy.scope_claims == ("scp",)


async def test_a_cognito_entry_checks_clients_not_audience() -> None:
    cognito = VENDORS["cognito"]
    raw = cognito.token(aud="https://warden.test/jobs")
    # An aud a Cognito access token never carries admits nothing the client list does not.
    outsider = cognito.token(client_id="7otherclient0987654321abcd", aud="https://warden.test/jobs")
    gate = gate_for(cognito)
    assert_allowed(await decide(gate, cognito, raw), raw)
    assert_denied(await decide(gate, cognito, outsider), "audience_mismatch", outsider)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        pytest.param({"profile": "cognito"}, "clients is required", id="cognito-without-clients"),
        pytest.param(
            {"profile": "cognito", "clients": ["c"], "audience": "https://warden.test/jobs"},
            "carry no aud",
            id="cognito-with-an-audience",
        ),
        pytest.param(
            {"profile": "keycloak", "clients": ["c"]}, "checks the audience", id="clients-with-aud"
        ),
        pytest.param({"profile": "okta", "client_id_claims": []}, "client_id_claims", id="empty"),
        pytest.param({"profile": "ory"}, "profile", id="unknown-profile"),
        pytest.param(
            {"profile": "keycloak", "required_claims": ["iss", "aud"]}, "exp", id="no-exp"
        ),
        pytest.param({"required_claims": []}, "exp", id="no-required-claims"),
    ],
)
def test_a_profile_entry_that_cannot_work_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, entry: dict[str, Any], says: str
) -> None:
    monkeypatch.setenv("WARDEN_AUDIENCE", "https://warden.test/jobs")
    monkeypatch.setenv(
        "WARDEN_ISSUERS", json.dumps([{"issuer": "https://as.example.com/", **entry}])
    )
    with pytest.raises(ConfigurationError, match="WARDEN_ISSUERS") as caught:
        load_settings(Settings)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
