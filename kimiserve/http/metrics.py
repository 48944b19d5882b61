"""Prometheus metrics (`GET /metrics`), one registry per app.

- `kimiserve_requests_total{protocol, task_type, status}`: tasks and requests by outcome
  (`status` is `success` or the error code);
- `kimiserve_time_to_first_token_seconds{model}` and `kimiserve_output_tokens_per_second{model}`;
- `kimiserve_engine_sequences_in_flight{engine}` / `kimiserve_engine_queue_depth{engine}`, read
  from each engine at scrape time;
- `kimiserve_repairs_total{kind, engine}`: upstream answers an engine repaired, by kind
  (engines/openai_compat/repairs.py), read from each engine's `repairs` counts at scrape time;
- `kimiserve_reserved_credit_micros`: credit held for requests running in this process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kimiserve.domain.served import ServedModels

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, models: ServedModels) -> None:
        self._models = models

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "kimiserve_engine_sequences_in_flight", "Sequences an engine is decoding.", labels=["engine"]
        )
        waiting = GaugeMetricFamily(
            "kimiserve_engine_queue_depth", "Requests queued for an engine's batch.", labels=["engine"]
        )
        repaired = CounterMetricFamily(
            "kimiserve_repairs", "Upstream answers repaired, by kind.", labels=["kind", "engine"]
        )
        for engine in self._models.engines():
            counts = getattr(engine, "repairs", None)
            if isinstance(counts, Mapping):
                for kind, count in sorted(counts.items()):
                    repaired.add_metric([kind, engine.name], count)
            active = getattr(engine, "active_sequences", None)
            queued = getattr(engine, "waiting", None)
            if isinstance(active, int):
                in_flight.add_metric([engine.name], active)
            if isinstance(queued, int):
                waiting.add_metric([engine.name], queued)
        yield in_flight
        yield waiting
        yield repaired


class Metrics:
    """Implements the pipeline's Observer, and counts requests for the protocols."""

    def __init__(self, models: ServedModels) -> None:
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
