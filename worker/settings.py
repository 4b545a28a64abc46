"""Configuration from ``WARDEN_*`` environment variables (``docs/configuration.md``).

One frozen :class:`Settings` is built at the edge (the CLI) and passed down. A missing or bad
value stops start-up with one line that names the variable (:func:`load_settings`).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import socket
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.errors import ConfigurationError
from worker.support.urls import HTTPS_REQUIRED, secure_url

ENV_PREFIX = "WARDEN_"

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""Every algorithm warden can verify. ``none`` and ``HS*`` are never among them."""

DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
DEFAULT_REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")

RETENTION = re.compile(r"^([1-9][0-9]*)(Y|M|D|h|m|s)$")
"""A stream's ``x-max-age``: a count and a unit."""
_UNIT_SECONDS = {"Y": 365 * 86_400, "M": 30 * 86_400, "D": 86_400, "h": 3600, "m": 60, "s": 1}


def retention_seconds(retention: str) -> int:
    """An ``x-max-age`` in seconds (a month taken as 30 days, a year as 365)."""
    match = RETENTION.fullmatch(retention)
    if match is None:
        raise ValueError(f"{retention!r} is not a count and one of Y M D h m s")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


SEAL_KEY_BYTES = 32


def seal_key_bytes(key: SecretStr) -> bytes:
    """A seal key's 256 bits from its base64url text (padding optional); ValueError, without
    the key, for anything else."""
    text = key.get_secret_value().strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise ValueError("is not base64url") from None
    if not re.fullmatch(r"[A-Za-z0-9_-]+=*", text) or len(raw) != SEAL_KEY_BYTES:
        raise ValueError(
            f"must be {SEAL_KEY_BYTES * 8} bits, base64url-encoded "
            f"(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return raw


@dataclass(frozen=True, slots=True)
class Profile:
    """How one kind of authorization server shapes its access tokens (``docs/profiles/``).

    Every field but ``has_aud`` is the default of the ``WARDEN_ISSUERS`` field of that name.
    """

    accept_typ: tuple[str | None, ...]
    """``typ`` values accepted besides RFC 9068's; None accepts a token with no ``typ``."""
    client_id_claims: tuple[str, ...]
    scope_claims: tuple[str, ...]
    token_id_claims: tuple[str, ...]
    required_claims: tuple[str, ...]
    claim_values: tuple[tuple[str, str], ...] = ()
    has_aud: bool = True
    """False where the vendor's access tokens carry no ``aud``: ``clients`` replaces the
    audience check."""


PROFILES: dict[str, Profile] = {
    "rfc9068": Profile((), ("client_id",), ("scope", "scp"), ("jti",), DEFAULT_REQUIRED_CLAIMS),
    "keycloak": Profile(
        ("JWT",),
        ("azp", "client_id"),
        ("scope",),
        ("jti",),
        ("iss", "exp", "aud", "sub", "azp", "iat", "jti"),
        (("typ", "Bearer"),),
    ),
    "entra": Profile(
        ("JWT",),
        ("azp", "appid"),
        ("scp", "roles"),
        ("uti", "jti"),
        ("iss", "exp", "aud", "sub", "azp", "iat", "uti"),
    ),
    "auth0": Profile(
        ("JWT",),
        ("azp", "client_id"),
        ("scope", "permissions"),
        ("jti",),
        ("iss", "exp", "aud", "sub", "azp", "iat"),
    ),
    "okta": Profile(
        (None,), ("cid",), ("scp",), ("jti",), ("iss", "exp", "aud", "sub", "cid", "iat", "jti")
    ),
    "cognito": Profile(
        (None,),
        ("client_id",),
        ("scope",),
        ("jti",),
        ("iss", "exp", "sub", "client_id", "iat", "jti", "token_use"),
        (("token_use", "access"),),
        has_aud=False,
    ),
}
"""The issuer profiles by name; ``rfc9068`` is the default."""

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,200}$")


