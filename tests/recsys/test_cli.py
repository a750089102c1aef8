"""The ``recsys`` command line, called in-process: data synth/validate/stats, pending verbs, argparse errors, bench."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from recsys.cli import main
from recsys.data.synthetic import SynthConfig, SynthResult, generate

TABLE2_HEADER = ("#Users", "#Streamers", "#Rooms", "#Interactions", "#Clicks", "#Comments", "#Likes", "#Gifts")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every CLI call from tmp_path, with no config env vars but tracking disabled."""
    for name in list(os.environ):
        if name.startswith("RECSYS_") and "__" in name:
            monkeypatch.delenv(name)
    monkeypatch.setenv("RECSYS_TRACKING__ENABLED", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate(tmp_path_factory.mktemp("cli-tiny") / "data", SynthConfig(scale="tiny", seed=5), progress=False)


@pytest.fixture
def data_dir(tiny: SynthResult, tmp_path: Path) -> Path:
    dst = tmp_path / "kuailive"
    shutil.copytree(tiny.out_dir, dst, ignore=shutil.ignore_patterns("truth"))
    return dst


def _rewrite(path: Path, fn) -> None:  # noqa: ANN001
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


# --------------------------------------------------------------------------------------------------------- data
def test_synth_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert main(["data", "synth", "--scale", "tiny", "--out", str(out), "--quiet"]) == 0
    synth_out = capsys.readouterr().out
    assert "wrote synthetic KuaiLive (tiny, seed 0)" in synth_out
    for name in ("click.csv", "comment.csv", "like.csv", "gift.csv", "negative.csv", "room.csv", "user.csv",
                 "streamer.csv", "title_embeddings.npy"):
        assert (out / name).is_file(), name

    assert main(["data", "validate", "--data", str(out)]) == 0
    captured = capsys.readouterr()
    assert "valid KuaiLive dataset" in captured.out
    for stem in ("click", "comment", "like", "gift", "negative", "room", "rooms", "user", "streamer"):
        assert f"ok  {stem}" in captured.out, stem
    assert "title_embeddings (" in captured.out
    assert "error" not in captured.err
    assert not (tmp_path / "data").exists()  # --out given: nothing written to the default location


def test_validate_missing_column(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def drop(lines: list[str]) -> list[str]:
        idx = lines[0].split(",").index("watch_live_time")
        return [",".join(c for i, c in enumerate(line.split(",")) if i != idx) for line in lines]

    _rewrite(data_dir / "click.csv", drop)
    code = main(["data", "validate", "--data", str(data_dir)])
    err = capsys.readouterr().err
    assert code != 0
    assert "click.csv" in err and "'watch_live_time'" in err and "missing column" in err
    assert "Traceback" not in err


def test_validate_unparsable_timestamp(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def corrupt(lines: list[str]) -> list[str]:
        idx = lines[0].split(",").index("timestamp")
        cells = lines[4].split(",")
        cells[idx] = "2025-05-05 10:00"
        lines[4] = ",".join(cells)
        return lines

    _rewrite(data_dir / "like.csv", corrupt)
    code = main(["data", "validate", "--data", str(data_dir)])
    err = capsys.readouterr().err
    assert code != 0
    assert "like.csv" in err and "'timestamp'" in err and "row 4" in err
    assert err.startswith("recsys: error:")


def test_validate_without_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate"]) == 2  # cwd is an empty tmp_path: no data/kuailive, no data/synthetic
    assert "no dataset found" in capsys.readouterr().err


def test_stats_prints_table2(tiny: SynthResult, data_dir: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "#Users" in line)
    cells = [c.strip() for c in header.split("|")[1:]]
    assert cells == list(TABLE2_HEADER)

    c = tiny.counts
    expected = [c["user"], c["streamer"], c["room"], c["click"] + c["comment"] + c["like"] + c["gift"],
                c["click"], c["comment"], c["like"], c["gift"]]
    ours = next(line for line in out.splitlines() if line.startswith("this dataset"))
    assert [v.strip() for v in ours.split("|")[1:]] == [f"{n:,}" for n in expected]
    paper = next(line for line in out.splitlines() if line.startswith("KuaiLive (paper)"))
    assert "23,772" in paper and "4,909,515" in paper
    assert "negatives" in out
    # the Parquet cache went to the configured relative cache dir, i.e. under the cwd (tmp_path), not the repo
    assert list((tmp_path / "data" / ".cache").glob("click-*.parquet"))


# --------------------------------------------------------------------------------------------------------- verbs
def test_unknown_scale_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "--scale", "huge", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_config_file_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "nope.yaml", "serve", "--retriever", "x"]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def test_bad_env_config_is_reported(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RECSYS_DATA__SCALE", "huge")
    assert main(["data", "validate"]) == 1
    assert "data.scale" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------- bench
def test_bench_synth_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "results" / "bench.json"
    assert main(["bench", "synth", "--scale", "tiny", "--out", str(out_file)]) == 0
    stdout = capsys.readouterr().out
    result = json.loads(stdout)  # the whole stdout is exactly one JSON object
    assert isinstance(result, dict)
    assert set(result) == {"name", "scale", "device", "metrics", "env"}
    assert result["name"] == "synth" and result["scale"] == "tiny"
    assert isinstance(result["device"], str) and result["device"]
    m = result["metrics"]
    for key in ("rows_per_s", "wall_s", "peak_rss_mb", "oracle.auc"):
        assert key in m, key
        assert isinstance(m[key], float) and m[key] > 0, key
    assert 0.5 < m["oracle.auc"] <= 1.0
    assert all(not isinstance(v, dict) for v in m.values())  # flat dotted keys
    assert isinstance(result["env"], dict) and "python" in result["env"]
    assert json.loads(out_file.read_text()) == result


def test_bench_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nope", "--scale", "tiny"]) == 2
    assert "synth" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------- ranker
def test_train_ranker_then_evaluate(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    argv = ["train", "ranker", "--model", "dnn", "--data", str(data_dir), "--epochs", "1", "--max-steps", "8",
            "--batch-size", "256", "--export", str(export), "--no-mlflow", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    auc_line = next(line for line in out.splitlines() if "test.auc" in line)
    assert 0.0 < float(auc_line.split(":")[1]) <= 1.0
    assert (export / "weights.pt").exists() and (export / "spec.json").exists()
    assert main(["evaluate", "--model-dir", str(export), "--data", str(data_dir)]) == 0
    evaluated = capsys.readouterr().out
    assert float(next(line for line in evaluated.splitlines() if line.strip().startswith("auc:")).split(":")[1]) \
        == pytest.approx(float(auc_line.split(":")[1]), abs=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lr", "-1"], "--lr and --embedding-lr must be > 0"),
    (["--alias", "champion", "--no-mlflow"], "--alias needs MLflow tracking"),
    (["--backbone", "{dim: 64"], "--backbone must be a JSON object"),
    (["--backbone", "[64]"], "--backbone must be a JSON object"),
])
def test_train_ranker_bad_flags(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "ranker", *flags]) == 2
    assert message in capsys.readouterr().err


def test_train_ranker_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "ranker", "--model", "xgboost"])
    assert exc.value.code == 2
    assert "invalid choice: 'xgboost'" in capsys.readouterr().err


def test_evaluate_missing_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model-dir", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_train_ranker_unknown_backbone_option(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "ranker", "--model", "tokenmixer", "--data", str(data_dir), "--backbone", '{"dimm": 64}',
            "--no-mlflow", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unknown backbone option(s) for 'tokenmixer': dimm" in err and "valid: kind" in err


def test_cli_model_choices_are_the_registry() -> None:
    """The CLI may not import ``models`` at start-up, so it keeps its own list: it must stay the registry's."""
    from models.ranking.ranker import RANKERS
    from pipelines import train_ranker
    from recsys.cli import EMBEDDING_OPTIMIZERS, RANKER_MODELS

    assert RANKER_MODELS == tuple(RANKERS)
    assert EMBEDDING_OPTIMIZERS == train_ranker.EMBEDDING_OPTIMIZERS


# --------------------------------------------------------------------------------------------------------- retrieval
def test_train_retrieval_runs_and_exports(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    argv = ["train", "retrieval", "--model", "two_tower", "--granularity", "room", "--data", str(data_dir),
            "--max-steps", "3", "--batch-size", "64", "--negatives", "15", "--options", '{"dim": 8, "hidden": 16}',
            "--export", str(export), "--no-mlflow", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    ndcg = next(line for line in out.splitlines() if "test.ndcg@10" in line)
    assert 0.0 <= float(ndcg.split(":")[1]) <= 1.0
    assert "test.recall@500" in out
    assert (export / "weights.pt").exists() and (export / "catalog.npz").exists()


def test_train_retrieval_popularity_needs_no_training(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "retrieval", "--model", "popularity", "--data", str(data_dir), "--no-mlflow",
                 "--quiet"]) == 0
    assert "test.ndcg@10" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--negatives", "0"], "--negatives must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--alias", "champion", "--no-mlflow"], "--alias needs MLflow tracking"),
    (["--options", "{dim"], "--options must be a JSON object"),
    (["--options", '{"depth": 3}'], "unknown option(s) ['depth'] for grank"),
    (["--model", "popularity", "--options", '{"dim": 8}'], "--options does not apply to popularity"),
])
def test_train_retrieval_bad_flags(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "retrieval", *flags]) == 2
    assert message in capsys.readouterr().err


