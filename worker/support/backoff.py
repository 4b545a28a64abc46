"""One backoff policy: exponential, capped, with jitter; and the same as a tenacity wait."""

from __future__ import annotations

import random

from tenacity import RetryCallState
from tenacity.wait import wait_base


def backoff(base: float, ceiling: float, step: int, jitter: float = 0.2) -> float:
    """The delay before the ``step``-th retry (0-based): ``base`` doubled each step, at most
    ``ceiling``, then spread by +-``jitter`` so that many waiters do not come back together."""
    delay: float = min(base * 2.0 ** min(step, 32), ceiling)
    return delay * random.uniform(1.0 - jitter, 1.0 + jitter)


class wait_backoff(wait_base):  # noqa: N801 - named as tenacity's own waits are
    """:func:`backoff` for tenacity's ``wait=``: the first retry waits about ``base``."""

    def __init__(self, base: float, ceiling: float, jitter: float = 0.2) -> None:
        self.base = base
        self.ceiling = ceiling
        self.jitter = jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        return backoff(self.base, self.ceiling, retry_state.attempt_number - 1, self.jitter)
