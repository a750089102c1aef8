"""The ``recsys`` command line.

Verbs follow DESIGN.md: ``data synth|validate|stats|build``, ``ingest``, ``train ranker|retrieval|tpp|allocator``,
``evaluate``, ``replay``, ``ope``, ``serve``, ``bench``, ``quickstart``, plus ``doctor`` (service checks).

Layering: ``recsys`` never imports ``pipelines`` or ``serving`` at module level. Jobs are resolved by dotted name
(``"pipelines.quickstart:run_quickstart"``) when their verb runs, like entry points, so ``recsys`` stays the base
layer and a verb costs nothing until it is used.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recsys.config import PlatformConfig, load_config


class CliError(Exception):
    """A user-facing error: printed as ``recsys: error: ...`` with exit code 2 (bad usage) or 1 (failed)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def resolve(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (imported on use)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


# --------------------------------------------------------------------------------------------------------- handlers
def _print_counts(counts: dict[str, int], width: int) -> None:
    for k, v in counts.items():
        print(f"{k:>{width}}: {v:,}")


def cmd_data_synth(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    from recsys.data.synthetic import SynthConfig, generate

    out = Path(args.out) if args.out else cfg.data.synthetic_dir / args.scale
    res = generate(out, SynthConfig(scale=args.scale, seed=args.seed), progress=not args.quiet)
    _print_counts(res.counts, 18)
    print(f"wrote synthetic KuaiLive ({args.scale}, seed {args.seed}) to {out} in {res.wall_s:.1f} s")
    return 0


def _data_dir(args: argparse.Namespace, cfg: PlatformConfig) -> Path:
    if args.data:
        return Path(args.data)
    for candidate in (cfg.data.data_dir, cfg.data.synthetic_dir / cfg.data.scale, cfg.data.synthetic_dir / "tiny"):
        if candidate.is_dir():
            return candidate
    raise CliError(
        f"no dataset found (looked in {cfg.data.data_dir} and {cfg.data.synthetic_dir}/<scale>); place the real "
        "KuaiLive files in data/kuailive (see data/README.md), run `recsys data synth`, or pass --data DIR", 2
    )


def cmd_data_validate(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    from recsys.data.loaders import load_kuailive

    root = _data_dir(args, cfg)
    data = load_kuailive(root, cache_dir=None)  # validation always reads the CSVs themselves
    for stem, df in data.tables.items():
        print(f"  ok  {stem:<10} {df.height:>12,} rows")
    if data.title_embeddings is not None:
        print(f"  ok  title_embeddings {data.title_embeddings.shape}")
    else:
        print("  --  title_embeddings: none found (title_embeddings*.np[yz]); models fall back to no title features")
    if data.room_violations is not None and data.room_violations.height:
        print(f"  !!  room.csv: {data.room_violations.height:,} live_ids have inconsistent attributes across "
              f"p_date rows (first: {data.room_violations['live_id'][0]})")
    print(f"{root}: valid KuaiLive dataset")
    return 0


def cmd_data_stats(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    from recsys.data.loaders import load_kuailive
    from recsys.data.stats import stats_report

    root = _data_dir(args, cfg)
    print(stats_report(load_kuailive(root, cache_dir=cfg.data.cache_dir, with_embeddings=False)))
    return 0


def cmd_data_build(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    from recsys.data.loaders import load_kuailive

    root = _data_dir(args, cfg)
    data = load_kuailive(root, cache_dir=cfg.data.cache_dir, with_embeddings=False)
    truth = root / "truth"
    res = resolve("pipelines.datasets:build_datasets")(
        data, args.out, truth_dir=truth if truth.is_dir() else None, n_negatives=args.negatives, seed=args.seed,
    )
    _print_counts(res.counts, 28)
    for k, v in res.oracle.items():
        print(f"{'oracle.' + k:>28}: {v:.4f}")
    print(f"datasets written to {res.out_dir}")
    return 0


def _tracking(args: argparse.Namespace, cfg: PlatformConfig) -> PlatformConfig:
    """``--no-mlflow`` turns tracking off for this command."""
    if getattr(args, "no_mlflow", False):
        return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})})
    return cfg


def cmd_quickstart(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    cfg = _tracking(args, cfg)
    res = resolve("pipelines.quickstart:run_quickstart")(cfg, out_dir=args.out, scale=args.scale, seed=args.seed)
    print(f"quickstart done: {sum(res.stage_s.values()):.1f} s over stages "
          + ", ".join(f"{k} {v:.1f}s" for k, v in res.stage_s.items()))
    return 0


def cmd_bench(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    from recsys.bench import bench_result, write_result

    benchmarks = resolve("pipelines.benchmarks:BENCHMARKS")
    if args.name not in benchmarks:
        raise CliError(f"unknown benchmark {args.name!r}; available: {', '.join(sorted(benchmarks))}", 2)
    device, metrics = benchmarks[args.name](args.scale, cfg)
    print(write_result(bench_result(args.name, args.scale, device, metrics), args.out))
    return 0


def cmd_doctor(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    from recsys.services import check_kafka, check_redis

    statuses = [check_redis(cfg.services.redis_url)]
    if cfg.services.kafka_bootstrap:
        statuses.append(check_kafka(cfg.services.kafka_bootstrap))
    else:
        print("  --  kafka: not configured (embedded in-process replay is used)")
    for s in statuses:
        lat = f" {s.latency_ms:.1f} ms" if s.latency_ms is not None else ""
        print(f"  {'ok' if s.ok else 'XX'}  {s.name} at {s.address}{lat}: {s.detail}")
    print(f"  ok  mlflow tracking uri: {cfg.tracking.tracking_uri}")
    return 0 if all(s.ok for s in statuses) else 1


def cmd_ingest(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    ingest = importlib.import_module("pipelines.ingest")
    from recsys.stream.bus import TopicLayout

    if args.speed is not None and args.speed <= 0:
        raise CliError(f"--speed must be > 0 (a real-time factor), got {args.speed}", 2)
    both = not args.produce and not args.consume
    icfg = ingest.IngestConfig(
        data_dir=_data_dir(args, cfg) if (args.produce or both) else Path(args.data or "."),
        produce=args.produce or both, consume=args.consume or both,
        kafka_bootstrap=args.kafka if args.kafka is not None else cfg.services.kafka_bootstrap,
        store=args.store, redis_url=args.redis_url or cfg.services.redis_url, namespace=args.namespace,
        layout=TopicLayout(prefix=args.topic_prefix, partitions=args.partitions), group=args.group,
        speed=args.speed, idle_timeout_s=args.idle_timeout, fast_kafka_timeouts=args.fast_kafka_timeouts,
        progress=not args.quiet, **({"until": args.until} if args.until is not None else {}),
    )
    events = None
    if args.check_parity and not icfg.produce:
        if not args.data:
            raise CliError("--check-parity with --consume needs --data (the files the stream was replayed from)", 2)
        events = ingest.load_events(Path(args.data), icfg.until)
    res = ingest.run_ingest(icfg, events=events)
    where = f"Kafka at {icfg.kafka_bootstrap}" if icfg.kafka_bootstrap else "the in-process bus"
    if icfg.produce:
        print(f"published {res.published:,} events to {where} in {res.produce_s:.1f} s")
    if res.stats is not None:
        s = res.stats
        print(f"consumed {s.processed:,} events into the {icfg.store} store ({s.events_per_s:,.0f} events/s), "
              f"{s.dead_lettered:,} dead-lettered to {icfg.layout.dlq}, lag {s.lag}")
    if args.check_parity:
        parity = ingest.check_parity(res, icfg.spec)
        print("online == batch features: " + ", ".join(f"{k} {'ok' if v else 'MISMATCH'}" for k, v in parity.items()))
        return 0 if all(parity.values()) else 1
    return 0


RANKER_MODELS = ("tokenmixer", "rankmixer", "dcnv2", "deepfm", "wide_deep", "dnn", "tokenmixer_no_mixing",
                 "tokenmixer_shared_ffn", "tokenmixer_no_moe", "tokenmixer_mlp_global")
EMBEDDING_OPTIMIZERS = ("adam", "adagrad", "rowwise_adagrad", "sgd")


def cmd_train_ranker(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    job = importlib.import_module("pipelines.train_ranker")
    cfg = _tracking(args, cfg)
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}", 2)
    if args.lr <= 0 or args.embedding_lr <= 0:
        raise CliError("--lr and --embedding-lr must be > 0", 2)
    if args.alias and not cfg.tracking.enabled:
        raise CliError("--alias needs MLflow tracking (drop --no-mlflow)", 2)
    backbone = _json_object("--backbone", args.backbone, '{"dim": 64}')
    tcfg = job.RankerTrainConfig(
        overrides={"backbone": backbone} if backbone else {},
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, embedding_lr=args.embedding_lr,
        embedding_optimizer=args.embedding_optimizer, max_steps=args.max_steps, eval_every=args.eval_every,
        patience=args.patience, seed=args.seed,
        device=args.device, progress=not args.quiet, register_name=args.register or None,
    )
    job.RankerConfig.for_model(args.model, **dict(tcfg.overrides))  # bad --backbone fails before the data loads
    ds = job.load_ranking_dataset(_data_dir(args, cfg), cfg.data.cache_dir)
    export = Path(args.export or f"runs/ranker/{args.model}")
    res = job.train_ranker(ds, tcfg, cfg.tracking, export_dir=export)
    for k in ("auc", "uauc", "logloss"):
        print(f"{'test.' + k:>24}: {res.metrics['test.' + k]:.4f}")
    for k in ("oracle.auc", "oracle.auc_noise_free", "oracle.auc_static_user"):
        if k in res.metrics:
            print(f"{k:>24}: {res.metrics[k]:.4f}")
    print(f"{'train_samples_per_s':>24}: {res.metrics['train_samples_per_s']:,.0f}")
    print(f"{'p50_ms / p99_ms (500)':>24}: {res.metrics['p50_ms']:.1f} / {res.metrics['p99_ms']:.1f}")
    print(f"exported to {res.export_dir}")
    _report_registration(res, tcfg.register_name, args.alias, cfg, job.set_alias)
    return 0


def _torchrun(job: Any, args: argparse.Namespace, forward: list[str]) -> int:
    """Run a distributed trainer module (``job.torchrun_command``) with ``args.nproc`` processes."""
    import subprocess

    if args.nproc < 1:
        raise CliError(f"--nproc must be >= 1, got {args.nproc}", 2)
    if args.config:
        forward = [*forward, "--config", args.config]
    if args.no_mlflow:
        forward = [*forward, "--no-mlflow"]
    cmd = job.torchrun_command(args.nproc, forward)
    print(" ".join(cmd), flush=True)
    env = dict(os.environ)
    if args.device != "cuda":
        env.setdefault("OMP_NUM_THREADS", "1")  # N CPU processes: one OpenMP thread each unless told otherwise
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise CliError(f"distributed training failed (exit code {rc})", 1)
    return 0


def cmd_train_ranker_dist(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    """``torchrun --nproc_per_node N -m pipelines.train_distributed ...`` (see that module for multi-node launches)."""
    job = importlib.import_module("pipelines.train_distributed")
    forward = ["--data", str(_data_dir(args, cfg)), "--out", args.out or f"runs/ranker-dist/{args.model}",
               "--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--seed", str(args.seed), "--sharding", args.sharding, "--device", args.device]
    return _torchrun(job, args, forward)


def cmd_train_retrieval_dist(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    """``torchrun --nproc_per_node N -m pipelines.train_retrieval_distributed ...`` (GRank replicated by DDP; see that
    module for multi-node launches)."""
    job = importlib.import_module("pipelines.train_retrieval_distributed")
    options = _json_object("--options", args.options, '{"dim": 128}')
    out = args.out or f"runs/retrieval-dist/{args.model}-{args.granularity}"
    forward = ["--data", str(_data_dir(args, cfg)), "--out", out, "--model", args.model,
               "--granularity", args.granularity, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--negatives", str(args.negatives), "--lr", str(args.lr), "--seed", str(args.seed),
               "--device", args.device]
    if options:
        forward += ["--options", json.dumps(options)]
    if args.evaluate:
        forward.append("--evaluate")
    return _torchrun(job, args, forward)


def _json_object(flag: str, text: str | None, example: str) -> dict[str, Any]:
    """A ``--flag '{...}'`` JSON object (empty when not given)."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise CliError(f"{flag} must be a JSON object, e.g. '{example}': {exc}", 2) from exc
    if not isinstance(value, dict):
        raise CliError(f"{flag} must be a JSON object, got {text!r}", 2)
    return value


def _report_registration(res: Any, register_name: str | None, alias: str | None, cfg: PlatformConfig,
                         set_alias: Callable[..., None]) -> None:
    """Print the MLflow run and registered version of a training job, and set ``alias`` on the new version."""
    if res.run_id:
        print(f"MLflow run {res.run_id} in {cfg.tracking.tracking_uri}")
    if res.model_version:
        print(f"registered as {register_name} version {res.model_version}")
        if alias:
            set_alias(register_name, res.model_version, alias, cfg.tracking)
            print(f"alias models:/{register_name}@{alias} -> version {res.model_version}")


TPP_SCHEMES = ("prompttpp", "online", "retrain", "pretrain")


def cmd_train_tpp(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    job = importlib.import_module("pipelines.train_tpp")
    cfg = _tracking(args, cfg)
    for flag in ("epochs", "batch_size", "window_days", "max_len", "samples"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}", 2)
    if args.lr <= 0:
        raise CliError("--lr must be > 0", 2)
    if args.first_epochs < 0:
        raise CliError(f"--first-epochs must be >= 0, got {args.first_epochs}", 2)
    if not 0 < args.base_lr_scale <= 1:
        raise CliError(f"--base-lr-scale must be in (0, 1], got {args.base_lr_scale}", 2)
    model = _json_object("--model-options", args.model_options, '{"d_model": 64}')
    prompt = _json_object("--prompt-options", args.prompt_options, '{"pool_size": 20}')
    from models.tpp import PromptConfig, TPPConfig

    for flag, kind, options in (("--model-options", TPPConfig, model), ("--prompt-options", PromptConfig, prompt)):
        try:  # bad options fail before the data loads
            kind(**options)
        except (TypeError, ValueError) as exc:
            raise CliError(f"{flag}: {exc}", 2) from exc
    tcfg = job.TPPTrainConfig(scheme=args.scheme, epochs=args.epochs, first_epochs=args.first_epochs,
                              batch_size=args.batch_size, lr=args.lr,
                              n_samples=args.samples, eval_max_sequences=args.eval_sequences, seed=args.seed,
                              model=model, prompt=prompt, base_lr_scale=args.base_lr_scale,
                              progress=not args.quiet)
    if args.stream:
        stream = importlib.import_module("pipelines.stream_tpp")
        ingest = importlib.import_module("pipelines.ingest")
        from recsys.stream.bus import TopicLayout

        if args.lateness_min < 0:
            raise CliError(f"--lateness-min must be >= 0, got {args.lateness_min}", 2)
        kafka = args.kafka if args.kafka is not None else cfg.services.kafka_bootstrap
        scfg = stream.StreamTPPConfig(train=tcfg, window_days=args.window_days, max_len=args.max_len,
                                      lateness_ms=int(args.lateness_min * 60_000), idle_timeout_s=args.idle_timeout)
        store = ingest.make_store(args.store, args.redis_url or cfg.services.redis_url, args.namespace)
        res = stream.stream_tpp(scfg, store, cfg.tracking, data_dir=None if kafka else _data_dir(args, cfg),
                                kafka_bootstrap=kafka, layout=TopicLayout(prefix=args.topic_prefix),
                                group=args.group, fast_kafka_timeouts=args.fast_kafka_timeouts)
        for r in res.windows:
            print(f"window {int(r['window'])}: {int(r['users'])} users, test ll/event {r['test.ll_per_event']:.3f}, "
                  f"rmse_dt {r['test.rmse_dt']:.3f}, type_error {r['test.type_error']:.3f}")
        print(f"{res.events:,} events, {len(res.windows)} model updates, {res.features_written:,} user features "
              f"written to the {args.store} store, {res.dead_lettered} dead-lettered, {res.late_dropped} late")
        return 0
    tasks = job.load_tpp_tasks(_data_dir(args, cfg), args.window_days, args.max_len, args.seed, cfg.data.cache_dir)
    res = job.train_tpp(tasks, tcfg, cfg.tracking)
    for k, v in res.summary.items():
        print(f"{k:>28}: {v:.4f}")
    return 0


RETRIEVAL_MODELS = ("grank", "two_tower", "sasrec", "popularity", "grank_no_aux", "grank_no_ranker")


def cmd_train_retrieval(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    job = importlib.import_module("pipelines.train_retrieval")
    cfg = _tracking(args, cfg)
    for flag in ("epochs", "batch_size", "negatives"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}", 2)
    if args.lr <= 0:
        raise CliError("--lr must be > 0", 2)
    if args.alias and not cfg.tracking.enabled:
        raise CliError("--alias needs MLflow tracking (drop --no-mlflow)", 2)
    options = _json_object("--options", args.options, '{"dim": 128}')
    if options and args.model == "popularity":
        raise CliError("--options does not apply to popularity (it has no parameters)", 2)
    if args.model != "popularity":
        try:  # bad --options fail before the data loads
            job.RetrieverConfig.for_model(args.model, **options)
        except (ValueError, TypeError) as exc:
            raise CliError(f"--options: {exc}", 2) from exc
    tcfg = job.RetrievalTrainConfig(
        model=args.model, granularity=args.granularity, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        n_negatives=args.negatives, max_steps=args.max_steps, eval_every=args.eval_every, patience=args.patience,
        seed=args.seed, device=args.device, progress=not args.quiet, register_name=args.register or None,
        overrides=options,
    )
    ds = job.load_retrieval_dataset(_data_dir(args, cfg), args.granularity, cfg.data.cache_dir,
                                    progress=not args.quiet)
    export = Path(args.export or f"runs/retrieval/{args.model}-{args.granularity}")
    res = job.train_retrieval(ds, tcfg, cfg.tracking, export_dir=export)
    for k, v in res.metrics.items():
        if k.startswith("test.") and k != "test.n":
            print(f"{k:>28}: {v:.4f}")
    if res.model is not None:
        print(f"{'train_samples_per_s':>28}: {res.metrics['train_samples_per_s']:,.0f}")
        print(f"exported to {res.export_dir}")
    _report_registration(res, tcfg.register_name, args.alias, cfg, job.set_alias)
    return 0


def cmd_evaluate(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    job = importlib.import_module("pipelines.train_ranker")
    if not Path(args.model_dir).is_dir():
        raise CliError(f"--model-dir {args.model_dir} is not a directory (an export of `recsys train ranker`)", 2)
    ds = job.load_ranking_dataset(_data_dir(args, cfg), cfg.data.cache_dir)
    metrics = job.evaluate_export(args.model_dir, ds, args.split)
    for k, v in metrics.items():
        print(f"{k:>22}: {v:.4f}")
    return 0


# --------------------------------------------------------------------------------------------------------- replay / ope
def _check_ope_flags(args: argparse.Namespace) -> None:
    if not args.policy:
        raise CliError("give at least one target policy with --policy SPEC (e.g. --policy never --policy "
                       "threshold:score_hat:5)", 2)
    for flag in ("boot", "true_sessions"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}", 2)
    from recsys.feed.policy_spec import PolicySpecError, parse_policy

    for spec in args.policy:  # syntax errors before any data loads ("logging" is checked against the env later)
        try:
            parse_policy(spec, env=None)
        except PolicySpecError as exc:
            if "needs the environment" not in str(exc):
                raise CliError(f"--policy: {exc}", 2) from exc


def _print_ope(res: Any) -> None:
    """A compact table: one row per policy, the estimates, the truth, the allocation ratio and ESS / n."""
    from pipelines.ope_report import ESTIMATORS

    r = res.results
    header = f"{'policy':<28}{'true':>9}" + "".join(f"{e:>9}" for e in ESTIMATORS) + f"{'alloc':>8}{'alloc*':>8}" \
        f"{'ESS/n':>8}"
    print(header)
    for p in r.policies.values():
        t = p.truth
        cells = [f"{p.estimates[e].value:>9.3f}" for e in ESTIMATORS]
        print(f"{p.key[:27]:<28}{(f'{t.value:.3f}' if t else '-'):>9}" + "".join(cells)
              + f"{p.alloc_ratio:>8.3f}{(f'{t.alloc_ratio:.3f}' if t else '-'):>8}{p.ess_fraction:>8.1%}")
    print(f"({r.n_sessions:,} sessions, {r.n_decisions:,} decisions; alloc* = true allocation ratio)")
    if res.log_path is not None:
        print(f"decision log: {res.log_path}")
    print(f"report: {res.report} (and {res.html.name})")
    if res.run_id:
        print(f"MLflow run {res.run_id}")


ALLOCATOR_POLICIES = ("slmgac", "bc", "dqn", "cql", "plain_ac", "threshold")
ALLOCATOR_LR_SCHEDULES = ("constant", "cosine")


def cmd_train_allocator(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    cfg = _tracking(args, cfg)
    for flag in ("steps", "batch_size", "sessions", "true_sessions"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}", 2)
    if not 0.0 < args.alloc_target <= 1.0:
        raise CliError(f"--alloc-target must lie in (0, 1], got {args.alloc_target}", 2)
    if args.logs and not Path(args.logs).is_file():
        raise CliError(f"--logs {args.logs} not found: a Parquet decision log (written by `recsys replay`)", 2)
    options = _json_object("--options", args.options, '{"hidden": 128}')
    data_dir = _data_dir(args, cfg)
    estimator = _ranker_estimator(args, data_dir)
    job = importlib.import_module("pipelines.train_allocator")
    tcfg = job.AllocatorTrainConfig(policy=args.policy, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                    lr_schedule=args.lr_schedule, alloc_target=args.alloc_target, seed=args.seed,
                                    options=options)
    export = Path(args.export or f"runs/allocator/{args.policy}")
    res = job.train_allocator_job(data_dir, tcfg, cfg.tracking, n_log_sessions=args.sessions,
                                  n_true_sessions=args.true_sessions, logs_path=args.logs, export_dir=export,
                                  estimator=estimator)
    m = res.metrics
    print(f"{args.policy}: true value {m['true_value']:.3f} per session, cost {m['true_cost']:.3f}, allocation "
          f"ratio {m['true_alloc_ratio']:.3f} (target {args.alloc_target})")
    print(f"exported to {res.export_dir} (evaluate it with `recsys replay --policy {res.export_dir}`)")
    if res.run_id:
        print(f"MLflow run {res.run_id} in {cfg.tracking.tracking_uri}")
    return 0


def _ranker_estimator(args: argparse.Namespace, data_dir: str | Path) -> Any:
    """``--ranker EXPORT``: the environment's state from that ranker's predictions (None without the flag)."""
    if not args.ranker:
        return None
    if not Path(args.ranker, "ranker.json").is_file():
        raise CliError(f"--ranker {args.ranker}: not a ranker export (no ranker.json; write one with "
                       "`recsys train ranker --export DIR`)", 2)
    return resolve("pipelines.allocator_state:ranker_estimator")(args.ranker, data_dir)


def cmd_replay(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    cfg = _tracking(args, cfg)
    _check_ope_flags(args)
    if args.sessions < 1:
        raise CliError(f"--sessions must be >= 1, got {args.sessions}", 2)
    from recsys.feed.policy_spec import PolicySpecError, parse_policy

    try:
        parse_policy(args.logging, env=None)
    except PolicySpecError as exc:
        if "needs the environment" not in str(exc):
            raise CliError(f"--logging: {exc}", 2) from exc
    out = Path(args.out)
    data_dir = _data_dir(args, cfg)
    res = resolve("pipelines.ope_report:run_replay")(
        data_dir, args.policy, args.sessions, args.seed, logging_spec=args.logging,
        tracking=cfg.tracking, out_dir=out, log_out=args.log_out, n_boot=args.boot,
        n_true_sessions=args.true_sessions, estimator=_ranker_estimator(args, data_dir),
    )
    _print_ope(res)
    return 0


def cmd_ope(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    cfg = _tracking(args, cfg)
    _check_ope_flags(args)
    if not Path(args.logs).is_file():
        raise CliError(f"--logs {args.logs} not found: a Parquet decision log (written by `recsys replay`) or a "
                       "service decision log (.jsonl)", 2)
    if args.logs.endswith(".jsonl") and not args.data:
        raise CliError(f"--logs {args.logs}: a service decision log needs --data to join outcomes", 2)
    if args.ranker and not args.data:
        raise CliError("--ranker needs --data (the environment whose state the ranker predicts)", 2)
    res = resolve("pipelines.ope_report:run_ope")(
        args.logs, args.policy, cfg.tracking, args.out, data_dir=args.data, n_boot=args.boot, seed=args.seed,
        n_true_sessions=args.true_sessions, truth_seed=args.truth_seed,
        estimator=_ranker_estimator(args, args.data),
    )
    _print_ope(res)
    return 0


#: The spec grammar of recsys.feed.policy_spec.POLICY_SPEC_HELP (not imported: building the parser stays cheap).
_POLICY_SPEC_HELP = ("always[:P] | never | constant:P | threshold:FEATURE:THETA[:TEMPERATURE] | "
                     "logging[:ALLOC_RATIO[:EPS]] | an exported policy directory")


def _add_ope_parsers(sub: Any) -> None:
    rp = sub.add_parser("replay", help="simulate a logged day in the feed env, then off-policy evaluate targets")
    rp.add_argument("--policy", action="append", default=[], metavar="SPEC",
                    help=f"target policy (repeatable): {_POLICY_SPEC_HELP}")
    rp.add_argument("--data", help="dataset directory with truth/ (default: data/kuailive, else data/synthetic/...)")
    rp.add_argument("--sessions", type=int, default=10_000, help="sessions in the simulated log")
    rp.add_argument("--seed", type=int, default=0, help="seed of the simulated day (and of the bootstrap)")
    rp.add_argument("--logging", default="logging", metavar="SPEC", help="the logging policy (stochastic)")
    rp.add_argument("--out", default="runs/replay", help="report directory")
    rp.add_argument("--log-out", help="decision log Parquet file (default: <out>/decision_log.parquet)")
    rp.add_argument("--boot", type=int, default=200, help="bootstrap resamples of sessions for the CIs")
    rp.add_argument("--true-sessions", type=int, default=20_000, help="sessions of the ground-truth rollouts")
    rp.add_argument("--ranker", metavar="EXPORT",
                    help="a ranker export whose predictions (P(click), watch time) form the policy state, as the "
                    "service feeds it (default: the environment truth)")
    rp.add_argument("--no-mlflow", action="store_true")
    rp.set_defaults(func=cmd_replay)
    op = sub.add_parser("ope", help="off-policy evaluation of target policies on a decision log, with a report")
    op.add_argument("--logs", required=True, help="Parquet decision log (e.g. from `recsys replay`), or a service "
                    "decision log (.jsonl, outcomes joined from the click table of --data)")
    op.add_argument("--policy", action="append", default=[], metavar="SPEC",
                    help=f"target policy (repeatable): {_POLICY_SPEC_HELP}")
    op.add_argument("--data", help="dataset directory with truth/: adds the env's true values (and `logging`); "
                    "for a .jsonl log, the dataset whose clicks give the outcomes (truth/ optional)")
    op.add_argument("--out", default="runs/ope", help="report directory")
    op.add_argument("--boot", type=int, default=200, help="bootstrap resamples of sessions for the CIs")
    op.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    op.add_argument("--true-sessions", type=int, default=20_000, help="sessions of the ground-truth rollouts")
    op.add_argument("--truth-seed", type=int, default=0, help="seed of the ground-truth rollouts")
    op.add_argument("--ranker", metavar="EXPORT", help="the ranker whose predictions formed the state of a log "
                    "written by `recsys replay --ranker` (the true values then use the same state)")
    op.add_argument("--no-mlflow", action="store_true")
    op.set_defaults(func=cmd_ope)


# --------------------------------------------------------------------------------------------------------- serve
def _time_ms(text: str, flag: str) -> int:
    """Epoch milliseconds from an integer or an ISO date-time (naive = UTC)."""
    from datetime import datetime, timezone

    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"{flag}: {text!r} is neither epoch milliseconds nor an ISO date-time", 2) from exc
    return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def serve_config(args: argparse.Namespace, cfg: PlatformConfig) -> Any:
    """The service's :class:`serving.config.ServeConfig` from the flags (pydantic errors name the bad flag)."""
    from pydantic import ValidationError

    from serving.config import ServeConfig

    values = {"retriever": args.retriever, "ranker": args.ranker, "policy": args.policy,
              "tracking_uri": cfg.tracking.tracking_uri, "store": args.store,
              "redis_url": args.redis_url or cfg.services.redis_url, "k1": args.k1, "k2": args.k2,
              "mips_backend": args.mips, "device": args.device, "decision_log": args.decision_log,
              "admin_token": args.admin_token or os.environ.get("RECSYS_ADMIN_TOKEN") or None,
              "warm_data": args.warm_data, "torch_threads": args.threads, "max_batch": args.max_batch,
              "batch_wait_ms": args.batch_wait_ms, "alloc_target": args.alloc_target,
              "alloc_pacing": not args.no_alloc_pacing,
              "warm_until": _time_ms(args.warm_until, "--warm-until") if args.warm_until else None}
    try:
        return ServeConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"--{str(first['loc'][0]).replace('_', '-')}: " if first["loc"] else ""
        raise CliError(f"{where}{first['msg']}", 2) from exc


def cmd_serve(args: argparse.Namespace, cfg: PlatformConfig) -> int:
    scfg = serve_config(args, cfg)
    for flag, ref in (("--retriever", scfg.retriever), ("--ranker", scfg.ranker), ("--policy", scfg.policy)):
        if ref and ":/" not in ref and not Path(ref).is_dir():
            raise CliError(f"{flag}: {ref} is not a directory (train one with `recsys train`, or pass models:/...)", 2)
    if scfg.warm_data is not None and not Path(scfg.warm_data).is_dir():
        raise CliError(f"--warm-data: {scfg.warm_data} is not a dataset directory", 2)
    import uvicorn

    from serving.app import create_app

    print(f"serving on http://{args.host}:{args.port}  (docs: /docs, metrics: /metrics)\n"
          f"try: curl -s -X POST http://{args.host}:{args.port}/v1/recommend -H 'content-type: application/json' "
          f"-d '{{\"user_id\": 1, \"k\": 5}}'", flush=True)
    uvicorn.run(create_app(scfg), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log)
    return 0


def _add_serve_parser(sub: Any) -> None:
    sv = sub.add_parser("serve", help="the FastAPI retrieve -> rank -> allocate service (uvicorn)")
    sv.add_argument("--retriever", required=True, help="retriever export dir or MLflow URI (models:/name@alias)")
    sv.add_argument("--ranker", help="ranker export dir or MLflow URI (default: retrieval order)")
    sv.add_argument("--policy", help="allocation policy export dir or MLflow URI (default: never insert)")
    sv.add_argument("--store", choices=("memory", "redis"), default="memory")
    sv.add_argument("--redis-url", help="default: services.redis_url of the config")
    sv.add_argument("--warm-data", help="embedded mode: replay this dataset's events into the in-memory store")
    sv.add_argument("--warm-until", help="replay events up to this time (epoch ms or ISO date-time)")
    sv.add_argument("--decision-log", help="JSONL path or kafka://host:port/topic for the decisions")
    sv.add_argument("--admin-token", help="bearer token of POST /admin/reload (or RECSYS_ADMIN_TOKEN)")
    sv.add_argument("--k1", type=int, default=200, help="MIPS candidates per request")
    sv.add_argument("--k2", type=int, default=50, help="candidates kept by the GRank ranker for the ranker")
    sv.add_argument("--mips", choices=("torch", "faiss"), default="torch")
    sv.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sv.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    sv.add_argument("--max-batch", type=int, default=64, help="most concurrent requests served by one pipeline run")
    sv.add_argument("--batch-wait-ms", type=float, default=0.0, help="how long a batch waits for more requests")
    sv.add_argument("--alloc-target", type=float, help="insertion ratio the exposure pacer holds (default: the "
                    "target stored with the policy export)")
    sv.add_argument("--no-alloc-pacing", action="store_true", help="serve the policy's probabilities unpaced")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    sv.add_argument("--access-log", action="store_true", help="uvicorn access log (off by default)")
    sv.set_defaults(func=cmd_serve)


# --------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="Live-streaming recommendation platform on KuaiLive.")
    p.add_argument("--config", help="YAML config file (RECSYS_SECTION__FIELD env vars override it)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="KuaiLive files: synthesize, validate, describe, build datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    s = dsub.add_parser("synth", help="write a synthetic KuaiLive dataset with ground truth")
    s.add_argument("--scale", choices=["tiny", "small", "full"], default="tiny")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="output directory (default: data/synthetic/<scale>)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_data_synth)
    for name, func, helptext in (("validate", cmd_data_validate, "check every file's schema and values"),
                                 ("stats", cmd_data_stats, "print the paper's Table 2 for a dataset")):
        v = dsub.add_parser(name, help=helptext)
        v.add_argument("--data", help="dataset directory (default: data/kuailive, else data/synthetic/<scale>)")
        v.set_defaults(func=func)
    b = dsub.add_parser("build", help="CTR samples, top-K eval sets, sequences, TPP windows")
    b.add_argument("--data", help="dataset directory")
    b.add_argument("--out", default="runs/datasets")
    b.add_argument("--negatives", type=int, default=10_000, help="live-at-t negatives per top-K target")
    b.add_argument("--seed", type=int, default=42)
    b.set_defaults(func=cmd_data_build)

    q = sub.add_parser("quickstart", help="the whole platform on small synthetic data and embedded defaults")
    q.add_argument("--scale", choices=["tiny", "small", "full"], default="small")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--no-mlflow", action="store_true", help="do not track the run in MLflow")
    q.set_defaults(func=cmd_quickstart)

    be = sub.add_parser("bench", help="run a benchmark and print its JSON result")
    be.add_argument("name", help="benchmark name, e.g. synth")
    be.add_argument("--scale", choices=["tiny", "small", "full"], default="small")
    be.add_argument("--out", help="also write the JSON result to this file")
    be.set_defaults(func=cmd_bench)

    d = sub.add_parser("doctor", help="check that the configured Redis / Kafka / MLflow answer")
    d.set_defaults(func=cmd_doctor)

    train = sub.add_parser("train", help="train a model (ranker, retrieval, tpp, allocator)")
    tsub = train.add_subparsers(dest="train_command", required=True, metavar="MODEL")
    r = tsub.add_parser("ranker", help="multi-task ranker (TokenMixer-Large, RankMixer, baselines) on the CTR split")
    r.add_argument("--model", choices=RANKER_MODELS, default="tokenmixer")
    r.add_argument("--data", help="dataset directory (default: data/kuailive, else data/synthetic/<scale>)")
    r.add_argument("--backbone", help="JSON overrides of the backbone config, e.g. '{\"dim\": 64, \"expansion\": 2}'")
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--batch-size", type=int, default=2048)
    r.add_argument("--lr", type=float, default=3e-3, help="dense learning rate (Adam)")
    r.add_argument("--embedding-lr", type=float, default=1e-2, help="embedding-table learning rate")
    r.add_argument("--embedding-optimizer", choices=EMBEDDING_OPTIMIZERS, default="adam",
                   help="optimizer of the embedding tables (the dense part always uses Adam)")
    r.add_argument("--max-steps", type=int, default=0, help="step budget (0 = epochs only)")
    r.add_argument("--eval-every", type=int, default=0, help="validation every N steps (0 = each epoch)")
    r.add_argument("--patience", type=int, default=2, help="validation checks without AUC gain before stopping")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    r.add_argument("--export", help="export directory (default: runs/ranker/<model>)")
    r.add_argument("--register", default="kuailive-ranker", help="MLflow registered model name ('' = do not register)")
    r.add_argument("--alias", help="set this registry alias (e.g. champion) on the new version")
    r.add_argument("--no-mlflow", action="store_true")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_train_ranker)
    rd = tsub.add_parser("ranker-dist", help="the ranker on N processes with torchrun (TorchRec sharded tables + DDP)")
    rd.add_argument("--nproc", type=int, default=2, help="processes on this machine (one per GPU; gloo on CPU)")
    rd.add_argument("--model", choices=RANKER_MODELS, default="tokenmixer")
    rd.add_argument("--data", help="dataset directory (default: data/kuailive, else data/synthetic/<scale>)")
    rd.add_argument("--steps", type=int, default=100)
    rd.add_argument("--batch-size", type=int, default=2048, help="global batch size")
    rd.add_argument("--seed", type=int, default=0)
    rd.add_argument("--sharding", choices=["table_wise", "column_wise", "row_wise"], default="table_wise")
    rd.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rd.add_argument("--out", help="export directory (default: runs/ranker-dist/<model>)")
    rd.add_argument("--no-mlflow", action="store_true")
    rd.set_defaults(func=cmd_train_ranker_dist)
    rrd = tsub.add_parser("retrieval-dist", help="GRank retrieval on N processes with torchrun (DDP, gloo / NCCL)")
    rrd.add_argument("--nproc", type=int, default=2, help="processes on this machine (one per GPU; gloo on CPU)")
    rrd.add_argument("--model", choices=[m for m in RETRIEVAL_MODELS if m not in ("two_tower", "popularity")],
                     default="grank")
    rrd.add_argument("--granularity", choices=["streamer", "room"], default="streamer")
    rrd.add_argument("--data", help="dataset directory (default: data/kuailive, else data/synthetic/<scale>)")
    rrd.add_argument("--options", help="JSON overrides of the model config, e.g. '{\"dim\": 128, \"dropout\": 0.0}'")
    rrd.add_argument("--steps", type=int, default=100)
    rrd.add_argument("--batch-size", type=int, default=256, help="global anchors per step")
    rrd.add_argument("--negatives", type=int, default=255, help="live-at-t negatives per training anchor")
    rrd.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    rrd.add_argument("--seed", type=int, default=0)
    rrd.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rrd.add_argument("--evaluate", action="store_true", help="rank 0 evaluates the trained model on the test split")
    rrd.add_argument("--out", help="export directory (default: runs/retrieval-dist/<model>-<granularity>)")
    rrd.add_argument("--no-mlflow", action="store_true")
    rrd.set_defaults(func=cmd_train_retrieval_dist)
    rt = tsub.add_parser("retrieval", help="GRank retrieval and baselines on the leave-one-out top-K protocol")
    rt.add_argument("--model", choices=RETRIEVAL_MODELS, default="grank")
    rt.add_argument("--granularity", choices=["streamer", "room"], default="streamer")
    rt.add_argument("--data", help="dataset directory (default: data/kuailive, else data/synthetic/<scale>)")
    rt.add_argument("--options", help="JSON overrides of the model config, e.g. '{\"dim\": 128, \"k1\": 500}'")
    rt.add_argument("--epochs", type=int, default=3)
    rt.add_argument("--batch-size", type=int, default=256)
    rt.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    rt.add_argument("--negatives", type=int, default=255, help="live-at-t negatives per training anchor")
    rt.add_argument("--max-steps", type=int, default=0, help="step budget (0 = epochs only)")
    rt.add_argument("--eval-every", type=int, default=0, help="validation every N steps (0 = each epoch)")
    rt.add_argument("--patience", type=int, default=2, help="validation checks without NDCG@10 gain before stopping")
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rt.add_argument("--export", help="export directory (default: runs/retrieval/<model>-<granularity>)")
    rt.add_argument("--register", default="kuailive-retriever",
                    help="MLflow registered model name ('' = do not register)")
    rt.add_argument("--alias", help="set this registry alias (e.g. champion) on the new version")
    rt.add_argument("--no-mlflow", action="store_true")
    rt.add_argument("--quiet", action="store_true", help="no progress bar")
    rt.set_defaults(func=cmd_train_retrieval)
    tp = tsub.add_parser("tpp", help="neural TPPs (PromptTPP and baselines) under the continual window protocol")
    tp.add_argument("--scheme", choices=TPP_SCHEMES, default="prompttpp")
    tp.add_argument("--data", help="dataset directory (default: data/kuailive, else data/synthetic/<scale>)")
    tp.add_argument("--window-days", type=int, default=3, help="days per task window (CST)")
    tp.add_argument("--max-len", type=int, default=128, help="events kept per user and window (the last ones)")
    tp.add_argument("--epochs", type=int, default=2, help="passes per window (best dev epoch kept)")
    tp.add_argument("--first-epochs", type=int, default=0, help="passes over the first window (0 = --epochs)")
    tp.add_argument("--batch-size", type=int, default=64)
    tp.add_argument("--lr", type=float, default=1e-3)
    tp.add_argument("--base-lr-scale", type=float, default=1.0,
                    help="from the second window on, the backbone learns at lr x this; the prompt pools keep lr")
    tp.add_argument("--samples", type=int, default=50, help="thinning samples per prediction")
    tp.add_argument("--eval-sequences", type=int, default=0, help="test sequences per window (0 = all)")
    tp.add_argument("--model-options", help="JSON overrides of the TPP config, e.g. '{\"d_model\": 64}'")
    tp.add_argument("--prompt-options", help="JSON overrides of the prompt pool, e.g. '{\"pool_size\": 20}'")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--stream", action="store_true",
                    help="consume the event stream and update the model at every window boundary")
    tp.add_argument("--kafka", help="stream: bootstrap HOST:PORT (default: services.kafka_bootstrap; empty = "
                                    "in-process replay of --data)")
    tp.add_argument("--topic-prefix", default="kuailive")
    tp.add_argument("--group", default="recsys-tpp", help="stream: consumer group id")
    tp.add_argument("--store", choices=["memory", "redis"], default="memory", help="stream: where features go")
    tp.add_argument("--redis-url", help="default: services.redis_url")
    tp.add_argument("--namespace", default="rs:", help="key prefix in Redis")
    tp.add_argument("--lateness-min", type=float, default=60.0, help="stream: minutes a window waits for late events")
    tp.add_argument("--idle-timeout", type=float, default=5.0, help="stream: stop after this many idle seconds")
    tp.add_argument("--fast-kafka-timeouts", action="store_true", help="short group timeouts (test brokers)")
    tp.add_argument("--no-mlflow", action="store_true")
    tp.add_argument("--quiet", action="store_true")
    tp.set_defaults(func=cmd_train_tpp)
    al = tsub.add_parser("allocator", help="SL-MGAC (or a baseline) trained offline on a logged feed day")
    al.add_argument("--policy", choices=ALLOCATOR_POLICIES, default="slmgac")
    al.add_argument("--data", help="dataset directory with truth/ (default: data/kuailive, else data/synthetic/<scale>)")
    al.add_argument("--logs", help="train on this Parquet decision log instead of logging a day in the environment")
    al.add_argument("--sessions", type=int, default=5000, help="sessions of the logged day (without --logs)")
    al.add_argument("--true-sessions", type=int, default=20000, help="environment sessions for the true value")
    al.add_argument("--steps", type=int, default=1500)
    al.add_argument("--batch-size", type=int, default=256)
    al.add_argument("--lr", type=float, default=1e-3)
    al.add_argument("--lr-schedule", choices=ALLOCATOR_LR_SCHEDULES, default="constant",
                    help="learning rate over each training phase (cosine: decays to 0)")
    al.add_argument("--alloc-target", type=float, default=0.3, help="allowed share of live insertions")
    al.add_argument("--options", help="JSON overrides of the allocator config, e.g. '{\"hidden\": 128}'")
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--export", help="export directory (default: runs/allocator/<policy>)")
    al.add_argument("--ranker", metavar="EXPORT",
                    help="a ranker export whose predictions (P(click), watch time) form the policy state, as the "
                    "service feeds it (default: the environment truth)")
    al.add_argument("--no-mlflow", action="store_true")
    al.set_defaults(func=cmd_train_allocator)
    ing = sub.add_parser("ingest", help="replay events through Kafka (or in-process) into the feature store")
    ing.add_argument("--data", help="dataset directory to replay (default: data/kuailive, else data/synthetic/<scale>)")
    ing.add_argument("--produce", action="store_true", help="only publish the replay (needs --kafka)")
    ing.add_argument("--consume", action="store_true", help="only run the stream worker (needs --kafka)")
    ing.add_argument("--kafka", help="bootstrap HOST:PORT (default: services.kafka_bootstrap; empty = in-process)")
    ing.add_argument("--store", choices=["memory", "redis"], default="memory")
    ing.add_argument("--redis-url", help="default: services.redis_url")
    ing.add_argument("--namespace", default="rs:", help="key prefix in Redis")
    ing.add_argument("--topic-prefix", default="kuailive")
    ing.add_argument("--partitions", type=int, default=3)
    ing.add_argument("--group", default="recsys-ingest", help="consumer group id")
    ing.add_argument("--speed", type=float, help="replay at this multiple of real time (default: as fast as possible)")
    ing.add_argument("--until", type=int, help="replay events up to this epoch-ms time")
    ing.add_argument("--idle-timeout", type=float, default=5.0, help="stop consuming after this many idle seconds")
    ing.add_argument("--fast-kafka-timeouts", action="store_true", help="short group timeouts (test brokers)")
    ing.add_argument("--check-parity", action="store_true", help="compare the store with batch features")
    ing.add_argument("--quiet", action="store_true")
    ing.set_defaults(func=cmd_ingest)
    ev = sub.add_parser("evaluate", help="metrics of an exported ranker on a CTR split")
    ev.add_argument("--model-dir", required=True, help="export directory of `recsys train ranker`")
    ev.add_argument("--data", help="dataset directory")
    ev.add_argument("--split", choices=["train", "valid", "test"], default="test")
    ev.set_defaults(func=cmd_evaluate)
    _add_ope_parsers(sub)
    _add_serve_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kafka").setLevel(logging.ERROR)  # its event-loop timing warnings are noise here
        for noisy in ("alembic", "mlflow.store"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
        return int(args.func(args, cfg) or 0)
    except CliError as exc:
        print(f"recsys: error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # boundary: clear message for bad input, no traceback unless -v
        from pydantic import ValidationError

        from recsys.data.errors import DataValidationError

        if isinstance(exc, (DataValidationError, ValidationError, FileNotFoundError, ValueError)):
            if args.verbose:
                raise
            print(f"recsys: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