def test_cli_retrieval_choices_are_the_registry() -> None:
    from models.retrieval.registry import ALL_RETRIEVERS
    from recsys.cli import RETRIEVAL_MODELS

    assert RETRIEVAL_MODELS == ALL_RETRIEVERS



# --------------------------------------------------------------------------------------------------------- tpp
_TINY_TPP = ["--window-days", "7", "--max-len", "24", "--epochs", "1", "--samples", "4", "--eval-sequences", "6",
             "--model-options", '{"d_model": 8, "d_time": 4, "layers": 1, "n_mc": 3}', "--no-mlflow", "--quiet"]


def test_train_tpp_continual_protocol(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "tpp", "--scheme", "online", "--data", str(data_dir), *_TINY_TPP]) == 0
    out = capsys.readouterr().out
    assert "ll_per_event.next" in out and "ll_per_event.forgetting" in out


def test_train_tpp_stream_embedded(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "tpp", "--stream", "--kafka", "", "--data", str(data_dir), *_TINY_TPP]) == 0
    out = capsys.readouterr().out
    assert out.count("window ") == 3 and "model updates" in out and "user features written" in out


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--base-lr-scale", "1.5"], "--base-lr-scale must be in (0, 1]"),
    (["--first-epochs", "-1"], "--first-epochs must be >= 0"),
    (["--model-options", "[1]"], "--model-options must be a JSON object"),
    (["--stream", "--lateness-min", "-1"], "--lateness-min must be >= 0"),
    (["--model-options", '{"depth": 3}'], "--model-options: "),
    (["--prompt-options", '{"pool_size": 0}'], "--prompt-options: "),
])
def test_train_tpp_bad_flags(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "tpp", *flags]) == 2
    assert message in capsys.readouterr().err


