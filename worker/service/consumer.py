"""The consumer: decide each delivery, run what is allowed, settle every message in one place."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from worker import names
from worker.amqp.inbound import Inbound, to_delivery
from worker.amqp.links import Publishing
from worker.amqp.outbound import (
    Acker,
    copy_properties,
    requeue,
    send_copy,
    send_salvaged,
    settle_rejected,
)
from worker.amqp.topology import retry_tier
from worker.deadletters.seal import Seal, sealed_for
from worker.deadletters.write import (
    DenialHeaders,
    delivery_limit_denial,
    kept_headers,
    uncarried,
    unparked,
)
from worker.errors import (
    MalformedMessage,
    PublishFailed,
    TableNotEncodable,
    Unavailable,
    Unroutable,
)
from worker.ops.metrics import UNREGISTERED, Metrics
from worker.ops.tracing import NO_TRACING, Span, Tracing
from worker.pipeline.decision import Denied, Gate
from worker.pipeline.delivery import Delivery
from worker.pipeline.execution import ActionThreads, run_action
from worker.pipeline.outcomes import Again, DeadLetter, Defer, Done, Outcome
from worker.settings import Settings
from worker.support.backoff import backoff
from worker.support.threads import Threads

log = logging.getLogger("warden.consumer")


def _action_outcome(outcome: Outcome) -> str:
    if isinstance(outcome, Done):
        return "done"
    if isinstance(outcome, DeadLetter):
        return "rejected" if outcome.denied.denial.reason == "action_rejected" else "failed"
    return "retry"


_WRITTEN_AFRESH = frozenset(
    {
        names.HEADER_ATTEMPT,
        names.HEADER_DEFERRALS,
        names.HEADER_PUBLISHER_USER,
        names.HEADER_RECEIVED_AT,
        names.HEADER_REPLAYED_BY,
        names.HEADER_SEALED_TOKEN,
        names.HEADER_WAIT,
    }
)
"""warden's own headers on its copies (its counts, the original's publisher, its first arrival,
who replayed it): written afresh on every copy, never carried over."""


def _traced(span: Span, outcome: Outcome) -> None:
    """The job span's ``warden.outcome`` (done, dead_lettered, deferred, retry) and reason."""
    match outcome:
        case Done():
            span.set("warden.outcome", "done")
        case DeadLetter(denied):
            span.set("warden.outcome", "dead_lettered")
            span.set("warden.reason", denied.denial.reason)
            span.failed(denied.denial.reason)
        case Defer():
            span.set("warden.outcome", "deferred")
        case Again():
            span.set("warden.outcome", "retry")


