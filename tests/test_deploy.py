"""Deployment files checked offline: the Dockerfile, compose.yaml, and deploy/kubernetes/.

- ``compose.yaml``, alone and with the local override ``deploy/compose/local.yaml``, against the
  Compose Specification's JSON Schema (the copy that check-jsonschema ships as
  ``vendor.compose-spec``);
- the Kubernetes manifests against the Kubernetes API's JSON Schemas (kubernetes-validate, strict:
  an unknown field is an error), and KEDA's resources against the schema of KEDA's CRDs as
  generated into the ``cloudcoil.models.keda`` models (made strict the same way);
- every ``WARDEN_*`` variable the files set is one that warden reads, and the values load;
- the image's command and health check are the real CLI and the real endpoint.

No Docker and no cluster needed. deploy/stack-check.sh (run by .ci/run) runs the stack for real.
"""

from __future__ import annotations

import argparse
import base64
import copy
import fnmatch
import hashlib
import importlib
import importlib.resources
import importlib.util
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import jwt
import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from kubernetes_validate.utils import latest_version
from pydantic import SecretStr

from worker.amqp.topology import roles
from worker.cli import main as cli
from worker.devissuer import __main__ as devissuer_main
from worker.pipeline.actions import Registry
from worker.settings import ENV_PREFIX, BrokerSettings, Settings, load_settings
from worker.support.urls import secure_url

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
LOCAL = ROOT / "deploy" / "compose" / "local.yaml"
DEMO = ROOT / "deploy" / "compose" / "demo.sh"
REALM = ROOT / "deploy" / "compose" / "warden-realm.json"
KUBERNETES = ROOT / "deploy" / "kubernetes"

KUBERNETES_VERSIONS = ("1.30", latest_version())
"""The oldest Kubernetes the manifests promise to fit, and the newest schemas at hand."""


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables the files set count, never the caller's."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --- what warden reads ------------------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every variable the worker's settings read (Settings extends BrokerSettings)."""
    fields = {*Settings.model_fields, *BrokerSettings.model_fields}
    return {f"{ENV_PREFIX}{name.upper()}" for name in fields}


def secret_variables() -> set[str]:
    """The settings that hold credentials (typed SecretStr)."""
    return {
        f"{ENV_PREFIX}{name.upper()}"
        for name, field in Settings.model_fields.items()
        if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
    }


def _commands(group: click.Command) -> Iterator[click.Command]:
    yield group
    if isinstance(group, click.Group):
        for command in group.commands.values():
            yield from _commands(command)


def cli_variables() -> set[str]:
    """``WARDEN_*`` variables the command line reads for its options (``WARDEN_TOKEN``, ...)."""
    found: set[str] = set()
    for command in _commands(cli):
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found.update(envvar)
    return {name for name in found if name.startswith(ENV_PREFIX)}


def _load_environment(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> Settings:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return load_settings(Settings)


# --- Compose ----------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def _interpolate(node: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's interpolation with the variables of ``env`` set, every other one unset:
    ``${X:-default}`` is then the default."""
    env = env or {}
    if isinstance(node, dict):
        return {key: _interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(item, env) for item in node]
    if isinstance(node, Tagged):
        return Tagged(node.tag, _interpolate(node.value, env))
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, word = match.groups()
        if env.get(name):
            return env[name]
        if operator in (":-", "-"):
            return word
        if operator in (":?", "?"):
            raise AssertionError(f"compose.yaml requires ${name} to be set: {word}")
        return ""

    return _INTERPOLATION.sub(replace, node)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as ``docker compose config`` would see it with only ``env`` set."""
    loaded: dict[str, Any] = _interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), env)
    return loaded


@dataclass(frozen=True)
class Tagged:
    """An override file's ``!reset`` (drop what the base file says) or ``!override`` (replace
    it instead of merging)."""

    tag: str
    value: Any


class _OverrideLoader(yaml.SafeLoader):
    pass


for _tag in ("!reset", "!override"):
    _OverrideLoader.add_constructor(
        _tag,
        lambda loader, node, tag=_tag: Tagged(
            tag,
            loader.construct_sequence(node, deep=True)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node, deep=True)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node),
        ),
    )


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, as far as these files use it: mappings merge key by
    key, ``!reset`` drops, ``!override`` and anything else replaces."""
    if isinstance(override, Tagged):
        return None if override.tag == "!reset" else override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value)
            if merged[key] is None:
                del merged[key]
        return merged
    return override


def local_override() -> dict[str, Any]:
    """deploy/compose/local.yaml alone, its tags kept, with no variable set."""
    loaded: dict[str, Any] = _interpolate(
        yaml.load(LOCAL.read_text(encoding="utf-8"), Loader=_OverrideLoader)
    )
    return loaded


