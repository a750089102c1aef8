"""Offline evaluation metrics for CTR prediction and top-K retrieval, in pure numpy.

This module computes the classification metrics used for ranking models -- ROC AUC
(``auc``), per-user / group AUC (``uauc``) and binary cross-entropy (``logloss``) --
and the top-K metrics used for retrieval with one positive per query: the rank of the
positive among sampled negatives (``target_ranks``), Recall@K (= HR@K), NDCG@K and MRR.
Tie conventions: ``auc`` and ``uauc`` give tied scores their average rank
(Mann-Whitney U), so a tied positive/negative pair counts 1/2 and the result equals
``sklearn.metrics.roc_auc_score`` ties included; ``target_ranks`` is pessimistic, a
negative whose score equals the positive's is ranked above it
(rank = 1 + #{valid negatives with score >= positive score}).
All functions are vectorized, keep no state, and raise ``ValueError`` on invalid
input (empty or mismatched arrays, NaN scores, labels outside {0, 1},
probabilities outside [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsys.validation import as_1d as _as_1d
from recsys.validation import check_real
from recsys.validation import check_same_length as _check_same_length

__all__ = [
    "auc",
    "uauc",
    "logloss",
    "target_ranks",
    "recall_at_k",
    "ndcg_at_k",
    "topk_metrics",
    "mrr",
]


# --------------------------------------------------------------------------- validation


def _check_labels(name: str, labels: np.ndarray) -> np.ndarray:
    """Validate binary labels, shape (n,); return them as float64 0.0 / 1.0."""
    arr = _as_1d(name, labels)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric or boolean, got dtype {arr.dtype}")
    bad = ~((arr == 0) | (arr == 1))  # NaN is neither 0 nor 1
    if bad.any():
        raise ValueError(f"{name} must contain only 0 and 1, got value {arr[bad][0]!r}")
    return arr.astype(np.float64)


def _check_scores(name: str, scores: np.ndarray, ndim: int = 1) -> np.ndarray:
    """Validate real-valued scores of dimension ``ndim``; return them as float64."""
    return check_real(name, scores, ndim)


def _check_no_nan(name: str, values: np.ndarray) -> None:
    """Raise ``ValueError`` if ``values`` contains NaN."""
    if np.isnan(values).any():
        raise ValueError(f"{name} must not contain NaN")


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    """Validate 1-based ranks, shape (n,); return them as float64."""
    arr = _as_1d("ranks", ranks)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"ranks must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    _check_no_nan("ranks", arr)
    if (arr < 1).any():
        raise ValueError(f"ranks must be >= 1 (1-based), got minimum {arr.min()!r}")
    return arr


def _check_k(k: int) -> int:
    """Validate a cut-off ``k`` (a positive integer)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


# --------------------------------------------------------------------------- helpers


