"""Benchmarks behind ``recsys bench NAME``: each returns flat metrics; the CLI wraps them in the result envelope."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.datasets import oracle_scores
from pipelines.ingest import IngestConfig, check_parity, load_events, run_ingest
from recsys.bench import peak_rss_mb
from recsys.config import PlatformConfig
from recsys.data.builders import attach_oracle, ctr_samples
from recsys.data.loaders import load_kuailive
from recsys.data.synthetic import SynthConfig, generate
from recsys.services import KafkaClientTimeouts
from recsys.timeutil import WINDOW_END_MS

log = logging.getLogger(__name__)


def bench_synth(scale: str, cfg: PlatformConfig | None = None, seed: int = 0,
                keep_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    """Time and memory of the synthetic generator, and the oracle AUC on the CTR test split.

    ``peak_rss_mb`` is read right after generation (before the oracle is scored). ``rows_per_s`` counts the rows
    of all eight CSVs plus the title-embedding rows.
    """
    tmp = None
    out = Path(keep_dir) if keep_dir else Path(tmp := tempfile.mkdtemp(prefix=f"recsys-synth-{scale}-"))
    try:
        t0 = time.perf_counter()
        res = generate(out, SynthConfig(scale=scale, seed=seed), progress=False)
        wall = time.perf_counter() - t0
        rss = peak_rss_mb()
        rows = sum(v for k, v in res.counts.items() if k != "room")  # room_rows are the room.csv rows
        data = load_kuailive(out, tables=["click", "negative"], with_embeddings=False)
        samples, _ = ctr_samples(data.tables["click"], data.tables["negative"])
        oracle = oracle_scores(attach_oracle(samples, out / "truth"), "test")
        metrics: dict[str, Any] = {
            "rows_per_s": rows / wall,
            "wall_s": wall,
            "peak_rss_mb": rss,
            "oracle.auc": oracle["auc"],
            "oracle.uauc": oracle["uauc"],
            "oracle.logloss": oracle["logloss"],
            "ctr": float(np.mean(samples["label"].to_numpy())),
        }
        metrics.update({f"rows.{k}": v for k, v in res.counts.items()})
        return "cpu", metrics
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _raw_consume_rate(bootstrap: str, topics: tuple[str, ...], n: int, timeouts: KafkaClientTimeouts) -> float:
    """Plain kafka-python consumption of ``n`` messages (no decoding, no store): the reference rate."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=2000,
                             **timeouts.consumer_kwargs())
    try:
        seen, first, last = 0, None, None
        deadline = time.monotonic() + 600
        while seen < n and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500, max_records=2000)
            now = time.perf_counter()
            got = sum(len(r) for r in batch.values())
            if got:
                first = now if first is None else first
                seen += got
                last = now
        if seen < n or first is None or last is None or last <= first:
            raise RuntimeError(f"raw consumer read {seen} of {n} messages")
        return seen / (last - first)
    finally:
        consumer.close(autocommit=False)


