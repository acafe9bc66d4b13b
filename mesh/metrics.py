"""Prometheus metrics of a service process, served over HTTP when an address is configured
(``DELIVERY_<SERVICE>_METRICS_LISTEN``, e.g. ``0.0.0.0:9102``; off by default).

Each server has a registry of its own; services add collectors that read their state at scrape
time (nothing is counted on the hot paths for it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mesh.breaker import BreakerState, CircuitBreaker

#: The value of ``delivery_breaker_state`` for each state.
BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


def new_registry() -> CollectorRegistry:
    """A registry with the process's own metrics (CPU, memory, open files, the collector)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class BreakerCollector(Collector):
    """The state and current window of circuit breakers."""

    def __init__(self, service: str, breakers: Sequence[CircuitBreaker]) -> None:
        self._service = service
        self._breakers = list(breakers)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "delivery_breaker_state",
            "Circuit breaker state of a dependency: 0 closed, 1 open, 2 half-open",
            labels=["service", "dependency"],
        )
        calls = GaugeMetricFamily(
            "delivery_breaker_window_calls",
            "Calls through the breaker in its current window",
            labels=["service", "dependency"],
        )
        failures = GaugeMetricFamily(
            "delivery_breaker_window_failures",
            "Failed calls through the breaker in its current window",
            labels=["service", "dependency"],
        )
        for breaker in self._breakers:
            snap = breaker.snapshot()
            labels = [self._service, snap.name]
            state.add_metric(labels, BREAKER_STATE_VALUES[snap.state])
            calls.add_metric(labels, snap.calls)
            failures.add_metric(labels, snap.failures)
        return iter((state, calls, failures))


class MetricsEndpoint:
    """``/metrics`` over HTTP for one registry, on a thread of its own (scrapes never wait
    for the event loop)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(
            port, addr=host or "0.0.0.0", registry=registry
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
