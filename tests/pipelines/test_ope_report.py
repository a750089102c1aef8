"""OPE report job (pipelines.ope_report) and policy specs (recsys.feed.policy_spec) on the tiny feed environment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipelines.ope_report import (
    ESTIMATORS,
    PLOTS,
    _Log,
    _Target,
    evaluate_policies,
    run_ope,
    run_replay,
    write_report,
)
from recsys.config import TrackingConfig
from recsys.feed import FeedEnv, LoggedData, constant, never, threshold
from recsys.feed.policy_spec import PolicySpecError, parse_policy, policy_key

N_LOG, N_TRUE, N_BOOT, SEED = 2000, 3000, 40, 1
OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def env(tiny_dir: Path) -> FeedEnv:
    return FeedEnv(tiny_dir)


@pytest.fixture(scope="module")
def logging_policy(env: FeedEnv):
    return parse_policy("logging", env)


@pytest.fixture(scope="module")
def logged(env: FeedEnv, logging_policy) -> LoggedData:
    return env.log(logging_policy, N_LOG, seed=SEED)


@pytest.fixture(scope="module")
def policies(logging_policy) -> dict:
    return {"never": never(), "greedy": threshold("score_hat", logging_policy.base.theta), "logging": logging_policy}


@pytest.fixture(scope="module")
def results(logged: LoggedData, policies: dict, env: FeedEnv):
    return evaluate_policies(logged, policies, n_boot=N_BOOT, seed=0, env=env, n_true_sessions=N_TRUE,
                             truth_seed=SEED)


# --------------------------------------------------------------------------------------------------------- numbers
def test_every_estimator_has_a_value_and_a_ci_around_it(results, logged: LoggedData) -> None:
    assert list(results.policies) == ["never", "greedy", "logging"]
    for p in results.policies.values():
        assert list(p.estimates) == list(ESTIMATORS)
        for e in p.estimates.values():
            assert math.isfinite(e.value), (p.key, e.estimator)
            assert e.ci[0] - 1e-9 <= e.value <= e.ci[1] + 1e-9, (p.key, e.estimator, e.value, e.ci)
            assert e.rel_error is not None and e.covered is not None
        assert 0.0 <= p.alloc_ratio <= 1.0 and p.alloc_ci[0] <= p.alloc_ratio + 1e-9 <= p.alloc_ci[1] + 2e-9
        assert 0.0 < p.ess_fraction <= 1.0
    # never inserts: value, cost and allocation are exactly 0 for every estimator and the truth
    nv = results.policies["never"]
    assert all(e.value == pytest.approx(0.0, abs=1e-9) for e in nv.estimates.values())
    assert nv.truth.value == 0.0 and nv.alloc_ratio == 0.0 and nv.cost == 0.0
    # on-policy identity: with pi = mu the IS estimators are the log's mean discounted return, ESS = n
    lp = results.policies["logging"]
    for name in ("ips", "snips", "ncis"):
        assert lp.estimates[name].value == pytest.approx(results.logging_value, rel=1e-12)
    assert lp.ess_fraction == pytest.approx(1.0)
    assert lp.alloc_ratio == pytest.approx(logged.prob_insert.mean(), rel=1e-12)  # mean of mu(1 | s)
    assert lp.alloc_ratio == pytest.approx(results.logging_alloc_ratio, abs=0.02)  # the realised share


def test_true_values_come_from_the_env(results, policies: dict, env: FeedEnv) -> None:
    for key, policy in policies.items():
        ro = env.rollout(policy, N_TRUE, seed=SEED)
        t = results.policies[key].truth
        assert t is not None and t.n_sessions == N_TRUE and t.seed == SEED
        assert (t.value, t.cost, t.alloc_ratio) == (ro.value, ro.cost, ro.alloc_ratio)
        e = results.policies[key].estimates["snips"]
        assert e.rel_error == pytest.approx(abs(e.value - t.value) / t.value if t.value else 0.0)
    # the greedy base of the logging policy is well covered: the sequential estimators land near the truth
    g = results.policies["greedy"]
    for name in ("ips", "snips", "dr", "fqe"):
        assert g.estimates[name].rel_error < 0.25, (name, g.estimates[name].value, g.truth.value)
    assert abs(g.alloc_ratio - g.truth.alloc_ratio) < 0.05


def test_bootstrap_formulas_match_the_ope_library(logged: LoggedData, policies: dict) -> None:
    """A bootstrap replicate with every session drawn once is the full-sample estimate of recsys.ope."""
    lg = _Log(logged, logged.gamma)
    ones = np.ones((1, lg.m))
    normals = [lg.fqe_normal(ones[0][lg.sidx])]
    for key, policy in policies.items():
        tgt = _Target(lg, logged, policy)
        point = tgt.point_values()
        rep = tgt.replicate_values(ones, normals)
        for name, v in point.items():
            assert rep[name][0] == pytest.approx(v, rel=1e-7, abs=1e-9), (key, name)


def test_metrics_and_summary(results) -> None:
    m = results.metrics()
    for key in ("never", "greedy", "logging"):
        for name in ESTIMATORS:
            assert f"{key}.{name}" in m and f"{key}.{name}.ci_low" in m
        assert f"{key}.true_value" in m and f"{key}.alloc_ratio" in m and f"{key}.ess_fraction" in m
    assert "summary.snips.mean_rel_error" in m and "summary.dr.spearman" in m
    assert all(math.isfinite(v) for v in m.values())


def test_evaluate_without_env_has_no_truth(logged: LoggedData) -> None:
    res = evaluate_policies(logged, {"c": constant(0.3)}, n_boot=5)
    e = res.policies["c"].estimates["snips"]
    assert res.policies["c"].truth is None and e.rel_error is None and e.covered is None
    with pytest.raises(ValueError, match="no target policies"):
        evaluate_policies(logged, {})


# --------------------------------------------------------------------------------------------------------- report
def test_report_files_and_plots(results, tmp_path: Path) -> None:
    md = write_report(results, tmp_path / "rep", title="OPE test")
    text = md.read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert text.startswith("# OPE test")
    for name in PLOTS:
        assert (tmp_path / "rep" / name).stat().st_size > 1000
        assert f"]({name})" in text and f'src="{name}"' in html
    for key in ("never", "greedy", "logging"):
        assert f"## Policy `{key}`" in text and f"<code>{key}</code>" in html
    assert "## Findings" in text and "| estimator | estimate | 95 % CI |" in text
    assert "<table>" in html and html.count("<table>") == text.count("\n|---|")


def test_findings_are_computed_from_the_numbers(results) -> None:
    from pipelines.ope_report import REL_ERROR_TOL, findings

    lines = findings(results)
    for p in results.policies.values():
        failing = [e.estimator for e in p.estimates.values() if e.rel_error is not None and e.rel_error > REL_ERROR_TOL]
        line = next(x for x in lines if x.startswith(f"`{p.key}`:"))
        for name in failing:
            assert f"{name} (rel. error" in line
        if not failing and all(e.covered for e in p.estimates.values()):
            assert "every estimator within" in line


def test_a_log_without_rewards_says_so(logged: LoggedData, results) -> None:
    from dataclasses import replace

    from pipelines.ope_report import findings

    assert results.n_rewarded == int((logged.reward > 0).sum()) > 0
    assert results.metrics()["log.n_rewarded"] == results.n_rewarded
    assert not any("positive reward" in x for x in findings(results))
    silent = replace(logged, reward=np.zeros_like(logged.reward))
    res = evaluate_policies(silent, {"c": constant(0.3)}, n_boot=5)
    assert res.n_rewarded == 0 and res.policies["c"].estimates["snips"].value == 0.0
    assert "No logged decision has a positive reward" in findings(res)[0]


def test_a_diverged_fqe_flags_dr_too(logged: LoggedData, monkeypatch: pytest.MonkeyPatch) -> None:
    """DR's control variate is the cross-fitted FQE Q-function: when that diverges, DR is flagged with FQE."""
    from pipelines import ope_report
    from pipelines.ope_report import findings

    res = evaluate_policies(logged, {"c": constant(0.3)}, n_boot=5)
    assert not any(e.diverged or "blew up" in e.note for e in res.policies["c"].estimates.values())
    monkeypatch.setattr(ope_report, "FQE_BLOWUP_NORM", 0.0)  # every fitted parameter vector counts as diverged
    res = evaluate_policies(logged, {"c": constant(0.3)}, n_boot=5)
    est = res.policies["c"].estimates
    assert "blew up" in est["fqe"].note and "cross-fitted FQE Q-function blew up" in est["dr"].note
    assert est["fqe"].diverged and est["dr"].diverged and not est["snips"].diverged
    line = next(x for x in findings(res) if x.startswith("`c`:"))
    assert "dr (its cross-fitted" in line and "fqe (FQE parameters blew up" in line