def bench_ingest(scale: str, cfg: PlatformConfig | None = None, seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Replay -> Kafka -> stream worker -> Redis, against raw kafka-python consumption of the same topics.

    Uses ``services.kafka_bootstrap`` when configured, else starts a local Kafka-protocol broker as the tests do;
    Redis at ``services.redis_url`` under a throw-away key namespace. ``events_per_s`` is the worker's rate
    (poll + decode + pipelined Redis writes + offset commits), ``raw_consume_per_s`` a bare consumer's on the same
    topics, both measured from the first message (group join excluded). ``parity`` is 1 when the Redis features
    equal the batch features afterwards.
    """
    from recsys.localbroker import LocalKafkaBroker
    from recsys.store.redis_store import RedisStore
    from recsys.stream.bus import TopicLayout

    cfg = cfg or PlatformConfig()
    with tempfile.TemporaryDirectory(prefix=f"recsys-ingest-{scale}-") as tmp:
        data_dir = Path(tmp) / "data"
        generate(data_dir, SynthConfig(scale=scale, seed=seed), progress=False)
        events = load_events(data_dir, until=WINDOW_END_MS - 1)
        broker = None if cfg.services.kafka_bootstrap else LocalKafkaBroker(Path(tmp) / "broker.log")
        bootstrap = cfg.services.kafka_bootstrap or broker.start()
        icfg = IngestConfig(data_dir=data_dir, kafka_bootstrap=bootstrap, store="redis",
                            redis_url=cfg.services.redis_url, layout=TopicLayout(prefix=f"bench{uuid.uuid4().hex[:8]}"),
                            group=f"worker-{uuid.uuid4().hex[:8]}", idle_timeout_s=3.0,
                            fast_kafka_timeouts=broker is not None, progress=False)
        store = RedisStore(cfg.services.redis_url, namespace=f"bench{uuid.uuid4().hex[:8]}:")
        try:
            produced = run_ingest(replace(icfg, consume=False), events=events)
            n = produced.published
            timeouts = KafkaClientTimeouts.fast() if broker is not None else KafkaClientTimeouts()
            raw = _raw_consume_rate(bootstrap, icfg.layout.event_topics, n, timeouts)
            consumed = run_ingest(replace(icfg, produce=False), events=events, store=store)
            stats = consumed.stats
            parity = check_parity(consumed)
        finally:
            store.clear()
            store.close()
            if broker is not None:
                broker.stop()
    metrics = {
        "events": n,
        "events_per_s": stats.events_per_s,
        "raw_consume_per_s": raw,
        "ratio_to_raw": stats.events_per_s / raw,
        "produce_per_s": n / produced.produce_s,
        "dead_lettered": stats.dead_lettered,
        "parity": int(all(parity.values())),
    }
    return "cpu", metrics


def _synthetic_dir(scale: str, cfg: PlatformConfig, seed: int, tmp: str) -> Path:
    """The synthetic twin of ``scale`` (generated into ``tmp`` unless it is already in the data directory)."""
    existing = cfg.data.synthetic_dir / scale
    if (existing / "truth" / "exposures.parquet").exists() and seed == cfg.data.seed:
        return existing
    out = Path(tmp) / "data"
    generate(out, SynthConfig(scale=scale, seed=seed), progress=False)
    return out


#: Training budget of ``bench ranker``, the same for every model.
RANKER_BUDGET: dict[str, dict[str, Any]] = {
    "tiny": {"epochs": 2, "batch_size": 512, "eval_every": 20, "patience": 2},
    "small": {"epochs": 3, "batch_size": 2048, "eval_every": 115, "patience": 3},
    "full": {"epochs": 1, "batch_size": 4096, "eval_every": 500, "patience": 2},
}


def bench_ranker(scale: str, cfg: PlatformConfig | None = None, seed: int = 0,
                 models: tuple[str, ...] | None = None) -> tuple[str, dict[str, Any]]:
    """Every ranker (and the TokenMixer-Large ablations) trained with the same budget on the CTR split.

    Per model: test ``auc``, ``uauc``, ``logloss``, per-task metrics, ``train_samples_per_s``, ``p50_ms`` /
    ``p99_ms`` for scoring 500 candidates of one request, ``best_valid_auc``, ``dense_params``; plus
    ``oracle.auc`` (the generator's true click probabilities on the same test rows).
    """
    import torch

    from models.ranking.ranker import ABLATIONS, MAIN_MODELS
    from pipelines.train_ranker import (
        RankerTrainConfig,
        evaluate_rows,
        fit_ranker,
        inference_latency,
        load_ranking_dataset,
        resolve_device,
    )

    cfg = cfg or PlatformConfig()
    models = models or (*MAIN_MODELS, *ABLATIONS)
    device = resolve_device("auto")
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"recsys-ranker-{scale}-") as tmp:
        t0 = time.perf_counter()
        ds = load_ranking_dataset(_synthetic_dir(scale, cfg, seed, tmp))
        metrics["dataset_s"] = time.perf_counter() - t0
        test = ds.rows("test")
        for name in models:
            tcfg = RankerTrainConfig(model=name, seed=seed, progress=False, **RANKER_BUDGET[scale])
            t0 = time.perf_counter()
            res = fit_ranker(ds, tcfg)
            wall = time.perf_counter() - t0
            m = evaluate_rows(res.model, ds, test, tcfg.eval_batch_size, device)
            lat = inference_latency(res.model, ds, 500, 200, seed=seed)
            log.info("bench ranker %s: test auc %.4f, uauc %.4f, logloss %.4f, %d steps in %.0f s, p99 %.1f ms",
                     name, m["auc"], m["uauc"], m["logloss"], res.metrics["steps"], wall, lat["p99_ms"])
            for k, v in {**m, **lat, **res.metrics, "wall_s": wall}.items():
                if k.startswith("oracle."):
                    metrics[k] = v
                elif k != "n":
                    metrics[f"{name}.{k}"] = v
            del res
            if device.type == "cuda":
                torch.cuda.empty_cache()
        metrics["test_rows"] = int(test.size)
    return device.type, metrics


#: Training budget of ``bench retrieval``, the same for every model.
RETRIEVAL_BUDGET: dict[str, dict[str, Any]] = {
    "tiny": {"epochs": 1, "batch_size": 128, "max_steps": 20, "eval_every": 0, "patience": 1},
    "small": {"epochs": 1, "batch_size": 256, "eval_every": 300, "patience": 2},
    "full": {"epochs": 1, "batch_size": 512, "eval_every": 2000, "patience": 2},
}


def bench_retrieval(scale: str, cfg: PlatformConfig | None = None, seed: int = 0,
                    models: tuple[str, ...] | None = None,
                    granularities: tuple[str, ...] = ("streamer", "room")) -> tuple[str, dict[str, Any]]:
    """Every retriever trained with the same budget, per granularity, on the leave-one-out protocol.

    Per model and granularity: ``recall@K`` / ``ndcg@K`` for K in 5, 10, 20 (target vs its 10,000 live-at-t
    negatives, or the whole pool when smaller) and 50, 500 (vs every item live at t), ``train_samples_per_s``,
    ``wall_s``; GRank with a ranker also ``generator_recall@k1``. Plus ``<granularity>.mean_live`` and
    ``grank_vs_two_tower.<granularity>.recall@500_rel`` (relative gain).
    """
    from models.retrieval.registry import ALL_RETRIEVERS
    from pipelines.train_ranker import resolve_device
    from pipelines.train_retrieval import RetrievalTrainConfig, evaluate_retriever, fit_retriever
    from recsys.data.retrieval import build_retrieval_dataset

    cfg = cfg or PlatformConfig()
    models = models or ALL_RETRIEVERS
    device = resolve_device("auto")
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="recsys-bench-retrieval-") as tmp:
        data = load_kuailive(_synthetic_dir(scale, cfg, seed, tmp))
        for gran in granularities:
            t0 = time.perf_counter()
            ds = build_retrieval_dataset(data, gran)
            metrics[f"{gran}.dataset_s"] = time.perf_counter() - t0
            for name in models:
                tcfg = RetrievalTrainConfig(model=name, granularity=gran, seed=seed, progress=False,
                                            **RETRIEVAL_BUDGET[scale])
                t0 = time.perf_counter()
                res = fit_retriever(ds, tcfg)
                wall = time.perf_counter() - t0
                m = evaluate_retriever(res.model, ds, "test")
                log.info("bench retrieval %s/%s: ndcg@10 %.4f, recall@20 %.4f, recall@500 %.4f, %.0f s; all: %s", name,
                         gran, m["ndcg@10"], m["recall@20"], m["recall@500"], wall,
                         {k: round(v, 4) for k, v in m.items()})  # a stopped run keeps every model's metrics
                metrics[f"{gran}.mean_live"] = m.pop("mean_live")
                metrics[f"{gran}.test_targets"] = m.pop("n")
                for k, v in {**m, **res.metrics, "wall_s": wall}.items():
                    metrics[f"{name}.{gran}.{k}"] = v
                del res
            if "grank" in models and "two_tower" in models:
                metrics[f"grank_vs_two_tower.{gran}.recall@500_rel"] = (
                    metrics[f"grank.{gran}.recall@500"] / max(metrics[f"two_tower.{gran}.recall@500"], 1e-12) - 1.0)
    return device.type, metrics


#: Budget of ``bench tpp``, the same for every scheme (``first_epochs``: the first window, the one every warm-started
#: scheme builds on, gets more passes; with 2 it decided most of a scheme's average by the luck of its seed).
TPP_BUDGET: dict[str, dict[str, Any]] = {
    "tiny": {"epochs": 1, "batch_size": 32, "n_samples": 10, "eval_max_sequences": 20, "max_len": 32,
             "window_days": 7, "seeds": 2},
    "small": {"epochs": 2, "first_epochs": 4, "batch_size": 64, "n_samples": 20, "eval_max_sequences": 100,
              "max_len": 64, "window_days": 3, "seeds": 3},
    "full": {"epochs": 1, "first_epochs": 2, "batch_size": 128, "n_samples": 20, "eval_max_sequences": 200,
             "max_len": 128, "window_days": 3, "seeds": 1},
}


def bench_tpp(scale: str, cfg: PlatformConfig | None = None, seed: int = 0,
              schemes: tuple[str, ...] | None = None) -> tuple[str, dict[str, Any]]:
    """The continual protocol for the four schemes (AttNHP base, same budget), each trained with ``seeds``
    training seeds (brief §7: mean and std) on the same data: per scheme, the mean over the seeds of ``ll_next``
    (log-likelihood per event on the next window), ``ll_current``, ``forgetting``, ``bwt``, ``avg_final``,
    ``rmse_dt`` / ``type_error`` (next window), the per-window ``w<t>.ll_next`` and ``intensity_corr`` /
    ``intensity_mae_log`` (the final model against the true intensities, see
    :func:`pipelines.train_tpp.intensity_agreement`); ``ll_next_std`` / ``forgetting_std`` / ``bwt_std`` over the
    seeds and ``seed<k>.ll_next`` / ``seed<k>.forgetting`` per seed; ``oracle.ll_next`` / ``oracle.ll_current`` /
    ``oracle.w<t>.ll_next`` from the generator's true intensities on the same test sequences
    (:mod:`recsys.data.tpp_truth`, a privileged reference); ``windows``, ``seeds`` and the time unit."""
    from pipelines.train_tpp import SCHEMES, TPPTrainConfig, intensity_agreement, load_tpp_tasks, run_continual
    from recsys.data.tpp import SequenceArrays
    from recsys.data.tpp_truth import TPPTruth, oracle_log_likelihood

    cfg = cfg or PlatformConfig()
    budget = dict(TPP_BUDGET[scale])
    max_len, window_days, n_seeds = budget.pop("max_len"), budget.pop("window_days"), budget.pop("seeds")
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="recsys-bench-tpp-") as tmp:
        data_dir = _synthetic_dir(scale, cfg, seed, tmp)
        tasks = load_tpp_tasks(data_dir, window_days, max_len, seed)
        truth = TPPTruth.load(data_dir)
    metrics.update({"windows": len(tasks), "minutes_per_unit": tasks.time_scale_min, "dtime_max": tasks.dtime_max,
                    "censored_share": tasks.info["censored_share"]})

    def test_rows(t: int) -> SequenceArrays:  # the test sequences every scheme is evaluated on
        test = tasks.tasks[t].splits["test"]
        n = budget["eval_max_sequences"] or len(test)
        return test.take(np.arange(min(n, len(test))))

    oracle = [oracle_log_likelihood(truth, tasks, t, test_rows(t), window_days) for t in range(len(tasks))]
    metrics.update({"oracle.ll_next": float(np.mean([o["ll_per_event"] for o in oracle[1:]])),
                    "oracle.ll_current": float(np.mean([o["ll_per_event"] for o in oracle])),
                    "oracle.zero_intensity_events": float(sum(o["n_zero"] for o in oracle))})
    for t in range(1, len(tasks)):
        metrics[f"oracle.w{t - 1}.ll_next"] = oracle[t]["ll_per_event"]
    summary_keys = {"ll_next": "ll_per_event.next", "ll_current": "ll_per_event.current",
                    "avg_final": "ll_per_event.avg_final", "forgetting": "ll_per_event.forgetting",
                    "bwt": "ll_per_event.bwt", "rmse_dt": "rmse_dt.next", "type_error": "type_error.next"}
    last = len(tasks) - 1  # the final model against the truth on the last window's test users
    for scheme in schemes or SCHEMES:
        t0 = time.perf_counter()
        runs: list[dict[str, float]] = []
        for k in range(n_seeds):  # training seeds; the data and its user splits stay those of ``seed``
            res = run_continual(tasks, TPPTrainConfig(scheme=scheme, seed=seed + k, progress=False, **budget))
            run = {key: res.summary.get(src, float("nan")) for key, src in summary_keys.items()}
            run.update({f"w{t}.ll_next": float(res.matrix["ll_per_event"][t, t + 1]) for t in range(last)})
            run.update(intensity_agreement(res.model, tasks, last, test_rows(last), truth, window_days))
            runs.append(run)
            metrics.update({f"{scheme}.seed{k}.{key}": run[key] for key in ("ll_next", "forgetting")})
        for key in runs[0]:
            metrics[f"{scheme}.{key}"] = float(np.mean([r[key] for r in runs]))
        for key in ("ll_next", "forgetting", "bwt"):
            metrics[f"{scheme}.{key}_std"] = float(np.std([r[key] for r in runs]))
        metrics[f"{scheme}.wall_s"] = time.perf_counter() - t0
        log.info("bench tpp %s: ll_next %.3f +- %.3f, forgetting %.3f +- %.3f over %d seeds, %.0f s", scheme,
                 metrics[f"{scheme}.ll_next"], metrics[f"{scheme}.ll_next_std"], metrics[f"{scheme}.forgetting"],
                 metrics[f"{scheme}.forgetting_std"], n_seeds, metrics[f"{scheme}.wall_s"])
    metrics["seeds"] = n_seeds
    return "cpu", metrics


#: Budget of ``bench allocation``: logged sessions, ground-truth sessions, training steps, bootstrap replicates.
#: On small, 1,500 steps left the actor-critics unconverged (true value std ~1 minute over training seeds for both
#: SL-MGAC and plain AC); at 4,000 the seed spread is what the methods themselves leave (BENCHMARKS.md, allocation).
ALLOCATION_BUDGET: dict[str, dict[str, int]] = {
    "tiny": {"log_sessions": 600, "true_sessions": 3_000, "steps": 300, "boot": 50, "seeds": 2},
    "small": {"log_sessions": 5_000, "true_sessions": 20_000, "steps": 4_000, "boot": 200, "seeds": 3},
    "full": {"log_sessions": 20_000, "true_sessions": 50_000, "steps": 6_000, "boot": 200, "seeds": 3},
}
ALLOC_TARGET = 0.3


def bench_allocation(scale: str, cfg: PlatformConfig | None = None, seed: int = 0,
                     policies: tuple[str, ...] | None = None) -> tuple[str, dict[str, Any]]:
    """Every allocator trained offline on the same logged day of the feed environment, with its true value, cost
    and allocation ratio (env rollouts with common random numbers) and every OPE estimate with a session-bootstrap
    CI. Keys per policy: ``true_value``, ``true_cost``, ``alloc_ratio`` (true), ``<estimator>`` (+ ``.ci_low``,
    ``.ci_high``, ``.rel_error``) for ips / snips / ncis / dr / fqe, ``value_std_seeds`` (std of the true value over
    ``seeds`` training seeds), ``feasible`` (1 when the true allocation ratio is within 0.02 of the target or
    below); plus ``logging.true_value`` and ``alloc_target``."""
    from models.allocation.registry import ALLOCATORS
    from pipelines.ope_report import evaluate_policies
    from pipelines.train_allocator import AllocatorTrainConfig, fit_allocator
    from recsys.feed.env import FeedEnv

    cfg = cfg or PlatformConfig()
    b = ALLOCATION_BUDGET[scale]
    metrics: dict[str, Any] = {"alloc_target": ALLOC_TARGET}
    with tempfile.TemporaryDirectory(prefix="recsys-bench-alloc-") as tmp:
        env = FeedEnv(_synthetic_dir(scale, cfg, seed, tmp))
        logged = env.log(env.default_logging_policy(), b["log_sessions"], seed=seed)
        served = {}
        for name in policies or tuple(ALLOCATORS):
            values = []
            for s in range(b["seeds"]):
                t0 = time.perf_counter()
                policy, _, fit = fit_allocator(logged, AllocatorTrainConfig(policy=name, steps=b["steps"],
                                                                            alloc_target=ALLOC_TARGET, seed=s))
                truth = env.rollout(policy, b["true_sessions"], seed=seed + 7)
                values.append(truth.value)
                if s == 0:
                    served[name] = policy
                    metrics[f"{name}.fit_s"] = time.perf_counter() - t0
            metrics[f"{name}.value_std_seeds"] = float(np.std(values))
            metrics[f"{name}.value_mean_seeds"] = float(np.mean(values))
            log.info("bench allocation %s: true value %.3f +- %.3f over %d seeds", name, np.mean(values),
                     np.std(values), b["seeds"])
        res = evaluate_policies(logged, served, n_boot=b["boot"], seed=seed, env=env,
                                n_true_sessions=b["true_sessions"], truth_seed=seed + 7)
        metrics["logging.true_value"] = res.logging_value
        metrics["logging.alloc_ratio"] = res.logging_alloc_ratio
        for name, pr in res.policies.items():
            for k, v in pr.metrics().items():
                key = k.replace(f"{pr.key}.", f"{name}.", 1)
                if key == f"{name}.alloc_ratio":
                    key = f"{name}.est_alloc_ratio"
                elif key == f"{name}.true_alloc_ratio":
                    key = f"{name}.alloc_ratio"
                metrics[key] = v
            metrics[f"{name}.feasible"] = float(metrics[f"{name}.alloc_ratio"] <= ALLOC_TARGET + 0.02)
    return "cpu", metrics


def bench_mips(scale: str, cfg: PlatformConfig | None = None, seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Exact MIPS (torch) against FAISS IndexFlatIP and HNSW; see :mod:`pipelines.bench_mips`."""
    from pipelines.bench_mips import bench_mips as run

    return run(scale, cfg, seed)


#: Load levels of ``bench serve``: concurrent closed-loop clients, seconds per level, warm-up seconds per level.
SERVE_LOAD = {"tiny": ((1, 10), 3.0, 1.0), "small": ((1, 10, 50), 10.0, 2.0), "full": ((1, 10, 50), 10.0, 2.0)}


def bench_serve(scale: str, cfg: PlatformConfig | None = None, seed: int = 0) -> tuple[str, dict[str, Any]]:
    """The ranking service in one process (``recsys serve`` on the embedded defaults, warmed up to the evening peak
    of the last day) and a closed-loop load generator in another, at several concurrencies, with logged traffic
    (the impressions of the day before); then the same load on a trivial FastAPI endpoint of the same request shape
    started the same way (the framework floor). Keys ``c<N>.p50_ms|p99_ms|p999_ms|qps``, ``floor.c<N>.*`` and
    ``c<N>.qps_vs_floor``; also the live-set size and the per-stage latencies from the service's own metrics."""
    import random

    from pipelines.bench_serve_harness import flatten, floor_command, free_port, measure, start_server
    from pipelines.serve_job import busy_time, serve_command, train_served_models
    from pipelines.serve_replay import logged_requests, request_body

    cfg = cfg or PlatformConfig()
    levels, duration, warmup = SERVE_LOAD[scale]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        data_dir = _synthetic_dir(scale, cfg, seed, tmp)
        t0 = time.perf_counter()
        models = train_served_models(data_dir, Path(tmp) / "models", scale, seed)
        train_s = time.perf_counter() - t0
        until = busy_time()
        data = load_kuailive(data_dir, tables=("click", "negative"), with_embeddings=False)
        reqs = logged_requests(data, until - 24 * 3_600_000, until)
        bodies = [request_body(r) for r in random.Random(seed).sample(reqs, min(len(reqs), 5_000))]
        metrics: dict[str, Any] = {"train_s": train_s, "request_bodies": float(len(bodies))}
        port = free_port()
        cmd = serve_command(models.as_dict(), port, warm_data=data_dir, warm_until=until)
        with start_server(cmd, port, ready_timeout_s=600, log_path=Path(tmp) / "serve.log") as server:
            import json
            import urllib.request

            ready = json.loads(urllib.request.urlopen(server.url("/readyz"), timeout=10).read())
            metrics["index_items"] = float(ready["index_items"])
            metrics.update(flatten("", measure(server.url("/v1/recommend"), bodies, levels, duration, warmup)))
            stage_text = urllib.request.urlopen(server.url("/metrics"), timeout=10).read().decode()
        metrics.update(_stage_means(stage_text))
        port = free_port()
        with start_server(floor_command(port), port) as floor:
            metrics.update(flatten("floor", measure(floor.url("/v1/recommend"), bodies, levels, duration, warmup)))
    for c in levels:
        metrics[f"c{c}.qps_vs_floor"] = metrics[f"c{c}.qps"] / max(metrics[f"floor.c{c}.qps"], 1e-9)
    return "cpu", metrics


def _stage_means(prometheus_text: str) -> dict[str, float]:
    """``stage.<name>.mean_ms`` from the service's ``recsys_stage_seconds`` histogram."""
    sums, counts = {}, {}
    for line in prometheus_text.splitlines():
        for kind, into in (("_sum", sums), ("_count", counts)):
            prefix = f"recsys_stage_seconds{kind}{{stage=\""
            if line.startswith(prefix):
                into[line[len(prefix):].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return {f"stage.{k}.mean_ms": 1e3 * sums[k] / counts[k] for k in sums if counts.get(k)}


#: Budget of ``bench train``: the global batch and the steps of every launch (1 and 2 processes, same data).
TRAIN_BUDGET: dict[str, dict[str, int]] = {
    "tiny": {"batch_size": 256, "steps": 30},
    "small": {"batch_size": 2048, "steps": 30},
    "full": {"batch_size": 4096, "steps": 50},
}


def bench_train(scale: str, cfg: PlatformConfig | None = None, seed: int = 0,
                model: str = "tokenmixer") -> tuple[str, dict[str, Any]]:
    """Distributed ranker training (:mod:`pipelines.train_distributed` under torchrun: TorchRec DMP with table-wise
    sharding + DDP) with 1 and 2 processes on CPU (gloo, one OpenMP thread per process), same global batch and steps.

    Keys: ``p<N>.samples_per_s`` (global training samples per second, the first step excluded), ``p<N>.wall_s`` (the
    whole launch, dataset build included), ``p<N>.final_loss``, ``speedup`` (p2 / p1 samples/s),
    ``loss_max_rel_diff`` (largest relative difference of the two runs' per-step losses: same data and weights, so
    float summation noise, which the TokenMixer's top-k routing amplifies over the steps: ~1e-4 after 30 steps on
    small, as for one process with its batch rows reordered),
    ``steps`` and ``global_batch``. With CUDA, ``cuda.p1.*`` (one GPU, NCCL), and ``cuda.p2.*`` / ``cuda.speedup``
    when two GPUs are visible.
    """
    import torch

    from pipelines.train_distributed import launch

    cfg = cfg or PlatformConfig()
    budget = TRAIN_BUDGET[scale]
    metrics: dict[str, Any] = {"steps": budget["steps"], "global_batch": budget["batch_size"],
                               "threads_per_process": 1}
    with tempfile.TemporaryDirectory(prefix=f"recsys-bench-train-{scale}-") as tmp:
        data_dir = _synthetic_dir(scale, cfg, seed, tmp)
        base = ["--data", str(data_dir), "--model", model, "--steps", str(budget["steps"]),
                "--batch-size", str(budget["batch_size"]), "--seed", str(seed), "--no-mlflow", "--predict-rows", "0"]
        runs = [("", 1, "cpu"), ("", 2, "cpu")]
        if torch.cuda.is_available():
            runs.append(("cuda.", 1, "cuda"))
            if torch.cuda.device_count() >= 2:
                runs.append(("cuda.", 2, "cuda"))
        losses: dict[str, list[float]] = {}
        for prefix, nproc, device in runs:
            t0 = time.perf_counter()
            res = launch(nproc, [*base, "--device", device], Path(tmp) / f"{device}-p{nproc}", timeout_s=1800)
            key = f"{prefix}p{nproc}"
            metrics[f"{key}.samples_per_s"] = res["samples_per_s"]
            metrics[f"{key}.wall_s"] = time.perf_counter() - t0
            metrics[f"{key}.final_loss"] = res["losses"][-1]
            losses[key] = res["losses"]
            log.info("bench train %s: %d process(es), %.0f samples/s, final loss %.4f", device, nproc,
                     res["samples_per_s"], res["losses"][-1])
    metrics["speedup"] = metrics["p2.samples_per_s"] / metrics["p1.samples_per_s"]
    a, b = np.asarray(losses["p1"]), np.asarray(losses["p2"])
    metrics["loss_max_rel_diff"] = float(np.max(np.abs(a - b) / np.abs(a)))
    if "cuda.p2.samples_per_s" in metrics:
        metrics["cuda.speedup"] = metrics["cuda.p2.samples_per_s"] / metrics["cuda.p1.samples_per_s"]
    return "cuda" if torch.cuda.is_available() else "cpu", metrics


#: name -> function(scale, cfg) -> (device, metrics)
BENCHMARKS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {
    "synth": bench_synth,
    "ingest": bench_ingest,
    "ranker": bench_ranker,
    "retrieval": bench_retrieval,
    "mips": bench_mips,
    "tpp": bench_tpp,
    "allocation": bench_allocation,
    "serve": bench_serve,
    "train": bench_train,
}

__all__ = ["BENCHMARKS", "bench_synth"]