def compose_local() -> dict[str, Any]:
    """``docker compose -f compose.yaml -f deploy/compose/local.yaml``, no variable set."""
    merged: dict[str, Any] = _merge(compose(), local_override())
    return merged


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment``, whichever of the two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def seconds(duration: str | int | float) -> float:
    """A Compose duration (``1m30s``, ``45s``, ``500ms``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts, f"not a duration: {duration}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


def compose_spec_schema() -> dict[str, Any]:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(
        resource.joinpath("compose-spec.json").read_text(encoding="utf-8")
    )
    return schema


@pytest.mark.parametrize("files", ["compose.yaml", "compose.yaml + local.yaml"])
def test_compose_file_is_valid_against_the_compose_specification(files: str) -> None:
    schema = compose_spec_schema()
    Draft202012Validator.check_schema(schema)
    document = compose() if files == "compose.yaml" else compose_local()
    errors = sorted(
        Draft202012Validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path)
    )
    assert not errors, "\n".join(
        f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors
    )


def test_the_compose_schema_does_refuse_a_wrong_file() -> None:
    """The schema is strict enough to matter: a misspelt service key is an error."""
    bad = compose()
    bad["services"]["worker"]["stop_grace_periode"] = "45s"
    assert list(Draft202012Validator(compose_spec_schema()).iter_errors(bad))


@pytest.mark.parametrize("files", ["compose.yaml", "compose.yaml + local.yaml"])
def test_every_warden_variable_in_compose_is_one_warden_reads(files: str) -> None:
    known = settings_variables() | cli_variables()
    document = compose() if files == "compose.yaml" else compose_local()
    unknown = {
        f"{name} (service {service_name})"
        for service_name, service in document["services"].items()
        for name in environment_of(service)
        if name.upper().startswith(ENV_PREFIX) and name not in known
    }
    assert not unknown, f"not read by warden: {sorted(unknown)}"


def test_the_compose_worker_environment_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    worker = environment_of(services["worker"])
    settings = _load_environment(monkeypatch, worker)
    assert settings.actions
    assert settings.queues
    (issuer,) = settings.trusted_issuers()

    # The issuer the workers trust is the string Keycloak writes in `iss`: its fixed hostname
    # and the realm imported from deploy/compose/warden-realm.json.
    authz = environment_of(services["authz"])
    realm = json.loads(REALM.read_text(encoding="utf-8"))
    assert issuer.issuer == f"{authz['KC_HOSTNAME']}/realms/{realm['realm']}"
    assert "JWT" in issuer.accept_typ, "Keycloak signs access tokens with typ JWT"
    # The audience Keycloak puts in `aud` is the one the workers expect.
    assert authz["DEMO_AUDIENCE"] == settings.audience
    # The demo asks that issuer's token endpoint, publishes on the queue the workers consume,
    # and reaches the workers' HTTP port.
    demo = environment_of(services["demo"])
    assert demo["DEMO_TOKEN_URL"] == f"{issuer.issuer}/protocol/openid-connect/token"
    assert demo["DEMO_QUEUE"] in settings.queues
    assert demo["DEMO_AUDIENCE"] == settings.audience
    assert urlsplit(demo["DEMO_WORKER_URL"]).port == settings.http_port
    assert (
        urlsplit(demo["WARDEN_BROKER_URL"]).hostname
        == urlsplit(worker["WARDEN_BROKER_URL"]).hostname
    )
    for name in ("REPORTER_CLIENT_SECRET", "READER_CLIENT_SECRET"):
        assert demo[name] == authz[name]


def test_the_compose_workers_fetch_keys_over_https_from_an_authority_they_trust(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """warden refuses a JWKS over plain http off loopback: the realm's keys, discovered under
    its issuer, are served over https by Keycloak with the certificate the ``certs`` service
    makes, signed by the authority the workers and the demo trust."""
    services = compose()["services"]
    (issuer,) = _load_environment(monkeypatch, environment_of(services["worker"])).trusted_issuers()
    assert secure_url(f"{issuer.issuer}/protocol/openid-connect/certs")
    authz = services["authz"]
    assert urlsplit(issuer.issuer).port == int(environment_of(authz)["KC_HTTPS_PORT"])
    options = dict(arg.split("=", 1) for arg in authz["command"] if "=" in arg)
    mounted = {v.split(":")[1]: v.split(":")[0] for v in authz["volumes"]}
    certificate = options["--https-certificate-file"]
    assert mounted[str(Path(certificate).parent)] == "certs"
    assert authz["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    certs = services["certs"]
    assert {v.split(":")[0]: v.split(":")[1] for v in certs["volumes"]}["certs"] == "/certs"
    for name in ("worker", "demo"):
        authority = environment_of(services[name])["SSL_CERT_FILE"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        assert mounts[str(Path(authority).parent)] == "certs", name


def test_workers_wait_for_healthy_services_scale_and_stop_gracefully(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    worker = services["worker"]
    for dependency in ("rabbitmq", "authz"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"]
    assert worker["deploy"]["replicas"] == 2
    # `--scale worker=N` needs replicas that do not collide on a name or a host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["build"] == "." or worker["build"]["context"] == "."
    assert "command" not in worker, "the image's CMD runs"
    assert "entrypoint" not in worker, "the image's CMD runs"

    grace = _load_environment(monkeypatch, environment_of(worker)).shutdown_grace_seconds
    assert seconds(worker["stop_grace_period"]) > grace


def _password_matches(password: str, stored: str) -> bool:
    """RabbitMQ's rabbit_password_hashing_sha256: a 4-byte salt, then SHA-256(salt + password)."""
    raw = base64.b64decode(stored)
    return hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]


