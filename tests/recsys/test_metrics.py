"""Tests for recsys.metrics against independent implementations (sklearn, brute-force loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from recsys.metrics import (
    auc,
    logloss,
    mrr,
    ndcg_at_k,
    recall_at_k,
    target_ranks,
    topk_metrics,
    uauc,
)

# --------------------------------------------------------------------------- references


def _ref_uauc(
    user_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, weighted: bool
) -> float:
    """Plain loop over users with sklearn's AUC, skipping single-class users."""
    total, weight_sum = 0.0, 0.0
    for user in np.unique(user_ids):
        sel = user_ids == user
        if len(np.unique(labels[sel])) < 2:
            continue
        w = float(sel.sum()) if weighted else 1.0
        total += w * roc_auc_score(labels[sel], scores[sel])
        weight_sum += w
    return total / weight_sum


def _ref_ranks(pos: np.ndarray, neg: np.ndarray, mask: np.ndarray | None) -> list[int]:
    """Brute force: 1 + number of valid negatives scoring >= the positive."""
    ranks = []
    for i in range(len(pos)):
        rank = 1
        for j in range(neg.shape[1]):
            valid = True if mask is None else bool(mask[i, j])
            if valid and neg[i, j] >= pos[i]:
                rank += 1
        ranks.append(rank)
    return ranks


def _ref_recall(ranks: list[int], k: int) -> float:
    return sum(1 for r in ranks if r <= k) / len(ranks)


def _ref_ndcg(ranks: list[int], k: int) -> float:
    return sum(1.0 / math.log2(r + 1) if r <= k else 0.0 for r in ranks) / len(ranks)


def _ref_mrr(ranks: list[int]) -> float:
    return sum(1.0 / r for r in ranks) / len(ranks)


# --------------------------------------------------------------------------- auc


def test_auc_hand_computed() -> None:
    # Pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4.
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_hand_computed_tie_counts_half() -> None:
    # Pairs: (0.5 vs 0.5) tie -> 1/2, (0.5 > 0.2) -> 1; total 1.5 / 2.
    assert auc(np.array([0, 1, 0]), np.array([0.5, 0.5, 0.2])) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=2000)
    scores = rng.normal(size=2000) + 0.5 * labels
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_auc_matches_sklearn_with_many_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=3000)
    scores = np.round(rng.uniform(size=3000) * 0.6 + 0.3 * labels, 1)
    assert len(np.unique(scores)) < 15  # ties really are frequent
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_auc_accepts_bool_labels() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=300).astype(bool)
    scores = rng.normal(size=300)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


# --------------------------------------------------------------------------- uauc


def _uauc_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 1200
    user_ids = rng.integers(0, 40, size=n)
    labels = rng.integers(0, 2, size=n)
    scores = np.round(rng.normal(size=n) + 0.7 * labels, 1)  # ties within users too
    # Users with a single class only: all-positive and all-negative users.
    user_ids = np.concatenate([user_ids, [500, 500, 500, 501, 501, 502]])
    labels = np.concatenate([labels, [1, 1, 1, 0, 0, 0]])
    scores = np.concatenate([scores, [0.9, -3.0, 0.1, 5.0, 0.2, 0.0]])
    perm = rng.permutation(len(labels))
    return user_ids[perm], labels[perm], scores[perm]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [10, 11])
def test_uauc_matches_per_user_sklearn_loop(seed: int, weighted: bool) -> None:
    user_ids, labels, scores = _uauc_data(seed)
    expected = _ref_uauc(user_ids, labels, scores, weighted)
    got = uauc(user_ids, labels, scores, weighted=weighted)
    assert got == pytest.approx(expected, rel=1e-12)


def test_uauc_weighted_differs_from_unweighted() -> None:
    # User "a": 2 samples, AUC 1.0. User "b": 4 samples, AUC 0.0. User "c": one class.
    user_ids = np.array(["a", "a", "b", "b", "b", "b", "c"])
    labels = np.array([1, 0, 1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.1, 0.1, 0.2, 0.8, 0.9, 0.5])
    assert uauc(user_ids, labels, scores) == pytest.approx(0.5)
    assert uauc(user_ids, labels, scores, weighted=True) == pytest.approx(2.0 / 6.0)


def test_uauc_single_user_equals_auc() -> None:
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 2, size=400)
    scores = np.round(rng.normal(size=400), 1)
    user_ids = np.full(400, 7)
    assert uauc(user_ids, labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_uauc_raises_when_no_user_has_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        uauc(np.array([1, 1, 2, 2]), np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]))


# --------------------------------------------------------------------------- logloss


@pytest.mark.parametrize("seed", [20, 21])
def test_logloss_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=1000)
    probs = rng.uniform(0.01, 0.99, size=1000)
    expected = log_loss(labels, probs, labels=[0, 1])
    assert logloss(labels, probs) == pytest.approx(expected, rel=1e-12)


def test_logloss_clips_extreme_probabilities() -> None:
    eps = 1e-7
    got = logloss(np.array([1, 0]), np.array([0.0, 1.0]), eps=eps)
    assert math.isfinite(got)
    assert got == pytest.approx(-math.log(eps), rel=1e-6)


# --------------------------------------------------------------------------- top-K


