"""`recsys quickstart` runs every landed stage on embedded defaults and leaves a readable MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import PlatformConfig, TrackingConfig


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ten stages; a few minutes on a quiet 2-core machine, more under load
def test_quickstart_tiny_tracks_an_mlflow_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.quickstart import run_quickstart

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = PlatformConfig(tracking=TrackingConfig(tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"),
                                                 experiment="qs-test"))
    lines: list[str] = []
    res = run_quickstart(cfg, out_dir=tmp_path / "qs", scale="tiny", seed=3, echo=lines.append)
    assert 0.75 <= res.oracle["auc"] <= 0.92
    # the oracle's decomposition: removing the logit noise, then freezing the users' drift, each lowers the ceiling
    assert res.oracle["auc"] > res.oracle["auc_noise_free"] > res.oracle["auc_static_user"] > 0.5
    assert res.stats["#Users"] == 95
    assert (res.datasets_dir / "ctr_samples.parquet").exists()
    assert (res.datasets_dir / "topk_streamer" / "neg_items.npy").exists()
    assert any("#Users" in line for line in lines)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["oracle.auc"] == pytest.approx(res.oracle["auc"])
    assert run.data.params["scale"] == "tiny"
    assert "stats.txt" in {a.path for a in client.list_artifacts(res.run_id)}

    # the ranker stage: trained, evaluated against the oracle, exported, registered with the champion alias
    assert 0.5 < res.ranker["test.auc"] <= 1.0
    assert res.ranker["oracle.auc"] == pytest.approx(res.oracle["auc"])
    assert (res.ranker_dir / "weights.pt").exists()
    version = client.get_model_version_by_alias("kuailive-ranker", "champion")
    ranker_run = client.get_run(version.run_id)
    assert ranker_run.data.tags["model"] == "tokenmixer"
    assert "learning_curve.png" in {a.path for a in client.list_artifacts(version.run_id)}
    assert ranker_run.data.metrics["test.auc"] == pytest.approx(res.ranker["test.auc"])

    # it loads back through MLflow (pyfunc, by alias) and scores the logged input example
    import mlflow

    mlflow.set_tracking_uri(uri)
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts("models:/kuailive-ranker@champion")
    example = Model.load(local).load_input_example(local)
    model = mlflow.pyfunc.load_model(local)
    pred = model.predict(example)
    assert list(pred.columns) == ["click", "watch_s", "comment", "like", "gift", "gift_value"]
    assert len(pred) == len(example) and pred["click"].between(0, 1).all()


    # the retrieval stage: GRank trained, compared with popularity, registered as champion, served over live MIPS
    assert 0.0 <= res.retrieval["grank.ndcg@10"] <= res.retrieval["grank.recall@20"] <= 1.0
    assert "popularity.ndcg@10" in res.retrieval and res.retrieval["live_items"] > 0
    assert (res.retrieval_dir / "weights.pt").exists()
    rversion = client.get_model_version_by_alias("kuailive-retriever", "champion")
    rrun = client.get_run(rversion.run_id)
    assert rrun.data.tags["model"] == "grank" and rrun.data.tags["granularity"] == "streamer"
    assert rrun.data.metrics["test.ndcg_at_10"] == pytest.approx(res.retrieval["grank.ndcg@10"])
    local = mlflow.artifacts.download_artifacts("models:/kuailive-retriever@champion")
    vectors = mlflow.pyfunc.load_model(local).predict(Model.load(local).load_input_example(local))
    assert len(vectors["user_vector"].iloc[0]) == 64
    assert any(line.strip().startswith("live MIPS at t=") for line in lines)
    assert run.data.metrics["retrieval.grank.ndcg_at_10"] == pytest.approx(res.retrieval["grank.ndcg@10"])

    # the TPP stage: one model update per window, features in the feature store
    assert res.tpp["windows"] == 3 and res.tpp["features_written"] > 0
    assert any("P(gift within 1 h)" in line for line in lines)

    # the allocation stage: SL-MGAC trained, exported, replayed with OPE against the truth, report written
    assert 0.0 <= res.allocation["slmgac.alloc_ratio"] <= 1.0 and res.allocation["slmgac.true_value"] >= 0.0
    assert res.allocation_report is not None and res.allocation_report.exists()
    assert any(line.strip().startswith("OPE ") and "vs true" in line for line in lines)

    # the serving stage: the service ran as its own process on the models above (by registry alias), served logged
    # traffic without fallbacks, and its decision log went through OPE; the curl line it prints is the request it made
    assert res.serving["requests"] == 100 and res.serving["fallbacks"] == 0
    assert any(line.strip().startswith("models:") and "kuailive-ranker/" in line and "kuailive-retriever/" in line
               for line in lines)
    assert res.curl.startswith("curl -s -X POST http://127.0.0.1:") and '"user_id"' in res.curl
    assert res.curl in "\n".join(lines)
    assert any("OPE on the service's decision log" in line for line in lines)
    assert (tmp_path / "qs" / "serving" / "decisions.jsonl").exists()