def test_each_role_has_its_own_broker_user_with_what_warden_permissions_prints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    definitions = json.loads(
        (ROOT / "deploy" / "compose" / "rabbitmq-definitions.json").read_text(encoding="utf-8")
    )
    users = {u["name"]: u for u in definitions["users"]}
    granted = {(p["user"], p["vhost"]): p for p in definitions["permissions"]}
    services = compose()["services"]
    worker = _load_environment(monkeypatch, environment_of(services["worker"]))
    for role in roles(worker.queues):
        name = f"warden-{role.name}"
        assert _password_matches(f"{role.name}-demo-secret", users[name]["password_hash"])
        assert "administrator" not in users[name]["tags"]
        permission = granted[(name, "/")]
        assert (permission["configure"], permission["write"], permission["read"]) == (
            role.configure,
            role.write,
            role.read,
        )
    # Each service connects as its role, and trusts the users that write warden's messages.
    for service, role in (("worker", "worker"), ("demo", "publisher"), ("operator", "operator")):
        url = urlsplit(environment_of(services[service])["WARDEN_BROKER_URL"])
        assert (url.username, url.password) == (f"warden-{role}", f"{role}-demo-secret")
    trusted = {"warden-worker", "warden-revoker", "warden-operator"}
    assert worker.trusted() == trusted
    operator = environment_of(services["operator"])
    assert set(operator["WARDEN_TRUSTED_USERS"].split(",")) == trusted
    # The broker loads those definitions at boot.
    mounts = services["rabbitmq"]["volumes"]
    assert "./deploy/compose/rabbitmq-definitions.json:/etc/rabbitmq/definitions.json:ro" in mounts
    conf = (ROOT / "deploy" / "compose" / "rabbitmq.conf").read_text(encoding="utf-8")
    assert "load_definitions = /etc/rabbitmq/definitions.json" in conf


def test_rabbitmq_is_the_official_image_ci_tests_with_the_management_plugin() -> None:
    """The 4.x that .ci/run tests (tests/brokers/rabbitmq4.sh refuses any other)."""
    rabbitmq = compose()["services"]["rabbitmq"]
    tested = re.search(
        r'\[\[ "\$version" == (\d+\.\d+)\.\* \]\]',
        (ROOT / "tests" / "brokers" / "rabbitmq4.sh").read_text(encoding="utf-8"),
    )
    assert tested, "tests/brokers/rabbitmq4.sh no longer checks the version it built"
    assert rabbitmq["image"] == f"rabbitmq:{tested.group(1)}-management"
    assert any(str(port).endswith(":15672") for port in rabbitmq["ports"])