def _tie_group_starts(is_new_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a sorted array split into runs, return each element's run start and run end.

    ``is_new_group`` has shape (n,) and is True where a run begins (element 0 included).
    Returns ``(start, end)``, both int64 of shape (n,): the half-open run ``[start, end)``
    containing each element, as positions in the sorted array.
    """
    n = is_new_group.size
    starts = np.flatnonzero(is_new_group)
    ends = np.append(starts[1:], n)
    run_id = np.cumsum(is_new_group) - 1
    return starts[run_id], ends[run_id]


# --------------------------------------------------------------------------- CTR metrics


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC through the Mann-Whitney U statistic, tied scores sharing their average rank.

    Args:
        labels: shape (n,), binary labels in {0, 1} (bool or numeric).
        scores: shape (n,), real-valued scores; higher means more likely positive.

    Returns:
        The probability that a random positive scores above a random negative, ties
        counting 1/2; equal to ``sklearn.metrics.roc_auc_score(labels, scores)``.

    Raises:
        ValueError: on empty or mismatched inputs, NaN scores, labels outside {0, 1},
            or when only one class is present.
    """
    y = _check_labels("labels", labels)
    s = _check_scores("scores", scores)
    _check_same_length(labels=y, scores=s)
    _check_no_nan("scores", s)

    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("labels must contain both classes (0 and 1) to compute AUC")

    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    is_new = np.empty(s.size, dtype=bool)
    is_new[0] = True
    is_new[1:] = s_sorted[1:] != s_sorted[:-1]
    start, end = _tie_group_starts(is_new)
    avg_rank = (start + end + 1) / 2.0  # mean of the 1-based ranks start+1 .. end

    rank_sum_pos = float(np.dot(avg_rank, y[order]))
    u_stat = rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0
    return u_stat / (n_pos * n_neg)


def uauc(
    user_ids: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    weighted: bool = False,
) -> float:
    """User-averaged AUC (GAUC): the mean of per-user AUC over users with both classes.

    Samples are sorted once by (user, score) with ``np.lexsort``; per-user average ranks
    come from user and tie-run boundaries, so there is no Python loop over users.

    Args:
        user_ids: shape (n,), the user of each impression (any sortable dtype).
        labels: shape (n,), binary labels in {0, 1}.
        scores: shape (n,), real-valued scores.
        weighted: if True, weight each user's AUC by their number of impressions
            (samples); otherwise every eligible user counts equally.

    Returns:
        The (weighted) mean of per-user AUC, each computed as in :func:`auc`; users
        with only positives or only negatives are skipped.

    Raises:
        ValueError: on empty or mismatched inputs, NaN scores or user ids, labels
            outside {0, 1}, or when no user has both a positive and a negative.
    """
    u = _as_1d("user_ids", user_ids)
    y = _check_labels("labels", labels)
    s = _check_scores("scores", scores)
    _check_same_length(user_ids=u, labels=y, scores=s)
    _check_no_nan("scores", s)
    if u.dtype.kind in "fc" and np.isnan(u).any():
        raise ValueError("user_ids must not contain NaN")

    order = np.lexsort((s, u))  # primary key: user, secondary: score
    u_sorted, s_sorted, y_sorted = u[order], s[order], y[order]
    n = s.size

    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    new_user[1:] = u_sorted[1:] != u_sorted[:-1]
    new_tie = new_user.copy()
    new_tie[1:] |= s_sorted[1:] != s_sorted[:-1]

    user_start, _ = _tie_group_starts(new_user)
    tie_start, tie_end = _tie_group_starts(new_tie)
    # 1-based average rank of each sample within its own user.
    avg_rank = (tie_start + tie_end + 1 - 2 * user_start) / 2.0

    user_idx = np.cumsum(new_user) - 1
    n_users = int(user_idx[-1]) + 1
    n_samples = np.bincount(user_idx, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(user_idx, weights=y_sorted, minlength=n_users)
    n_neg = n_samples - n_pos
    rank_sum_pos = np.bincount(user_idx, weights=avg_rank * y_sorted, minlength=n_users)

    eligible = (n_pos > 0) & (n_neg > 0)
    if not eligible.any():
        raise ValueError("no user in user_ids has both a positive and a negative label")

    n_pos, n_neg = n_pos[eligible], n_neg[eligible]
    u_stat = rank_sum_pos[eligible] - n_pos * (n_pos + 1.0) / 2.0
    user_auc = u_stat / (n_pos * n_neg)
    weights = n_samples[eligible] if weighted else np.ones_like(user_auc)
    return float(np.dot(weights, user_auc) / weights.sum())


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, with ``probs`` clipped to ``[eps, 1 - eps]``.

    Args:
        labels: shape (n,), binary labels in {0, 1}.
        probs: shape (n,), predicted probabilities of the positive class, in [0, 1].
        eps: clipping margin, in (0, 0.5), keeping the logarithms finite.

    Returns:
        ``-mean(y * log(p) + (1 - y) * log(1 - p))`` in nats.

    Raises:
        ValueError: on empty or mismatched inputs, NaN probabilities, probabilities
            outside [0, 1], labels outside {0, 1}, or ``eps`` outside (0, 0.5).
    """
    y = _check_labels("labels", labels)
    p = _check_scores("probs", probs)
    _check_same_length(labels=y, probs=p)
    _check_no_nan("probs", p)
    if (p < 0).any() or (p > 1).any():
        bad = p[(p < 0) | (p > 1)][0]
        raise ValueError(f"probs must lie in [0, 1], got value {bad!r}")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps!r}")

    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


# --------------------------------------------------------------------------- top-K metrics


def target_ranks(
    pos_scores: np.ndarray,
    neg_scores: np.ndarray,
    neg_mask: np.ndarray | None = None,
) -> np.ndarray:
    """1-based rank of each query's positive among its negatives, ties pessimistic.

    ``rank = 1 + #{valid negatives with score >= positive score}``, so a negative tied
    with the positive is ranked above it.

    Args:
        pos_scores: shape (n,), the score of each query's single positive.
        neg_scores: shape (n, m), the scores of each query's candidate negatives.
        neg_mask: optional bool array, shape (n, m); False marks padding (ragged
            candidate lists), which is ignored, whatever its score (NaN allowed).

    Returns:
        int64 array, shape (n,), of ranks in ``[1, m + 1]``.

    Raises:
        ValueError: on empty or mis-shaped inputs, a non-bool mask, or NaN in
            ``pos_scores`` or in a valid (unmasked) negative score.
    """
    pos = _check_scores("pos_scores", pos_scores, ndim=1)
    neg = _check_scores("neg_scores", neg_scores, ndim=2)
    if neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"length mismatch: pos_scores has {pos.shape[0]} rows, "
            f"neg_scores has {neg.shape[0]}"
        )
    _check_no_nan("pos_scores", pos)

    if neg_mask is None:
        mask = np.ones(neg.shape, dtype=bool)
    else:
        mask = np.asarray(neg_mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"neg_mask must be a bool array, got dtype {mask.dtype}")
        if mask.shape != neg.shape:
            raise ValueError(
                f"neg_mask shape {mask.shape} does not match neg_scores shape {neg.shape}"
            )
    _check_no_nan("neg_scores", neg[mask])

    beats_or_ties = (neg >= pos[:, None]) & mask
    return (1 + beats_or_ties.sum(axis=1)).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Recall@K for one positive per query, which equals the hit rate HR@K.

    Args:
        ranks: shape (n,), 1-based rank of each query's positive (see :func:`target_ranks`).
        k: cut-off, a positive int.

    Returns:
        ``mean(ranks <= k)``.
    """
    r = _check_ranks(ranks)
    k = _check_k(k)
    return float(np.mean(r <= k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@K for one positive per query (the ideal DCG is 1).

    Args:
        ranks: shape (n,), 1-based rank of each query's positive.
        k: cut-off, a positive int.

    Returns:
        The mean over queries of ``1 / log2(rank + 1)`` if ``rank <= k``, else 0.
    """
    r = _check_ranks(ranks)
    k = _check_k(k)
    gains = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    return float(np.mean(gains))


def topk_metrics(ranks: np.ndarray, ks: Sequence[int] = (5, 10, 20)) -> dict[str, float]:
    """Recall@K and NDCG@K for several cut-offs.

    Args:
        ranks: shape (n,), 1-based rank of each query's positive.
        ks: the cut-offs, each a positive int.

    Returns:
        A dict with keys ``"recall@{k}"`` and ``"ndcg@{k}"`` for every ``k`` in ``ks``,
        in that order, e.g. ``{"recall@5": ..., "ndcg@5": ..., "recall@10": ..., ...}``.
    """
    if len(ks) == 0:
        raise ValueError("ks must not be empty")
    result: dict[str, float] = {}
    for k in ks:
        result[f"recall@{k}"] = recall_at_k(ranks, k)
        result[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    return result


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank.

    Args:
        ranks: shape (n,), 1-based rank of each query's positive.

    Returns:
        ``mean(1 / ranks)``.
    """
    r = _check_ranks(ranks)
    return float(np.mean(1.0 / r))
