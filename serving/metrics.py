"""Prometheus metrics of one serving process (its own registry: no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("refitd_requests_total", "HTTP requests by route and status code.", ["route", "code"], registry=r)
        self.latency = Histogram("refitd_request_latency_seconds", "HTTP request latency.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("refitd_batch_size", "Texts per model call.", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("refitd_batch_seconds", "Seconds per model call.", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("refitd_queue_depth", "Texts waiting for the model.", registry=r)
        self.predictions = Counter("refitd_predictions_total", "Predictions by predicted class.", ["label"], registry=r)
        self.model_info = Gauge("refitd_model_version_info", "The model version being served (value 1).", ["version"], registry=r)
        self.swaps = Counter("refitd_model_swaps_total", "Hot swaps to a new model version.", registry=r)
        self.refused = Counter("refitd_model_loads_refused_total", "Model versions refused at load or smoke query.", registry=r)
        self.log_pending = Gauge("refitd_prediction_log_pending", "Prediction rows not yet in the database.", registry=r)
        self._request_children: dict[tuple[str, int], tuple] = {}
        self._prediction_children: dict[str, Counter] = {}
        self.log_rejected = Gauge("refitd_prediction_log_rejected", "Prediction rows the database refused, kept in "
                                  "spool/rejected-*.jsonl since the process started.", registry=r)

    def request_done(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request and observe its latency (label children cached: a dict hit per request)."""
        key = (route, code)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self.requests.labels(route=route, code=str(code)),
                                                      self.latency.labels(route=route))
        children[0].inc()
        children[1].observe(seconds)

    def predicted(self, label: str) -> None:
        child = self._prediction_children.get(label)
        if child is None:
            child = self._prediction_children[label] = self.predictions.labels(label=label)
        child.inc()

    def serving(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
