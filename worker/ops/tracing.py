"""Traces of jobs: a span per job, with child spans for its decision and its action.

Spans are OpenTelemetry's, made by :mod:`worker.ops.otel` when the ``otel`` extra is installed
and the standard ``OTEL_*`` variables ask for traces; otherwise :data:`NO_TRACING` costs a
``with`` statement per step. No span attribute holds the token, a header's value or a payload.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from worker.settings import TracingSettings

log = logging.getLogger("warden.worker")


class Span(Protocol):
    """The span of a job or of one of its steps, as the consumer writes to it."""

    def set(self, key: str, value: str | int) -> None:
        """Set an attribute (``warden.outcome``, ``warden.reason``, ...)."""
        ...

    def failed(self, description: str) -> None:
        """Mark the span's status as an error, with a description that holds no secret."""
        ...


class Tracing(Protocol):
    """Where the consumer opens spans."""

    def job(
        self, queue: str, message_id: str | None, headers: Mapping[str, Any]
    ) -> AbstractContextManager[Span]:
        """The span of one job, current until it is settled, linked to the publisher's span
        when its ``traceparent`` header names one."""
        ...

    def step(self, name: str, **attributes: str | int) -> AbstractContextManager[Span]:
        """A child span of the current job span: ``decide`` or ``action``."""
        ...


class _NoSpan:
    def set(self, key: str, value: str | int) -> None:
        pass

    def failed(self, description: str) -> None:
        pass


class NoTracing:
    """Spans that are never made."""

    _none: AbstractContextManager[Span] = nullcontext(_NoSpan())

    def job(
        self, queue: str, message_id: str | None, headers: Mapping[str, Any]
    ) -> AbstractContextManager[Span]:
        """No span."""
        return self._none

    def step(self, name: str, **attributes: str | int) -> AbstractContextManager[Span]:
        """No span."""
        return self._none


NO_TRACING = NoTracing()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not installed either
        return False


def configured(settings: TracingSettings) -> Tracing:
    """Tracing as the ``OTEL_*`` variables and the installed packages have it (``warden run``)."""
    if not _installed("opentelemetry.sdk"):
        if settings.exporters():
            log.warning("OTEL_* asks for traces, but the otel extra is not installed: no spans")
        return NO_TRACING
    from worker.ops.otel import configured as with_opentelemetry

    return with_opentelemetry(settings)
