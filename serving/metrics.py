"""Prometheus metrics of one service instance (its own registry: two apps in one process never share counters)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES: tuple[str, ...] = ("features", "retrieve", "prerank", "rank", "allocate", "log")
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class ServingMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.request_seconds = Histogram("recsys_request_seconds", "End-to-end /v1/recommend latency",
                                         buckets=_BUCKETS, registry=r)
        self.stage_seconds = Histogram("recsys_stage_seconds", "Latency of each pipeline stage", ["stage"],
                                       buckets=_BUCKETS, registry=r)
        self.requests = Counter("recsys_requests_total", "Recommendations served", ["kind"], registry=r)
        self.fallbacks = Counter("recsys_fallbacks_total", "Requests served by a fallback", ["reason"], registry=r)
        self.errors = Counter("recsys_errors_total", "Errors by kind (the request may still have been served)",
                              ["kind"], registry=r)
        self.index_items = Gauge("recsys_index_items", "Items in the live MIPS index", registry=r)
        self.live_rooms = Gauge("recsys_live_rooms", "Rooms live at the last sync", registry=r)
        self.store_up = Gauge("recsys_store_up", "1 when the last feature-store call succeeded", registry=r)
        self.reloads = Counter("recsys_reloads_total", "Model reloads", ["result"], registry=r)
        self.batch_size = Histogram("recsys_batch_size", "Requests served together by one pipeline run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.decisions = Counter("recsys_decisions_total", "Allocation decisions", ["action"], registry=r)
        self.pacing_offset = Gauge("recsys_pacing_offset", "Logit offset the exposure pacer adds to the policy",
                                   registry=r)


__all__ = ["STAGES", "ServingMetrics"]
