"""Job: streaming PromptTPP. Consume the event stream (Kafka or the in-process replay), close time windows as the
event-time watermark (the latest event time seen) passes them by ``lateness_ms``, update the model at each window
boundary (warm start from the previous window's
full state, no replay of old windows), log each window to MLflow, and write per-user TPP features to the store.

Features out (``recsys.stream.features.tpp_key``), computed at the window end ``T`` from each user's sequence in the
window and the intensities after ``T`` (the survival from the last event to ``T`` is conditioned on, since nothing
happened in between):

- ``next_visit_min``: expected minutes to the next room entry (mark 0), ``E[min(D, H)] = ∫_0^H S(s) ds`` with
  ``S(s) = exp(-∫_T^{T+s} λ_click)`` and ``H`` the thinning horizon ``dtime_max`` (so the expectation is censored
  at ``H``);
- ``p_gift_1h``: ``1 - exp(-∫_T^{T+60 min} λ_gift)``.

Offsets are committed once every buffered window has been consumed (the end of a replay); a restart re-reads the
open window from the last commit, so a crash loses no event. Undecodable messages go to the dead-letter topic.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from models.tpp import load_state, save_state
from pipelines.train_tpp import (
    TPPTrainConfig,
    build_model,
    evaluate,
    make_optimizer,
    set_window_lr,
    to_batch,
    train_window,
)
from recsys.config import TrackingConfig
from recsys.data.schema import EVENT_TYPE_ID
from recsys.data.tpp import SequenceArrays, TPPTasks, make_task, time_scale, window_sequences, window_start_ms
from recsys.store.base import FeatureStore
from recsys.stream.bus import EventSink, EventSource
from recsys.stream.envelope import USER_EVENT_TYPES, MalformedMessage, decode
from recsys.stream.features import tpp_key
from recsys.stream.worker import dead_letter
from recsys.timeutil import MS_PER_HOUR, MS_PER_MINUTE, WINDOW_START_MS, cst_day
from recsys.tracking import tracking_run

log = logging.getLogger(__name__)

GIFT = EVENT_TYPE_ID["gift"]
CLICK = EVENT_TYPE_ID["click"]


@torch.no_grad()
def tpp_features(model: torch.nn.Module, seqs: SequenceArrays, t_end: float, minutes_per_unit: float,
                 horizon: float, grid: int = 64, batch_size: int = 64) -> dict[str, np.ndarray]:
    """``next_visit_min`` and ``p_gift_1h`` per sequence at time ``t_end`` (in the sequences' time units)."""
    model.eval()
    hour = 60.0 / minutes_per_unit
    out = {"next_visit_min": np.zeros(len(seqs)), "p_gift_1h": np.zeros(len(seqs))}
    for i in range(0, len(seqs), batch_size):
        rows = np.arange(i, min(i + batch_size, len(seqs)))
        part = seqs.take(rows)
        b = to_batch(part)
        last = b.valid.sum(1) - 1  # position of each sequence's last event
        enc = model.encode(b)
        # query only the last position: other rows get the same (harmless) times and are ignored
        for name, span in (("next_visit_min", horizon), ("p_gift_1h", hour)):
            u = torch.linspace(0.0, span, grid, dtype=b.times.dtype)
            q = torch.full_like(b.times, t_end)[..., None] + u  # [B, S, G]
            q = torch.maximum(q, b.times[..., None])  # every query at or after its row's event (causal rows)
            lam = model.intensity_at(enc, q)  # [B, S, G, K]
            lam = lam[torch.arange(len(rows)), last]  # [B, G, K]
            step = span / (grid - 1)
            if name == "next_visit_min":
                cum = torch.cumulative_trapezoid(lam[..., CLICK], dx=step, dim=-1)
                surv = torch.exp(-torch.cat([torch.zeros_like(cum[:, :1]), cum], -1))
                out[name][rows] = torch.trapezoid(surv, dx=step, dim=-1).numpy() * minutes_per_unit
            else:
                out[name][rows] = (1 - torch.exp(-torch.trapezoid(lam[..., GIFT], dx=step, dim=-1))).numpy()
    return out


def write_tpp_features(store: FeatureStore, users: np.ndarray, feats: dict[str, np.ndarray], window: int,
                       as_of_ms: int) -> None:
    batch = store.batch()
    for i, u in enumerate(users.tolist()):
        batch.hset(tpp_key(int(u)), {"next_visit_min": f"{feats['next_visit_min'][i]:.4f}",
                                     "p_gift_1h": f"{feats['p_gift_1h'][i]:.6f}", "window": str(window),
                                     "as_of": str(as_of_ms)})
    batch.execute()


@dataclass
class StreamTPPConfig:
    train: TPPTrainConfig = field(default_factory=TPPTrainConfig)
    window_days: int = 3
    max_len: int = 64
    lateness_ms: int = MS_PER_HOUR  # a window closes once the watermark is this far past its end
    idle_timeout_s: float = 5.0
    poll_timeout_ms: int = 500
    max_records: int = 5000


@dataclass
class StreamTPPResult:
    windows: list[dict[str, float]]
    events: int
    dead_lettered: int
    features_written: int
    late_dropped: int = 0
    model: torch.nn.Module | None = None


def _window_of(ts_ms: int, window_days: int) -> int:
    return int((int(cst_day(ts_ms)) - int(cst_day(WINDOW_START_MS))) // window_days)


def _window_end(window: int, window_days: int) -> int:
    return window_start_ms(window + 1, window_days)


class StreamingTPP:
    """The per-window state machine: buffer events, and at each closed window train, evaluate, write features."""

    def __init__(self, cfg: StreamTPPConfig, store: FeatureStore, on_window=None,
                 partitions: Sequence[tuple[str, int]] = ()) -> None:
        self.cfg = cfg
        self.store = store
        self.on_window = on_window
        self.buffers: dict[int, list[tuple[int, int, int, int, int]]] = {}
        # latest event time per source partition; the expected partitions start unseen (None) and hold the watermark
        self.partition_time: dict[tuple[str, int], int | None] = {p: None for p in partitions}
        self.closed: set[int] = set()
        self.late_dropped = 0
        self.model: torch.nn.Module | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.state: bytes | None = None
        self.scale: tuple[float, float, float] | None = None
        self.rng = np.random.default_rng(cfg.train.seed)
        self.records: list[dict[str, float]] = []
        self.features_written = 0

    @property
    def watermark(self) -> int:
        """The event time every partition has reached: the minimum over partitions of their latest event time
        (partitions are consumed at different paces; one partition ahead must not close a window early). While an
        expected partition has delivered nothing yet, it is 0: no window closes before every partition is seen."""
        times = list(self.partition_time.values())
        return 0 if not times or any(t is None for t in times) else min(times)

    def add(self, etype: str, event_time: int, payload: dict, partition: tuple[str, int] = ("", 0)) -> None:
        w = _window_of(event_time, self.cfg.window_days)
        seen = self.partition_time.get(partition)
        self.partition_time[partition] = event_time if seen is None else max(seen, event_time)
        if w in self.closed:  # later than the allowed lateness: counted, not silently merged into a new window
            self.late_dropped += 1
            return
        self.buffers.setdefault(w, []).append((int(payload["user_id"]), int(event_time), EVENT_TYPE_ID[etype],
                                              int(payload["live_id"]), int(payload["streamer_id"])))

    def close_ready(self, final: bool = False) -> None:
        for w in sorted(self.buffers):
            if final or _window_end(w, self.cfg.window_days) + self.cfg.lateness_ms <= self.watermark:
                self.closed.add(w)
                self._close(w, self.buffers.pop(w))

    def _close(self, window: int, rows: list[tuple[int, int, int, int, int]]) -> None:
        events = pl.DataFrame(rows, schema={"user_id": pl.Int64, "timestamp": pl.Int64, "type": pl.Int8,
                                            "live_id": pl.Int64, "streamer_id": pl.Int64}, orient="row")
        seqs = window_sequences(events, self.cfg.window_days, self.cfg.max_len)
        if not seqs:
            log.info("tpp stream: window %d has no user with two events; skipped", window)
            return
        ws = seqs[0]
        if self.scale is None:  # the first window fixes the time unit and the horizon (brief §9)
            self.scale = time_scale(ws, self.cfg.train.seed)
            tasks = TPPTasks(tasks=[], time_scale_min=self.scale[0], dtime_max=self.scale[1])
            self.model = build_model(self.cfg.train, tasks)
            self.opt = make_optimizer(self.model, self.cfg.train.lr)
        elif self.state is not None:
            load_state(io.BytesIO(self.state), self.model, self.opt)  # warm start from the full state
        set_window_lr(self.opt, self.cfg.train, len(self.records))
        task = make_task(ws, self.scale[0], self.cfg.train.seed, self.cfg.window_days)
        t0 = time.perf_counter()
        fit = train_window(self.model, self.opt, task.splits["train"], task.splits["dev"], self.cfg.train, self.rng,
                           self.cfg.train.epochs_for(len(self.records)))
        metrics = evaluate(self.model, task.splits["test"], self.cfg.train)
        buf = io.BytesIO()
        save_state(buf, self.model, self.opt, {"window": window})
        self.state = buf.getvalue()
        end_ms = _window_end(window, self.cfg.window_days)
        t_end = (end_ms - task.start_ms) / MS_PER_MINUTE / self.scale[0]
        n = 0
        for split in task.splits.values():
            feats = tpp_features(self.model, split, t_end, self.scale[0], self.scale[1])
            write_tpp_features(self.store, split.user_id, feats, window, end_ms)
            n += len(split)
        self.features_written += n
        rec = {"window": float(window), "users": float(n), **fit, **{f"test.{k}": v for k, v in metrics.items()},
               "update_s": time.perf_counter() - t0}
        self.records.append(rec)
        log.info("tpp stream: window %d closed, %d users, test ll/event %.3f", window, n, metrics["ll_per_event"])
        if self.on_window is not None:
            self.on_window(rec)


def run_stream_tpp(source: EventSource, store: FeatureStore, dead_letters: EventSink, dlq_topic: str,
                   cfg: StreamTPPConfig, tracking: TrackingConfig | None = None,
                   partitions: Sequence[tuple[str, int]] = ()) -> StreamTPPResult:
    """Consume until idle, updating the model at every window boundary; the last open window closes at the end.
    ``partitions``: the (topic, partition) pairs of the user-event topic; the watermark waits for all of them."""
    tracking = tracking or TrackingConfig(enabled=False)
    events = bad = 0
    with tracking_run(tracking, "train-tpp-stream", tags={"job": "train_tpp", "mode": "stream",
                                                          "scheme": cfg.train.scheme}) as tr:
        tr.log_params({"window_days": cfg.window_days, "max_len": cfg.max_len, "lateness_ms": cfg.lateness_ms,
                       "train": {k: v for k, v in vars(cfg.train).items() if not isinstance(v, dict)}})
        job = StreamingTPP(cfg, store, on_window=lambda rec: tr.log_metrics(
            {k: v for k, v in rec.items() if k != "window"}, step=int(rec["window"])), partitions=partitions)
        last = time.perf_counter()
        while True:
            msgs = source.poll(max_records=cfg.max_records, timeout_ms=cfg.poll_timeout_ms)
            if not msgs:
                if time.perf_counter() - last >= cfg.idle_timeout_s:
                    break
                continue
            last = time.perf_counter()
            for msg in msgs:
                try:
                    ev = decode(msg.value)
                except MalformedMessage as exc:
                    dead_letter(dead_letters, dlq_topic, msg, exc.reason)
                    bad += 1
                    continue
                if ev.type in USER_EVENT_TYPES:
                    job.add(ev.type, ev.event_time, ev.payload, (msg.topic, msg.partition))
                    events += 1
            dead_letters.flush()
            job.close_ready()
        job.close_ready(final=True)
        source.commit()  # only once every buffered window is consumed: a restart re-reads an open window
        tr.log_metrics({"events": events, "dead_lettered": bad, "windows": len(job.records),
                        "late_dropped": job.late_dropped})
    return StreamTPPResult(windows=job.records, events=events, dead_lettered=bad,
                           features_written=job.features_written, late_dropped=job.late_dropped, model=job.model)


def stream_tpp(cfg: StreamTPPConfig, store: FeatureStore, tracking: TrackingConfig, data_dir=None,
               kafka_bootstrap: str = "", layout=None, group: str = "recsys-tpp",
               fast_kafka_timeouts: bool = False) -> StreamTPPResult:
    """Wire a source: the topics of a Kafka broker (consumer group ``group``), or the in-process replay of
    ``data_dir`` (the embedded default: the same consumer code path)."""
    from pipelines.ingest import load_events
    from recsys.services import KafkaClientTimeouts
    from recsys.stream.bus import InProcessBus, KafkaSink, KafkaSource, TopicLayout, publish
    from recsys.stream.replay import iter_events
    from recsys.timeutil import WINDOW_END_MS

    layout = layout or TopicLayout()
    if kafka_bootstrap:
        layout.ensure(kafka_bootstrap)
        timeouts = KafkaClientTimeouts.fast() if fast_kafka_timeouts else KafkaClientTimeouts()
        source, dead = KafkaSource(kafka_bootstrap, layout.event_topics, group, timeouts), KafkaSink(kafka_bootstrap)
    else:
        if data_dir is None:
            raise ValueError("the embedded stream replays a dataset: give data_dir (or a Kafka bootstrap)")
        bus = InProcessBus()
        publish(iter_events(load_events(data_dir, WINDOW_END_MS - 1)), bus.sink(), layout)
        source, dead = bus.source(layout.event_topics, group), bus.sink()
        cfg = StreamTPPConfig(**{**vars(cfg), "idle_timeout_s": 0.0, "poll_timeout_ms": 0})
    try:
        parts = [(layout.user, p) for p in range(layout.partitions)] if kafka_bootstrap else []
        return run_stream_tpp(source, store, dead, layout.dlq, cfg, tracking, partitions=parts)
    finally:
        source.close()
        dead.close()


__all__ = ["stream_tpp", "StreamTPPConfig", "StreamTPPResult", "StreamingTPP", "run_stream_tpp", "tpp_features",
           "write_tpp_features"]
