"""``warden asyncapi``: the AsyncAPI 3.0 document of the worker as configured, valid against the
AsyncAPI Initiative's JSON Schema of AsyncAPI 3.0.0 (``tests/support/asyncapi/README.md``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

from tests.support.issuer import Issuer, JwksServer
from tests.test_operating import warden
from worker import errors

SCHEMA = Path(__file__).parent / "support" / "asyncapi" / "3.0.0.json"
SCHEMA_SHA256 = "abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f"
"""``schemas/3.0.0-without-$id.json`` of ``@asyncapi/specs`` 6.11.1, unchanged."""
PASSWORD = "pa55-w0rd-in-the-url"


def asyncapi_validator() -> Draft7Validator:
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "the vendored schema was changed"
    schema = json.loads(raw)
    assert schema["properties"]["asyncapi"]["const"] == "3.0.0"
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local reference (a JSON Pointer fragment) through ``document``."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


async def test_warden_asyncapi_writes_a_valid_asyncapi_3_document_of_the_worker(
    jwks: JwksServer, issuer: Issuer, tmp_path: Path
) -> None:
    env = {
        "WARDEN_ISSUER": issuer.url,
        "WARDEN_JWKS_URL": jwks.jwks_url(issuer),
        "WARDEN_AUDIENCE": issuer.audience,
        "WARDEN_ACTIONS": "tests.support.actions,tests.support.user_actions",
        "WARDEN_QUEUES": "jobs,billing:eu",
        "WARDEN_BROKER_URL": f"amqps://warden:{PASSWORD}@rabbit.example:5671/prod",
    }
    path = tmp_path / "asyncapi.json"
    code, out, err = await warden("asyncapi", "--output", str(path), env=env)
    assert code == 0, err
    text = path.read_text(encoding="utf-8")
    assert PASSWORD not in text + out + err
    document = json.loads(text)

    validator = asyncapi_validator()
    problems = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not problems, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in problems)
    assert not validator.is_valid({**document, "asyncapi": "2.6.0"}), "the validator can refuse"
    for ref in refs(document):
        resolve(document, ref)  # every reference leads somewhere in the document

    assert document["servers"]["broker"] == {
        "host": "rabbit.example:5671",
        "protocol": "amqps",
        "protocolVersion": "0.9.1",
        "pathname": "/prod",
        "description": document["servers"]["broker"]["description"],
    }
    channels, operations = document["channels"], document["operations"]
    assert {"jobs", "billing:eu", "jobs.dlq", "billing:eu.dlq", "warden.dlx"} == set(channels)
    assert "orders:cancel" in channels["billing:eu"]["messages"]
    jobs = channels["billing:eu"]["bindings"]["amqp"]
    assert (jobs["is"], jobs["exchange"]["name"]) == ("routingKey", "warden.jobs")
    assert channels["billing:eu"]["address"] == "billing:eu", "the routing key: the queue's name"

    # A typed action: its message's payload is its model's schema.
    place = resolve(document, channels["jobs"]["messages"]["orders.place"]["$ref"])
    assert place["headers"]["required"] == ["authorization"]
    body = place["payload"]
    assert body["properties"]["action"] == {"const": "orders.place"}
    order = resolve(document, body["properties"]["payload"]["$ref"])
    assert order["required"] == ["sku", "quantity", "customer"]
    assert order["properties"]["quantity"]["exclusiveMinimum"] == 0
    customer = resolve(document, order["properties"]["customer"]["$ref"])
    assert customer["required"] == ["email"]
    cancellation = resolve(document, "#/components/schemas/Cancellation")
    [union, _] = cancellation["properties"]["refund"]["anyOf"]
    assert union["discriminator"] == "kind", "AsyncAPI's discriminator is a property name"
    untyped = resolve(document, channels["jobs"]["messages"]["reports.read"]["$ref"])
    assert untyped["payload"]["properties"]["payload"]["type"] == "object"

    # Each action's operation asks for its own scopes, from the issuer's token endpoint.
    cancel = operations["jobs.orders:cancel"]
    assert cancel["action"] == "receive"
    assert resolve(document, cancel["channel"]["$ref"]) is channels["jobs"]
    [scheme] = cancel["security"]
    assert scheme["type"] == "oauth2"
    assert scheme["scopes"] == ["orders:cancel", "orders:write"]
    flow = scheme["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == f"{issuer.url}/token"
    assert {"orders:write", "reports:read", "admin"} <= set(flow["availableScopes"])
    assert operations["jobs.reports.read"]["security"][0]["scopes"] == ["reports:read"]
    assert "Any actor (act) may act" in operations["jobs.reports.any_actor"]["summary"]

    # The dead letters, with the denial schema.
    dead_letter = resolve(document, channels["warden.dlx"]["messages"]["deadLetter"]["$ref"])
    reasons = dead_letter["headers"]["properties"]["x-warden-reason"]["enum"]
    assert reasons == [cls.reason for cls in errors.DENIALS]
    assert "payload_invalid" in reasons
    denial = resolve(document, dead_letter["headers"]["properties"]["x-warden-denial"]["$ref"])
    assert denial["properties"]["reason"]["enum"] == reasons
    assert resolve(document, denial["properties"]["token"]["oneOf"][1]["$ref"])["required"] == [
        "fingerprint",
        "verified",
    ]
    assert operations["dead-letter"]["action"] == "send"

    code, out, _ = await warden("asyncapi", env=env)
    assert code == 0
    assert json.loads(out) == document, "stdout without --output"


async def test_warden_asyncapi_says_which_issuer_it_cannot_read(
    jwks: JwksServer, issuer: Issuer
) -> None:
    jwks.down = True
    env = {
        "WARDEN_ISSUER": issuer.url,
        "WARDEN_AUDIENCE": issuer.audience,
        "WARDEN_ACTIONS": "tests.support.actions",
    }
    code, out, err = await warden("asyncapi", env=env)
    assert code == 2
    assert not out
    assert issuer.url in err
