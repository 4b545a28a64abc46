"""Actions: the protected work a job asks for, registered with :func:`action` (``docs/actions.md``).

The decorator checks what it can at import (a function, a ``scopes`` argument, a valid name, a
delegation policy, the payload model its annotations name); :meth:`Registry.from_modules`
imports the modules ``WARDEN_ACTIONS`` names at start-up and refuses duplicate names there, so
a bad registry never meets its first message.

A coroutine function runs on the event loop; a plain function is blocking code and runs in the
worker's pool of threads (``WARDEN_ACTION_THREADS``). An action whose job is annotated
``Job[Model]``, or that takes ``payload: Model``, with ``Model`` a pydantic model, is handed
the validated model instance; a payload that does not fit is denied ``payload_invalid``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Final, Generic, TypeVar, cast

from pydantic import BaseModel, ValidationError
from typing_extensions import TypeVar as DefaultedTypeVar

from worker.auth.principal import Principal
from worker.auth.tokens import is_scope_token
from worker.errors import ConfigurationError, PayloadInvalid

ACTION_NAME = re.compile(r"^[a-z][a-z0-9_.:-]{0,127}$")


class AnyActor:
    """The type of :data:`ANY_ACTOR`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY_ACTOR"


ANY_ACTOR: Final = AnyActor()
"""``actors=ANY_ACTOR``: any actor may act for the subject, as long as the scopes are there."""

Actors = frozenset[str] | Mapping[str, frozenset[str]] | AnyActor
"""An action's delegation policy: the actors allowed to act for a subject, by the issuer that
identifies them (or, where one issuer is trusted, that issuer's), or any actor."""


P = DefaultedTypeVar("P", default=Mapping[str, Any])
"""What ``job.payload`` is: the JSON object as sent, or the instance of the action's model."""


@dataclass(frozen=True, slots=True)
class Job(Generic[P]):
    """What an action is handed: the job, never the token that carried it."""

    id: str
    action: str
    payload: P
    principal: Principal
    attempt: int = 1
    redelivered: bool = False
    replayed_by: str | None = None
    """Who replayed this job from a dead letter with a token of their own (``warden dlq replay
    --token``): the job then runs as them (``principal``), no longer as its publisher. None for
    a job as its publisher sent it, or replayed with its own sealed token."""


Handler = Callable[..., Awaitable[None]] | Callable[..., None]
H = TypeVar("H", bound=Handler)

MAX_FIELDS_SHOWN = 10
"""A ``payload_invalid`` detail names at most this many failing fields."""
MAX_PART_SHOWN = 32
"""A part of a field's path longer than this is cut: a dictionary's key is the publisher's."""


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A registered action: its name, the scopes it requires and its handler."""

    name: str
    scopes: frozenset[str]
    handler: Handler
    module: str
    introspect: bool = False
    """Ask the issuer (RFC 7662) whether the token is still active before every run."""
    actors: Actors = frozenset()
    """Who may act for the token's subject (``act.sub``); empty: no delegation at all."""
    blocking: bool = False
    """A plain function: it runs in a thread of the pool, not on the event loop."""
    model: type[BaseModel] | None = None
    """The pydantic model the payload must fit, or None to hand the JSON object as it is."""
    model_argument: bool = False
    """The model instance is passed as ``payload=``; otherwise it is ``job.payload``."""
    queued_for: timedelta | None = None
    """How long a job may wait in its queue and still run on a token that expired meanwhile
    (``docs/checks.md``); None for ``WARDEN_QUEUED_FOR_SECONDS``."""

    def allowance(self, default: float) -> float:
        """The queueing allowance in seconds: the action's own, else ``default``."""
        return default if self.queued_for is None else self.queued_for.total_seconds()

    def allows_actor(
        self, actor: str, issuer: str | None = None, token_issuer: str | None = None
    ) -> bool:
        """Whether a token whose current actor is ``actor`` (``act.sub``), identified by
        ``issuer`` (``act.iss``, else the token's own issuer ``token_issuer``), may run this
        action. A set of names without issuers names actors of the token's own issuer."""
        actors = self.actors
        if isinstance(actors, AnyActor):
            return True
        if isinstance(actors, frozenset):
            return actor in actors and issuer == token_issuer
        return issuer is not None and actor in actors.get(issuer, ())

    def actors_without_issuer(self) -> bool:
        """Whether ``actors`` names actors without saying which issuer identifies them."""
        return isinstance(self.actors, frozenset) and bool(self.actors)

    def read_payload(self, payload: dict[str, Any]) -> Any:
        """The payload as the action takes it: validated into its model, or as it is.

        Raises :class:`~worker.errors.PayloadInvalid` naming each failing field by its path and
        pydantic's error type, never by the value it held.
        """
        model = self.model
        if model is None:
            return payload
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise PayloadInvalid(_failing_fields(model, exc)) from None

    def call(self, job: Job[Any], payload: Any) -> Callable[[], Any]:
        """The handler bound to its arguments, ready to be called (or awaited, if a coroutine)."""
        handler = self.handler
        if self.model_argument:
            return lambda: handler(job, payload=payload)
        return lambda: handler(job)


