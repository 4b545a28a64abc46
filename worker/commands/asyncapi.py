"""``warden asyncapi``: an AsyncAPI 3.0 document of the worker as configured.

Each work queue (``WARDEN_QUEUES``) is a channel, the routing key of ``warden.jobs`` that leads
to it, whose messages are the registered actions (``WARDEN_ACTIONS``), each with its payload
schema (its pydantic model's, where it has one), the ``authorization`` header, and an operation
secured by OAuth 2.0 with the scopes that action needs, for each trusted issuer (its token
endpoint read from its metadata). The dead letters are a channel of ``warden.dlx`` and one per
``<queue>.dlq``, their ``x-warden-denial`` header described by ``schemas/denial.schema.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import httpx
from pydantic.json_schema import models_json_schema

from worker import errors, names
from worker.auth.keys import fetch_metadata
from worker.commands.common import fail, run_or_exit, settings_or_exit
from worker.errors import ConfigurationError
from worker.pipeline.actions import ActionSpec, AnyActor, Registry
from worker.settings import Settings

ASYNCAPI = "3.0.0"
AMQP_BINDING = "0.3.0"
SCHEMAS = "#/components/schemas/"
DENIAL = "warden.Denial"
DEAD_LETTER = "warden.deadLetter"
_COMPONENT_KEY = re.compile(r"[^\w.\-]")
"""What AsyncAPI does not allow in the key of a component (``^[\\w\\d\\.\\-_]+$``)."""

JOB_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": [names.HEADER_AUTHORIZATION],
    "properties": {
        names.HEADER_AUTHORIZATION: {
            "type": "string",
            "description": "Bearer <access token> (RFC 6750 section 2.1): a JWT access token "
            "(RFC 9068), or an opaque one where the issuer offers introspection.",
            "pattern": "^[Bb][Ee][Aa][Rr][Ee][Rr] +[A-Za-z0-9._~+/-]+=* *$",
        },
        names.HEADER_TRACEPARENT: {
            "type": "string",
            "description": "W3C Trace Context of the publisher's span; the job's span links it.",
        },
        names.HEADER_PROOF: {
            "type": "string",
            "description": "Proof of possession, required when the token is sender-constrained "
            "(cnf.jkt): docs/proof-of-possession.md.",
        },
    },
}


def pointer(*parts: str) -> str:
    """A JSON Pointer fragment to ``parts`` of this document (RFC 6901 escapes)."""
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _key(name: str, taken: Iterable[str]) -> str:
    """``name`` as a component key, made unique among ``taken``."""
    key = base = _COMPONENT_KEY.sub("_", name)
    number = 1
    while key in taken:
        number += 1
        key = f"{base}_{number}"
    return key


def _rehomed(schema: Any, defs: str) -> Any:
    """``schema`` with ``#/$defs/X`` references pointing at ``<defs>X``, and pydantic's
    OpenAPI-style ``discriminator`` object as the property name AsyncAPI's Schema Object takes."""
    if isinstance(schema, list):
        return [_rehomed(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _rehomed(value, defs) for key, value in schema.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        out["$ref"] = defs + ref.removeprefix("#/$defs/")
    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict):
        out["discriminator"] = discriminator["propertyName"]
    return out


def denial_schemas() -> dict[str, Any]:
    """``schemas/denial.schema.json`` as components: the record, and each of its ``$defs``."""
    text = resources.files("worker.deadletters").joinpath("denial.schema.json").read_text("utf-8")
    schema = json.loads(text)
    defs = schema.pop("$defs", {})
    for keyword in ("$schema", "$id"):
        schema.pop(keyword, None)
    prefix = f"{SCHEMAS}{DENIAL}."
    found = {DENIAL: _rehomed(schema, prefix)}
    found.update({f"{DENIAL}.{name}": _rehomed(value, prefix) for name, value in defs.items()})
    return found


def _server(broker_url: str) -> dict[str, Any]:
    """The broker, without its credentials."""
    parts = urlsplit(broker_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    server: dict[str, Any] = {
        "host": f"{host}:{parts.port}" if parts.port else host,
        "protocol": "amqps" if parts.scheme == "amqps" else "amqp",
        "protocolVersion": "0.9.1",
        "description": "The RabbitMQ that holds the work queues and the dead letters.",
    }
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else ""
    if vhost:
        server["pathname"] = "/" + vhost
    return server


def _security(
    token_urls: Mapping[str, str], specs: Iterable[ActionSpec], wanted: Iterable[str]
) -> list[dict[str, Any]]:
    """One OAuth 2.0 scheme per trusted issuer, any of which will do, asking for ``wanted``."""
    needed: dict[str, list[str]] = {}
    for spec in specs:
        for scope in spec.scopes:
            needed.setdefault(scope, []).append(spec.name)
    available = {scope: "needed by " + ", ".join(needed[scope]) for scope in sorted(needed)}
    return [
        {
            "type": "oauth2",
            "description": f"An access token of {issuer} for this resource server's audience.",
            "flows": {"clientCredentials": {"tokenUrl": url, "availableScopes": available}},
            "scopes": sorted(wanted),
        }
        for issuer, url in token_urls.items()
    ]


def _notes(spec: ActionSpec) -> str:
    notes = [f"Needs the scopes {', '.join(sorted(spec.scopes)) or '(none)'}."]
    if isinstance(spec.actors, AnyActor):
        notes.append("Any actor (act) may act for the subject.")
    elif isinstance(spec.actors, frozenset):
        if spec.actors:
            names = ", ".join(sorted(spec.actors))
            notes.append(f"Actors (act) {names} of the token's own issuer may act for the subject.")
    else:
        per_issuer = "; ".join(
            f"{', '.join(sorted(actors))} of {issuer}"
            for issuer, actors in sorted(spec.actors.items())
        )
        notes.append(f"Actors (act) {per_issuer} may act for the subject.")
    if spec.introspect:
        notes.append("The token is introspected (RFC 7662) before every run.")
    if spec.model is not None:
        notes.append("A payload that does not fit its schema is dead-lettered payload_invalid.")
    return " ".join(notes)


def document(
    settings: Settings, registry: Registry, token_urls: Mapping[str, str]
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of a worker with ``settings`` and ``registry``; ``token_urls``
    has the token endpoint of each trusted issuer."""
    specs = registry.specs()
    models = sorted({s.model for s in specs if s.model is not None}, key=lambda m: m.__name__)
    refs, top = models_json_schema(
        [(model, "validation") for model in models], ref_template=SCHEMAS + "{model}"
    )
    schemas = {name: _rehomed(value, SCHEMAS) for name, value in top.get("$defs", {}).items()}
    schemas.update(denial_schemas())
    reasons = [cls.reason for cls in errors.DENIALS]

    messages: dict[str, Any] = {}
    message_keys: dict[str, str] = {}
    for spec in specs:
        payload = (
            refs[(spec.model, "validation")]
            if spec.model is not None
            else {"type": "object", "description": "Handed to the action as it is."}
        )
        key = message_keys[spec.name] = _key(spec.name, messages)
        messages[key] = {
            "name": spec.name,
            "title": spec.name,
            "summary": (spec.handler.__doc__ or spec.name).strip().splitlines()[0],
            "contentType": "application/json",
            "description": "A job: a persistent message with a message_id (the idempotency "
            "key, 1 to 128 characters) and the access token in its authorization header. "
            + _notes(spec),
            "headers": JOB_HEADERS,
            "payload": {
                "type": "object",
                "required": ["action", "payload"],
                "additionalProperties": False,
                "properties": {"action": {"const": spec.name}, "payload": payload},
            },
        }
    messages[DEAD_LETTER] = {
        "name": "dead letter",
        "title": "A refused job",
        "summary": "The job's body byte for byte, its headers without authorization, and why.",
        "headers": {
            "type": "object",
            "required": [names.HEADER_REASON, names.HEADER_DENIAL],
            "properties": {
                names.HEADER_REASON: {"type": "string", "enum": reasons},
                names.HEADER_DENIAL: {"$ref": SCHEMAS + DENIAL},
            },
        },
        "payload": {"description": "The refused message's body, as it was published."},
    }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for queue in settings.queues:
        channels[queue] = {
            "address": queue,
            "title": f"work queue {queue}",
            "description": f"Jobs for the quorum queue {queue}: published to the direct exchange "
            f"{names.JOBS_EXCHANGE} with routing key {queue}, with confirms and mandatory.",
            "messages": {
                spec.name: {"$ref": pointer("components", "messages", message_keys[spec.name])}
                for spec in specs
            },
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": names.JOBS_EXCHANGE, "type": "direct", "durable": True},
                    "bindingVersion": AMQP_BINDING,
                }
            },
        }
        for spec in specs:
            operations[f"{queue}.{spec.name}"] = {
                "action": "receive",
                "channel": {"$ref": pointer("channels", queue)},
                "title": f"run {spec.name}",
                "summary": _notes(spec),
                "messages": [{"$ref": pointer("channels", queue, "messages", spec.name)}],
                "security": _security(token_urls, specs, spec.scopes),
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            }
        dlq = names.dead_letter_queue(queue)
        channels[dlq] = {
            "address": dlq,
            "title": f"dead letters of {queue}",
            "description": f"Bound to {names.DEAD_LETTER_EXCHANGE} with "
            f"{names.dead_letter_binding(queue)}: `warden dlq` reads, replays and purges them.",
            "messages": {"deadLetter": {"$ref": pointer("components", "messages", DEAD_LETTER)}},
            "bindings": {"amqp": _queue_binding(dlq)},
        }
    channels[names.DEAD_LETTER_EXCHANGE] = {
        "address": "{reason}.{queue}",
        "title": "dead letters",
        "description": "Every refusal, routed by its reason and its work queue.",
        "parameters": {
            "reason": {"enum": reasons, "description": "The reason code (docs/checks.md)."},
            "queue": {"enum": list(settings.queues), "description": "The work queue."},
        },
        "messages": {"deadLetter": {"$ref": pointer("components", "messages", DEAD_LETTER)}},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"name": names.DEAD_LETTER_EXCHANGE, "type": "topic", "durable": True},
                "bindingVersion": AMQP_BINDING,
            }
        },
    }
    operations["dead-letter"] = {
        "action": "send",
        "channel": {"$ref": pointer("channels", names.DEAD_LETTER_EXCHANGE)},
        "title": "dead-letter a refused job",
        "summary": "Published with a confirm before the job is acked.",
        "messages": [
            {"$ref": pointer("channels", names.DEAD_LETTER_EXCHANGE, "messages", "deadLetter")}
        ],
    }
    return {
        "asyncapi": ASYNCAPI,
        "info": {
            "title": "warden",
            "version": version("warden"),
            "description": "Jobs whose access token warden verifies before it runs their "
            f"action (actions of {', '.join(settings.actions)}); what it refuses, it "
            "dead-letters.",
        },
        "defaultContentType": "application/json",
        "servers": {"broker": _server(settings.broker_urls()[0])},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def _queue_binding(queue: str) -> dict[str, Any]:
    return {
        "is": "queue",
        "queue": {"name": queue, "durable": True, "exclusive": False, "autoDelete": False},
        "bindingVersion": AMQP_BINDING,
    }


async def token_endpoints(settings: Settings) -> dict[str, str]:
    """Each trusted issuer's token endpoint, from its RFC 8414 (or OpenID) metadata."""
    found: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=settings.jwks_timeout_seconds) as http:
        for entry in settings.trusted_issuers():
            metadata = await fetch_metadata(http, entry.issuer)
            url = metadata.get("token_endpoint")
            if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
                raise errors.FetchError(f"the metadata of {entry.issuer} has no token_endpoint")
            found[entry.issuer] = url
    return found


@click.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the document to this file rather than to stdout.",
)
def asyncapi(output: Path | None) -> None:
    """Write an AsyncAPI 3.0 document (JSON) of the worker as configured: its queues, actions,
    issuers and dead letters."""
    settings = settings_or_exit(Settings)
    try:
        if not settings.actions:
            raise ConfigurationError("WARDEN_ACTIONS is required: the actions are the messages")
        registry = Registry.from_modules(settings.actions)
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")
    token_urls = run_or_exit(token_endpoints(settings), "reading the issuers' metadata")
    text = json.dumps(document(settings, registry, token_urls), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
