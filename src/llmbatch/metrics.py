"""Prometheus metrics of a run: a listener for any engine or processor.

    metrics = MetricsListener()                      # its own CollectorRegistry
    processor = BatchProcessor(client, BatchProcessorConfig(listeners=[metrics]))
    metrics.watch(processor.engine.limiter)          # limiter gauges: current rate, pause
    with metrics.serve(9100):                        # http://127.0.0.1:9100/metrics
        results = processor.process_batch(requests)

Needs the optional extra: `pip install 'llmbatch[metrics]'` (prometheus_client, imported only
when a `MetricsListener` is made). Each listener has its own `CollectorRegistry`, never the
process-global one, so several processors (and tests) in one process do not collide.

What it exports (base units, Prometheus naming):

    llmbatch_requests_total{outcome, code}     final results: outcome success|cached|failed,
                                               code ok or the error code (rate_limit, ...)
    llmbatch_attempts_total{outcome}           calls to the provider, by HTTP status or
                                               error code ("200", "429", "timeout", ...)
    llmbatch_rate_limited_total                attempts refused with 429
    llmbatch_in_flight                         calls in progress
    llmbatch_waiting_admission                 attempts waiting for the limiter / breaker / gate
    llmbatch_admission_wait_seconds            histogram, per attempt
    llmbatch_provider_seconds                  histogram, per attempt
    llmbatch_tokens_total{direction}           input / output tokens of successful requests
    llmbatch_cost_usd_total                    cost of results that have one
    llmbatch_limiter_requests_per_minute       the limiter's current (configured, stated or
                                               learned) request rate, when it has one
    llmbatch_limiter_paused                    1 while the limiter pauses every admission
    llmbatch_limiter_pause_remaining_seconds   seconds left of that pause

Results produced elsewhere (on Ray workers, by a provider's batch API) reach no listener of
this process: feed them to `record(result)`, which counts the request and replays its attempt
log (`BatchResult.timing`) into the attempt metrics. A run that both listens to its engine
and records every written result (the CLI: the output file is the truth) passes
`count_finished=False`, so each request is counted once, when it is written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .engine import attempt_outcome
from .errors import error_code
from .events import (
    AttemptFinished,
    AttemptQueued,
    Event,
    RequestFinished,
    RequestStarted,
)
from .types import BatchResult, Outcome

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = ["MetricsListener", "MetricsServer", "MissingExtraError"]

log = logging.getLogger("llmbatch")

# Admission waits run from nothing (free admission) to minutes (a paused limiter); provider
# calls from tens of milliseconds (a local server) to the request timeout.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PROVIDER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MissingExtraError(
            "Prometheus metrics need prometheus_client: pip install 'llmbatch[metrics]'"
        ) from None
    return prometheus_client


class MetricsServer:
    """The HTTP endpoint serving a registry; `close()` (or leaving `with`) stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LimiterCollector:
    """Reads the watched limiters' state at scrape time (on the HTTP server's thread).

    A limiter is anything with `status()` returning a `RateLimiterStatus` or a dict of the
    same fields (the Ray cluster limiter's); the reads are of plain floats, so a scrape racing
    the event loop sees a value a moment old at worst.
    """

    def __init__(self) -> None:
        self.limiters: list[Any] = []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        rate = GaugeMetricFamily(
            "llmbatch_limiter_requests_per_minute",
            "The limiter's current request rate (configured, stated by the server or learned)",
        )
        tokens = GaugeMetricFamily(
            "llmbatch_limiter_tokens_per_minute",
            "The limiter's current token rate (configured, stated by the server or learned)",
        )
        paused = GaugeMetricFamily(
            "llmbatch_limiter_paused", "1 while the limiter pauses every admission"
        )
        left = GaugeMetricFamily(
            "llmbatch_limiter_pause_remaining_seconds", "Seconds left of the limiter's pause"
        )
        for limiter in self.limiters:
            try:
                status = limiter.status()
            except Exception:  # a scrape must not fail because one limiter is gone
                log.debug("llmbatch metrics: limiter status failed", exc_info=True)
                continue
            fields = dict(status) if isinstance(status, dict) else asdict(status)
            rpm = fields.get("requests_per_minute")
            if rpm is not None:
                rate.add_metric([], float(rpm))
            tpm = fields.get("tokens_per_minute")
            if tpm is not None:
                tokens.add_metric([], float(tpm))
            pause = float(fields.get("paused_for") or 0.0)
            paused.add_metric([], 1.0 if pause > 0 else 0.0)
            left.add_metric([], pause)
        yield rate
        yield tokens
        yield paused
        yield left


