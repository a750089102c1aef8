"""Job: the platform end to end on embedded defaults and small synthetic data (``recsys quickstart``).

Stages so far: synthesize -> load & validate -> dataset stats -> build datasets -> oracle scores -> stream ingestion
(in-process bus into the in-memory feature store, checked against batch features) -> TokenMixer-Large ranker
(short training budget, test metrics vs the oracle, export, MLflow registry alias ``champion``) -> GRank retrieval
(short budget on the streamer protocol against popularity, export, alias ``champion``, then retrieval for a few users
over an exact MIPS index kept current by replaying the room starts and ends up to t) -> streaming PromptTPP (the
event stream replayed in-process, a model update at every 3-day window, next-visit and gift features written to the
feature store of stage 5) -> SL-MGAC allocation (a logged feed day in the semi-synthetic environment, offline
training, export, then offline replay / OPE of the exported policy against the environment's truth, with a report)
-> the ranking service (``recsys serve`` started as its own process on the embedded defaults with the models of the
previous stages, loaded from the MLflow registry by alias when tracking is on; an hour of logged traffic replayed
through HTTP, its decision log evaluated by OPE, and a working ``curl`` line) -> MLflow run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.allocator_state import RankerEstimator
from pipelines.datasets import build_datasets
from pipelines.ingest import IngestConfig, check_parity, run_ingest
from pipelines.ope_report import run_replay
from pipelines.stream_tpp import StreamTPPConfig, stream_tpp
from pipelines.train_allocator import AllocatorTrainConfig, train_allocator_job
from pipelines.train_ranker import RankerTrainConfig, set_alias, train_ranker
from pipelines.train_retrieval import (
    RetrievalTrainConfig,
    evaluate_retriever,
    load_retrieval_dataset,
    retrieve_live,
    train_retrieval,
)
from pipelines.train_tpp import TPPTrainConfig
from recsys.config import PlatformConfig
from recsys.data.loaders import load_kuailive
from recsys.data.ranking import build_ranking_dataset
from recsys.data.stats import stats_report, table2
from recsys.data.synthetic import SynthConfig, generate
from recsys.feed.env import Estimator
from recsys.stream.features import OnlineFeatures
from recsys.stream.replay import event_table
from recsys.tracking import tracking_run

log = logging.getLogger(__name__)


@dataclass
class QuickstartResult:
    data_dir: Path
    datasets_dir: Path
    stats: dict[str, int]
    oracle: dict[str, float]
    run_id: str | None
    ranker: dict[str, float] = field(default_factory=dict)
    ranker_dir: Path | None = None
    retrieval: dict[str, float] = field(default_factory=dict)
    retrieval_dir: Path | None = None
    tpp: dict[str, float] = field(default_factory=dict)
    allocation: dict[str, float] = field(default_factory=dict)
    allocation_report: Path | None = None
    serving: dict[str, float] = field(default_factory=dict)
    curl: str = ""
    stage_s: dict[str, float] = field(default_factory=dict)


#: Ranker training budget in the quickstart (steps of 2,048 samples; the benchmark trains longer).
QUICKSTART_RANKER_STEPS = {"tiny": 40, "small": 150, "full": 300}
#: GRank training budget in the quickstart (steps of 256 anchors).
QUICKSTART_RETRIEVAL_STEPS = {"tiny": 30, "small": 150, "full": 300}


def run_quickstart(config: PlatformConfig, out_dir: str | Path = "runs/quickstart", scale: str = "small",
                   seed: int = 0, echo=print) -> QuickstartResult:
    """Run every landed stage; ``echo`` receives the human-readable report lines."""
    out = Path(out_dir)
    data_dir = out / f"synthetic-{scale}-seed{seed}"
    stage_s: dict[str, float] = {}
    with tracking_run(config.tracking, run_name=f"quickstart-{scale}", tags={"job": "quickstart"}) as tracker:
        tracker.log_params({"scale": scale, "seed": seed, "data_dir": str(data_dir)})

        t0 = time.perf_counter()
        echo(f"[1/10] synthesizing KuaiLive ({scale}, seed {seed}) -> {data_dir}")
        generate(data_dir, SynthConfig(scale=scale, seed=seed))
        stage_s["synth"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        echo("[2/10] loading and validating the KuaiLive files")
        data = load_kuailive(data_dir, cache_dir=data_dir / ".cache")
        stage_s["load"] = time.perf_counter() - t0
        report = stats_report(data)
        echo(report)
        tracker.log_text(report, "stats.txt")

        t0 = time.perf_counter()
        echo("[3/10] building CTR samples, top-K eval sets (live-at-t negatives), sequences and TPP windows")
        ds = build_datasets(data, out / "datasets", truth_dir=data_dir / "truth")
        stage_s["datasets"] = time.perf_counter() - t0
        for k, v in ds.counts.items():
            echo(f"    {k:>28}: {v:,}")

        echo("[4/10] oracle (ground-truth click probability) on the CTR test split")
        for k, v in ds.oracle.items():
            echo(f"    oracle.{k:<10} {v:.4f}")
        t0 = time.perf_counter()
        echo("[5/10] streaming ingestion: replay in event-time order -> in-process bus -> stream worker -> "
             "in-memory feature store")
        ing = run_ingest(IngestConfig(data_dir=data_dir, progress=False), events=event_table(data))
        stage_s["ingest"] = time.perf_counter() - t0
        parity = check_parity(ing)
        echo(f"    {ing.stats.processed:,} events at {ing.stats.events_per_s:,.0f} events/s; online == batch "
             "features: " + ", ".join(f"{k} {'ok' if v else 'MISMATCH'}" for k, v in parity.items()))
        if not all(parity.values()):
            raise RuntimeError(f"online features differ from batch features: {parity}")
        t0 = time.perf_counter()
        steps = QUICKSTART_RANKER_STEPS[scale]
        echo(f"[6/10] TokenMixer-Large multi-task ranker: {steps} training steps on the CTR train split, test "
             "metrics, export, MLflow registry")
        rds = build_ranking_dataset(data, truth_dir=data_dir / "truth")
        tcfg = RankerTrainConfig(model="tokenmixer", epochs=1, max_steps=steps, batch_size=2048 if scale != "tiny" else 512,
                                 eval_every=max(steps // 3, 1), patience=3, seed=seed, latency_reps=30)
        rk = train_ranker(rds, tcfg, config.tracking, export_dir=out / "ranker" / "tokenmixer")
        stage_s["ranker"] = time.perf_counter() - t0
        ranker = {k: rk.metrics[k] for k in ("test.auc", "test.uauc", "test.logloss", "oracle.auc",
                                             "train_samples_per_s", "p99_ms") if k in rk.metrics}
        echo("    " + ", ".join(f"{k} {v:,.0f}" if k.endswith("per_s") else f"{k} {v:.1f}" if k.endswith("_ms")
                                else f"{k} {v:.4f}" for k, v in ranker.items()))
        echo(f"    exported to {rk.export_dir}" + (f"; registered {tcfg.register_name} v{rk.model_version}"
                                                    if rk.model_version else ""))
        if rk.model_version and tcfg.register_name:
            set_alias(tcfg.register_name, rk.model_version, "champion", config.tracking)
            echo(f"    alias models:/{tcfg.register_name}@champion -> version {rk.model_version}")
        tracker.log_metrics({"ranker": ranker})
        t0 = time.perf_counter()
        retrieval, rt = _retrieval_stage(data_dir, config, out, scale, seed, echo)
        stage_s["retrieval"] = time.perf_counter() - t0
        tracker.log_metrics({"retrieval": retrieval})
        t0 = time.perf_counter()
        tpp = _tpp_stage(data_dir, config, ing.store, scale, seed, echo)
        stage_s["tpp"] = time.perf_counter() - t0
        tracker.log_metrics({"tpp": tpp})
        t0 = time.perf_counter()
        allocation, report = _allocation_stage(data_dir, config, out, scale, seed, echo,
                                               RankerEstimator(rk.model, rds, data.tables))
        stage_s["allocation"] = time.perf_counter() - t0
        tracker.log_metrics({"allocation": allocation})
        t0 = time.perf_counter()
        models = {"retriever": _registry_ref(rt, "kuailive-retriever", config),
                  "ranker": _registry_ref(rk, tcfg.register_name, config),
                  "policy": str(out / "allocator" / "slmgac")}
        serving, curl = _serving_stage(data_dir, data, config, out, models, scale, seed, echo)
        stage_s["serving"] = time.perf_counter() - t0
        tracker.log_metrics({"serving": serving})
        stats = table2(data)
        tracker.log_metrics({"ingest": {"events": ing.stats.processed, "events_per_s": ing.stats.events_per_s}})
        tracker.log_metrics({"oracle": ds.oracle, "counts": ds.counts, "stage_s": stage_s})
        tracker.log_metrics({k.lstrip("#").lower(): v for k, v in stats.items()})
        if tracker.run_id:
            echo(f"MLflow run {tracker.run_id} in experiment '{config.tracking.experiment}' "
                 f"({config.tracking.tracking_uri}); browse with: mlflow ui --backend-store-uri "
                 f"{config.tracking.tracking_uri}")
        return QuickstartResult(data_dir=data_dir, datasets_dir=ds.out_dir, stats=stats, oracle=ds.oracle,
                                run_id=tracker.run_id, ranker=ranker, ranker_dir=rk.export_dir, retrieval=retrieval,
                                retrieval_dir=rt.export_dir, tpp=tpp, allocation=allocation,
                                allocation_report=report, serving=serving, curl=curl, stage_s=stage_s)


def _retrieval_stage(data_dir: Path, config: PlatformConfig, out: Path, scale: str, seed: int, echo):
    """Stage 7: GRank on the streamer protocol vs popularity, export + alias, live retrieval over exact MIPS."""
    steps = QUICKSTART_RETRIEVAL_STEPS[scale]
    echo(f"[7/10] GRank retrieval (streamer): {steps} training steps on leave-one-out train clicks against live-at-t "
         "negatives, test Recall/NDCG vs popularity, export, MLflow registry, live MIPS")
    ds = load_retrieval_dataset(data_dir, "streamer", cache_dir=data_dir / ".cache")
    tcfg = RetrievalTrainConfig(model="grank", granularity="streamer", epochs=1, max_steps=steps,
                                batch_size=256 if scale != "tiny" else 64, eval_every=0, seed=seed)
    rt = train_retrieval(ds, tcfg, config.tracking, export_dir=out / "retrieval" / "grank-streamer")
    pop = evaluate_retriever(None, ds, "test")
    keys = ("ndcg@10", "recall@20", "recall@50")
    metrics = {**{f"grank.{k}": rt.metrics[f"test.{k}"] for k in keys}, **{f"popularity.{k}": pop[k] for k in keys},
               "train_samples_per_s": rt.metrics["train_samples_per_s"]}
    echo("    " + ", ".join(f"{k} {v:,.0f}" if k.endswith("per_s") else f"{k} {v:.4f}" for k, v in metrics.items()))
    echo(f"    exported to {rt.export_dir}" + (f"; registered {tcfg.register_name} v{rt.model_version}"
                                                if rt.model_version else ""))
    if rt.model_version and tcfg.register_name:
        set_alias(tcfg.register_name, rt.model_version, "champion", config.tracking)
        echo(f"    alias models:/{tcfg.register_name}@champion -> version {rt.model_version}")
    t = int(ds.eval_sets["test"].targets["timestamp"].max())
    users = ds.user_index.lookup(ds.eval_sets["test"].targets["user_id"].to_numpy()[:3])
    live = retrieve_live(rt.model, ds, users, t, k=5)
    echo(f"    live MIPS at t={t}: replayed {live.updates:,} room starts/ends into the index, {live.live_at_t:,} "
         "streamers live")
    for u, items, scores in zip(users, live.items, live.scores):
        top = ", ".join(f"{s}:{v:.2f}" for s, v in zip(ds.catalog.raw_ids(items), scores))
        echo(f"    user {ds.user_index.ids[u - 1]} -> streamers {top}")
    metrics["live_items"] = float(live.live_at_t)
    return metrics, rt


def _tpp_stage(data_dir: Path, config: PlatformConfig, store, scale: str, seed: int, echo) -> dict[str, float]:
    """Stage 8: streaming PromptTPP over the in-process replay, features into the stage-5 feature store."""
    window_days = 7 if scale == "tiny" else 3
    echo(f"[8/10] streaming PromptTPP: replay -> in-process bus -> a model update at every {window_days}-day window "
         "(warm start, no replay of old windows) -> next-visit / gift features in the feature store")
    train = TPPTrainConfig(scheme="prompttpp", epochs=1, batch_size=64, n_samples=10, eval_max_sequences=40,
                           seed=seed, progress=False)
    cfg = StreamTPPConfig(train=train, window_days=window_days, max_len=32)
    res = stream_tpp(cfg, store, config.tracking, data_dir=data_dir)
    for r in res.windows:
        echo(f"    window {int(r['window'])}: {int(r['users']):,} users, test ll/event {r['test.ll_per_event']:.3f}, "
             f"rmse_dt {r['test.rmse_dt']:.2f}, type error {r['test.type_error']:.3f}, {r['update_s']:.1f} s")
    last = res.windows[-1]
    users = store.scan_keys("u:*:tpp")[:3]
    feats = OnlineFeatures(store).tpp([int(k.split(":")[1]) for k in users])
    for key, f in zip(users, feats):
        echo(f"    {key}: next visit in {f['next_visit_min']:.0f} min, P(gift within 1 h) {f['p_gift_1h']:.3f}")
    return {"windows": float(len(res.windows)), "features_written": float(res.features_written),
            "last.test.ll_per_event": last["test.ll_per_event"], "events": float(res.events)}


#: Allocation budget in the quickstart: logged sessions, training steps, bootstrap replicates, truth sessions.
QUICKSTART_ALLOCATION = {"tiny": (300, 150, 20, 1_000), "small": (2_000, 600, 100, 5_000),
                         "full": (5_000, 1_500, 200, 20_000)}


def _allocation_stage(data_dir: Path, config: PlatformConfig, out: Path, scale: str, seed: int, echo,
                      estimator: Estimator) -> tuple[dict[str, float], Path]:
    """Stage 9: SL-MGAC trained offline on a logged feed day, exported, then replayed / OPE-evaluated; the policy's
    state holds the ranker's predictions (``estimator``), as the service will feed it."""
    sessions, steps, boot, true_sessions = QUICKSTART_ALLOCATION[scale]
    echo(f"[9/10] SL-MGAC allocation: log {sessions:,} feed sessions with the epsilon-greedy logging policy, train "
         f"offline for {steps} steps on the ranker's predictions as state, export, then offline replay / OPE "
         "against the environment's truth")
    job = train_allocator_job(data_dir, AllocatorTrainConfig(policy="slmgac", steps=steps, seed=seed),
                              config.tracking, n_log_sessions=sessions, n_true_sessions=true_sessions,
                              export_dir=out / "allocator" / "slmgac", estimator=estimator)
    m = job.metrics
    echo(f"    true value {m['true_value']:.2f} min/session, cost {m['true_cost']:.2f}, allocation ratio "
         f"{m['true_alloc_ratio']:.3f} (target 0.3); exported to {job.export_dir}")
    rep = run_replay(data_dir, [str(job.export_dir), "constant:0.3"], sessions, seed + 1,
                     tracking=config.tracking, out_dir=out / "ope", n_boot=boot, n_true_sessions=true_sessions,
                     estimator=estimator)
    res = {"slmgac.true_value": m["true_value"], "slmgac.alloc_ratio": m["true_alloc_ratio"]}
    for name, pr in rep.results.policies.items():
        truth = pr.truth.value if pr.truth is not None else float("nan")
        dr = pr.estimates["dr"]
        echo(f"    OPE {name}: DR {dr.value:.2f} [{dr.ci[0]:.2f}, {dr.ci[1]:.2f}] vs true {truth:.2f}; "
             f"SNIPS {pr.estimates['snips'].value:.2f}, ESS/n {pr.ess_fraction:.2f}")
        res[f"ope.{pr.key}.dr"] = dr.value
    echo(f"    report: {rep.report} (and {rep.html.name}, with plots)")
    return res, rep.report


