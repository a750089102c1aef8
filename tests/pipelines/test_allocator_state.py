"""The allocator's state from the served ranker (pipelines.allocator_state) on the tiny twin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.ranking.export import save_ranker
from models.ranking.inputs import to_input
from pipelines.allocator_state import RankerEstimator, ranker_estimator
from pipelines.train_ranker import RankerTrainConfig, fit_ranker
from recsys.cli import main
from recsys.data.ranking import RankingDataset
from recsys.feed import FeedEnv, LoggedData, constant, feature_index
from recsys.timeutil import MS_PER_DAY

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def ranker(tiny_ranking: RankingDataset):
    cfg = RankerTrainConfig(model="dnn", epochs=1, max_steps=20, batch_size=256, progress=False, eval_every=20,
                            device="cpu", eval_batch_size=4096)
    return fit_ranker(tiny_ranking, cfg).model.eval()


@pytest.fixture(scope="module")
def export(ranker, tiny_ranking: RankingDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_ranker(ranker, tmp_path_factory.mktemp("ranker"), tiny_ranking.user_index,
                       tiny_ranking.streamer_index)


def test_the_estimator_gives_the_ranker_predictions_of_the_training_features(ranker, tiny_ranking, tiny_data
                                                                               ) -> None:
    ds = tiny_ranking
    rows = np.random.default_rng(1).choice(len(ds.samples), 300, replace=False)
    s = ds.samples[rows]
    est = RankerEstimator(ranker, ds, tiny_data.tables, batch_size=128)  # several batches
    p, w, pop = est(s["user_id"].to_numpy(), s["timestamp"].to_numpy(), s["live_id"].to_numpy())
    with torch.no_grad():
        want = ranker.predict(to_input(ds.arrays(rows)))
    np.testing.assert_allclose(p, want["click"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, want["watch_s"].numpy() / 60.0, rtol=1e-5, atol=1e-6)
    # log_popularity: the streamer's clicks in the store's window [t - 1 day - 1 ms, t), counted by brute force
    clicks = tiny_data.tables["click"]
    cs, ct = clicks["streamer_id"].to_numpy(), clicks["timestamp"].to_numpy()
    brute = [np.log1p(np.sum((cs == sid) & (ct >= t - MS_PER_DAY - 1) & (ct < t)))
             for sid, t in zip(s["streamer_id"].to_numpy(), s["timestamp"].to_numpy())]
    np.testing.assert_allclose(pop, brute)
    assert (pop > 0).any()
    with pytest.raises(ValueError, match="live_id 987654321"):
        est(s["user_id"].to_numpy()[:1], s["timestamp"].to_numpy()[:1], np.array([987654321]))


def test_an_export_drives_the_environment_state(export: Path, ranker, tiny_ranking, tiny_data, tiny_dir: Path
                                                ) -> None:
    from_export = ranker_estimator(export, tiny_dir)
    in_memory = RankerEstimator(ranker, tiny_ranking, tiny_data.tables)
    lg = FeedEnv(tiny_dir, estimator=from_export).log(constant(0.3), 40, seed=4)
    has = lg.features[:, feature_index("has_candidate")] > 0
    p, w, pop = in_memory(lg.user_id[has], lg.timestamp[has], lg.live_id[has])
    np.testing.assert_allclose(lg.features[has, feature_index("p_click_hat")], p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lg.features[has, feature_index("watch_hat")], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lg.features[has, feature_index("log_popularity")], pop)


def test_a_ranker_of_another_dataset_is_refused(export: Path, tiny_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(export, other)
    spec = json.loads((other / "spec.json").read_text())
    spec["time_origin_ms"] += 1  # a dataset of the same sizes that starts elsewhere
    (other / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="another dataset"):
        ranker_estimator(other, tiny_dir)


def test_cli_trains_an_allocator_on_the_ranker_state(export: Path, tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "policy"
    flags = ["train", "allocator", "--policy", "threshold", "--data", str(tiny_dir), "--sessions", "100",
             "--true-sessions", "100", "--steps", "5", "--no-mlflow", "--export", str(out)]
    assert main([*flags, "--ranker", str(export)]) == 0
    assert json.loads((out / "meta.json").read_text())["state"] == "ranker"
    assert main([*flags, "--ranker", str(tmp_path / "nowhere")]) == 2


def test_replay_and_ope_take_the_ranker_state(export: Path, ranker, tiny_ranking, tiny_data, tiny_dir: Path,
                                              tmp_path: Path) -> None:
    report = tmp_path / "replay"
    common = ["--policy", "constant:0.3", "--true-sessions", "100", "--boot", "5", "--no-mlflow"]
    assert main(["replay", "--data", str(tiny_dir), "--sessions", "100", "--ranker", str(export),
                 "--out", str(report), *common]) == 0
    log = report / "decision_log.parquet"
    logged = LoggedData.read_parquet(log)
    has = logged.features[:, feature_index("has_candidate")] > 0
    p, _, _ = RankerEstimator(ranker, tiny_ranking, tiny_data.tables)(logged.user_id[has], logged.timestamp[has],
                                                                     logged.live_id[has])
    np.testing.assert_allclose(logged.features[has, feature_index("p_click_hat")], p, rtol=1e-5, atol=1e-6)
    assert main(["ope", "--logs", str(log), "--data", str(tiny_dir), "--ranker", str(export),
                 "--out", str(tmp_path / "ope"), *common]) == 0
    assert (tmp_path / "ope" / "report.md").is_file()
    assert main(["ope", "--logs", str(log), "--ranker", str(export), "--out", str(tmp_path / "x"), *common]) == 2