def _conf(text: str) -> dict[str, str]:
    """A rabbitmq.conf (sysctl format) as key -> value."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line.split("#")[0])
    return {key.strip(): value.strip() for key, value in pairs}


def test_the_broker_stamps_every_arrival_over_what_the_publisher_sent() -> None:
    """Both the official image and the offline stand-in read conf.d, where compose mounts the
    stack's rabbitmq.conf after the image's defaults; nothing there turns the stamp off."""
    rabbitmq = compose()["services"]["rabbitmq"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in rabbitmq["volumes"]}
    target = next(t for t, source in mounts.items() if source == "./deploy/compose/rabbitmq.conf")
    assert target.startswith("/etc/rabbitmq/conf.d/"), target
    conf = _conf((ROOT / "deploy" / "compose" / "rabbitmq.conf").read_text(encoding="utf-8"))
    assert conf["message_interceptors.incoming.set_header_timestamp.overwrite"] == "true"
    standin = ROOT / "deploy" / "local-images" / "rabbitmq-defaults.conf"
    assert not any(k.startswith("message_interceptors") for k in _conf(standin.read_text()))
    assert "10-defaults.conf" in (ROOT / "deploy" / "local-images.sh").read_text()
    assert Path(target).name > "10-defaults.conf", "the stack's file is read after the defaults"


def test_images_come_from_variables_whose_defaults_are_the_public_images() -> None:
    public = compose()["services"]
    assert public["rabbitmq"]["image"] == "rabbitmq:4.0-management"
    assert public["authz"]["image"] == "quay.io/keycloak/keycloak:26.2"
    chosen = compose({"RABBITMQ_IMAGE": "mq:local", "KEYCLOAK_IMAGE": "kc:local"})["services"]
    assert (chosen["rabbitmq"]["image"], chosen["authz"]["image"]) == ("mq:local", "kc:local")
    # The Python base is the Dockerfile's argument, passed from the environment only when set,
    # so that unset, the Dockerfile's own default (the public image) holds.
    [base] = [i for i in dockerfile_stages()[0] if i.keyword == "FROM"]
    assert base.args.split()[0] == "python:3.12-slim-bookworm"
    assert "ARG PYTHON_IMAGE=python:3.12-slim-bookworm" in DOCKERFILE.read_text(encoding="utf-8")
    for name, service in compose_local()["services"].items():
        if "build" in service:
            assert service["build"] == {"context": ".", "args": ["PYTHON_IMAGE"]}, name


def test_the_demo_runs_once_after_the_workers() -> None:
    services = compose()["services"]
    demo = services["demo"]
    assert demo["depends_on"]["worker"]["condition"] == "service_healthy"
    assert demo["depends_on"]["authz"]["condition"] == "service_healthy"
    assert demo["restart"] == "no"
    assert demo["image"] == services["worker"]["image"]
    (script,) = (v for v in demo["volumes"] if v.startswith("./deploy/compose/demo.sh:"))
    target = script.split(":")[1]
    assert demo["command"] == ["sh", target]


# --- the local override: the development issuer instead of Keycloak ---------------------------


def _devissuer_args(service: dict[str, Any]) -> argparse.Namespace:
    command = service["command"]
    assert command[:3] == ["python", "-m", "worker.devissuer"]
    return devissuer_main.parser().parse_args(command[3:])


def test_the_local_override_publishes_nothing_on_the_host() -> None:
    """A RabbitMQ or a Keycloak may already listen on the host's ports (as on CI machines)."""
    assert compose()["services"]["rabbitmq"]["ports"], "the default stack still publishes"
    for name, service in compose_local()["services"].items():
        assert "ports" not in service, name


