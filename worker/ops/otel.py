"""OpenTelemetry spans of jobs (the ``otel`` extra); :mod:`worker.ops.tracing` says what they are.

Span names and attributes follow OpenTelemetry's messaging conventions where they have one
(``process <queue>``, a consumer span, ``messaging.*``) and are ``warden.*`` otherwise. The
publisher's span, named by the job's ``traceparent`` header (W3C Trace Context), is a link of the
job's span: the job starts a trace of its own, which a trace viewer joins to the publisher's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from importlib.metadata import version as package_version
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker import names
from worker.errors import ConfigurationError
from worker.ops.tracing import Span, Tracing
from worker.settings import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_HEADERS = (names.HEADER_TRACEPARENT, names.HEADER_TRACESTATE)
EXPORTERS = "opentelemetry_traces_exporter"
"""The entry-point group where OpenTelemetry packages register their span exporters."""
OTLP = "otlp_proto_http"
"""What ``OTEL_TRACES_EXPORTER=otlp`` (the default) means: the exporter the extra installs."""


class _Span:
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set(self, key: str, value: str | int) -> None:
        self._span.set_attribute(key, value)

    def failed(self, description: str) -> None:
        self._span.set_status(StatusCode.ERROR, description)


def publisher_link(headers: Mapping[str, Any]) -> list[Link]:
    """A link to the span a ``traceparent`` header names; none when it names none (or is not
    W3C Trace Context)."""
    carrier: dict[str, str] = {}
    for name in _CONTEXT_HEADERS:
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            carrier[name] = value
    if not carrier:
        return []
    context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return [Link(context)] if context.is_valid else []


class OpenTelemetry:
    """Spans made by a tracer of ``provider`` (the global one when None)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        provider = provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("warden", package_version("warden"))

    @contextmanager
    def job(self, queue: str, message_id: str | None, headers: Mapping[str, Any]) -> Iterator[Span]:
        """The job's span, a consumer span current while the job is decided, run and settled."""
        attributes: dict[str, str] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
        }
        if message_id:
            attributes["messaging.message.id"] = message_id
        with self._tracer.start_as_current_span(
            f"process {queue}",
            kind=SpanKind.CONSUMER,
            links=publisher_link(headers),
            attributes=attributes,
        ) as span:
            yield _Span(span)

    @contextmanager
    def step(self, name: str, **attributes: str | int) -> Iterator[Span]:
        """A child of the current span."""
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            yield _Span(span)


def _exporter(name: str) -> SpanExporter:
    wanted = OTLP if name == "otlp" else name
    found = entry_points(group=EXPORTERS, name=wanted)
    if not found:
        known = sorted(e.name for e in entry_points(group=EXPORTERS))
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed (installed: "
            f"{', '.join(['otlp', *known])})"
        )
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def configured(settings: TracingSettings) -> Tracing:
    """Spans exported as ``OTEL_*`` asks; the exporters, the resource (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``) and the sampler (``OTEL_TRACES_SAMPLER``) are the SDK's to
    read. A tracer provider set up already (by ``opentelemetry-instrument``) is used as it is."""
    from worker.ops.tracing import NO_TRACING

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return OpenTelemetry()
    exporters = settings.exporters()
    if not exporters:
        return NO_TRACING
    provider = TracerProvider()
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    return OpenTelemetry(provider)
