"""A gate trusting both issuers of the attacker's world, over a real in-memory key store."""

from __future__ import annotations

import pytest

from tests.attacks.world import WORLD, World
from tests.support.decision import MemoryKeys, clear_warden_environment, make_gate
from worker.pipeline.decision import Gate


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warden_environment(monkeypatch)


@pytest.fixture
def world() -> World:
    return WORLD


@pytest.fixture
def keys() -> MemoryKeys:
    return MemoryKeys(WORLD.issuer, WORLD.other)


@pytest.fixture
def gate(keys: MemoryKeys) -> Gate:
    return make_gate(WORLD.issuer, WORLD.other, keys=keys)
