"""The continual TPP protocol on the tiny twin: the four schemes, the transfer matrix and its summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.benchmarks import bench_tpp
from pipelines.train_tpp import (
    TPPTrainConfig,
    build_model,
    forgetting_summary,
    intensity_agreement,
    load_tpp_tasks,
    make_optimizer,
    run_continual,
    set_window_lr,
)
from recsys.data.tpp_truth import TPPTruth, true_total_intensity, window_bounds_ms

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_forgetting_summary_on_a_known_matrix() -> None:
    a = np.array([[1.0, 0.5, 0.0], [0.8, 2.0, 0.7], [0.6, 1.5, 3.0]])
    s = forgetting_summary(a)
    assert s["next"] == pytest.approx((0.5 + 0.7) / 2)
    assert s["current"] == pytest.approx(2.0)
    assert s["avg_final"] == pytest.approx(np.mean([0.6, 1.5, 3.0]))
    assert s["bwt"] == pytest.approx(((0.6 - 1.0) + (1.5 - 2.0)) / 2)
    assert s["forgetting"] == pytest.approx(((1.0 - 0.6) + (2.0 - 1.5)) / 2)


def test_bench_tpp_runs_every_scheme_on_tiny() -> None:
    device, m = bench_tpp("tiny")
    assert m["windows"] == 3
    for scheme in ("prompttpp", "online", "retrain", "pretrain"):
        for key in ("ll_next", "forgetting", "rmse_dt", "type_error"):
            assert np.isfinite(m[f"{scheme}.{key}"]), (scheme, key)
        assert 0.0 <= m[f"{scheme}.type_error"] <= 1.0 and m[f"{scheme}.rmse_dt"] > 0
        assert m[f"{scheme}.ll_next"] == pytest.approx(np.mean([m[f"{scheme}.w0.ll_next"], m[f"{scheme}.w1.ll_next"]]))
        assert -1.0 <= m[f"{scheme}.intensity_corr"] <= 1.0 and m[f"{scheme}.intensity_mae_log"] > 0
        # the true intensities (privileged: they see every exposure) score the same test sequences far better
        assert m["oracle.ll_next"] > m[f"{scheme}.ll_next"]
        # two training seeds: the headline numbers are their means
        seeds = [m[f"{scheme}.seed{k}.ll_next"] for k in range(m["seeds"])]
        assert m[f"{scheme}.ll_next"] == pytest.approx(np.mean(seeds))
        assert m[f"{scheme}.ll_next_std"] == pytest.approx(np.std(seeds))
    assert m["seeds"] == 2 and m["prompttpp.seed0.ll_next"] != m["prompttpp.seed1.ll_next"]  # really two seeds
    assert m["oracle.zero_intensity_events"] == 0
    assert m["oracle.ll_next"] == pytest.approx(np.mean([m["oracle.w0.ll_next"], m["oracle.w1.ll_next"]]))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown scheme"):
        TPPTrainConfig(scheme="ewc")
    with pytest.raises(ValueError):
        TPPTrainConfig(epochs=0)


class _TruthAsModel(torch.nn.Module):
    """Answers ``intensities`` with the generator's true total intensity (in mark 0): the comparison must then find
    a perfect agreement."""

    def __init__(self, truth, tasks, t: int, seqs, window_days: int) -> None:
        super().__init__()
        self.truth, self.scale = truth, tasks.time_scale_min
        self.start = tasks.tasks[t].start_ms
        self.bounds = window_bounds_ms(tasks, t, window_days)
        self.user_of = {seqs.times[i][seqs.valid[i]].tobytes(): int(u) for i, u in enumerate(seqs.user_id)}

    def intensities(self, batch, q: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*q.shape, 4, dtype=torch.float64)
        for r in range(q.shape[0]):
            u = self.user_of[batch.times[r][batch.valid[r]].numpy().tobytes()]
            ms = np.rint(self.start + q[r].double().numpy() * self.scale * 60_000).astype(np.int64)
            lam = true_total_intensity(self.truth, u, ms.ravel(), self.bounds) * self.scale
            out[r, ..., 0] = torch.as_tensor(lam.reshape(ms.shape))
        return out


def test_intensity_agreement_is_perfect_for_the_truth_and_not_for_a_flat_model(tiny_dir) -> None:
    tasks = load_tpp_tasks(tiny_dir, window_days=7, max_len=32)
    truth = TPPTruth.load(tiny_dir)
    t = len(tasks) - 1
    seqs = tasks.tasks[t].splits["test"]
    perfect = intensity_agreement(_TruthAsModel(truth, tasks, t, seqs, 7), tasks, t, seqs, truth, 7)
    assert perfect["intensity_corr"] > 0.99 and perfect["intensity_mae_log"] < 0.05
    flat = build_model(TPPTrainConfig(scheme="online"), tasks)  # untrained: nearly constant intensities
    raw = intensity_agreement(flat, tasks, t, seqs, truth, 7)
    assert raw["intensity_corr"] < 0.9 and raw["intensity_mae_log"] > 0.2


def test_optimizer_groups_split_backbone_and_prompts_and_scale_after_the_first_window(tiny_dir) -> None:
    tasks = load_tpp_tasks(tiny_dir, window_days=7, max_len=32)
    cfg = TPPTrainConfig(scheme="prompttpp", lr=1e-3, base_lr_scale=0.25)
    model = build_model(cfg, tasks)
    opt = make_optimizer(model, cfg.lr)
    base, pools = (set(map(id, g["params"])) for g in opt.param_groups)
    named = dict(model.named_parameters())
    assert pools == {id(p) for n, p in named.items() if ".pool_" in n} and pools
    assert base | pools == set(map(id, model.parameters())) and not base & pools
    set_window_lr(opt, cfg, 0)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]
    set_window_lr(opt, cfg, 2)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(2.5e-4), 1e-3]
    # a model without prompts has an empty prompt group
    plain = build_model(TPPTrainConfig(scheme="online"), tasks)
    assert make_optimizer(plain, 1e-3).param_groups[1]["params"] == []
    with pytest.raises(ValueError, match="base_lr_scale"):
        TPPTrainConfig(base_lr_scale=0.0)


def test_first_window_gets_its_own_number_of_epochs(tiny_dir) -> None:
    tasks = load_tpp_tasks(tiny_dir, window_days=7, max_len=16)
    cfg = TPPTrainConfig(scheme="online", epochs=1, first_epochs=3, batch_size=32, n_samples=4,
                         eval_max_sequences=8, progress=False)
    res = run_continual(tasks, cfg)
    batches = [int(np.ceil(len(t.splits["train"]) / cfg.batch_size)) for t in tasks.tasks]
    assert [int(r["steps"]) for r in res.per_window] == [3 * batches[0], *batches[1:]]
    with pytest.raises(ValueError, match="first_epochs"):
        TPPTrainConfig(first_epochs=-1)
