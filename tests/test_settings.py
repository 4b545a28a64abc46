"""Configuration (``docs/configuration.md``): a bad value stops start-up with a message naming
the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from worker.errors import ConfigurationError
from worker.settings import DEFAULT_ALGORITHMS, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
ISSUER = "https://issuer.test/realms/main"
AUDIENCE = "https://warden.test/jobs"
BROKER = "amqp://guest:guest@localhost:5672/"


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets count, never the caller's."""
    for name in list(os.environ):
        if name.upper().startswith("WARDEN_"):
            monkeypatch.delenv(name)


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"WARDEN_{name.upper()}", value)


# --- in process -------------------------------------------------------------------------------


def test_a_complete_environment_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, issuer=ISSUER, audience=AUDIENCE)
    settings = load_settings(Settings)
    assert settings.audience == AUDIENCE
    assert settings.algorithms == DEFAULT_ALGORITHMS
    assert [e.issuer for e in settings.trusted_issuers()] == [ISSUER]


def test_settings_without_audience_raise() -> None:
    with pytest.raises(ValidationError, match="WARDEN_AUDIENCE"):
        Settings(issuer=ISSUER, broker_url=SecretStr(BROKER))


def test_load_settings_without_audience_names_warden_audience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _env(monkeypatch, issuer=ISSUER)
    with pytest.raises(ConfigurationError, match="WARDEN_AUDIENCE") as caught:
        load_settings(Settings)
    assert "Traceback" not in str(caught.value)


def test_an_issuer_list_entry_without_audience_needs_warden_audience(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _env(
        monkeypatch,
        issuers=f'[{{"issuer": "{ISSUER}", "audience": "{AUDIENCE}"}},'
        ' {"issuer": "https://other.test"}]',
    )
    with pytest.raises(ConfigurationError, match="WARDEN_AUDIENCE"):
        load_settings(Settings)


@pytest.mark.parametrize(
    "algorithms",
    [
        pytest.param("HS256", id="hs256"),
        pytest.param("RS256,HS256", id="hs256-among-others"),
        pytest.param("RS256,HS512", id="hs512"),
        pytest.param("hs256", id="hs256-lower-case"),
        pytest.param("none", id="none"),
        pytest.param("RS256,None", id="None"),
        pytest.param("NONE", id="NONE"),
        pytest.param("RS256,XX256", id="unknown-name"),
        pytest.param("rs256", id="wrong-case"),
        pytest.param("RSA-OAEP", id="encryption-algorithm"),
        pytest.param(",", id="empty-list"),
    ],
)
def test_warden_algorithms_refuses_symmetric_none_and_unknown(
    monkeypatch: pytest.MonkeyPatch, algorithms: str
) -> None:
    _env(monkeypatch, issuer=ISSUER, audience=AUDIENCE, algorithms=algorithms)
    with pytest.raises(ConfigurationError, match="WARDEN_ALGORITHMS"):
        load_settings(Settings)


@pytest.mark.parametrize("algorithms", ["HS256", "none", "XX256"])
def test_an_issuer_list_entry_refuses_the_same_algorithms(
    monkeypatch: pytest.MonkeyPatch, algorithms: str
) -> None:
    _env(
        monkeypatch,
        audience=AUDIENCE,
        issuers=f'[{{"issuer": "{ISSUER}", "algorithms": ["RS256", "{algorithms}"]}}]',
    )
    with pytest.raises(ConfigurationError, match="WARDEN_ISSUERS"):
        load_settings(Settings)


def test_allowed_algorithms_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, issuer=ISSUER, audience=AUDIENCE, algorithms="ES256, EdDSA,RS512")
    assert load_settings(Settings).algorithms == ("ES256", "EdDSA", "RS512")


# --- the command line -------------------------------------------------------------------------


def _run_worker(**variables: str) -> subprocess.CompletedProcess[str]:
    env: dict[str, Any] = {
        name: value for name, value in os.environ.items() if not name.upper().startswith("WARDEN_")
    }
    env.update({f"WARDEN_{name.upper()}": value for name, value in variables.items()})
    env.setdefault("WARDEN_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/")
    return subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_warden_run_without_audience_stops_naming_warden_audience() -> None:
    done = _run_worker(issuer=ISSUER, actions="tests.support.actions")
    assert done.returncode != 0
    assert "WARDEN_AUDIENCE" in done.stderr
    assert "Traceback" not in done.stderr


def test_warden_run_with_an_unknown_algorithm_stops_naming_warden_algorithms() -> None:
    done = _run_worker(
        issuer=ISSUER, audience=AUDIENCE, actions="tests.support.actions", algorithms="RS256,XX256"
    )
    assert done.returncode != 0
    assert "WARDEN_ALGORITHMS" in done.stderr
    assert "XX256" in done.stderr
    assert "Traceback" not in done.stderr


def test_warden_run_with_hs256_stops_naming_warden_algorithms() -> None:
    done = _run_worker(
        issuer=ISSUER, audience=AUDIENCE, actions="tests.support.actions", algorithms="HS256"
    )
    assert done.returncode != 0
    assert "WARDEN_ALGORITHMS" in done.stderr
    assert "Traceback" not in done.stderr
