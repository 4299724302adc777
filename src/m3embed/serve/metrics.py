"""Prometheus metrics of one server, in its own ``CollectorRegistry`` (several apps per process stay apart)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

ENDPOINTS = ("/v1/embeddings", "/encode", "/score", "/search", "/health", "/ready", "/metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TEXT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """Request, queue and batch metrics; ``render()`` gives the text exposition format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("m3embed_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("m3embed_request_seconds", "Request latency (arrival to response start)",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("m3embed_queue_depth", "Requests waiting for the model worker", registry=r)
        self.queue_tokens = Gauge("m3embed_queue_tokens", "Tokens waiting for the model worker", registry=r)
        self.queue_wait = Histogram("m3embed_queue_wait_seconds", "Time a request waited before its round ran",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_texts = Histogram("m3embed_batch_texts", "Texts per worker round", buckets=_TEXT_BUCKETS,
                                     registry=r)
        self.batch_tokens = Histogram("m3embed_batch_tokens", "Tokens (specials included) per worker round",
                                      buckets=_TOKEN_BUCKETS, registry=r)
        self.batch_requests = Histogram("m3embed_batch_requests", "Requests merged into one worker round",
                                        buckets=_TEXT_BUCKETS, registry=r)
        self.batch_seconds = Histogram("m3embed_batch_seconds", "Model time per worker round",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("m3embed_tokens", "Tokens encoded (specials included)", registry=r)
        self.texts = Counter("m3embed_texts", "Texts encoded", registry=r)
        self.tokens_per_second = Gauge("m3embed_tokens_per_second",
                                       "Tokens/s of the model over the last worker round", registry=r)
        self.rejected = Counter("m3embed_rejected", "Requests refused or abandoned, by reason "
                                "(queue_full, shutting_down, timeout, disconnected)", ["reason"], registry=r)
        self.dropped = Counter("m3embed_dropped_jobs", "Queued jobs the worker dropped unrun (their request was "
                               "cancelled: client gone or timed out)", registry=r)
        self.ready = Gauge("m3embed_ready", "1 when the model worker accepts requests", registry=r)
        self.busy = Gauge("m3embed_worker_busy", "1 while the model worker runs a round", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
