"""Typed payloads: an action that annotates ``Job[Model]`` or takes ``payload: Model`` gets the
validated model instance; a payload that does not fit is dead-lettered ``payload_invalid``, its
detail naming the failing fields and never their values."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.issuer import Issuer, JwksServer
from tests.support.rabbit import Rabbit
from tests.support.schemas import DENIAL
from tests.support.user_actions import Cancellation, Order, seen
from tests.test_operating import warden
from worker import Job, action
from worker.errors import ConfigurationError, PayloadInvalid
from worker.pipeline.actions import Registry

if TYPE_CHECKING:
    from tests.support.user_actions import Customer

REGISTRY = Registry.from_modules(["tests.support.actions", "tests.support.user_actions"])
VALID = {"sku": "A-1", "quantity": 2, "customer": {"email": "ada@example.com"}}
SECRET = "do-not-echo-4b1d"
"""A value a publisher sent in a field that fails: it must appear in no detail."""


@pytest.fixture(autouse=True)
def _fresh_seen() -> None:
    seen.reset()


@pytest.mark.broker
async def test_a_payload_that_does_not_fit_is_dead_lettered_naming_fields_not_values(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    handle = await start_worker(REGISTRY)
    token = issuer.token(scope="orders:write")
    bad = {"sku": "A-1", "quantity": SECRET, "customer": {"vip": SECRET}, "note": "extra is fine"}
    mid = await rabbit.job(queue_name, "orders.place", token, bad)
    ok = await rabbit.job(queue_name, "orders.place", token, VALID)

    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == mid
    assert letter.headers["x-warden-reason"] == "payload_invalid"
    assert letter.routing_key == f"payload_invalid.{queue_name}"
    denial = letter.headers["x-warden-denial"]
    DENIAL.validate(denial)
    assert denial["reason"] == "payload_invalid"
    assert denial["error"] == "invalid_request"
    assert denial["action"] == "orders.place"
    assert denial["detail"] == (
        "the payload does not fit Order: quantity (int_parsing), customer.email (missing), "
        "customer.vip (bool_parsing)"
    )
    assert SECRET not in json.dumps(denial)
    assert json.loads(letter.body)["payload"] == bad, "the body is kept byte for byte"

    [job] = await seen.wait_for(1)
    assert job.id == ok
    assert isinstance(job.payload, Order)
    assert job.payload.customer.email == "ada@example.com"
    assert seen.payloads == [job.payload]

    registry = handle.worker.metrics.registry
    labels = {"queue": queue_name, "action": "orders.place", "outcome": "denied"}
    assert (
        registry.get_sample_value("warden_decisions_total", {**labels, "reason": "payload_invalid"})
        == 1
    )


@pytest.mark.broker
async def test_a_payload_argument_and_a_blocking_typed_action_get_their_models(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(REGISTRY)
    token = issuer.token(scope="orders:write orders:cancel")
    cancel = await rabbit.job(queue_name, "orders:cancel", token, {"order_id": 7})
    await seen.wait_for(1)
    ship = await rabbit.job(queue_name, "orders.ship", token, VALID)
    jobs = await seen.wait_for(2)

    assert [j.id for j in jobs] == [cancel, ship]
    assert seen.payloads[0] == Cancellation(order_id=7)
    assert jobs[0].payload == {"order_id": 7}, "job.payload stays the JSON object as sent"
    assert isinstance(jobs[1].payload, Order)
    assert seen.payloads[1] is jobs[1].payload
    assert seen.threads[1].startswith("warden-action-"), "a plain def runs in the pool"


@pytest.mark.broker
async def test_scopes_are_checked_before_the_payload(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    """A publisher without the action's scopes learns nothing of its payload's schema."""
    await start_worker(REGISTRY)
    await rabbit.job(queue_name, "orders.place", issuer.token(scope="reports:read"), {})
    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.headers["x-warden-reason"] == "scope_insufficient"


def test_the_detail_lists_at_most_ten_fields() -> None:
    spec = Registry.from_modules(["tests.support.user_actions"]).get("orders.place")
    assert spec is not None
    with pytest.raises(PayloadInvalid) as raised:
        spec.read_payload({"sku": [SECRET], "quantity": 0})
    assert raised.value.detail == (
        "the payload does not fit Order: sku (string_type), quantity (greater_than), "
        "customer (missing)"
    )

    from pydantic import create_model

    wide = create_model("Wide", **{f"f{i}": (int, ...) for i in range(12)})  # type: ignore[call-overload]

    async def handler(job: Job, payload: Any) -> None:
        pass

    handler.__annotations__["payload"] = wide
    registered = Registry.of(action("wide.model", scopes=set())(handler)).get("wide.model")
    assert registered is not None
    with pytest.raises(PayloadInvalid) as raised:
        registered.read_payload({})
    assert raised.value.detail.endswith("f9 (missing) and 2 more")

    long_key = "k" * 40  # a dictionary's key, or an unexpected member, is the publisher's
    spec = Registry.from_modules(["tests.support.user_actions"]).get("orders:cancel")
    assert spec is not None
    with pytest.raises(PayloadInvalid) as raised:
        spec.read_payload({"order_id": 1, "notes": {long_key: "x"}})
    assert raised.value.detail == (
        f"the payload does not fit Cancellation: notes.{'k' * 29}... (int_parsing)"
    )


async def dict_job(job: Job[dict[str, Any]]) -> None:
    pass


async def mapping_job(job: Job[Mapping[str, Any]]) -> None:
    pass


async def untyped_unresolvable(job: Customer) -> None:  # nothing here names a payload model
    pass


async def not_a_model(job: Job[int]) -> None:
    pass


async def bare_payload(job: Job, payload) -> None:  # type: ignore[no-untyped-def]
    pass


async def two_models(job: Job[Order], payload: Cancellation) -> None:
    pass


async def unresolvable(job: Job[Customer]) -> None:  # Customer is imported for type checkers only
    pass


@pytest.mark.parametrize("handler", [dict_job, mapping_job, untyped_unresolvable])
def test_what_registration_takes_as_untyped(handler: Any) -> None:
    action("fine.one", scopes=set())(handler)
    assert Registry.of(handler).get("fine.one").model is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        (not_a_model, "must name a pydantic model"),
        (bare_payload, "annotated with a pydantic model"),
        (two_models, "two payload models"),
        (unresolvable, "cannot be resolved"),
    ],
)
def test_what_registration_refuses(handler: Any, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why):
        action("bad.one", scopes=set())(handler)


async def test_explain_checks_the_payload(jwks: JwksServer, issuer: Issuer) -> None:
    env = {
        "WARDEN_ISSUER": issuer.url,
        "WARDEN_JWKS_URL": jwks.jwks_url(issuer),
        "WARDEN_AUDIENCE": issuer.audience,
        "WARDEN_ACTIONS": "tests.support.user_actions",
    }
    token = issuer.token(scope="orders:write")
    args = ("explain", "--token", token, "--action", "orders.place", "--json")
    code, out, err = await warden(*args, "--payload", json.dumps({"quantity": SECRET}), env=env)
    assert code == 1, err
    report = json.loads(out)
    assert report["verdict"] == "denied: payload_invalid"
    [row] = [r for r in report["checks"] if r["reason"] == "payload_invalid"]
    assert row["check"] == 18
    assert row["result"] == "failed"
    assert "quantity (int_parsing)" in row["detail"]
    assert SECRET not in out

    code, out, err = await warden(*args, "--payload", json.dumps(VALID), env=env)
    assert code == 0, err
    assert json.loads(out)["verdict"] == "allowed"
