"""Traces: each job is a consumer span linked to its publisher's ``traceparent``, with child
spans for the decision and the action, attributes for the outcome and the reason, and never the
token. Spans are caught by the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.issuer import Issuer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from tests.support.user_actions import seen
from worker import Job, action
from worker.ops.otel import OpenTelemetry
from worker.ops.tracing import NO_TRACING, configured
from worker.pipeline.actions import Registry
from worker.settings import TracingSettings

pytestmark = pytest.mark.broker

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


class JobsEnded(SpanProcessor):
    """Wakes the test each time a job's span ends (spans end on the loop's thread)."""

    def __init__(self) -> None:
        self.ended = 0
        self.changed = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind == trace.SpanKind.CONSUMER:
            self.ended += 1
            self.changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while self.ended < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, JobsEnded, TracerProvider]]:
    exporter = InMemorySpanExporter()
    ended = JobsEnded()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(ended)
    yield exporter, ended, provider
    provider.shutdown()


inner: list[Any] = []


@action("traced.blocking", scopes={"reports:read"})
def traced_blocking(job: Job) -> None:
    """Notes the span current in its thread: the one its own spans would be children of."""
    inner.append(trace.get_current_span().get_span_context())
    seen.record(job)


REGISTRY = Registry.from_modules(["tests.support.actions"])


async def one_job(
    start_worker: Any,
    rabbit: Rabbit,
    queue: str,
    spans: Any,
    action: str,
    token: str,
    registry: Registry = REGISTRY,
) -> tuple[str | None, dict[str, ReadableSpan]]:
    """Run one job of ``action`` published with a ``traceparent``; its message id and spans."""
    exporter, ended, provider = spans
    await start_worker(registry, tracing=OpenTelemetry(provider))
    mid = await rabbit.job(queue, action, token, headers={"traceparent": TRACEPARENT})
    await ended.wait_for(1)
    return mid, {span.name: span for span in exporter.get_finished_spans()}


async def test_one_job_gives_its_span_linked_to_the_publisher_with_decision_and_action(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, spans: Any
) -> None:
    token = issuer.token(scope="reports:read")
    mid, by_name = await one_job(start_worker, rabbit, queue_name, spans, "reports.read", token)
    assert sorted(by_name) == ["action", "decide", f"process {queue_name}"]
    job, decide, act = by_name[f"process {queue_name}"], by_name["decide"], by_name["action"]
    assert job.kind == trace.SpanKind.CONSUMER
    assert job.parent is None
    [link] = job.links
    assert (link.context.trace_id, link.context.span_id) == (TRACE_ID, PARENT_ID)
    assert job.context.trace_id != TRACE_ID, "linked to the publisher's trace, not part of it"
    for child in (decide, act):
        assert child.parent is not None
        assert child.parent.span_id == job.context.span_id
        assert child.context.trace_id == job.context.trace_id
    assert decide.end_time <= act.start_time
    assert job.attributes == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue_name,
        "messaging.message.id": mid,
        "warden.outcome": "done",
    }
    assert decide.attributes == {"warden.decision": "allowed"}
    assert act.attributes == {"warden.action": "reports.read", "warden.action.outcome": "done"}
    for span in by_name.values():
        assert_no_leak(span.to_json(), f"span {span.name}")
        assert token not in span.to_json()


async def test_a_denied_job_says_why_and_holds_no_token(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, spans: Any
) -> None:
    token = issuer.token(scope="reports:read")
    _, by_name = await one_job(start_worker, rabbit, queue_name, spans, "admin.purge", token)
    assert sorted(by_name) == ["decide", f"process {queue_name}"], "no action ran"
    job, decide = by_name[f"process {queue_name}"], by_name["decide"]
    assert job.attributes["warden.outcome"] == "dead_lettered"
    assert job.attributes["warden.reason"] == "scope_insufficient"
    assert job.status.status_code == trace.StatusCode.ERROR
    assert decide.attributes == {
        "warden.decision": "denied",
        "warden.reason": "scope_insufficient",
    }
    for span in by_name.values():
        assert_no_leak(span.to_json(), f"span {span.name}")


async def test_a_blocking_action_runs_with_its_action_span_current(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, spans: Any
) -> None:
    inner.clear()
    seen.reset()
    token = issuer.token(scope="reports:read")
    registry = Registry.of(traced_blocking)
    _, by_name = await one_job(
        start_worker, rabbit, queue_name, spans, "traced.blocking", token, registry
    )
    assert inner == [by_name["action"].context], "spans made by the action nest under it"
    assert seen.threads[0].startswith("warden-action-")


def test_without_otel_variables_warden_run_makes_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    assert TracingSettings().exporters() == ()
    assert configured(TracingSettings()) is NO_TRACING
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert TracingSettings().exporters() == ("otlp",)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,none")
    assert TracingSettings().exporters() == ("console",)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert TracingSettings().exporters() == ()


def test_without_the_otel_extra_warden_run_starts_and_says_no_spans(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The image installs no extra: not even the ``opentelemetry`` namespace is importable."""
    for name in [n for n in sys.modules if n.partition(".")[0] == "opentelemetry"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # `import opentelemetry` fails
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    with caplog.at_level(logging.WARNING, logger="warden"):
        assert configured(TracingSettings()) is NO_TRACING
    assert "the otel extra is not installed" in caplog.text
