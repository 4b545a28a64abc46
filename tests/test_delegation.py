"""Delegation (check 16, ``docs/actions.md``): which actors may act for a subject, per action.

``reports.generate`` allows no delegation (the default), ``reports.delegated`` allows ``agent-x``
(``tests/support/delegated.py``) and ``reports.any_actor`` allows any actor
(``tests/support/actions.py``). Only the current actor,
the top-level ``act.sub``, is checked: nested ``act`` claims name prior actors and are
informational (RFC 8693 section 4.1). The whole chain reaches ``job.principal`` and dead letters.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.attacks.world import WORLD
from tests.support.actions import ran
from tests.support.decision import (
    MemoryKeys,
    assert_allowed,
    assert_denied,
    clear_warden_environment,
    delivery,
    make_gate,
)
from tests.support.issuer import Issuer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from tests.support.schemas import DENIAL
from worker import ANY_ACTOR, Job, action
from worker.errors import ConfigurationError
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Gate


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warden_environment(monkeypatch)


DELEGATING = Registry.from_modules(["tests.support.actions", "tests.support.delegated"])


@pytest.fixture
def gate() -> Gate:
    return make_gate(WORLD.issuer, keys=MemoryKeys(WORLD.issuer), registry=DELEGATING)


def chain(*subs: str) -> dict[str, Any]:
    """The ``act`` claim of actors ``subs``, the current one first."""
    act: dict[str, Any] | None = None
    for sub in reversed(subs):
        act = {"sub": sub} if act is None else {"sub": sub, "act": act}
    assert act is not None
    return act


# --- declaring a policy -----------------------------------------------------------------------


def test_no_delegation_is_the_default() -> None:
    async def handler(job: Job) -> None: ...

    spec = Registry.of(action("delegation.default", scopes=set())(handler)).get(
        "delegation.default"
    )
    assert spec is not None
    assert spec.actors == frozenset()
    assert not spec.allows_actor("agent-x")


def test_named_actors_and_any_actor() -> None:
    async def named(job: Job) -> None: ...

    async def anyone(job: Job) -> None: ...

    registry = Registry.of(
        action("delegation.named", scopes=set(), actors=["agent-x", "agent-z"])(named),
        action("delegation.anyone", scopes=set(), actors=ANY_ACTOR)(anyone),
    )
    spec = registry.get("delegation.named")
    assert spec is not None
    assert spec.actors == {"agent-x", "agent-z"}
    assert spec.allows_actor("agent-z")
    assert not spec.allows_actor("agent-y")
    spec = registry.get("delegation.anyone")
    assert spec is not None
    assert spec.allows_actor("anyone at all")
    assert repr(ANY_ACTOR) == "ANY_ACTOR"


@pytest.mark.parametrize(
    "actors",
    [
        pytest.param("agent-x", id="one-string"),
        pytest.param(None, id="none"),
        pytest.param([""], id="empty-name"),
        pytest.param([7], id="not-a-string"),
        pytest.param(7, id="not-a-collection"),
        pytest.param(b"agent-x", id="bytes"),
    ],
)
def test_a_bad_delegation_policy_stops_start_up(actors: Any) -> None:
    with pytest.raises(ConfigurationError, match="actor"):
        action("delegation.bad", scopes=set(), actors=actors)


# --- check 16 in the decision -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("action_name", "act", "reason"),
    [
        pytest.param("reports.generate", None, None, id="no-delegation-no-act"),
        pytest.param(
            "reports.generate", chain("agent-x"), "delegation_not_allowed", id="no-delegation-act"
        ),
        pytest.param(
            "reports.generate",
            chain("agent-x", "agent-y"),
            "delegation_not_allowed",
            id="no-delegation-nested-act",
        ),
        pytest.param("reports.delegated", None, None, id="allows-x-no-act"),
        pytest.param("reports.delegated", chain("agent-x"), None, id="allows-x-act-x"),
        pytest.param(
            "reports.delegated", chain("agent-y"), "delegation_not_allowed", id="allows-x-act-y"
        ),
        pytest.param(
            "reports.delegated",
            chain("agent-y", "agent-x"),
            "delegation_not_allowed",
            id="allows-x-act-y-nested-x",
        ),
        pytest.param(
            "reports.delegated",
            chain("agent-y", "agent-x", "agent-x"),
            "delegation_not_allowed",
            id="allows-x-act-y-nested-x-twice",
        ),
        pytest.param(
            "reports.delegated", chain("agent-x", "agent-y"), None, id="allows-x-act-x-nested-y"
        ),
        pytest.param(
            "reports.delegated",
            chain("Agent-X"),
            "delegation_not_allowed",
            id="allows-x-other-case",
        ),
        pytest.param(
            "reports.delegated", chain("agent-x "), "delegation_not_allowed", id="allows-x-padded"
        ),
        pytest.param(
            "reports.delegated", chain(""), "delegation_not_allowed", id="allows-x-empty-actor"
        ),
        pytest.param("reports.any_actor", chain("agent-y", "agent-z"), None, id="any-actor"),
        pytest.param("reports.any_actor", None, None, id="any-actor-no-act"),
    ],
)
async def test_delegation_policy(
    gate: Gate, action_name: str, act: dict[str, Any] | None, reason: str | None
) -> None:
    claims: dict[str, Any] = {"sub": "alice"} | ({"act": act} if act else {})
    raw = WORLD.token(**claims)
    verdict = await gate.decide(delivery(raw, action=action_name))
    if reason is not None:
        denied = assert_denied(verdict, reason, raw)
        assert denied.denial.error == "insufficient_scope"
        assert denied.action == action_name
        return
    allowed = assert_allowed(verdict, raw)
    who = allowed.job.principal
    subs: list[str] = []
    cursor = act
    while cursor:
        subs.append(cursor["sub"])
        cursor = cursor.get("act")
    assert who.sub == "alice"
    assert who.actor == (subs[0] if subs else None)
    assert who.actor_chain == tuple(subs)


async def test_only_the_scopes_come_first(gate: Gate) -> None:
    """Check 15 before check 16: a delegated token without the scope is scope_insufficient."""
    raw = WORLD.token(scope="reports:read", act=chain("agent-y"))
    assert_denied(
        await gate.decide(delivery(raw, action="reports.delegated")), "scope_insufficient", raw
    )


async def test_a_delegation_denial_names_the_actors_and_keeps_the_chain(gate: Gate) -> None:
    act = chain("agent-y", "agent-x", "orchestrator")
    act["client_id"] = "agent-y-client"
    act["act"]["extra"] = {"n": 10**30, "long" * 100: "\u00e9"}
    raw = WORLD.token(sub="alice", act=act)
    denied = assert_denied(
        await gate.decide(delivery(raw, action="reports.delegated")),
        "delegation_not_allowed",
        raw,
    )
    detail = denied.denial.detail
    assert "'agent-y'" in detail
    assert "reports.delegated" in detail
    assert "'alice'" in detail
    assert "agent-x" in detail  # the prior actors, for the record
    assert denied.token is not None
    # the summary keeps the chain of actors, and nothing else an actor object held
    assert denied.token.summary()["act"] == chain("agent-y", "agent-x", "orchestrator")


# --- through RabbitMQ -------------------------------------------------------------------------


@pytest.mark.broker
async def test_delegated_jobs_through_rabbitmq(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(DELEGATING)
    allowed = issuer.token(sub="alice", act=chain("agent-x", "orchestrator"))
    denied = issuer.token(sub="alice", act=chain("agent-y", "agent-x"))
    undelegated = issuer.token(sub="alice", act=chain("agent-x"))
    ran_id = await rabbit.job(queue_name, "reports.delegated", allowed)
    denied_id = await rabbit.job(queue_name, "reports.delegated", denied)
    undelegated_id = await rabbit.job(queue_name, "reports.generate", undelegated)

    [job] = await ran.wait_for(1)
    assert job.id == ran_id
    assert job.principal.sub == "alice"
    assert job.principal.actor == "agent-x"
    assert job.principal.actor_chain == ("agent-x", "orchestrator")

    letters = {letter.message_id: letter for letter in await rabbit.dead_letters(queue_name, 2)}
    assert letters.keys() == {denied_id, undelegated_id}
    for mid, token, act in (
        (denied_id, denied, chain("agent-y", "agent-x")),
        (undelegated_id, undelegated, chain("agent-x")),
    ):
        headers = dict(letters[mid].headers)
        assert headers["x-warden-reason"] == "delegation_not_allowed"
        record = headers["x-warden-denial"]
        assert DENIAL.is_valid(record)
        assert record["error"] == "insufficient_scope"
        assert record["token"]["act"] == act
        assert record["token"]["sub"] == "alice"
        assert token not in repr(headers)
        assert_no_leak(repr(headers), "a dead letter")
    assert len(ran.jobs) == 1
