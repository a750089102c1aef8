"""Job: the platform end to end on embedded defaults and small synthetic data (``recsys quickstart``).

Stages so far: synthesize -> load & validate -> dataset stats -> build datasets -> oracle scores -> stream ingestion
(in-process bus into the in-memory feature store, checked against batch features) -> MLflow run.
Later stages (ingestion, training, serving) join here as they land.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.datasets import build_datasets
from pipelines.ingest import IngestConfig, check_parity, run_ingest
from recsys.config import PlatformConfig
from recsys.data.loaders import load_kuailive
from recsys.data.stats import stats_report, table2
from recsys.data.synthetic import SynthConfig, generate
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
    stage_s: dict[str, float] = field(default_factory=dict)


def run_quickstart(config: PlatformConfig, out_dir: str | Path = "runs/quickstart", scale: str = "small",
                   seed: int = 0, echo=print) -> QuickstartResult:
    """Run every landed stage; ``echo`` receives the human-readable report lines."""
    out = Path(out_dir)
    data_dir = out / f"synthetic-{scale}-seed{seed}"
    stage_s: dict[str, float] = {}
    with tracking_run(config.tracking, run_name=f"quickstart-{scale}", tags={"job": "quickstart"}) as tracker:
        tracker.log_params({"scale": scale, "seed": seed, "data_dir": str(data_dir)})

        t0 = time.perf_counter()
        echo(f"[1/5] synthesizing KuaiLive ({scale}, seed {seed}) -> {data_dir}")
        generate(data_dir, SynthConfig(scale=scale, seed=seed))
        stage_s["synth"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        echo("[2/5] loading and validating the KuaiLive files")
        data = load_kuailive(data_dir, cache_dir=data_dir / ".cache")
        stage_s["load"] = time.perf_counter() - t0
        report = stats_report(data)
        echo(report)
        tracker.log_text(report, "stats.txt")

        t0 = time.perf_counter()
        echo("[3/5] building CTR samples, top-K eval sets (live-at-t negatives), sequences and TPP windows")
        ds = build_datasets(data, out / "datasets", truth_dir=data_dir / "truth")
        stage_s["datasets"] = time.perf_counter() - t0
        for k, v in ds.counts.items():
            echo(f"    {k:>28}: {v:,}")

        echo("[4/5] oracle (ground-truth click probability) on the CTR test split")
        for k, v in ds.oracle.items():
            echo(f"    oracle.{k:<10} {v:.4f}")
        t0 = time.perf_counter()
        echo("[5/5] streaming ingestion: replay in event-time order -> in-process bus -> stream worker -> "
             "in-memory feature store")
        ing = run_ingest(IngestConfig(data_dir=data_dir, progress=False), events=event_table(data))
        stage_s["ingest"] = time.perf_counter() - t0
        parity = check_parity(ing)
        echo(f"    {ing.stats.processed:,} events at {ing.stats.events_per_s:,.0f} events/s; online == batch "
             "features: " + ", ".join(f"{k} {'ok' if v else 'MISMATCH'}" for k, v in parity.items()))
        if not all(parity.values()):
            raise RuntimeError(f"online features differ from batch features: {parity}")
        stats = table2(data)
        tracker.log_metrics({"ingest": {"events": ing.stats.processed, "events_per_s": ing.stats.events_per_s}})
        tracker.log_metrics({"oracle": ds.oracle, "counts": ds.counts, "stage_s": stage_s})
        tracker.log_metrics({k.lstrip("#").lower(): v for k, v in stats.items()})
        if tracker.run_id:
            echo(f"MLflow run {tracker.run_id} in experiment '{config.tracking.experiment}' "
                 f"({config.tracking.tracking_uri}); browse with: mlflow ui --backend-store-uri "
                 f"{config.tracking.tracking_uri}")
        return QuickstartResult(data_dir=data_dir, datasets_dir=ds.out_dir, stats=stats, oracle=ds.oracle,
                                run_id=tracker.run_id, stage_s=stage_s)
