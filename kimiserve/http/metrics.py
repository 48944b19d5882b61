"""Prometheus metrics (`GET /metrics`), one registry per app.

- `kimiserve_requests_total{protocol, task_type, status}`: tasks and requests by outcome
  (`status` is `success` or the error code);
- `kimiserve_time_to_first_token_seconds{model}` and `kimiserve_output_tokens_per_second{model}`;
- `kimiserve_engine_sequences_in_flight{engine}` / `kimiserve_engine_queue_depth{engine}`, read
  from each engine at scrape time;
- `kimiserve_reserved_credit_micros`: credit held for requests running in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kimiserve.engines.registry import ModelRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        in_flight = GaugeMetricFamily(
            "kimiserve_engine_sequences_in_flight", "Sequences an engine is decoding.", labels=["engine"]
        )
        waiting = GaugeMetricFamily(
            "kimiserve_engine_queue_depth", "Requests queued for an engine's batch.", labels=["engine"]
        )
        dropped = CounterMetricFamily(
            "kimiserve_engine_dropped_tool_calls",
            "Tool calls an upstream made past the first where one was asked for.",
            labels=["engine"],
        )
        for engine in self._models.engines():
            active = getattr(engine, "active_sequences", None)
            queued = getattr(engine, "waiting", None)
            extra = getattr(engine, "dropped_tool_calls", None)
            if isinstance(active, int):
                in_flight.add_metric([engine.name], active)
            if isinstance(queued, int):
                waiting.add_metric([engine.name], queued)
            if isinstance(extra, int):
                dropped.add_metric([engine.name], extra)
        yield in_flight
        yield waiting
        yield dropped


class Metrics:
    """Implements the pipeline's Observer, and counts requests for the protocols."""

    def __init__(self, models: ModelRegistry) -> None:
        self.registry = CollectorRegistry()
        # Told of every refused or failed request (protocol, code): the dashboard's error counts.
        self.error_sink: Callable[[str, str], None] | None = None
        self._requests = Counter(
            "kimiserve_requests",
            "Requests and tasks by protocol, task type and outcome.",
            ["protocol", "task_type", "status"],
            registry=self.registry,
        )
        self._ttft = Histogram(
            "kimiserve_time_to_first_token_seconds",
            "Time from engine start to the first generated token.",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._rate = Histogram(
            "kimiserve_output_tokens_per_second",
            "Decode speed of one finished generation, after its first token.",
            ["model"],
            buckets=(1, 5, 10, 20, 40, 80, 160, 320, 640),
            registry=self.registry,
        )
        self._reserved = Gauge(
            "kimiserve_reserved_credit_micros",
            "Credit (micro-USD) held for requests running in this process.",
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(models))

    def request(self, protocol: str, task_type: str, status: str) -> None:
        self._requests.labels(protocol, task_type, status).inc()
        if status != "success" and self.error_sink is not None:
            self.error_sink(protocol, status)

    def first_token(self, model: str, seconds: float) -> None:
        self._ttft.labels(model).observe(seconds)

    def generation(self, model: str, output_tokens: int, seconds: float) -> None:
        if output_tokens > 1 and seconds > 0:
            self._rate.labels(model).observe(output_tokens / seconds)

    def reserved(self, delta_micros: int) -> None:
        self._reserved.inc(delta_micros)

    def render(self) -> bytes:
        return generate_latest(self.registry)
