"""Jobs around the ranking service: train the three exports it serves on a short budget, start it as a separate
process on the embedded defaults (in-memory store warmed by replaying the stream up to a time), and drive it with
logged traffic. Shared by ``recsys bench serve`` and the quickstart's serving stage."""

from __future__ import annotations

import json
import shlex
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from recsys.config import TrackingConfig
from recsys.timeutil import MS_PER_DAY, MS_PER_HOUR, N_WINDOW_DAYS, WINDOW_START_MS

#: Short training budgets of the served models (steps); serving measures latency, not model quality.
SERVE_TRAIN_STEPS = {"tiny": 10, "small": 40, "full": 40}


@dataclass(frozen=True)
class ServedModels:
    retriever: str
    ranker: str
    policy: str

    def as_dict(self) -> dict[str, str]:
        return {"retriever": self.retriever, "ranker": self.ranker, "policy": self.policy}


def busy_time() -> int:
    """20:00 CST on the twin's last full day (the evening peak: many rooms live)."""
    return WINDOW_START_MS + (N_WINDOW_DAYS - 2) * MS_PER_DAY + 20 * MS_PER_HOUR  # the window starts at CST midnight


def train_served_models(data_dir: Path, out: Path, scale: str, seed: int = 0) -> ServedModels:
    """GRank (streamer granularity), TokenMixer-Large and the SL-MGAC student, each exported under ``out``
    (no MLflow, no test evaluation: these are benchmark fixtures whose speed, not quality, is measured)."""
    from pipelines.train_allocator import AllocatorTrainConfig, train_allocator_job
    from pipelines.train_ranker import RankerTrainConfig, load_ranking_dataset, train_ranker
    from pipelines.train_retrieval import (
        RetrievalTrainConfig,
        export_retriever,
        fit_retriever,
        load_retrieval_dataset,
        retriever_config,
    )

    off = TrackingConfig(enabled=False)
    steps = SERVE_TRAIN_STEPS[scale]
    rds = load_ranking_dataset(data_dir)
    rk = train_ranker(rds, RankerTrainConfig(model="tokenmixer", max_steps=steps, eval_every=steps, seed=seed,
                                             latency_reps=5, register_name=None), off, out / "ranker")
    del rds
    qds = load_retrieval_dataset(data_dir, "streamer")
    rcfg = RetrievalTrainConfig(model="grank", max_steps=steps, seed=seed, progress=False)
    retriever = export_retriever(fit_retriever(qds, rcfg).model, qds, retriever_config(qds, rcfg), out / "retriever")
    del qds
    job = train_allocator_job(data_dir, AllocatorTrainConfig(policy="slmgac", steps=steps * 10, seed=seed), off,
                              n_log_sessions=1_000, n_true_sessions=1_000, export_dir=out / "policy")
    return ServedModels(str(retriever), str(rk.export_dir), str(job.export_dir))


def serve_command(models: dict[str, str], port: int, warm_data: Path | None = None, warm_until: int | None = None,
                  decision_log: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """``recsys serve`` as an argv list (the same interpreter)."""
    cmd = [sys.executable, "-m", "recsys.cli", "serve", "--port", str(port), "--log-level", "warning"]
    for key in ("retriever", "ranker", "policy"):
        if models.get(key):
            cmd += [f"--{key}", str(models[key])]
    if warm_data is not None:
        cmd += ["--warm-data", str(warm_data)]
    if warm_until is not None:
        cmd += ["--warm-until", str(int(warm_until))]
    if decision_log is not None:
        cmd += ["--decision-log", str(decision_log)]
    return cmd + list(extra)


def curl_line(port: int, body: dict) -> str:
    return (f"curl -s -X POST http://127.0.0.1:{port}/v1/recommend -H 'content-type: application/json' "
            f"-d {shlex.quote(json.dumps(body))}")


def post_json(url: str, body: dict, timeout_s: float = 10.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


__all__ = ["SERVE_TRAIN_STEPS", "ServedModels", "busy_time", "curl_line", "post_json", "serve_command",
           "train_served_models"]
