"""``/metrics``: the service's state in Prometheus' text format.

Latency and batch sizes are histograms fed as requests finish; everything
else (OOM recoveries, model loads, memory, pages) is read from the live
objects at scrape time, so the figures are never out of step.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ragged.gpu.model_manager import ModelEvent
from ragged.gpu.stats import RecoveryStrategy
from ragged.serve.service import SearchService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Live(Collector):
    """Figures read from the service when scraped."""

    def __init__(self, service: SearchService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        pages = GaugeMetricFamily("ragged_index_pages", "Pages being searched.")
        pages.add_metric([], s.pages)
        yield pages
        resident = GaugeMetricFamily("ragged_resident_bytes", "Memory of the resident page vectors.", labels=["form"])
        chosen = GaugeMetricFamily("ragged_resident_form", "1 for the form the page vectors are searched in, "
                                   "with the form the memory policy chose, one being loaded, and why.",
                                   labels=["form", "chosen", "loading", "reason"])
        if s.resident is not None:
            resident.add_metric([s.resident.form], s.resident.memory_bytes)
            chosen.add_metric([s.resident.form, s.resident.choice.form, s.resident.loading or "",
                               s.resident.choice.reason], 1)
        yield resident
        yield chosen
        failures = CounterMetricFamily("ragged_search_failures", "Searches answered with an error.")
        failures.add_metric([], s.failures_total)
        yield failures
        recoveries = CounterMetricFamily("ragged_oom_recoveries", "Out-of-memory recoveries, by strategy.",
                                         labels=["strategy"])
        ooms = CounterMetricFamily("ragged_ooms", "Out-of-memory errors met (recovered or not).")
        stats = s.runtime.oom_handler.stats if s.runtime is not None else None
        for strategy in RecoveryStrategy:
            recoveries.add_metric([strategy.value], stats.recoveries.get(strategy, 0) if stats else 0)
        ooms.add_metric([], stats.ooms if stats else 0)
        yield recoveries
        yield ooms
        events = CounterMetricFamily("ragged_model_events", "Model loads and unloads, by kind.", labels=["event"])
        for event in ModelEvent:
            events.add_metric([event.value], s.runtime.model_manager.counts.get(event, 0) if s.runtime is not None
                              else 0)
        yield events
        loaded = GaugeMetricFamily("ragged_model_loaded", "1 while the query model is in memory.")
        loaded.add_metric([], 1 if s.embedder is not None and s.embedder.job.loaded else 0)
        yield loaded
        memory = GaugeMetricFamily("ragged_device_memory_bytes", "Memory of the model's device.",
                                   labels=["device", "kind"])
        if s.embedder is not None:
            device = s.embedder.device
            manager = s.embedder.device_manager
            counters = manager.counters(device)
            memory.add_metric([device.label, "allocated_by_ragged"], counters.allocated)
            memory.add_metric([device.label, "reserved_by_ragged"], counters.reserved)
            info = manager.try_memory_info(device)
            if info is not None:
                memory.add_metric([device.label, "used_by_all"], info.used)
                memory.add_metric([device.label, "total"], info.total)
        yield memory


class ServiceMetrics:
    """The service's metrics registry."""

    def __init__(self, service: SearchService) -> None:
        self.registry = CollectorRegistry()
        self.queries = Counter("ragged_queries", "Queries answered.", registry=self.registry)
        self.latency = Histogram("ragged_request_seconds", "Search request latency, queueing included.",
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch = Histogram("ragged_query_batch_size", "Queries embedded and scored in one pass.",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.registry.register(_Live(service))
        service.on_batch = self.batch.observe

    def render(self) -> bytes:
        """The text format."""
        return bytes(generate_latest(self.registry))
