"""Prometheus metrics of `serving.server` at TF Serving's path `/monitoring/prometheus/metrics`.

Exposition text (`prometheus_client`, a registry of this server's own, nothing of the process's
default one):

| metric | type | labels |
|---|---|---|
| `kdem_serving_requests_total` | counter | model, signature, transport (rest/grpc), status (TF code) |
| `kdem_serving_request_latency_seconds` | histogram | model, signature, transport |
| `kdem_serving_batch_size` | histogram (images per model call) | |
| `kdem_serving_batch_latency_seconds` | histogram (one model call) | |
| `kdem_serving_queue_waiting` / `kdem_serving_queue_max` | gauge | |
| `kdem_serving_shed_requests_total` | counter: refused, queue full (429 / RESOURCE_EXHAUSTED) | |
| `kdem_serving_dropped_requests_total` | counter: caller gone or deadline passed before compute | |
| `kdem_serving_batched_images_total` | counter: images sent to the model | |
| `kdem_serving_model_version` | gauge: the served version | model |
| `kdem_serving_warmup_requests_total` | counter: warm-up records replayed at load | model, version |

Requests are counted from the records the transports hand to the audit log (`MeteredAudit` wraps
it, so every decision the audit log sees, 401s and 429s included, is counted once). Label values
that clients choose are bounded: a model name the server does not serve and a signature name the
model does not have are counted as `other`. With tokens on, the route needs a token like any
other (`Authorization: Bearer ...`; Prometheus' `authorization` scrape setting).
"""
from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kdem_tf.artifacts import SEARCH_SIGNATURE

METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's --monitoring_config_file path
OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The metrics of one server process over its `ServingCore` (serving.server.core)."""

    def __init__(self, core):
        self.core = core
        self.registry = CollectorRegistry()
        self.requests = Counter("kdem_serving_requests", "Requests answered, by TF status code.",
                                ["model", "signature", "transport", "status"], registry=self.registry)
        self.latency = Histogram("kdem_serving_request_latency_seconds", "Request latency in the server.",
                                 ["model", "signature", "transport"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.batch_size = Histogram("kdem_serving_batch_size", "Images per model call of the micro-batcher.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_latency = Histogram("kdem_serving_batch_latency_seconds", "Duration of one model call.",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(CoreCollector(core))

    def bounded_labels(self, model, signature) -> tuple:
        """(model, signature) label values: names the server serves, else `other`."""
        served = self.core.models.get(model) if isinstance(model, str) else None
        if served is None:
            return OTHER, OTHER if signature else ""
        if not signature:
            return model, ""
        current = served.current
        known = signature == SEARCH_SIGNATURE or (current is not None and signature in current.signatures)
        return model, signature if known else OTHER

    def observe_request(self, fields: dict) -> None:
        """One audit record (serving.server.audit field names) -> request count and latency."""
        model, signature = self.bounded_labels(fields.get("model"), fields.get("signature"))
        transport = fields.get("transport") or ""
        self.requests.labels(model, signature, transport, fields.get("status") or "UNKNOWN").inc()
        if fields.get("latency_ms") is not None:
            self.latency.labels(model, signature, transport).observe(float(fields["latency_ms"]) / 1000.0)

    def timed_batches(self, run):
        """Wraps the batcher's `run(key, requests) -> outputs` to observe batch sizes and durations."""
        def run_and_observe(key, requests):
            start = time.perf_counter()
            outputs = run(key, requests)
            self.batch_latency.observe(time.perf_counter() - start)
            self.batch_size.observe(sum(len(output) for output in outputs))
            return outputs
        return run_and_observe

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CoreCollector:
    """Read at each scrape from the core: the batcher's queue and counters, versions, warm-up."""

    def __init__(self, core):
        self.core = core

    def collect(self):
        batcher = self.core.batcher
        gauges = {"kdem_serving_queue_waiting": ("Requests queued for a batch.", batcher.waiting),
                  "kdem_serving_queue_max": ("The queue's bound (--max-queue).", batcher.max_queue)}
        for name, (text, value) in gauges.items():
            yield GaugeMetricFamily(name, text, value=value)
        counters = {"kdem_serving_shed_requests": ("Requests refused: queue full.", batcher.shed),
                    "kdem_serving_dropped_requests": ("Requests dropped uncomputed: caller gone or deadline "
                                                      "passed.", batcher.dropped),
                    "kdem_serving_batched_images": ("Images sent to the model.", batcher.computed)}
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(name, text, value=value)
        versions = GaugeMetricFamily("kdem_serving_model_version", "The served version.", labels=["model"])
        warmup = CounterMetricFamily("kdem_serving_warmup_requests", "Warm-up records replayed at load.",
                                     labels=["model", "version"])
        for name, served in self.core.models.items():
            loaded = [served.current] if served.current is not None else []
            if served.current is not None:
                versions.add_metric([name], served.current.version)
            for version in loaded + [v for v in served.pinned.values() if v not in loaded]:
                warmup.add_metric([name, str(version.version)], getattr(version, "warmup_replayed", 0))
        yield versions
        yield warmup


class MeteredAudit:
    """The audit log (AuditLog or NoAudit) with every record also counted in `metrics`."""

    def __init__(self, audit, metrics: ServerMetrics):
        self.audit = audit
        self.metrics = metrics

    def record(self, **fields) -> None:
        self.metrics.observe_request(fields)
        self.audit.record(**fields)

    def __getattr__(self, name):  # reopen, close, stats, ... of the audit log
        return getattr(self.audit, name)


def add_metrics_route(app, metrics: ServerMetrics, auth) -> None:
    """GET /monitoring/prometheus/metrics on the FastAPI app; a token is needed when tokens are on."""
    @app.get(METRICS_PATH, include_in_schema=False)
    async def prometheus_metrics(request: Request):
        auth.check(request.headers.get("authorization"))
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def instrument(core, audit, auth, app_factory):
    """Wires metrics into one server: returns (metered audit, app) where app = app_factory(metered audit)
    with the metrics route added, and the core's batcher observed."""
    metrics = ServerMetrics(core)
    core.batcher.run = metrics.timed_batches(core.batcher.run)
    metered = MeteredAudit(audit, metrics)
    app = app_factory(metered)
    add_metrics_route(app, metrics, auth)
    return metered, app