def test_the_local_override_serves_the_development_issuer_the_workers_and_demo_use() -> None:
    base, services = compose()["services"], compose_local()["services"]
    authz = services["authz"]
    assert authz["image"] == services["worker"]["image"], "built from the project's Dockerfile"
    args = _devissuer_args(authz)
    issuer = f"{args.origin}{args.path}"
    assert issuer.startswith("https://authz:")
    [entry] = json.loads(environment_of(services["worker"])["WARDEN_ISSUERS"])
    assert entry == {"issuer": issuer}, "its tokens are RFC 9068's: the default profile"
    assert environment_of(services["demo"])["DEMO_TOKEN_URL"] == f"{issuer}/token"
    assert args.audience == environment_of(services["worker"])["WARDEN_AUDIENCE"]
    # It serves with the demo's certificate (the `certs` service), which workers and demo trust.
    assert authz["volumes"] == ["certs:/certs:ro"]
    assert authz["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert (args.tls_cert, args.tls_key) == ("/certs/authz.pem", "/certs/authz-key.pem")
    # The realm's clients, their secrets from the same variables and defaults as Keycloak's.
    clients = {client_id: set(scopes.split()) for client_id, scopes in args.client}
    assert clients == {
        "reporter": {"reports:read", "reports:write"},
        "reader": {"reports:read", "billing:read"},
    }
    assert args.resource == [["reader", "https://billing.example.com"]]
    env = environment_of(authz)
    for client_id in clients:
        name = devissuer_main.secret_variable(client_id)
        assert env[name] == environment_of(base["authz"])[name] == f"{client_id}-demo-secret"
    health = " ".join(authz["healthcheck"]["test"])
    assert f"{issuer}/.well-known/openid-configuration" in health
    assert f"== '{issuer}'" in health


def test_the_local_issuer_answers_the_demo_over_https_with_the_demo_certificates(
    tmp_path: Path,
) -> None:
    """The override's own command line, served on loopback with certificates made by the
    `certs` service's script; a client verifying strictly (as Python 3.13 does by default)
    trusts it, and it grants what each step of demo.sh asks for."""
    spec = importlib.util.spec_from_file_location("certs", ROOT / "deploy" / "compose" / "certs.py")
    assert spec is not None
    assert spec.loader is not None
    certs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(certs)
    certs.main(tmp_path)
    args = _devissuer_args(compose_local()["services"]["authz"])
    args.bind, args.port = "127.0.0.1", 0
    args.tls_cert, args.tls_key = str(tmp_path / "authz.pem"), str(tmp_path / "authz-key.pem")
    secrets = {"REPORTER_CLIENT_SECRET": "r-secret", "READER_CLIENT_SECRET": "b-secret"}
    trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    trust.verify_flags |= ssl.VERIFY_X509_STRICT
    with devissuer_main.build(args, secrets) as issuer, httpx.Client(verify=trust) as http:
        base = f"https://localhost:{issuer.port}{args.path}"
        metadata = http.get(f"{base}/.well-known/openid-configuration").raise_for_status().json()
        assert metadata["issuer"] == f"{args.origin}{args.path}"
        jwks = jwt.PyJWKSet.from_dict(http.get(f"{base}/jwks").raise_for_status().json())

        def token(client: str, secret: str, scope: str, resource: str | None) -> httpx.Response:
            form = {"grant_type": "client_credentials", "scope": scope}
            if resource:
                form["resource"] = resource
            return http.post(f"{base}/token", data=form, auth=(client, secret))

        def claims(response: httpx.Response, audience: str) -> dict[str, Any]:
            access = response.raise_for_status().json()["access_token"]
            key = jwks[jwt.get_unverified_header(access)["kid"]].key
            return dict(
                jwt.decode(access, key, ["RS256"], audience=audience, issuer=metadata["issuer"])
            )

        jobs, billing = args.audience, "https://billing.example.com"
        granted = claims(token("reporter", "r-secret", "reports:write", jobs), jobs)
        assert (granted["client_id"], granted["scope"]) == ("reporter", "reports:write")
        assert claims(token("reader", "b-secret", "reports:read", jobs), jobs)["scope"] == (
            "reports:read"
        )
        # demo.sh's audience_mismatch: the reader's token for the billing API.
        assert claims(token("reader", "b-secret", "billing:read", billing), billing)["aud"] == (
            billing
        )
        # demo.sh's signature_invalid fetches a token without a resource: warden's audience.
        assert claims(token("reporter", "r-secret", "reports:write", None), jobs)["aud"] == jobs
        # What the realm does not grant, it refuses too.
        assert token("reader", "b-secret", "reports:write", jobs).json()["error"] == "invalid_scope"
        assert token("reporter", "r-secret", "reports:write", billing).json()["error"] == (
            "invalid_target"
        )
        assert token("reporter", "b-secret", "reports:write", jobs).status_code == 401


def test_the_realm_grants_what_the_demo_expects() -> None:
    """Scopes the example actions require exist, carry warden's audience, and are split between
    the two clients so that the demo's reader cannot get reports:write."""
    realm = json.loads(REALM.read_text(encoding="utf-8"))
    scopes = {scope["name"]: scope for scope in realm["clientScopes"]}
    clients = {client["clientId"]: client for client in realm["clients"]}
    registry = Registry.from_modules(["worker.examples"])
    required = {scope for name in registry.names() for scope in registry.get(name).scopes}  # type: ignore[union-attr]

    def audiences(scope: str) -> set[str]:
        return {
            mapper["config"]["included.custom.audience"]
            for mapper in scopes[scope].get("protocolMappers", [])
            if mapper["protocolMapper"] == "oidc-audience-mapper"
        }

    def grantable(client: str) -> set[str]:
        c = clients[client]
        return {*c["defaultClientScopes"], *c["optionalClientScopes"]}

    for scope in required:
        assert audiences(scope) == {"${DEMO_AUDIENCE}"}, scope
        assert scopes[scope]["attributes"]["include.in.token.scope"] == "true"
    assert required <= grantable("reporter")
    assert "reports:read" in grantable("reader")
    assert "reports:write" not in grantable("reader")
    assert registry.get("reports.delete") is None, "the demo's unknown action must stay unknown"
    assert audiences("billing:read")
    assert "${DEMO_AUDIENCE}" not in audiences("billing:read")
    # RFC 9068's sub and client_id, which Keycloak leaves out unless mapped.
    assert any(m["protocolMapper"] == "oidc-sub-mapper" for m in scopes["basic"]["protocolMappers"])
    for client_id, client in clients.items():
        assert "basic" in client["defaultClientScopes"]
        assert client["serviceAccountsEnabled"]
        assert not client["publicClient"]
        (mapper,) = (
            m for m in client["protocolMappers"] if m["config"]["claim.name"] == "client_id"
        )
        assert mapper["config"]["claim.value"] == client_id
        assert client["secret"].startswith("${"), "secrets come from the environment"


# --- the demo script --------------------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    line: int
    assignments: tuple[str, ...]
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"line {self.line}: warden {' '.join(self.args[:2])}"


_OPERATORS = {"&&", "||", ";", "|", "then", "else", "do"}


def warden_invocations(path: Path) -> list[Invocation]:
    """Each ``warden ...`` the shell script runs, with the variables set for it."""
    found: list[Invocation] = []
    logical, start, heredoc_end = "", 0, None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        if not logical:
            start = number
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)", logical)
        heredoc_end = heredoc.group(1) if heredoc else None
        words = shlex.split(logical, comments=True)
        logical = ""
        segment: list[str] = []
        for word in [*words, ";"]:
            if word not in _OPERATORS:
                segment.append(word)
                continue
            assignments = []
            while segment and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", segment[0]):
                assignments.append(segment.pop(0).split("=", 1)[0])
            if segment and segment[0] == "warden":
                found.append(Invocation(start, tuple(assignments), tuple(segment[1:])))
            segment = []
    return found