class MetricsListener:
    """Prometheus metrics fed by engine events (call it with events) and by `record`.

    `registry`: where the metrics live (default: a new `CollectorRegistry` of its own).
    `count_finished=False`: `RequestFinished` events only mark the request's attempts as
    counted; the request itself is counted when `record` is called with its result.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, count_finished: bool = True
    ) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = (
            registry if registry is not None else prom.CollectorRegistry()
        )
        self.count_finished = count_finished
        reg = self.registry
        self.requests = prom.Counter(
            "llmbatch_requests",
            "Requests finished, by outcome (success, cached, failed) and error code",
            ["outcome", "code"],
            registry=reg,
        )
        self.attempts = prom.Counter(
            "llmbatch_attempts",
            "Calls to the provider, by HTTP status or error code",
            ["outcome"],
            registry=reg,
        )
        self.rate_limited = prom.Counter(
            "llmbatch_rate_limited", "Attempts refused with 429", registry=reg
        )
        self.in_flight = prom.Gauge("llmbatch_in_flight", "Calls in progress", registry=reg)
        self.waiting = prom.Gauge(
            "llmbatch_waiting_admission",
            "Attempts waiting for admission (rate limiter, outage breaker, concurrency gate)",
            registry=reg,
        )
        self.wait_seconds = prom.Histogram(
            "llmbatch_admission_wait_seconds",
            "Seconds an attempt waited for admission",
            buckets=WAIT_BUCKETS,
            registry=reg,
        )
        self.provider_seconds = prom.Histogram(
            "llmbatch_provider_seconds",
            "Seconds a call to the provider took",
            buckets=PROVIDER_BUCKETS,
            registry=reg,
        )
        self.tokens = prom.Counter(
            "llmbatch_tokens", "Tokens of successful requests", ["direction"], registry=reg
        )
        self.cost = prom.Counter(
            "llmbatch_cost_usd", "Cost in USD of the results that have one", registry=reg
        )
        self._limiters = _LimiterCollector()
        reg.register(self._limiters)
        # Per request in progress (keyed by its BatchRequest, alive while it is): the phase
        # it is in, so the gauges stay right whatever order events come in or go missing.
        self._phase: dict[int, str] = {}
        self._attempts_seen: set[str] = set()

    # -- feeding ------------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptQueued):
            self._enter(id(event.request), "waiting")
        elif isinstance(event, RequestStarted):
            self._enter(id(event.request), "calling")
        elif isinstance(event, AttemptFinished):
            self._enter(id(event.request), None)
            self._attempt(event.wait, event.provider, event.outcome)
        elif isinstance(event, RequestFinished):
            self._enter(id(event.request), None)
            self._phase.pop(id(event.request), None)
            if self.count_finished:
                self._request(event.result)
            else:
                self._attempts_seen.add(event.result.id)

    def record(self, result: BatchResult) -> None:
        """Count a result whose engine this listener did not hear (Ray, a batch API), or
        whose request `count_finished=False` left to be counted here."""
        self._request(result)
        if result.id in self._attempts_seen:
            self._attempts_seen.discard(result.id)
            return
        if result.timing is not None:
            for wait, provider, outcome in result.timing.attempts:
                self._attempt(wait, provider, outcome)
        elif result.attempts:
            # No attempt log (a batch API result): the calls still happened.
            last = attempt_outcome(result.response, result.error)
            self.attempts.labels(str(last)).inc(result.attempts)

    def watch(self, limiter: Any) -> None:
        """Export `limiter`'s rate and pause (anything with a `status()`; None is ignored)."""
        if limiter is not None and callable(getattr(limiter, "status", None)):
            self._limiters.limiters.append(limiter)

    # -- serving ------------------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve the metrics at http://HOST:PORT/metrics (port 0: any free port) on a daemon
        thread until the returned server is closed. Raises OSError if the port is taken."""
        server, thread = _prometheus().start_http_server(port, host, registry=self.registry)
        return MetricsServer(server, thread)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0.0 if it has none yet), e.g.
        `value("llmbatch_requests_total", {"outcome": "failed", "code": "rate_limit"})`."""
        got = self.registry.get_sample_value(name, labels or {})
        return 0.0 if got is None else float(got)

    # -- internals ----------------------------------------------------------------------------

    def _enter(self, key: int, phase: str | None) -> None:
        before = self._phase.get(key)
        if before == phase:
            return
        if before == "waiting":
            self.waiting.dec()
        elif before == "calling":
            self.in_flight.dec()
        if phase == "waiting":
            self.waiting.inc()
        elif phase == "calling":
            self.in_flight.inc()
        if phase is None:
            self._phase.pop(key, None)
        else:
            self._phase[key] = phase

    def _attempt(self, wait: float, provider: float, outcome: Outcome) -> None:
        self.attempts.labels(str(outcome)).inc()
        if outcome == 429:
            self.rate_limited.inc()
        self.wait_seconds.observe(max(0.0, wait))
        self.provider_seconds.observe(max(0.0, provider))

    def _request(self, result: BatchResult) -> None:
        response = result.response
        if result.error is not None:
            self.requests.labels("failed", error_code(result.error)).inc()
        elif response is not None:
            self.requests.labels("cached" if response.cached else "success", "ok").inc()
            self.tokens.labels("input").inc(response.usage.prompt_tokens)
            self.tokens.labels("output").inc(response.usage.completion_tokens)
        if result.cost is not None and result.cost > 0:
            self.cost.inc(result.cost)