def test_run_replay_and_run_ope(tiny_dir: Path, tmp_path: Path) -> None:
    res = run_replay(tiny_dir, ["never", "constant:0.3"], n_sessions=300, seed=4, tracking=OFF,
                     out_dir=tmp_path / "replay", n_boot=10, n_true_sessions=500)
    assert res.log_path == tmp_path / "replay" / "decision_log.parquet" and res.log_path.is_file()
    assert res.report.is_file() and res.html.is_file() and all(p.is_file() for p in res.plots)
    assert res.results.n_sessions == 300 and res.results.truth_seed == 4
    assert "constant_0.3.true_value" in res.metrics and res.run_id is None
    again = run_ope(res.log_path, ["constant:0.3"], OFF, tmp_path / "ope", n_boot=10)
    assert again.results.policies["constant_0.3"].estimates["snips"].value == pytest.approx(
        res.results.policies["constant_0.3"].estimates["snips"].value)
    assert again.results.policies["constant_0.3"].truth is None
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        run_ope(tmp_path / "nope.parquet", ["never"], OFF, tmp_path / "x")
    with pytest.raises(ValueError, match="given twice"):
        run_ope(res.log_path, ["never", "never"], OFF, tmp_path / "x")


def test_run_ope_tracks_one_mlflow_run(logged: LoggedData, tmp_path: Path) -> None:
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="ope-test",
                         artifact_location=str(tmp_path / "artifacts"))
    res = run_ope(logged, ["never", "constant:0.3"], cfg, tmp_path / "ope", n_boot=5)
    assert res.run_id
    import mlflow

    run = mlflow.get_run(res.run_id)
    assert run.data.metrics["constant_0.3.snips"] == pytest.approx(res.metrics["constant_0.3.snips"])
    assert run.data.params["n_boot"] == "5"
    arts = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(res.run_id, "report")}
    assert {"report.md", "report.html", *PLOTS} <= arts


