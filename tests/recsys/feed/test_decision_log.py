"""The ranking service's decision log (recsys.feed.decision_log): records, sinks, readers, the outcome join, OPE."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from recsys.config import TrackingConfig
from recsys.data.loaders import load_kuailive
from recsys.feed import FeedEnvConfig, LoggedData, feature_index, feature_names
from recsys.feed.decision_log import (
    DecisionLogError,
    DecisionRecord,
    JsonlDecisionSink,
    KafkaDecisionSink,
    NullDecisionSink,
    join_outcomes,
    open_sink,
    read_decisions,
    read_decisions_kafka,
)

N_GROUPS = FeedEnvConfig().n_groups
NAMES = feature_names(N_GROUPS)
OFF = TrackingConfig(enabled=False)
MIN = 60_000


def _features(live_id: int, group: int, score: float = 1.0, step: int = 0) -> list[float]:
    x = [0.0] * len(NAMES)
    if live_id:
        x[feature_index("p_click_hat")] = 0.2
        x[feature_index("watch_hat")] = score / 0.2
        x[feature_index("score_hat")] = score
        x[feature_index("log_popularity")] = 0.5
        x[feature_index("has_candidate")] = 1.0
    x[feature_index("request_index")] = float(step)
    x[feature_index("hour_cos")] = 1.0
    x[feature_index(f"group_{group}")] = 1.0
    return x


def _record(request_id: str = "r1", *, user_id: int = 1, timestamp: int = 1_000, session_id: str = "s1",
            step: int = 0, live_id: int = 10, action: int = 1, prob_insert: float = 0.4, group: int = 0,
            policy: str = "logging", score: float = 1.0) -> DecisionRecord:
    prob_insert = prob_insert if live_id else 0.0
    return DecisionRecord(
        request_id=request_id, user_id=user_id, timestamp=timestamp, session_id=session_id, step=step, group=group,
        live_id=live_id, features=_features(live_id, group, score, step), feature_names=list(NAMES), action=action,
        propensity=prob_insert if action == 1 else 1.0 - prob_insert, prob_insert=prob_insert, policy=policy,
        candidates=[live_id, 99] if live_id else [], scores=[score, 0.1] if live_id else [], fallback=False,
    )


# --------------------------------------------------------------------------------------------------------- records
def test_record_json_round_trip_through_a_jsonl_sink(tmp_path: Path) -> None:
    recs = [_record("a"), _record("b", step=1, live_id=0, action=0), _record("c", user_id=2, action=0)]
    path = tmp_path / "deep" / "dir" / "decisions.jsonl"
    with JsonlDecisionSink(path) as sink:
        for r in recs[:2]:
            sink.write(r)
        sink.flush()
    with open_sink(str(path)) as sink:  # append mode: a restarted service keeps the earlier lines
        assert isinstance(sink, JsonlDecisionSink)
        sink.write(recs[2])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all("\n" not in r.to_json() for r in recs)
    assert json.loads(lines[0])["features"] == list(recs[0].features)
    assert read_decisions(path) == recs
    assert isinstance(recs[0].features, tuple) and isinstance(recs[0].feature_names, tuple)
    with pytest.raises(ValueError, match="is closed"):
        sink.write(recs[0])


def test_jsonl_sink_is_safe_across_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "decisions.jsonl"
    recs = [_record(f"r{i}", user_id=i % 7, step=i) for i in range(400)]
    with JsonlDecisionSink(path) as sink, ThreadPoolExecutor(8) as pool:
        list(pool.map(sink.write, recs))
    assert sorted(read_decisions(path), key=lambda r: r.step) == recs


def test_construction_validates_like_from_dict() -> None:
    with pytest.raises(DecisionLogError, match=r"DecisionRecord: field 'action': expected 0 or 1"):
        replace(_record(), action=2)
    with pytest.raises(DecisionLogError, match=r"field 'propensity': must equal prob_insert"):
        replace(_record(action=1, prob_insert=0.4), propensity=0.6)


def _bad(**changes: Any) -> dict[str, Any]:
    d = _record().to_dict()
    for k, v in changes.items():
        if v is _DROP:
            del d[k]
        else:
            d[k] = v
    return d


_DROP = object()
_N = len(NAMES)


@pytest.mark.parametrize("line, message", [
    (_bad(action=2), "field 'action': expected 0 or 1"),
    (_bad(action=True), "field 'action': expected 0 or 1"),
    (_bad(propensity=0.0), "field 'propensity': expected a probability in (0, 1]"),
    (_bad(propensity=1.5), "field 'propensity': expected a probability in (0, 1]"),
    (_bad(propensity="0.4"), "field 'propensity': expected a finite number"),
    (_bad(propensity=0.7, prob_insert=0.4), "field 'propensity': must equal prob_insert"),
    (_bad(prob_insert=1.2, propensity=1.0), "field 'prob_insert': expected a probability in [0, 1]"),
    (_bad(features=[0.0] * (_N - 1)), f"field 'features': expected {_N} values"),
    (_bad(features=[0.0] * (_N - 1) + ["x"]), f"field 'features[{_N - 1}]': expected a finite number"),
    (_bad(feature_names=["a"] * _N), "field 'feature_names': names must be unique"),
    (_bad(user_id="7"), "field 'user_id': expected an int >= 0"),
    (_bad(timestamp=-1), "field 'timestamp': expected an int >= 0"),
    (_bad(session_id=""), "field 'session_id': expected a non-empty string"),
    (_bad(request_id=5), "field 'request_id': expected a non-empty string"),
    (_bad(live_id=0), "field 'live_id': 0 (no candidate) needs action 0 and prob_insert 0"),
    (_bad(features=_features(0, 0)), "field 'features': has_candidate must be 1"),
    (_bad(candidates=[10, 1.5]), "field 'candidates[1]': expected an int >= 0"),
    (_bad(scores=[1.0]), "field 'scores': expected 2 values (one per candidate)"),
    (_bad(scores="1.0"), "field 'scores': expected a list"),
    (_bad(fallback="no"), "field 'fallback': expected true or false"),
    (_bad(scores=_DROP), "missing field(s) 'scores'"),
    (_bad(reward=1.0), "unknown field(s) 'reward'"),
    ([1, 2], "expected a JSON object, got list"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_line_names_file_line_and_field(tmp_path: Path, line: Any, message: str) -> None:
    path = tmp_path / "decisions.jsonl"
    text = line if isinstance(line, str) else json.dumps(line)
    path.write_text(_record().to_json() + "\n\n" + text + "\n")
    with pytest.raises(ValueError) as err:
        read_decisions(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


def test_read_decisions_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_decisions(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------------------------------------- join
@pytest.fixture
def hand_made() -> tuple[list[DecisionRecord], pl.DataFrame]:
    """Two sessions, out of order in the input; the first to appear ("s-b") becomes session 0."""
    recs = [
        _record("b3", user_id=1, session_id="s-b", timestamp=30 * MIN, step=7, live_id=12, action=1),
        _record("b1", user_id=1, session_id="s-b", timestamp=10 * MIN, step=5, live_id=10, action=1),
        _record("a1", user_id=2, session_id="s-a", timestamp=5 * MIN, step=0, live_id=10, action=1, group=2),
        _record("b2", user_id=1, session_id="s-b", timestamp=20 * MIN, step=6, live_id=11, action=0),
        _record("a2", user_id=2, session_id="s-a", timestamp=6 * MIN, step=1, live_id=0, action=0, group=2),
        _record("a3", user_id=2, session_id="s-a", timestamp=7 * MIN, step=2, live_id=10, action=1, group=2),
    ]
    clicks = pl.DataFrame({
        "user_id": [1, 1, 1, 1, 2, 2, 3],
        "live_id": [10, 10, 11, 12, 10, 10, 10],
        "streamer_id": [100, 100, 101, 102, 100, 100, 100],
        # b1: two clicks in its window (the first counts); b2: a click on a room that was not inserted;
        # b3: a click one ms after its 30-minute window; a1 / a3: one click after both insertions of room 10
        # (credited once, to the later insertion a3); user 3: someone else's click
        "timestamp": [12 * MIN, 13 * MIN, 21 * MIN, 60 * MIN + 1, 4 * MIN, 8 * MIN, 11 * MIN],
        "watch_live_time": [90_000, 600_000, 50_000, 70_000, 1_000, 30_000, 5_000],
    })
    return recs, clicks


def test_join_outcomes(hand_made: tuple[list[DecisionRecord], pl.DataFrame]) -> None:
    recs, clicks = hand_made
    logged = join_outcomes(recs, clicks, gamma=0.9)
    assert len(logged) == 6 and logged.n_sessions == 2
    assert logged.session_id.tolist() == [0, 0, 0, 1, 1, 1]
    assert logged.step.tolist() == [0, 1, 2, 0, 1, 2]
    assert logged.done.tolist() == [False, False, True, False, False, True]
    assert logged.timestamp.tolist() == [10 * MIN, 20 * MIN, 30 * MIN, 5 * MIN, 6 * MIN, 7 * MIN]
    assert logged.live_id.tolist() == [10, 11, 12, 10, 0, 10]
    assert logged.action.tolist() == [1, 0, 1, 1, 0, 1]
    assert logged.click.tolist() == [True, False, False, False, False, True]
    np.testing.assert_allclose(logged.reward, [1.5, 0.0, 0.0, 0.0, 0.0, 0.5])
    assert not logged.cost.any()
    assert logged.group.tolist() == [0, 0, 0, 2, 2, 2] and logged.user_id.tolist() == [1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(logged.propensity, [0.4, 0.6, 0.4, 0.4, 1.0, 0.4])
    np.testing.assert_allclose(logged.prob_insert, [0.4, 0.4, 0.4, 0.4, 0.0, 0.4])
    assert logged.features.shape == (6, len(NAMES))
    assert logged.features[:, feature_index("has_candidate")].tolist() == [1, 1, 1, 1, 0, 1]
    assert logged.feature_names == NAMES and logged.policy_name == "logging" and logged.gamma == 0.9
    dtypes = {k: getattr(logged, k).dtype for k in ("session_id", "step", "action", "click", "done", "reward")}
    assert dtypes == {"session_id": np.int64, "step": np.int64, "action": np.int8, "click": np.bool_,
                      "done": np.bool_, "reward": np.float64}
    assert logged.next_row().tolist() == [1, 2, -1, 4, 5, -1]


def test_join_outcomes_window_bounds(hand_made: tuple[list[DecisionRecord], pl.DataFrame]) -> None:
    recs, clicks = hand_made
    wide = join_outcomes(recs, clicks, reward_window_ms=30 * MIN + 1)  # b3's click now counts
    assert wide.click.tolist()[:3] == [True, False, True]
    assert wide.reward[2] == pytest.approx(70_000 / MIN)
    at_t = join_outcomes(recs, clicks.with_columns(pl.lit(10 * MIN).alias("timestamp")), reward_window_ms=0)
    assert at_t.click.tolist()[0]  # a click at the decision time itself counts


def test_joined_log_round_trips_through_parquet(hand_made: tuple[list[DecisionRecord], pl.DataFrame],
                                                tmp_path: Path) -> None:
    logged = join_outcomes(*hand_made)
    logged.write_parquet(tmp_path / "log.parquet")
    back = LoggedData.read_parquet(tmp_path / "log.parquet")
    for name in ("session_id", "step", "user_id", "timestamp", "live_id", "group", "features", "action",
                 "propensity", "prob_insert", "reward", "cost", "click", "done"):
        np.testing.assert_array_equal(getattr(back, name), getattr(logged, name), err_msg=name)
    assert (back.feature_names, back.policy_name, back.gamma) == (logged.feature_names, "logging", 0.95)


def test_join_outcomes_errors(hand_made: tuple[list[DecisionRecord], pl.DataFrame]) -> None:
    recs, clicks = hand_made
    with pytest.raises(DecisionLogError, match="no decision records"):
        join_outcomes([], clicks)
    with pytest.raises(DecisionLogError, match="field 'policy' differs"):
        join_outcomes([*recs, _record("x", policy="other")], clicks)
    short = DecisionRecord(**{**recs[0].to_dict(), "request_id": "y", "features": recs[0].features[:-1],
                              "feature_names": list(NAMES[:-1])})
    with pytest.raises(DecisionLogError, match="field 'feature_names' differs"):
        join_outcomes([*recs, short], clicks)
    with pytest.raises(DecisionLogError, match="recsys.feed.env layout"):
        join_outcomes([replace(r, feature_names=tuple(reversed(NAMES)),
                               features=tuple(reversed(r.features))) for r in recs], clicks)
    with pytest.raises(DecisionLogError, match="'request_id': 'b1' is logged twice"):
        join_outcomes([*recs, recs[1]], clicks)
    with pytest.raises(DecisionLogError, match="session_id 's-a' has decisions of 2 different users"):
        join_outcomes([*recs, _record("z", user_id=9, session_id="s-a")], clicks)
    with pytest.raises(DecisionLogError, match=r"click table: missing column\(s\) \['watch_live_time'\]"):
        join_outcomes(recs, clicks.drop("watch_live_time"))
    with pytest.raises(ValueError, match="reward_window_ms must be >= 0"):
        join_outcomes(recs, clicks, reward_window_ms=-1)


# --------------------------------------------------------------------------------------------------------- sinks
def test_open_sink_dispatch(tmp_path: Path) -> None:
    assert isinstance(open_sink(None), NullDecisionSink) and isinstance(open_sink(""), NullDecisionSink)
    with open_sink(None) as sink:
        sink.write(_record())
    sink = open_sink(str(tmp_path / "a" / "b.jsonl"))
    assert isinstance(sink, JsonlDecisionSink) and (tmp_path / "a").is_dir()
    sink.close()
    sink.close()  # idempotent


@pytest.mark.parametrize("spec, message", [
    ("kafka://", "no topic"),
    ("kafka://localhost:9092", "no topic"),
    ("kafka://localhost:9092/", "no topic"),
    ("kafka://localhost/decisions", "is not 'host:port'"),
    ("kafka://localhost:99999/decisions", "is not 'host:port'"),
    ("kafka:///decisions", "invalid Kafka bootstrap"),
    ("kafka://localhost:9092/bad topic", "topic 'bad topic' is not"),
])
def test_open_sink_rejects_a_malformed_kafka_spec(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid Kafka decision sink") as err:
        open_sink(spec)
    assert message in str(err.value) and repr(spec) in str(err.value)


class _FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = self.closed = 0

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed += 1


def test_kafka_sink_keys_by_user_and_leaves_a_given_producer_open() -> None:
    producer = _FakeProducer()
    rec = _record(user_id=4242)
    with KafkaDecisionSink("localhost:9092", "dec.v1", producer=producer) as sink:
        sink.write(rec)
    assert producer.sent == [("dec.v1", b"4242", rec.to_json().encode())]
    assert producer.flushed == 1 and producer.closed == 0
    with pytest.raises(ValueError, match="is closed"):
        sink.write(rec)


@pytest.mark.kafka
def test_kafka_sink_and_reader_on_the_real_broker(kafka_bootstrap: str, unique_name) -> None:
    topic = unique_name("decisions")
    recs = [_record(f"k{i}", user_id=1 + i % 2, session_id=f"s{i % 2}", step=i // 2, timestamp=1_000 + i)
            for i in range(5)]
    with open_sink(f"kafka://{kafka_bootstrap}/{topic}") as sink:
        assert isinstance(sink, KafkaDecisionSink)
        for r in recs:
            sink.write(r)
    got = read_decisions_kafka(kafka_bootstrap, topic, timeout_s=3.0)
    assert sorted(got, key=lambda r: r.request_id) == recs
    for user in (1, 2):  # one key, one partition: a user's decisions come back in order
        assert [r for r in got if r.user_id == user] == [r for r in recs if r.user_id == user]
    with pytest.raises(DecisionLogError, match="topic not found"):
        read_decisions_kafka(kafka_bootstrap, unique_name("missing"), timeout_s=1.0)


# --------------------------------------------------------------------------------------------------------- OPE
def _service_day(clicks: pl.DataFrame, n_users: int = 40, steps: int = 5, seed: int = 0) -> list[DecisionRecord]:
    """A random logging policy (known propensities) over real users and rooms; half the candidates were clicked."""
    rng = np.random.default_rng(seed)
    rooms = clicks["live_id"].unique().sort().to_numpy()
    out: list[DecisionRecord] = []
    for u, (user, ts, lives) in enumerate(clicks.sort("timestamp").group_by("user_id", maintain_order=True)
                                          .agg("timestamp", "live_id").head(n_users).iter_rows()):
        group = u % N_GROUPS
        for i in range(steps):
            clicked = i < len(ts) and rng.random() < 0.5
            t = int(ts[i]) - 30_000 if i < len(ts) else int(ts[-1]) + (i + 1) * MIN
            live = int(lives[i]) if clicked else (0 if rng.random() < 0.15 else int(rng.choice(rooms)))
            p = float(rng.uniform(0.2, 0.8)) if live else 0.0
            a = int(rng.random() < p)
            out.append(DecisionRecord(
                request_id=f"{user}-{i}", user_id=int(user), timestamp=t, session_id=f"sess-{user}", step=i,
                group=group, live_id=live,
                features=_features(live, group, score=float(rng.uniform(0.1, 4.0)), step=i),
                feature_names=NAMES, action=a, propensity=p if a else 1.0 - p, prob_insert=p, policy="random",
                candidates=[live] if live else [], scores=[1.0] if live else [], fallback=False,
            ))
    return out


@pytest.fixture(scope="module")
def service_log(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    clicks = load_kuailive(tiny_dir, tables=["click"], with_embeddings=False).tables["click"]
    recs = _service_day(clicks)
    assert len(recs) == 200
    logged = join_outcomes(recs, clicks)
    assert logged.n_sessions == 40 and logged.click.sum() >= 10 and logged.reward.sum() > 0
    path = tmp_path_factory.mktemp("service") / "decisions.jsonl"
    with JsonlDecisionSink(path) as sink:
        for r in recs:
            sink.write(r)
    return path


def test_run_ope_on_a_service_log(service_log: Path, tiny_dir: Path, tmp_path: Path) -> None:
    from pipelines.ope_report import ESTIMATORS, run_ope

    res = run_ope(service_log, ["never", "constant:0.3", "threshold:score_hat:2"], OFF, tmp_path / "ope",
                  data_dir=tiny_dir, n_boot=10, n_true_sessions=200)
    assert res.log_path == service_log and res.report.is_file()
    assert res.results.n_sessions == 40 and res.results.n_decisions == 200
    for key in ("never", "constant_0.3", "threshold_score_hat_2"):
        pol = res.results.policies[key]
        assert all(math.isfinite(pol.estimates[e].value) for e in ESTIMATORS), key
        # the environment simulates another process than the service's traffic: no true values for a service log
        assert pol.truth is None
    assert res.results.policies["never"].estimates["ips"].value == 0.0


def test_run_ope_service_log_without_truth_or_data(service_log: Path, tiny_dir: Path, tmp_path: Path) -> None:
    from pipelines.ope_report import run_ope

    with pytest.raises(ValueError, match="a service decision log needs --data to join outcomes"):
        run_ope(service_log, ["never"], OFF, tmp_path / "x")
    real = tmp_path / "real"  # a dataset without truth/ (like the real KuaiLive): outcomes only
    shutil.copytree(tiny_dir, real, ignore=shutil.ignore_patterns("truth"))
    res = run_ope(service_log, ["constant:0.3"], OFF, tmp_path / "ope", data_dir=real, n_boot=5)
    est = res.results.policies["constant_0.3"]
    assert est.truth is None and math.isfinite(est.estimates["snips"].value)


def test_cli_ope_on_a_service_log(service_log: Path, tiny_dir: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECSYS_TRACKING__ENABLED", "false")
    assert main(["ope", "--logs", str(service_log), "--policy", "never", "--no-mlflow"]) == 2
    assert "a service decision log needs --data to join outcomes" in capsys.readouterr().err
    assert main(["ope", "--logs", str(service_log), "--data", str(tiny_dir), "--policy", "constant:0.3",
                 "--out", str(tmp_path / "ope"), "--boot", "5", "--true-sessions", "100", "--no-mlflow"]) == 0
    assert "40 sessions, 200 decisions" in capsys.readouterr().out
