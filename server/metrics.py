"""Prometheus metrics, one registry per app (several apps can live in one process, e.g. in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("repirl_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("repirl_request_latency_seconds", "HTTP request latency", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_items = Histogram("repirl_batch_items", "items per PRM micro-batch", ["model"], registry=r,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_tokens = Histogram("repirl_batch_tokens", "tokens per PRM micro-batch", ["model"], registry=r,
                                      buckets=(64, 256, 1024, 4096, 16384, 65536))
        self.tokens_computed = Counter("repirl_tokens_computed_total", "tokens the PRM ran", ["model"], registry=r)
        self.tokens_reused = Counter("repirl_tokens_reused_total", "tokens served from a cache (Redis/in-process "
                                     "step cache or the engine's KV cache)", ["model"], registry=r)
        self.cache_hits = Counter("repirl_cache_hits_total", "prefix-cache step hits", ["model"], registry=r)
        self.cache_misses = Counter("repirl_cache_misses_total", "prefix-cache step misses", ["model"], registry=r)
        self.cache_errors = Counter("repirl_cache_errors_total", "prefix-cache errors (failed open)", ["op"],
                                    registry=r)
        self.cancelled_work = Counter(
            "repirl_cancelled_work_total", "work dropped because every client waiting for it went away (or timed "
            "out): PRM items (model = the PRM) or policy samples (model = the policy); stage=queued: before "
            "the engine, stage=engine: stopped inside it", ["model", "stage"], registry=r)
        self.rejected = Counter("repirl_queue_rejections_total", "requests refused with 429", ["model"], registry=r)
        self.queue_depth = Gauge("repirl_queue_items", "items waiting for the PRM", ["model"], registry=r)
        self.requests_in_flight = Gauge("repirl_requests_in_flight", "requests being served (health routes aside); "
                                        "a draining service exits when it reaches 0", registry=r)
        self.searches_in_flight = Gauge("repirl_searches_in_flight", "searches holding admission budget "
                                        "(/v1/search, /v1/best-of-n, chat): admitted, and their work not ended",
                                        registry=r)
        self.text_work_bytes = Gauge("repirl_text_work_queued_bytes", "request bytes waiting to be tokenized or "
                                     "parsed (server/text_work.py), against limits.max_text_work_bytes", registry=r)
        self.text_work_running = Gauge("repirl_text_work_running", "tokenizing or parsing jobs running", registry=r)
        self.search_samples_in_flight = Gauge("repirl_search_samples_in_flight", "policy samples those searches "
                                              "hold, against max_search_samples_in_flight", registry=r)
        self.write_timeouts = Counter("repirl_write_timeouts_total", "connections closed because a response "
                                      "write waited longer than write_timeout_s for the client to read",
                                      registry=r)
        self.searches = Counter("repirl_searches_total", "searches ended, by outcome (completed | cancelled: the "
                                "client went away | error)", ["outcome"], registry=r)