def _registry_ref(result, name: str | None, config: PlatformConfig) -> str:
    """``models:/<name>@champion`` when the stage registered a version, else its export directory."""
    if config.tracking.enabled and name and getattr(result, "model_version", None):
        return f"models:/{name}@champion"
    return str(result.export_dir)


#: Requests of logged traffic the quickstart replays through the service.
QUICKSTART_SERVE_REQUESTS = {"tiny": 100, "small": 300, "full": 300}


def _serving_stage(data_dir: Path, data, config: PlatformConfig, out: Path, models: dict[str, str], scale: str,
                   seed: int, echo) -> tuple[dict[str, float], str]:
    """Stage 10: ``recsys serve`` as its own process, logged traffic through HTTP, OPE of its decision log."""
    import shlex

    import numpy as np

    from pipelines.bench_serve_harness import free_port, start_server
    from pipelines.ope_report import run_ope
    from pipelines.serve_job import busy_time, curl_line, post_json, serve_command
    from pipelines.serve_replay import logged_requests, replay
    from recsys.feed.decision_log import REWARD_WINDOW_MS

    until = busy_time()
    n = QUICKSTART_SERVE_REQUESTS[scale]
    echo(f"[10/10] ranking service: `recsys serve` on the embedded defaults (stream replayed into its in-memory "
         f"store up to t={until}), {n} logged requests through HTTP, OPE of its decision log")
    port = free_port()
    log_path = out / "serving" / "decisions.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    env = {"RECSYS_TRACKING__TRACKING_URI": config.tracking.tracking_uri}
    cmd = serve_command(models, port, warm_data=data_dir, warm_until=until, decision_log=log_path)
    reqs = logged_requests(data, until - 3_600_000, until, max_requests=n)
    with start_server(cmd, port, ready_timeout_s=600, env=env, log_path=out / "serving" / "serve.log") as server:
        url = server.url("/v1/recommend")
        lat: list[float] = []

        def post(body: dict) -> dict:
            t = time.perf_counter()
            resp = post_json(url, body)
            lat.append(1e3 * (time.perf_counter() - t))
            return resp

        responses = replay(reqs, post)
        body = {"user_id": reqs[0].user_id, "k": 5, "time_ms": until}
        example = post_json(url, body)
    inserted = sum(r["allocation"]["insert"] for r in responses)
    metrics = {"requests": float(len(responses)), "p50_ms": float(np.percentile(lat, 50)),
               "p99_ms": float(np.percentile(lat, 99)), "insert_ratio": inserted / max(len(responses), 1),
               "fallbacks": float(sum(r["fallback"] for r in responses))}
    echo("    models: " + ", ".join(f"{k} {v}" for k, v in example["models"].items()))
    echo(f"    {len(responses)} requests: p50 {metrics['p50_ms']:.1f} ms, p99 {metrics['p99_ms']:.1f} ms (one client, "
         f"HTTP included), live rooms inserted in {metrics['insert_ratio']:.1%} of the feed slots")
    top = ", ".join(f"{it['live_id']} ({it['p_click']:.2f})" for it in example["items"][:5])
    echo(f"    user {body['user_id']}: rooms {top}; allocation insert={example['allocation']['insert']} "
         f"p={example['allocation']['prob_insert']:.2f}")
    ope = run_ope(log_path, [models["policy"], "constant:0.3", "never"], config.tracking, out / "serving" / "ope",
                  data_dir=data_dir, n_boot=50, seed=seed, run_name="ope-service-log")
    res = ope.results
    echo(f"    decision log: {res.n_decisions} decisions, {res.logging_alloc_ratio:.1%} inserted, "
         f"{res.n_rewarded} inserted rooms clicked within {REWARD_WINDOW_MS // 60_000} min (the rewards, from the "
         "click table)"
         + ("; with no reward every estimate below is 0" if res.n_rewarded == 0 else ""))
    for name, pr in res.policies.items():
        dr = pr.estimates["dr"]
        dr_text = f"DR n/a ({dr.note})" if dr.diverged else f"DR {dr.value:.3f}"
        echo(f"    OPE on the service's decision log, {name}: SNIPS {pr.estimates['snips'].value:.3f}, "
             f"{dr_text} min/session")
        metrics[f"ope.{pr.key}.snips"] = pr.estimates["snips"].value
    curl = curl_line(port, body)
    start = "recsys " + shlex.join(cmd[3:])  # cmd = [python, -m, recsys.cli, serve, ...]
    echo("    the service was stopped; start it again and query it with:")
    echo(f"      {start}")
    echo(f"      {curl}")
    return metrics, curl