def test_cli_tpp_schemes_are_the_pipeline_schemes() -> None:
    from pipelines.train_tpp import SCHEMES
    from recsys.cli import TPP_SCHEMES

    assert TPP_SCHEMES == SCHEMES


# --------------------------------------------------------------------------------------------------------- replay / ope
def test_replay_then_ope_round_trip(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "logs" / "day.parquet"
    argv = ["replay", "--data", str(tiny_dir), "--sessions", "400", "--seed", "3", "--logging", "logging",
            "--policy", "never", "--policy", "threshold:score_hat:5", "--out", str(tmp_path / "replay"),
            "--log-out", str(log_file), "--boot", "10", "--true-sessions", "600", "--no-mlflow"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["policy", "true", "ips", "snips", "ncis", "dr", "fqe", "alloc", "alloc*", "ESS/n"]
    row = next(line for line in out.splitlines() if line.startswith("threshold_score_hat_5"))
    assert all(float(v) >= 0 for v in row.split()[1:-1])
    assert log_file.is_file() and f"decision log: {log_file}" in out
    assert (tmp_path / "replay" / "report.md").is_file() and (tmp_path / "replay" / "report.html").is_file()
    assert (tmp_path / "replay" / "value_vs_alloc.png").is_file()

    argv = ["ope", "--logs", str(log_file), "--policy", "constant:0.3", "--policy", "always:0.5",
            "--out", str(tmp_path / "ope"), "--boot", "10", "--no-mlflow"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "400 sessions" in out
    row = next(line for line in out.splitlines() if line.startswith("constant_0.3"))
    assert row.split()[1] == "-"  # no --data: no truth
    report = (tmp_path / "ope" / "report.md").read_text()
    assert "## Policy `always_0.5`" in report and "ess.png" in report


@pytest.mark.parametrize("argv, message", [
    (["ope", "--logs", "nope.parquet", "--policy", "never"], "--logs nope.parquet not found"),
    (["ope", "--logs", "nope.parquet"], "give at least one target policy"),
    (["ope", "--logs", "nope.parquet", "--policy", "sometimes"], "unknown kind 'sometimes'"),
    (["ope", "--logs", "nope.parquet", "--policy", "threshold:nope:1"], "unknown feature 'nope'"),
    (["replay", "--policy", "never", "--sessions", "0"], "--sessions must be >= 1"),
    (["replay", "--policy", "never", "--logging", "constant:2"], "--logging: policy 'constant:2'"),
    (["replay"], "give at least one target policy"),
    (["replay", "--policy", "never", "--boot", "0"], "--boot must be >= 1"),
])
def test_replay_ope_bad_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_ope_logging_policy_needs_the_env(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "day.parquet"
    assert main(["replay", "--data", str(tiny_dir), "--sessions", "50", "--policy", "never", "--out",
                 str(tmp_path / "r"), "--log-out", str(log_file), "--boot", "3", "--true-sessions", "60",
                 "--no-mlflow"]) == 0
    capsys.readouterr()
    assert main(["ope", "--logs", str(log_file), "--policy", "logging", "--out", str(tmp_path / "o"),
                 "--no-mlflow"]) == 1
    assert "needs the environment" in capsys.readouterr().err
    assert main(["ope", "--logs", str(log_file), "--policy", "logging", "--data", str(tiny_dir), "--boot", "3",
                 "--true-sessions", "60", "--out", str(tmp_path / "o"), "--no-mlflow"]) == 0
    assert "logging" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------- allocator
def test_train_allocator_then_replay_the_exported_policy(tiny_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tiny_dir  # the environment needs the synthetic truth
    export = tmp_path / "policy"
    argv = ["train", "allocator", "--policy", "slmgac", "--data", str(data_dir), "--sessions", "200",
            "--true-sessions", "300", "--steps", "60", "--lr-schedule", "cosine", "--export", str(export),
            "--no-mlflow"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "true value" in out and (export / "weights.pt").exists()
    assert main(["replay", "--data", str(data_dir), "--policy", str(export), "--sessions", "200",
                 "--true-sessions", "300", "--boot", "10", "--out", str(tmp_path / "report"), "--no-mlflow"]) == 0
    assert (tmp_path / "report" / "report.md").exists()


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--alloc-target", "1.5"], "--alloc-target must lie in (0, 1]"),
    (["--logs", "/nonexistent.parquet"], "--logs /nonexistent.parquet not found"),
    (["--options", "[1]"], "--options must be a JSON object"),
])
def test_train_allocator_bad_flags(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "allocator", *flags]) == 2
    assert message in capsys.readouterr().err


def test_train_allocator_rejects_an_unknown_lr_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "allocator", "--lr-schedule", "linear"])
    assert exc.value.code == 2
    assert "argument --lr-schedule: invalid choice: 'linear'" in capsys.readouterr().err


def test_cli_allocator_choices_are_the_registry() -> None:
    from models.allocation.registry import ALLOCATORS
    from recsys.cli import ALLOCATOR_POLICIES

    assert set(ALLOCATOR_POLICIES) == set(ALLOCATORS)


def test_cli_allocator_lr_schedules_are_the_trainers() -> None:
    from pipelines.train_allocator import LR_SCHEDULES
    from recsys.cli import ALLOCATOR_LR_SCHEDULES

    assert ALLOCATOR_LR_SCHEDULES == LR_SCHEDULES


def test_train_allocator_without_truth_names_the_missing_file(data_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "allocator", "--data", str(data_dir), "--no-mlflow"]) == 1
    assert "truth/users.parquet not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------- serve
def test_serve_rejects_a_missing_export_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--retriever", str(tmp_path / "nope")]) == 2
    assert "--retriever" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--k1", "10", "--k2", "20"], "k2 (20) must not exceed k1 (10)"),
    (["--k1", "0"], "--k1"),
    (["--warm-until", "yesterday"], "--warm-until"),
    (["--max-batch", "0"], "--max-batch"),
    (["--alloc-target", "1.5"], "--alloc-target"),
])
def test_serve_names_the_bad_flag(tmp_path: Path, argv: list[str], needle: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "retriever.json").write_text("{}")
    assert main(["serve", "--retriever", str(tmp_path / "r"), *argv]) == 2
    assert needle in capsys.readouterr().err