def _split(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


BROKER_SCHEMES = ("amqp", "amqps")
DEFAULT_HEARTBEAT_SECONDS = 10


def broker_addresses(value: str) -> tuple[str, ...]:
    """The URLs of a comma-separated ``WARDEN_BROKER_URL``, each a full ``amqp://`` or
    ``amqps://`` URL of one node; raise ValueError naming the entry by its place, never by its
    text (which holds a password)."""
    entries = [entry.strip() for entry in value.split(",")]
    users = set()
    for place, entry in enumerate(entries, 1):
        where = f"address {place} of {len(entries)}" if len(entries) > 1 else "the address"
        if not entry:
            raise ValueError(f"{where} is empty (a list is comma-separated full URLs)")
        parts = urlsplit(entry)
        if parts.scheme not in BROKER_SCHEMES:
            raise ValueError(
                f"{where} is not an amqp:// or amqps:// URL (a list is comma-separated full "
                "URLs, not JSON)"
            )
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked for it
        except ValueError:
            raise ValueError(f"{where} has a port that is not a number from 0 to 65535") from None
        if not parts.hostname:
            raise ValueError(f"{where} names no host")
        users.add(unquote(parts.username or "guest"))
    if len(users) > 1:
        raise ValueError(
            "every address must log in as the same user: it is the user_id warden writes on "
            "what it publishes and believes by default"
        )
    return tuple(entries)


def _check_algorithms(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if name.lower() == "none" or name.upper().startswith("HS"):
            raise ValueError(f"{name!r} is never accepted: only asymmetric algorithms are")
        if name not in ASYMMETRIC_ALGORITHMS:
            known = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"unknown algorithm {name!r} (known: {known})")
    if not value:
        raise ValueError("at least one algorithm is needed")
    return value


def _check_secure_url(value: AnyHttpUrl | None) -> AnyHttpUrl | None:
    if value is not None and not secure_url(str(value)):
        raise ValueError(HTTPS_REQUIRED)
    return value


NonEmpty = Annotated[str, Field(min_length=1)]
ClaimName = Annotated[str, Field(min_length=1, max_length=256)]
ClaimNames = Annotated[tuple[ClaimName, ...], Field(min_length=1)]


class IssuerSettings(BaseModel):
    """One trusted authorization server: a profile (``PROFILES``), and fields over it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: Annotated[str, Field(min_length=1)]
    profile: Literal["rfc9068", "keycloak", "entra", "auth0", "okta", "cognito"] = "rfc9068"
    jwks_url: AnyHttpUrl | None = None
    audience: str | None = None
    clients: Annotated[tuple[NonEmpty, ...], Field(min_length=1)] | None = None
    """The client ids allowed to call warden, where the issuer's tokens carry no ``aud``."""
    algorithms: tuple[str, ...] | None = None
    accept_typ: tuple[str | None, ...] | None = None
    client_id_claims: ClaimNames | None = None
    scope_claims: ClaimNames | None = None
    token_id_claims: ClaimNames | None = None
    required_claims: tuple[ClaimName, ...] | None = None
    claim_values: dict[ClaimName, str] | None = None
    introspection_endpoint: AnyHttpUrl | None = None
    opaque_prefix: Annotated[str, Field(min_length=1, pattern=r"^[!-~]+$")] | None = None
    """Opaque tokens that start with it belong to this issuer (and go to its introspection)."""

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else _check_algorithms(value)

    @field_validator("jwks_url", "introspection_endpoint")
    @classmethod
    def _secure(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        return _check_secure_url(value)

    @field_validator("required_claims")
    @classmethod
    def _required(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and "exp" not in value:
            raise ValueError("must name exp: a token that never expires is never accepted")
        return value

    @model_validator(mode="after")
    def _audience_or_clients(self) -> Self:
        if PROFILES[self.profile].has_aud:
            if self.clients is not None:
                raise ValueError(
                    f"clients: {self.profile} tokens carry aud; warden checks the audience"
                )
        elif self.clients is None:
            raise ValueError(
                f"clients is required: {self.profile} access tokens carry no aud, so the client "
                "ids allowed to call warden must be listed"
            )
        elif self.audience is not None:
            raise ValueError(f"audience: {self.profile} access tokens carry no aud; list clients")
        return self

    def resolved(self, audience: str | None, algorithms: tuple[str, ...]) -> IssuerSettings:
        """This entry with every field its profile presets filled in."""
        preset = PROFILES[self.profile]

        def given(value: Any, default: Any) -> Any:
            return default if value is None else value

        return self.model_copy(
            update={
                "audience": (self.audience or audience) if preset.has_aud else None,
                "algorithms": self.algorithms or algorithms,
                "accept_typ": given(self.accept_typ, preset.accept_typ),
                "client_id_claims": given(self.client_id_claims, preset.client_id_claims),
                "scope_claims": given(self.scope_claims, preset.scope_claims),
                "token_id_claims": given(self.token_id_claims, preset.token_id_claims),
                "required_claims": given(self.required_claims, preset.required_claims),
                "claim_values": given(self.claim_values, dict(preset.claim_values)),
            }
        )


class BrokerSettings(BaseSettings):
    """What a command that only talks to the broker needs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    broker_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/")
    """One node's URL, or several nodes' (of one cluster), comma-separated: warden connects to
    the first that answers and moves on to the next when its node is lost."""
    heartbeat_seconds: Annotated[int, Field(ge=1, le=600)] = DEFAULT_HEARTBEAT_SECONDS
    """The AMQP heartbeat asked of the broker: a node that stops answering (frozen, or cut off)
    is left once no frame came from it for twice this plus 2 s (``docs/cluster.md``)."""
    trusted_users: Annotated[tuple[str, ...], NoDecode] = ()
    """Broker users whose letters, copies and revocation events warden believes (default: the
    user of ``WARDEN_BROKER_URL``)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_allowed_level: Literal["DEBUG", "INFO"] = "DEBUG"
    revocation_retention: Annotated[str, Field(pattern=RETENTION.pattern)] = "24h"
    max_token_lifetime_seconds: Annotated[int, Field(ge=1)] = 43_200
    """Tokens that live longer (``exp - iat``) are denied; a revocation lasts this long."""
    leeway_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    queued_for_seconds: Annotated[int, Field(ge=0)] = 0
    """How long a job may wait and still run on a token that expired meanwhile, for actions
    that name no ``queued_for`` of their own (``docs/checks.md``)."""
    seal_key: SecretStr | None = None
    """256 bits, base64url: seals the token of a job refused only for time into its dead
    letter, so that a replay runs it as its publisher (``docs/dead-letters.md``)."""
    queues: Annotated[tuple[str, ...], NoDecode] = ("jobs",)
    broker_handshake_timeout_seconds: Annotated[float, Field(gt=0)] | None = None
    """How long a connection may wait for one address to complete the AMQP handshake; unset,
    the heartbeat, at least 5 s."""

    @field_validator("queues", "trusted_users", mode="before")
    @classmethod
    def _queue_list(cls, value: object) -> object:
        return _split(value)

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: SecretStr) -> SecretStr:
        broker_addresses(value.get_secret_value())
        return value

    def broker_urls(self) -> tuple[str, ...]:
        """Every broker address, in the order they are tried."""
        return broker_addresses(self.broker_url.get_secret_value())

    @field_validator("seal_key")
    @classmethod
    def _seal_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            seal_key_bytes(value)
        return value

    @model_validator(mode="after")
    def _revocations_hold(self) -> Self:
        self.check_retention(self.queued_for_seconds, "WARDEN_QUEUED_FOR_SECONDS")
        return self

    def check_retention(self, allowance: float, named: str) -> None:
        """Raise ValueError unless the revocation stream keeps an event for as long as a token
        it names can be accepted: its longest lifetime, the leeway and ``allowance`` (the
        largest queueing allowance, which ``named`` sets)."""
        needed = self.revocation_lifetime() + allowance
        if retention_seconds(self.revocation_retention) < needed:
            plus = f" plus {named}" if allowance else ""
            raise ValueError(
                f"WARDEN_REVOCATION_RETENTION ({self.revocation_retention}) is shorter than "
                f"WARDEN_MAX_TOKEN_LIFETIME_SECONDS plus WARDEN_LEEWAY_SECONDS{plus} "
                f"({needed:.0f}s): a revocation could leave the stream while its token still works"
            )

    def seal_key_bytes(self) -> bytes | None:
        """``WARDEN_SEAL_KEY`` decoded, or None where it is not set."""
        return None if self.seal_key is None else seal_key_bytes(self.seal_key)

    def revocation_lifetime(self) -> int:
        """How long a revocation must hold to outlast every token it can name: the longest token
        lifetime, plus the leeway by which an expired token is still accepted."""
        return self.max_token_lifetime_seconds + self.leeway_seconds

    def revocation_window(self, allowance: float = 0) -> int:
        """How far back an event can still deny a token: a cut-off is never later than its
        event, a token lives at most ``max_token_lifetime_seconds`` and is accepted up to the
        leeway past its ``exp``, or up to ``allowance`` (the largest queueing allowance) past it
        for a job that waited; one more leeway allows for the broker's clock. The feed starts
        reading the stream that long ago."""
        return self.max_token_lifetime_seconds + 2 * self.leeway_seconds + math.ceil(allowance)

    def broker_user(self) -> str:
        """The user warden connects as (what RabbitMQ puts in the ``user_id`` it validates)."""
        return unquote(urlsplit(self.broker_urls()[0]).username or "guest")

    def trusted(self) -> frozenset[str]:
        """The broker users whose ``x-warden-*`` headers, ``x-death`` and revocation events are
        believed: ``WARDEN_TRUSTED_USERS``, or else this connection's own user."""
        return frozenset(self.trusted_users or (self.broker_user(),))

    @field_validator("queues")
    @classmethod
    def _queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one queue is needed")
        for name in value:
            if not _QUEUE_NAME.fullmatch(name) or name.endswith(".dlq"):
                raise ValueError(
                    f"{name!r} is not a usable queue name (letters, digits, _ . : -, "
                    "not starting with a dot, not ending in .dlq)"
                )
        return value

    @field_validator("log_level", "log_allowed_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Settings(BrokerSettings):
    """Everything a worker needs to know, read once at start-up."""

    actions: Annotated[tuple[str, ...], NoDecode] = ()
    issuer: str | None = None
    jwks_url: AnyHttpUrl | None = None
    audience: str | None = None
    issuers: tuple[IssuerSettings, ...] = ()
    algorithms: Annotated[tuple[str, ...], NoDecode] = DEFAULT_ALGORITHMS
    prefetch: Annotated[int, Field(ge=1, le=65535)] = 64
    ack_linger_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0
    """How long a settled message's ack may wait to leave with others (0: at once)."""
    http_port: Annotated[int, Field(ge=0, le=65535)] = 9100
    """0 picks a free port (the worker logs which)."""
    blocked_max_waiting: Annotated[int, Field(ge=0)] = 1000
    """Deliveries held unacked, at most, waiting for a broker that blocks publishing (a
    resource alarm) to take their dead letter or copy; past it, no more are taken."""
    max_token_bytes: Annotated[int, Field(ge=256, le=65536)] = 8192
    token_cache_size: Annotated[int, Field(ge=0)] = 10_000
    """Verified tokens remembered (0: verify every job's token in full)."""
    delivery_limit: Annotated[int, Field(ge=1)] = 5
    max_attempts: Annotated[int, Field(ge=1)] = 5
    jwks_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    jwks_cooldown_seconds: Annotated[float, Field(ge=0)] = 30.0
    jwks_refresh_seconds: Annotated[float, Field(gt=0)] = 300.0
    revocation_max_staleness: Annotated[float, Field(gt=0)] = 30.0
    revocation_max_entries: Annotated[int, Field(ge=1)] = 1_000_000
    """Revocation entries held at most; a feed that would hold more stops decisions."""
    introspection_client_id: str | None = None
    introspection_client_secret: SecretStr | None = None
    introspection_endpoint: AnyHttpUrl | None = None
    introspection_cache_seconds: Annotated[float, Field(ge=0)] = 60.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30.0
    action_threads: Annotated[int, Field(ge=1, le=256)] = 4
    """Threads that run blocking (plain ``def``) actions; more such jobs wait for a free one."""
    retry_base_seconds: Annotated[float, Field(ge=0.01)] = 1.0
    retry_max_seconds: Annotated[float, Field(gt=0)] = 300.0
    defer_max_seconds: Annotated[float, Field(gt=0)] = 30.0
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    @field_validator("actions", "algorithms", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_algorithms(value)

    @field_validator("jwks_url", "introspection_endpoint")
    @classmethod
    def _secure(cls, value: AnyHttpUrl | None) -> AnyHttpUrl | None:
        return _check_secure_url(value)

    @model_validator(mode="after")
    def _issuers_and_audience(self) -> Self:
        if not self.issuer and not self.issuers:
            raise ValueError("WARDEN_ISSUER is required unless WARDEN_ISSUERS is set")
        if (self.introspection_client_id is None) != (self.introspection_client_secret is None):
            raise ValueError(
                "WARDEN_INTROSPECTION_CLIENT_ID and WARDEN_INTROSPECTION_CLIENT_SECRET go together"
            )
        if self.audience is None and (
            not self.issuers
            or any(i.audience is None and PROFILES[i.profile].has_aud for i in self.issuers)
        ):
            raise ValueError("WARDEN_AUDIENCE is required")
        prefixes = sorted(i.opaque_prefix for i in self.issuers if i.opaque_prefix)
        for shorter, longer in pairwise(prefixes):
            if longer.startswith(shorter):
                raise ValueError(
                    f"WARDEN_ISSUERS: opaque_prefix {shorter!r} is the start of {longer!r}: "
                    "an opaque token must belong to one issuer"
                )
        return self

    def retry_tiers(self) -> tuple[int, ...]:
        """TTLs in ms of the retry queues: the base doubled until it covers the longest wait."""
        longest = max(self.retry_max_seconds, self.defer_max_seconds)
        tiers = [round(self.retry_base_seconds * 1000)]
        while tiers[-1] < longest * 1000:
            tiers.append(tiers[-1] * 2)
        return tuple(tiers)

    def trusted_issuers(self) -> tuple[IssuerSettings, ...]:
        """Every trusted issuer, with the global audience and algorithms filled in."""
        entries = list(self.issuers)
        if self.issuer:
            entries.insert(
                0,
                IssuerSettings(
                    issuer=self.issuer,
                    jwks_url=self.jwks_url,
                    introspection_endpoint=self.introspection_endpoint,
                ),
            )
        seen: set[str] = set()
        for entry in entries:
            if entry.issuer in seen:
                raise ConfigurationError(f"WARDEN_ISSUERS: issuer {entry.issuer!r} is listed twice")
            seen.add(entry.issuer)
        return tuple(entry.resolved(self.audience, self.algorithms) for entry in entries)


class TracingSettings(BaseSettings):
    """The standard OpenTelemetry variables that say whether ``warden run`` makes spans, and
    where they go; the SDK and the exporters read the rest of ``OTEL_*`` themselves."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", frozen=True, extra="ignore")

    sdk_disabled: bool = False
    traces_exporter: Annotated[tuple[str, ...], NoDecode] = ()
    exporter_otlp_endpoint: str | None = None
    exporter_otlp_traces_endpoint: str | None = None

    @field_validator("traces_exporter", mode="before")
    @classmethod
    def _exporter_list(cls, value: object) -> object:
        return _split(value)

    def exporters(self) -> tuple[str, ...]:
        """The span exporters asked for: ``OTEL_TRACES_EXPORTER``, or ``otlp`` when only an OTLP
        endpoint is set; none when neither is, or ``OTEL_SDK_DISABLED`` is true."""
        if self.sdk_disabled:
            return ()
        if self.traces_exporter:
            return tuple(name for name in self.traces_exporter if name != "none")
        if self.exporter_otlp_endpoint or self.exporter_otlp_traces_endpoint:
            return ("otlp",)
        return ()


def _variable(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "configuration"
    name = f"{ENV_PREFIX}{str(loc[0]).upper()}"
    rest = ".".join(str(part) for part in loc[1:])
    return f"{name}[{rest}]" if rest else name


def describe(error: ValidationError) -> str:
    """One line naming each bad variable and why, with no value that could be a secret."""
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        loc: tuple[int | str, ...] = item["loc"]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required"
        parts.append(message if not loc else f"{_variable(loc)}: {message}")
    return "; ".join(parts)


S = TypeVar("S", bound=BrokerSettings)


def load_settings(kind: type[S] = Settings, **overrides: Any) -> S:  # type: ignore[assignment]
    """Read the environment; raise :class:`ConfigurationError` naming what is wrong."""
    try:
        settings = kind(**overrides)
        if isinstance(settings, Settings):
            settings.trusted_issuers()
    except ValidationError as exc:
        raise ConfigurationError(describe(exc)) from None
    return settings