def _ranking_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, m = 200, 40
    pos = np.round(rng.normal(size=n) + 1.0, 1)
    neg = np.round(rng.normal(size=(n, m)), 1)  # rounded -> ties with the positive
    mask = rng.uniform(size=(n, m)) < 0.7
    return pos, neg, mask


def test_target_ranks_matches_brute_force_without_mask() -> None:
    pos, neg, _ = _ranking_data(30)
    got = target_ranks(pos, neg)
    assert got.dtype == np.int64
    assert got.shape == (len(pos),)
    assert got.tolist() == _ref_ranks(pos, neg, None)


def test_target_ranks_matches_brute_force_with_mask() -> None:
    pos, neg, mask = _ranking_data(31)
    got = target_ranks(pos, neg, mask)
    assert got.tolist() == _ref_ranks(pos, neg, mask)
    assert got.tolist() != _ref_ranks(pos, neg, None)  # the mask really hides negatives


def test_target_ranks_ties_are_pessimistic() -> None:
    pos = np.array([0.5, 0.5])
    neg = np.array([[0.5, 0.1, 0.5], [0.4, 0.1, 0.2]])
    assert target_ranks(pos, neg).tolist() == [3, 1]


def test_target_ranks_hidden_negative_does_not_change_rank() -> None:
    pos = np.array([0.5, 0.5])
    neg = np.array([[0.2, 0.7, 1e9], [0.9, 0.1, np.nan]])
    mask = np.array([[True, True, False], [True, True, False]])
    assert target_ranks(pos, neg, mask).tolist() == [2, 2]
    # Unmasking the huge negative pushes the positive down one place.
    assert target_ranks(pos[:1], neg[:1], np.ones((1, 3), dtype=bool)).tolist() == [3]


@pytest.mark.parametrize("k", [1, 3, 5, 10, 20])
def test_recall_ndcg_mrr_match_brute_force(k: int) -> None:
    pos, neg, mask = _ranking_data(32)
    ranks = target_ranks(pos, neg, mask)
    ref = _ref_ranks(pos, neg, mask)
    assert recall_at_k(ranks, k) == pytest.approx(_ref_recall(ref, k), rel=1e-12)
    assert ndcg_at_k(ranks, k) == pytest.approx(_ref_ndcg(ref, k), rel=1e-12)
    assert mrr(ranks) == pytest.approx(_ref_mrr(ref), rel=1e-12)


def test_topk_metrics_default_keys_and_values() -> None:
    pos, neg, mask = _ranking_data(33)
    ranks = target_ranks(pos, neg, mask)
    ref = _ref_ranks(pos, neg, mask)
    result = topk_metrics(ranks)
    assert list(result) == ["recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20"]
    for k in (5, 10, 20):
        assert result[f"recall@{k}"] == pytest.approx(_ref_recall(ref, k), rel=1e-12)
        assert result[f"ndcg@{k}"] == pytest.approx(_ref_ndcg(ref, k), rel=1e-12)


def test_topk_metrics_custom_ks() -> None:
    ranks = np.array([1, 2, 4])
    assert topk_metrics(ranks, ks=(1, 3)) == pytest.approx(
        {
            "recall@1": 1 / 3,
            "ndcg@1": 1 / 3,
            "recall@3": 2 / 3,
            "ndcg@3": (1.0 + 1.0 / math.log2(3)) / 3,
        }
    )


# --------------------------------------------------------------------------- bad input


def test_auc_single_class_raises() -> None:
    with pytest.raises(ValueError, match="both classes"):
        auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        auc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="length mismatch"):
        uauc(np.array([1, 2]), np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="length mismatch"):
        logloss(np.array([0, 1]), np.array([0.5]))
    with pytest.raises(ValueError, match="length mismatch"):
        target_ranks(np.array([0.1, 0.2]), np.zeros((3, 4)))


def test_nan_score_raises() -> None:
    with pytest.raises(ValueError, match="scores must not contain NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="scores must not contain NaN"):
        uauc(np.array([1, 1]), np.array([0, 1]), np.array([np.nan, 0.2]))
    with pytest.raises(ValueError, match="neg_scores must not contain NaN"):
        target_ranks(np.array([0.1]), np.array([[0.2, np.nan]]))
    with pytest.raises(ValueError, match="pos_scores must not contain NaN"):
        target_ranks(np.array([np.nan]), np.array([[0.2, 0.3]]))


def test_label_two_raises() -> None:
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        auc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="labels must contain only 0 and 1"):
        logloss(np.array([0, 2]), np.array([0.1, 0.2]))


def test_prob_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        logloss(np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        logloss(np.array([0, 1]), np.array([-0.1, 0.5]))


def test_empty_input_raises() -> None:
    with pytest.raises(ValueError, match="labels must not be empty"):
        auc(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="ranks must not be empty"):
        mrr(np.array([], dtype=np.int64))


def test_bad_mask_and_ranks_raise() -> None:
    with pytest.raises(ValueError, match="neg_mask"):
        target_ranks(np.array([0.1]), np.array([[0.2, 0.3]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="neg_mask"):
        target_ranks(np.array([0.1]), np.array([[0.2, 0.3]]), np.array([[True]]))
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        recall_at_k(np.array([0, 1]), 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        ndcg_at_k(np.array([1, 2]), 0)