class Consumer:
    """Handles the deliveries of every work queue of one worker."""

    def __init__(
        self,
        gate: Gate,
        settings: Settings,
        publishing: Publishing,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing = NO_TRACING,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_settled: Callable[[Delivery, Outcome], None] | None = None,
        witnessed: bool = False,
    ) -> None:
        self.gate = gate
        self.witnessed = witnessed
        """Whether the broker was proven to stamp arrivals (:mod:`worker.amqp.arrival`): only
        then is a job's arrival read."""
        self.on_settled = on_settled
        """Told what became of each delivery once it is settled (``warden demo``, the
        fixtures of :mod:`worker.testing`)."""
        self.metrics = metrics or Metrics()
        self.tracing = tracing
        self.threads: ActionThreads = Threads(settings.action_threads, "warden-action")
        """Where blocking actions run."""
        self._allowed_level = logging.getLevelName(settings.log_allowed_level)
        self.settings = settings
        self._publishing = publishing
        self._publisher = publishing.channel
        self._now = now
        self._denials = DenialHeaders(settings.worker_id)
        self._user = settings.broker_user()
        self._trusted = settings.trusted()
        self._tiers = settings.retry_tiers()
        key = settings.seal_key_bytes()
        self._seal = None if key is None else Seal(key)
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._acks = Acker(
            linger=settings.ack_linger_ms / 1000, batch=max(1, settings.prefetch // 4)
        )

    async def flushed(self) -> None:
        """Wait until the acks of every settled message have been written."""
        await self._acks.flushed()

    async def on_message(self, queue: str, message: Inbound, *, quarantined: bool = False) -> None:
        """Decide, run and settle one delivery.

        A ``quarantined`` message is one the broker dead-lettered from ``queue`` (it reached the
        delivery limit, token and all): its outcome is a dead letter as warden writes every dead
        letter, without the token, and until that is confirmed it stays in quarantine.
        """
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        self._acks.delivered(message)
        try:
            delivery = to_delivery(message, queue, self._trusted, witnessed=self.witnessed)
            with self.tracing.job(queue, delivery.message_id, delivery.headers) as span:
                if quarantined:
                    outcome: Outcome = DeadLetter(delivery_limit_denial(delivery))
                else:
                    outcome = await self.outcome(delivery)
                _traced(span, outcome)
                settled = await self.settle(message, delivery, outcome, quarantined=quarantined)
            if self.on_settled is not None:
                self.on_settled(delivery, settled)
        except Exception:
            # A fault of warden's own, not a verdict: back to the queue, where the delivery
            # limit ends a message that keeps causing it (dead-lettered as delivery_limit).
            log.exception("handling failed", extra={"message_id": message.message_id})
            if self._acks.unsettled(message):
                self._acks.settled_otherwise(message)
                await requeue(message)
        finally:
            self._acks.abandon(message)
            if task is not None:
                self.in_flight.discard(task)

    async def on_quarantined(self, message: Inbound, *, origin: str | None = None) -> None:
        """Write into its work queue's dead-letter queue, without its token, a message the
        broker dead-lettered from that queue (the delivery limit). ``origin`` names the queue,
        or else (the shared quarantine queue) the routing key the broker gave it does: the
        queue's own name, which only the queue's binding to ``warden.quarantine`` routes."""
        queue = origin
        if queue is None and message.exchange == names.QUARANTINE_EXCHANGE:
            queue = message.routing_key
        if not queue:
            # Not the broker's: written straight into the queue, which only a user with
            # warden's own permissions can do. It names no work queue to dead-letter it into.
            log.error(
                "dropped a message in quarantine that the broker did not dead-letter",
                extra={
                    "message_id": message.message_id,
                    "exchange": message.exchange,
                    "routing_key": message.routing_key,
                },
            )
            await settle_rejected(message)
            return
        await self.on_message(queue, message, quarantined=True)

    async def outcome(self, delivery: Delivery) -> Outcome:
        """What should become of ``delivery``."""
        metrics, queue = self.metrics, delivery.queue
        with self.tracing.step("decide") as span:
            started = time.perf_counter()
            try:
                verdict = await self.gate.decide(delivery)
            except Unavailable as exc:
                metrics.decided(queue, "", "deferred", "", time.perf_counter() - started)
                span.set("warden.decision", "deferred")
                return Defer(str(exc))
            elapsed = time.perf_counter() - started
            if isinstance(verdict, Denied):
                action = verdict.action or ""
                if action and self.gate.registry.get(action) is None:
                    action = UNREGISTERED
                metrics.decided(queue, action, "denied", verdict.denial.reason, elapsed)
                span.set("warden.decision", "denied")
                span.set("warden.reason", verdict.denial.reason)
                return DeadLetter(verdict)
            span.set("warden.decision", "allowed")
        job = verdict.job
        metrics.decided(queue, job.action, "allowed", "", elapsed)
        if log.isEnabledFor(self._allowed_level):
            log.log(
                self._allowed_level,
                "allowed",
                extra={
                    "message_id": job.id,
                    "queue": queue,
                    "action": job.action,
                    "client_id": job.principal.client_id,
                    "jti": job.principal.jti,
                    "attempt": job.attempt,
                    "traceparent": delivery.headers.get(names.HEADER_TRACEPARENT),
                },
            )
        with self.tracing.step("action", **{"warden.action": job.action}) as span:
            started = time.perf_counter()
            outcome = await run_action(verdict, self.settings.max_attempts, self.threads)
            result = _action_outcome(outcome)
            metrics.action_seconds.labels(queue, job.action, result).observe(
                time.perf_counter() - started
            )
            span.set("warden.action.outcome", result)
            if result != "done":
                span.failed(result)
        return outcome

    async def settle(
        self, message: Inbound, delivery: Delivery, outcome: Outcome, *, quarantined: bool = False
    ) -> Outcome:
        """The one place that acks, dead-letters or returns a message to its queue; returns
        what was done (a dead letter the broker did not confirm becomes a :class:`Defer`)."""
        if isinstance(outcome, Done):
            self._acks.ack(message)
            return outcome
        async with self._publishing.settling():
            return await self._settle_publishing(message, delivery, outcome, quarantined)

    async def _settle_publishing(
        self, message: Inbound, delivery: Delivery, outcome: Outcome, quarantined: bool
    ) -> Outcome:
        """Settle with a publish first (a dead letter, or a copy parked in a retry queue), on
        the publishing connection: while the broker blocks it, this waits, the message unacked."""
        match outcome:
            case DeadLetter(denied):
                self._log_denial(delivery, denied)
                try:
                    await self._dead_letter(message, delivery, denied)
                except PublishFailed as exc:
                    if quarantined and isinstance(exc, Unroutable):
                        # From the shared quarantine, for a work queue whose dead-letter queue
                        # is gone (deleted with it): there is nowhere left to keep it.
                        log.error(
                            "dropped a quarantined message: its dead-letter queue is gone",
                            extra={
                                "message_id": delivery.message_id,
                                "queue": delivery.queue,
                                "error": str(exc),
                            },
                        )
                        self._acks.settled_otherwise(message)
                        await settle_rejected(message)
                        return Defer(f"dead letter failed: {exc}")
                    self.metrics.dead_letter_failures.labels(delivery.queue).inc()
                    log.error(
                        "dead letter not confirmed; returning the message to its queue",
                        extra={
                            "message_id": delivery.message_id,
                            "queue": delivery.queue,
                            "reason": denied.denial.reason,
                            "error": str(exc),
                        },
                    )
                    if quarantined:
                        self._acks.settled_otherwise(message)
                        await requeue(message)
                    else:
                        await self._defer(message, delivery, f"dead letter failed: {exc}")
                    return Defer(f"dead letter failed: {exc}")
                self._acks.ack(message)
            case Defer(why):
                await self._defer(message, delivery, why)
            case Again(why, delay):
                settings = self.settings
                wait = (
                    min(max(delay, 0.0), settings.retry_max_seconds)
                    if delay is not None
                    else backoff(
                        settings.retry_base_seconds,
                        settings.retry_max_seconds,
                        delivery.attempt - 1,
                    )
                )
                log.info(
                    "action will be tried again",
                    extra={
                        "message_id": delivery.message_id,
                        "queue": delivery.queue,
                        "attempt": delivery.attempt,
                        "delay": round(wait, 3),
                        "error": why,
                    },
                )
                await self._put_back(message, delivery, wait, attempt=delivery.attempt + 1)
        return outcome

    async def _defer(self, message: Inbound, delivery: Delivery, why: str) -> None:
        count = delivery.deferrals
        wait = backoff(self.settings.retry_base_seconds, self.settings.defer_max_seconds, count)
        log.warning(
            "no verdict yet; the message waits",
            extra={
                "message_id": delivery.message_id,
                "queue": delivery.queue,
                "why": why,
                "delay": round(wait, 3),
            },
        )
        await self._put_back(message, delivery, wait, deferrals=count + 1)

    async def _put_back(
        self,
        message: Inbound,
        delivery: Delivery,
        delay: float,
        *,
        attempt: int | None = None,
        deferrals: int | None = None,
    ) -> None:
        """Park a copy in a retry queue for ``delay``, then ack.

        The broker holds the wait, so it survives this worker stopping, and hands the copy back
        to the work queue when it expires. A copy, because returning the original with a nack
        would count against the delivery limit, which is for consumers that crash. The copy's
        counts are the ones warden believed (a publisher's own ``x-warden-*`` never carries over
        under warden's name), with ``attempt`` or ``deferrals`` moved on.
        """
        delay_ms = max(round(delay * 1000), 1)
        tier = retry_tier(self._tiers, delay_ms)
        retry_queue = names.retry_queue(tier)
        headers = {
            name: value
            for name, value in delivery.headers.items()
            if name.lower() not in _WRITTEN_AFRESH
        }
        attempt = delivery.attempt if attempt is None else attempt
        deferrals = delivery.deferrals if deferrals is None else deferrals
        if attempt > 1:
            headers[names.HEADER_ATTEMPT] = attempt
        if deferrals:
            headers[names.HEADER_DEFERRALS] = deferrals
        if delivery.publisher_user is not None:
            headers[names.HEADER_PUBLISHER_USER] = delivery.publisher_user
        if delivery.arrived_at is not None:
            headers[names.HEADER_RECEIVED_AT] = round(delivery.arrived_at * 1000)
        if delivery.replayed_by is not None:
            headers[names.HEADER_REPLAYED_BY] = delivery.replayed_by
        headers[names.HEADER_WAIT] = str(tier)
        copy = copy_properties(message, headers, user_id=self._user, expiration_ms=delay_ms)
        try:
            await send_copy(
                self._publisher, message.body, copy, names.RETRY_EXCHANGE, delivery.queue
            )
        except TableNotEncodable:
            # A header a copy cannot carry: the message cannot wait, and is malformed.
            await self._unparked(message, delivery, retry_queue)
            return
        except PublishFailed as exc:
            log.error(
                "could not park a copy; returning the original after the delay",
                extra={
                    "message_id": delivery.message_id,
                    "queue": delivery.queue,
                    "error": str(exc),
                },
            )
            await asyncio.sleep(delay)
            self._acks.settled_otherwise(message)
            await requeue(message)
            return
        self._acks.ack(message)

    async def _unparked(self, message: Inbound, delivery: Delivery, retry_queue: str) -> None:
        """Dead-letter a message whose copy cannot wait in ``retry_queue``; should that fail
        too, return it to its queue (whose delivery limit ends it)."""
        denied = unparked(delivery, f"in {retry_queue}")
        self._log_denial(delivery, denied)
        try:
            await self._dead_letter(message, delivery, denied)
        except PublishFailed as exc:
            self.metrics.dead_letter_failures.labels(delivery.queue).inc()
            log.error(
                "neither a copy nor a dead letter could be sent; returning the message",
                extra={"message_id": delivery.message_id, "error": str(exc)},
            )
            self._acks.settled_otherwise(message)
            await requeue(message)
            return
        self._acks.ack(message)

    async def _dead_letter(self, message: Inbound, delivery: Delivery, denied: Denied) -> None:
        headers = kept_headers(delivery.headers, denied.token.raw if denied.token else None)
        if self._seal is not None and denied.token is not None and sealed_for(denied.denial):
            headers[names.HEADER_SEALED_TOKEN] = self._seal.seal(
                denied.token.raw, delivery.message_id or ""
            )
        stamp = self._denials.encoded(
            denied,
            delivery,
            exchange=message.exchange or "",
            routing_key=message.routing_key or "",
            now=self._now(),
        )
        letter = copy_properties(message, headers, user_id=self._user, more_headers=stamp)
        routing_key = names.dead_letter_routing_key(denied.denial.reason, delivery.queue)
        try:
            await send_copy(
                self._publisher, message.body, letter, names.DEAD_LETTER_EXCHANGE, routing_key
            )
        except TableNotEncodable:
            await self._dead_letter_salvaged(message, delivery, denied, headers)

    async def _dead_letter_salvaged(
        self, message: Inbound, delivery: Delivery, denied: Denied, headers: dict[str, Any]
    ) -> None:
        """Dead-letter as ``malformed_message`` a message whose headers cannot all be encoded
        again, with those that can be; its denial record lists the others."""
        now = self._now()

        def stamp(lost: list[str]) -> bytes:
            return self._denials.encoded(
                uncarried(denied, lost),
                delivery,
                exchange=message.exchange or "",
                routing_key=message.routing_key or "",
                now=now,
                dropped=lost,
            )

        lost = await send_salvaged(
            self._publisher,
            message.body,
            message,
            headers,
            names.DEAD_LETTER_EXCHANGE,
            names.dead_letter_routing_key(MalformedMessage.reason, delivery.queue),
            user_id=self._user,
            stamp=stamp,
        )
        log.warning(
            "headers could not be encoded again; dead-lettered as malformed_message without them",
            extra={
                "message_id": delivery.message_id,
                "queue": delivery.queue,
                "dropped": lost[:16],
            },
        )

    def _log_denial(self, delivery: Delivery, denied: Denied) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        token = denied.token
        said: dict[str, Any] = {}
        if token is not None and token.claims is not None:
            summary = token.summary()
            said = {k: summary[k] for k in ("client_id", "jti") if k in summary}
        verified = token is not None and token.verified
        log.info(
            "denied",
            extra={
                "message_id": delivery.message_id,
                "queue": delivery.queue,
                "action": denied.action,
                "reason": denied.denial.reason,
                "detail": denied.denial.detail,
                "client_id": said.get("client_id") if verified else None,
                "jti": said.get("jti") if verified else None,
                # A token that did not verify says what anyone may write: never the job's client.
                "unverified": said if said and not verified else None,
                "traceparent": delivery.headers.get(names.HEADER_TRACEPARENT),
            },
        )