def _failing_fields(model: type[BaseModel], error: ValidationError) -> str:
    """``the payload does not fit Model: a.0.b (missing), c (int_parsing)``: paths and error
    types only, so that no value a publisher sent is written into a dead letter's detail."""
    found = error.errors(include_url=False, include_context=False, include_input=False)
    fields = [
        f"{'.'.join(_part(part) for part in item['loc']) or '(the payload)'} ({item['type']})"
        for item in found[:MAX_FIELDS_SHOWN]
    ]
    more = len(found) - len(fields)
    listed = ", ".join(fields) + (f" and {more} more" if more else "")
    return f"the payload does not fit {model.__name__}: {listed}"


def _part(part: str | int) -> str:
    text = str(part)
    return text if len(text) <= MAX_PART_SHOWN else text[: MAX_PART_SHOWN - 3] + "..."


_declared: dict[str, list[ActionSpec]] = {}
"""Specs by the module that declared them; read by :meth:`Registry.from_modules`."""


def action(
    name: str,
    *,
    scopes: Iterable[str],
    introspect: bool = False,
    actors: Iterable[str] | Mapping[str, Iterable[str]] | AnyActor = (),
    queued_for: timedelta | None = None,
) -> Callable[[H], H]:
    """Register ``handler`` as the action ``name``, runnable by tokens holding every scope.

    With ``introspect=True`` the issuer is asked, for every job, whether the token is still
    active (RFC 7662), on top of the revocation feed.

    ``actors`` is the delegation policy (check 16) for tokens with an RFC 8693 ``act``
    claim, that is tokens where someone acts for the subject: by default no one may, and a token
    with ``act`` is denied ``delegation_not_allowed``.
    ``actors={"https://issuer.example/": {"agent-x", ...}}`` lets exactly those ``act.sub`` values
    act, as that issuer identifies them: the actor's issuer is ``act.iss``, or else the token's
    own ``iss``, so an ``agent-x`` of another issuer does not match. Where warden trusts one
    issuer, ``actors={"agent-x", ...}`` names that issuer's actors (with several, it stops
    start-up). :data:`ANY_ACTOR` lets any actor. Only the current actor, the
    top-level ``act.sub``, counts: a nested ``act`` names prior actors and is informational only
    (RFC 8693 section 4.1), so ``actors={"agent-x"}`` denies a token acted on by ``agent-y``
    even when ``agent-x`` appears further down its chain. A token without ``act`` is the subject
    acting for itself and is not concerned.

    ``queued_for`` is how long a job may have waited in its queue and still run on a token that
    expired meanwhile, as long as the token was valid when the broker received the job
    (``docs/checks.md``); it replaces ``WARDEN_QUEUED_FOR_SECONDS`` for this action, and
    ``timedelta(0)`` opts it out.
    """
    if not isinstance(name, str) or not ACTION_NAME.fullmatch(name):
        raise ConfigurationError(f"action name {name!r} does not match {ACTION_NAME.pattern}")
    if isinstance(scopes, str):
        raise ConfigurationError(
            f"action {name!r}: scopes must be a collection of scope names, not one string"
        )
    required = frozenset(scopes)
    odd = sorted(repr(s) for s in required if not is_scope_token(s))
    if odd:
        raise ConfigurationError(
            f"action {name!r}: scopes {', '.join(odd)} are not RFC 6749 scope-tokens (printable "
            "ASCII but space, quote and backslash): no token could ever grant them"
        )
    policy = _actors(name, actors)
    if queued_for is not None and (
        not isinstance(queued_for, timedelta) or queued_for < timedelta(0)
    ):
        raise ConfigurationError(
            f"action {name!r}: queued_for must be a timedelta of zero or more, not {queued_for!r}"
        )

    def register(handler: H) -> H:
        if not inspect.isfunction(handler):
            raise ConfigurationError(f"action {name!r}: {handler!r} is not a function")
        model, model_argument = _payload_model(name, handler)
        spec = ActionSpec(
            name,
            required,
            handler,
            handler.__module__,
            introspect=introspect,
            actors=policy,
            blocking=not _is_coroutine_function(handler),
            model=model,
            model_argument=model_argument,
            queued_for=queued_for,
        )
        _declared.setdefault(spec.module, []).append(spec)
        return cast(H, handler)

    return register