# --------------------------------------------------------------------------------------------------------- specs
def test_policy_specs(env: FeedEnv) -> None:
    x = np.zeros((3, env.n_features))
    x[:, 2] = [1.0, 5.0, 9.0]  # score_hat
    np.testing.assert_array_equal(parse_policy("always")(x), 1.0)
    np.testing.assert_array_equal(parse_policy("always:0.3")(x), 0.3)
    np.testing.assert_array_equal(parse_policy("never")(x), 0.0)
    np.testing.assert_array_equal(parse_policy("constant:0.5")(x), 0.5)
    np.testing.assert_array_equal(parse_policy("threshold:score_hat:4")(x), [0, 1, 1])
    soft = parse_policy("threshold:score_hat:4:2")(x)
    assert ((soft > 0) & (soft < 1)).all() and (np.diff(soft) > 0).all()
    lp = parse_policy("logging:0.4:0.3", env)
    assert lp.eps == pytest.approx(0.3)
    assert policy_key("threshold:score_hat:5.3") == "threshold_score_hat_5.3"
    assert policy_key("always:0.3") == "always_0.3"


@pytest.mark.parametrize("spec, message", [
    ("", "empty policy spec"),
    ("sometimes", "unknown kind 'sometimes'"),
    ("always:1.5", "P must be <= 1"),
    ("constant", "constant takes one argument"),
    ("constant:abc", "P must be a number, got 'abc'"),
    ("never:1", "never takes no argument"),
    ("threshold:nope:1", "unknown feature 'nope'"),
    ("threshold:score_hat", "FEATURE:THETA"),
    ("threshold:score_hat:x", "THETA must be a number, got 'x'"),
    ("threshold:score_hat:1:0", "TEMPERATURE must be > 0"),
    ("threshold:score_hat:1:nan", "TEMPERATURE must be finite"),
    ("logging", "needs the environment"),
    ("./no/such/export", "is not a directory"),
])
def test_policy_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(PolicySpecError, match=message.replace("(", r"\(")) as info:
        parse_policy(spec)
    assert isinstance(info.value, ValueError)


def test_exported_policy_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys
    import types

    export = tmp_path / "alloc-export"
    export.mkdir()
    real_import = importlib.import_module

    def missing(name: str, *args, **kwargs):  # noqa: ANN002, ANN003
        if name == "models.allocation.export":
            raise ImportError("No module named 'models.allocation'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(PolicySpecError, match=f"{export}.*not available"):
        parse_policy(str(export))
    monkeypatch.setattr(importlib, "import_module", real_import)

    fake = types.ModuleType("models.allocation.export")
    fake.load_policy = lambda path: constant(0.25)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "models.allocation.export", fake)
    monkeypatch.setitem(sys.modules, "models.allocation", types.ModuleType("models.allocation"))
    assert parse_policy(str(export))(np.zeros((2, 12))).tolist() == [0.25, 0.25]
    assert policy_key(str(export)) == "alloc-export"