DEMO_INVOCATIONS = warden_invocations(DEMO)


def test_the_demo_publishes_as_a_publisher_only() -> None:
    commands = [invocation.args[0] for invocation in DEMO_INVOCATIONS]
    assert commands.count("publish") >= 7
    # Its broker user may write to warden.jobs and nothing else: the dead letters are the
    # operator's to read (`docker compose run --rm operator warden dlq stats jobs`).
    assert set(commands) == {"publish"}


@pytest.mark.parametrize("invocation", DEMO_INVOCATIONS, ids=str)
def test_the_demo_uses_the_real_command_line(invocation: Invocation) -> None:
    """Every subcommand, option and WARDEN_* variable of the demo exists in ``warden``."""
    command: click.Command = cli
    args = list(invocation.args)
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        assert name in command.commands, f"{invocation}: no subcommand {name!r}"
        command = command.commands[name]
    options = {
        opt
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }
    used = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
    assert used <= options, f"{invocation}: unknown options {sorted(used - options)}"
    known = settings_variables() | cli_variables()
    unknown = {name for name in invocation.assignments if name.startswith(ENV_PREFIX)} - known
    assert not unknown, f"{invocation}: not read by warden: {sorted(unknown)}"


# --- the Dockerfile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's stages, each a list of instructions; global ARG defaults substituted
    into FROM."""
    instructions: list[Instruction] = []
    logical = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and logical):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            keyword, _, args = logical.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
        logical = ""
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
        elif instruction.keyword == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m.group(1)], instruction.args)
            stages.append([Instruction("FROM", image)])
        else:
            assert stages, f"{instruction.keyword} before FROM"
            stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def last(keyword: str) -> Instruction | None:
    found = [i for i in final_stage() if i.keyword == keyword]
    return found[-1] if found else None


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; a shell-form one fails."""
    try:
        argv = json.loads(args)
    except ValueError:
        argv = None
    message = f"not exec form (a JSON array of strings): {args}"
    assert isinstance(argv, list), message
    assert argv, message
    assert all(isinstance(a, str) for a in argv), message
    return argv


