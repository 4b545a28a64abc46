"""Actions: the protected work a job asks for, registered with :func:`action` (``docs/actions.md``).

The decorator checks what it can at import (a coroutine function, a ``scopes`` argument, a
valid name, a delegation policy); :meth:`Registry.from_modules` imports the modules
``WARDEN_ACTIONS`` names at start-up and refuses duplicate names there, so a bad registry never
meets its first message.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar, cast

from worker.auth.principal import Principal
from worker.auth.tokens import is_scope_token
from worker.errors import ConfigurationError

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


@dataclass(frozen=True, slots=True)
class Job:
    """What an action is handed: the job, never the token that carried it."""

    id: str
    action: str
    payload: Mapping[str, Any]
    principal: Principal
    attempt: int = 1
    redelivered: bool = False


Handler = Callable[[Job], Awaitable[None]]
H = TypeVar("H", bound=Handler)


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


_declared: dict[str, list[ActionSpec]] = {}
"""Specs by the module that declared them; read by :meth:`Registry.from_modules`."""


def action(
    name: str,
    *,
    scopes: Iterable[str],
    introspect: bool = False,
    actors: Iterable[str] | Mapping[str, Iterable[str]] | AnyActor = (),
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

    def register(handler: H) -> H:
        if not inspect.iscoroutinefunction(handler):
            raise ConfigurationError(
                f"action {name!r}: {handler.__qualname__} must be an async function"
            )
        spec = ActionSpec(
            name,
            required,
            cast(Handler, handler),
            handler.__module__,
            introspect=introspect,
            actors=policy,
        )
        _declared.setdefault(spec.module, []).append(spec)
        return cast(H, handler)

    return register


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
    def of(cls, *handlers: Handler) -> Registry:
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

    def names(self) -> list[str]:
        """Registered action names, sorted."""
        return sorted(self._by_name)