def _payload_model(name: str, handler: Callable[..., Any]) -> tuple[type[BaseModel] | None, bool]:
    """The model a handler's annotations name for its payload: ``job: Job[Model]`` or
    ``payload: Model``. Returns the model (or None) and whether it is the ``payload`` argument."""
    parameters = list(inspect.signature(handler).parameters.values())
    if not parameters or parameters[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise ConfigurationError(f"action {name!r}: {handler.__qualname__} must take the job first")
    first = parameters[0].name
    as_argument = any(p.name == "payload" for p in parameters[1:])
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:
        raw = inspect.get_annotations(handler)
        if not as_argument and "[" not in str(raw.get(first, "")):
            return None, False  # nothing here names a model: the annotations need not resolve
        raise ConfigurationError(
            f"action {name!r}: the annotations of {handler.__qualname__} cannot be resolved "
            f"({type(exc).__name__}: {exc}); the payload model must be importable at run time"
        ) from exc
    job_model = next(iter(typing.get_args(hints.get(first))), None)
    if job_model is not None and typing.get_origin(hints.get(first)) is not Job:
        job_model = None
    if as_argument:
        argument = hints.get("payload")
        if not _is_model(argument):
            raise ConfigurationError(
                f"action {name!r}: the payload argument of {handler.__qualname__} must be "
                "annotated with a pydantic model"
            )
        if job_model is not None and job_model is not argument:
            raise ConfigurationError(
                f"action {name!r}: {handler.__qualname__} names two payload models"
            )
        return cast(type[BaseModel], argument), True
    untyped = (Mapping, dict)
    if job_model is None or job_model in untyped or typing.get_origin(job_model) in untyped:
        return None, False
    if not _is_model(job_model):
        raise ConfigurationError(
            f"action {name!r}: Job[...] of {handler.__qualname__} must name a pydantic model"
        )
    return cast(type[BaseModel], job_model), False


def _is_coroutine_function(handler: Callable[..., Any]) -> bool:
    """A coroutine function, or a plain wrapper (``functools.wraps``) around one that returns
    its coroutine: either is awaited on the loop, never called in a thread."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        inspect.unwrap(handler)
    )


def _is_model(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _actors(name: str, actors: object) -> Actors:
    if isinstance(actors, AnyActor):
        return actors
    if isinstance(actors, Mapping):
        by_issuer: dict[str, frozenset[str]] = {}
        for issuer, names in actors.items():
            if not isinstance(issuer, str) or not issuer:
                raise ConfigurationError(
                    f"action {name!r}: every issuer in actors must be a non-empty string"
                )
            by_issuer[issuer] = _actor_names(name, names)
        return MappingProxyType(by_issuer)
    return _actor_names(name, actors)


def _actor_names(name: str, actors: object) -> frozenset[str]:
    if actors is None or isinstance(actors, str | bytes) or not isinstance(actors, Iterable):
        raise ConfigurationError(
            f"action {name!r}: actors must be a collection of actor names (act.sub values), "
            "a mapping of issuers to such collections, () for no delegation, or ANY_ACTOR"
        )
    listed = list(actors)
    if any(not isinstance(a, str) or not a for a in listed):
        raise ConfigurationError(f"action {name!r}: every actor must be a non-empty string")
    return frozenset(cast(list[str], listed))


class Registry:
    """The actions a worker can run, by name."""

    def __init__(self, specs: Iterable[ActionSpec]) -> None:
        self._by_name: dict[str, ActionSpec] = {}
        for spec in specs:
            other = self._by_name.get(spec.name)
            if other is not None:
                raise ConfigurationError(
                    f"action {spec.name!r} is registered twice: in {other.module} and {spec.module}"
                )
            self._by_name[spec.name] = spec

    @classmethod
    def from_modules(cls, modules: Iterable[str]) -> Registry:
        """Import each module and collect the actions it registered."""
        specs: list[ActionSpec] = []
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(
                    f"WARDEN_ACTIONS: cannot import {module!r}: {exc}"
                ) from exc
            found = _declared.get(module, [])
            if not found:
                raise ConfigurationError(f"WARDEN_ACTIONS: module {module!r} registers no action")
            specs.extend(found)
        return cls(specs)

    @classmethod
    def of(cls, *handlers: Callable[..., Any]) -> Registry:
        """A registry of exactly these decorated handlers (for embedding and tests)."""
        wanted = set(handlers)
        specs = [s for found in _declared.values() for s in found if s.handler in wanted]
        missing = wanted - {s.handler for s in specs}
        if missing:
            names = ", ".join(sorted(getattr(h, "__qualname__", repr(h)) for h in missing))
            raise ConfigurationError(f"not registered with @action: {names}")
        return cls(specs)

    def get(self, name: str) -> ActionSpec | None:
        """The action called ``name``, or None."""
        return self._by_name.get(name)

    def __len__(self) -> int:
        return len(self._by_name)

    def actors_without_issuer(self) -> list[str]:
        """Names of the actions whose ``actors`` name no issuer."""
        return sorted(n for n, spec in self._by_name.items() if spec.actors_without_issuer())

    def introspected(self) -> list[str]:
        """Names of the actions registered with ``introspect=True``."""
        return sorted(name for name, spec in self._by_name.items() if spec.introspect)

    def largest_allowance(self, default: float) -> float:
        """The longest queueing allowance of any action, in seconds (``default`` where an
        action names none of its own)."""
        return max((spec.allowance(default) for spec in self._by_name.values()), default=0.0)

    def names(self) -> list[str]:
        """Registered action names, sorted."""
        return sorted(self._by_name)

    def specs(self) -> list[ActionSpec]:
        """Every registered action, sorted by name."""
        return [self._by_name[name] for name in self.names()]