def console_script(name: str) -> Any:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = pyproject["project"]["scripts"][name]
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _in_build_context(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context: the last pattern that matches
    it or a directory above it decides, ``!`` letting it in."""
    included = True
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(f"{pattern}/"):
            included = line.startswith("!")
    return included


def test_the_image_builds_from_its_base_image_and_the_build_context_alone() -> None:
    """Every file a COPY takes is in the build context, and no parser directive fetches a
    build frontend from a registry (offline, only the base image can be had)."""
    first = DOCKERFILE.read_text(encoding="utf-8").splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first
    copied = [
        source
        for stage in dockerfile_stages()
        for i in stage
        if i.keyword == "COPY" and not i.args.startswith("--from")
        for source in i.args.split()[:-1]
    ]
    assert {"pyproject.toml", "worker", "schemas"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), source
        assert _in_build_context(source), f"{source} is copied but .dockerignore leaves it out"
    assert not _in_build_context("tests"), "the context holds what the image needs only"


def test_the_image_runs_the_real_cli_in_exec_form() -> None:
    """`warden run`, exec form: warden is PID 1 and gets SIGTERM itself, no shell between."""
    assert last("ENTRYPOINT") is None, "an ENTRYPOINT would break `compose run worker warden ...`"
    cmd = last("CMD")
    assert cmd is not None
    argv = exec_form(cmd.args)
    assert argv == ["warden", "run"]
    entry = console_script(argv[0])
    assert entry is cli
    assert isinstance(entry, click.Group)
    assert "run" in entry.commands
    stop = last("STOPSIGNAL")
    assert stop is None or stop.args == "SIGTERM"


def test_the_image_is_slim_non_root_and_runtime_only() -> None:
    stages = dockerfile_stages()
    image = final_stage()[0].args.split()[0]
    assert re.fullmatch(r"python:3\.1[1-9][.\d]*-slim(-\w+)?", image), image
    user = last("USER")
    assert user is not None
    uid = user.args.split(":")[0]
    assert uid.isdigit(), "a numeric uid, which runAsNonRoot can check"
    assert int(uid) != 0, "not root"
    installs = [
        i.args for stage in stages for i in stage if i.keyword == "RUN" and "pip install" in i.args
    ]
    assert installs
    for command in installs:
        assert "[test]" not in command, command
        assert " -e " not in command, command
    copies = " ".join(i.args for i in final_stage() if i.keyword == "COPY")
    assert "tests" not in copies


def test_the_image_healthcheck_is_a_python_one_liner_on_healthz() -> None:
    healthcheck = last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.args.partition("CMD ")
    argv = exec_form(command)
    assert argv[:2] == ["python", "-c"]
    assert len(argv) == 3
    code = argv[2]
    assert "\n" not in code
    assert "/healthz" in code
    timeout = re.search(r"--timeout=(\S+)", options)
    assert timeout
    assert seconds(timeout.group(1)) > 2, "longer than the request's own timeout"
    env = " ".join(i.args for i in final_stage() if i.keyword == "ENV")
    port = re.search(r"WARDEN_HTTP_PORT=(\d+)", env)
    assert port
    assert int(port.group(1)) == Settings.model_fields["http_port"].default
    expose = last("EXPOSE")
    assert expose is not None
    assert expose.args.split("/")[0] == port.group(1)


class _Probe(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _run_healthcheck(port: int) -> int:
    healthcheck = last("HEALTHCHECK")
    assert healthcheck is not None
    code = exec_form(healthcheck.args.partition("CMD ")[2])[2]
    return subprocess.run(
        [sys.executable, "-c", code],
        # A proxy that answers nothing: the probe must not go through it.
        env={"WARDEN_HTTP_PORT": str(port), "http_proxy": "http://127.0.0.1:9"},
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_image_healthcheck_asks_healthz_on_the_configured_port(
    status: int, healthy: bool
) -> None:
    """Run the health check's command against a server on WARDEN_HTTP_PORT."""

    class Handler(_Probe):
        pass

    Handler.status, Handler.paths = status, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        returncode = _run_healthcheck(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert Handler.paths == ["/healthz"]
    assert (returncode == 0) is healthy


def test_the_image_healthcheck_fails_when_nothing_listens() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
    port = server.server_address[1]
    server.server_close()
    assert _run_healthcheck(port) != 0


# --- Kubernetes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    path: Path
    index: int
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.name}#{self.index}:{self.kind}/{self.name}"


def manifests() -> list[Manifest]:
    found: list[Manifest] = []
    for path in sorted(KUBERNETES.glob("*.y*ml")):
        docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
        found.extend(Manifest(path, i, doc) for i, doc in enumerate(docs) if doc)
    return found


MANIFESTS = manifests()
KEDA = [m for m in MANIFESTS if m.doc["apiVersion"].startswith("keda.sh/")]
CORE = [m for m in MANIFESTS if m not in KEDA]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m.doc for m in MANIFESTS if m.kind == kind and name in (None, m.name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_the_manifests_are_there() -> None:
    kinds = {m.kind for m in MANIFESTS}
    assert {
        "Deployment",
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "ScaledObject",
        "TriggerAuthentication",
    } <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", CORE, ids=str)
def test_manifest_is_valid_against_the_kubernetes_api_schema(
    manifest: Manifest, version: str
) -> None:
    try:
        kubernetes_validate.validate(manifest.doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(map(str, exc.path))
        pytest.fail(f"{manifest} against Kubernetes {exc.version}: {path}: {exc.message}")


def test_the_kubernetes_schemas_do_refuse_a_wrong_manifest() -> None:
    bad = copy.deepcopy(one("Deployment"))
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


def _strict(schema: Any) -> Any:
    """Unknown fields refused, as kubernetes-validate's strict schemas and the API server's
    strict field validation do."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def keda_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a keda.sh/v1alpha1 kind, from the models generated from KEDA's CRDs."""
    models = importlib.import_module("cloudcoil.models.keda.v1alpha1")
    schema: dict[str, Any] = _strict(getattr(models, kind).model_json_schema(by_alias=True))
    return schema


@pytest.mark.parametrize("manifest", KEDA, ids=str)
def test_keda_resource_is_valid_against_the_keda_schema(manifest: Manifest) -> None:
    assert manifest.doc["apiVersion"] == "keda.sh/v1alpha1"
    schema = keda_schema(manifest.kind)
    Draft202012Validator.check_schema(schema)
    errors = list(Draft202012Validator(schema).iter_errors(manifest.doc))
    assert not errors, "\n".join(
        f"{manifest}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_the_keda_schema_does_refuse_a_wrong_scaled_object() -> None:
    schema = keda_schema("ScaledObject")
    bad = copy.deepcopy(one("ScaledObject"))
    bad["spec"]["minReplicas"] = bad["spec"].pop("minReplicaCount")
    assert list(Draft202012Validator(schema).iter_errors(bad))
    bad = copy.deepcopy(one("ScaledObject"))
    del bad["spec"]["triggers"][0]["type"]
    assert list(Draft202012Validator(schema).iter_errors(bad))


def _deployment_parts() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


def kubernetes_environment() -> dict[str, str]:
    """What a worker pod gets: the ConfigMap and Secret it names, and its own env."""
    _, _, container = _deployment_parts()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            secret = one("Secret", source["secretRef"]["name"])
            assert "data" not in secret, "stringData keeps the manifest readable and checkable"
            env.update(secret["stringData"])
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", "from-field")
    return env


def test_every_warden_variable_in_the_manifests_is_one_warden_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = kubernetes_environment()
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - settings_variables()
    assert not unknown, f"not read by warden: {sorted(unknown)}"
    settings = _load_environment(monkeypatch, env)
    assert settings.actions
    assert settings.audience


def test_credentials_are_only_in_the_secret() -> None:
    secrets = secret_variables()
    assert f"{ENV_PREFIX}BROKER_URL" in secrets
    for manifest in MANIFESTS:
        if manifest.kind != "ConfigMap":
            continue
        data = manifest.doc.get("data", {})
        leaked = secrets & set(data)
        assert not leaked, f"{manifest}: credentials belong in a Secret: {sorted(leaked)}"
        for key, value in data.items():
            assert not urlsplit(str(value)).password, f"{manifest}: {key} holds a password"
            assert not re.search(r"SECRET|PASSWORD|TOKEN", key), f"{manifest}: {key}"
    _, _, container = _deployment_parts()
    inline = {v["name"] for v in container.get("env", []) if "value" in v}
    assert not secrets & inline, "credentials are not written into the Deployment"
    assert f"{ENV_PREFIX}BROKER_URL" in kubernetes_environment()


def test_the_deployment_probes_both_endpoints_and_outlives_the_shutdown_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, pod, container = _deployment_parts()
    settings = _load_environment(monkeypatch, kubernetes_environment())
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert probe("livenessProbe") == ("/healthz", settings.http_port)
    assert probe("readinessProbe") == ("/readyz", settings.http_port)
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_seconds
    assert container.get("args", ["warden", "run"]) == ["warden", "run"]
    assert "command" not in container
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_disruption_budget_covers_the_workers() -> None:
    deployment, _, _ = _deployment_parts()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = one("PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == selector


def test_keda_scales_the_workers_on_queue_length_through_the_management_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment, _, container = _deployment_parts()
    settings = _load_environment(monkeypatch, kubernetes_environment())
    scaled = one("ScaledObject")["spec"]
    target = scaled["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    # The management API counts unacked messages too; AMQP would count only the ready ones.
    assert metadata["protocol"] == "http"
    assert metadata["mode"] == "QueueLength"
    assert metadata["queueName"] in settings.queues
    assert int(metadata["value"]) >= settings.prefetch
    # The management URL comes from a Secret the worker pods do not get.
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    (ref,) = auth["secretTargetRef"]
    assert ref["parameter"] == "host"
    host = one("Secret", ref["name"])["stringData"][ref["key"]]
    assert urlsplit(host).scheme in ("http", "https")
    mounted = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
    assert ref["name"] not in mounted
    # Enough replicas that the disruption budget can let one go.
    budget = one("PodDisruptionBudget")["spec"]
    assert scaled["minReplicaCount"] > budget.get("maxUnavailable", 1)
    assert scaled["maxReplicaCount"] >= scaled["minReplicaCount"]


# --- the stack, run for real in CI -----------------------------------------------------------


def test_ci_runs_the_local_stack_for_real_within_a_time_bound() -> None:
    """.ci/run runs deploy/stack-check.sh under a bound of at most 15 minutes; the check runs
    the local override under a project name of its own, so that it never meets a user's stack;
    its scripts parse."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'timeout "$stack_budget" deploy/stack-check.sh' in ci
    budget = re.search(r"^stack_budget=(\d+)m$", ci, re.MULTILINE)
    assert budget, "no stack_budget in .ci/run"
    assert int(budget.group(1)) <= 15
    check = (ROOT / "deploy" / "stack-check.sh").read_text(encoding="utf-8")
    assert "export COMPOSE_FILE=compose.yaml:deploy/compose/local.yaml" in check
    assert 'project="${WARDEN_STACK_PROJECT:-warden-stackcheck-$$}"' in check
    for script, shell in (
        ("deploy/stack-check.sh", "bash"),
        ("deploy/local-images.sh", "bash"),
        ("deploy/local-images/rabbitmq-entrypoint.sh", "sh"),
    ):
        parsed = subprocess.run([shell, "-n", ROOT / script], capture_output=True, text=True)
        assert parsed.returncode == 0, f"{script}: {parsed.stderr}"
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"
