"""GRank (arXiv 2510.15299): target-aware generator + exact MIPS + cross-attention ranker; SASRec as its
sequence-only special case.

**Generator.** A causal transformer over the last ``short_len`` clicked items (item vector + time-gap + recency
position) followed by the query token U (user profile and sum-pooled behaviour, §2.1). The output at U, projected, is
the user vector ``u`` that MIPS serves. During training the target and the sampled negatives are appended as
auxiliary candidate tokens (an auxiliary MLP of their item vectors) under the decomposed mask of
:class:`~models.retrieval.layers.DecomposedLayer`; their outputs give ``s_sa(c) = <W o_c, e_c>``. At serving they
are gone and nothing of the user vector changes (history and U never read candidates).

**Ranker.** One-layer, single-head cross-attention from each candidate (query) to the long history (up to
``long_len`` events, keys/values = item vector + gap), with a learned bias on the logits of the candidate's own past
visits and a learned null slot, then ``MLP([a; e_c; a * e_c; u * e_c; log1p(visits); recency of the last visit])``
(see :class:`CrossAttentionRanker`).

**Losses** (§3): InfoNCE over the target (column 0) and its live-at-t negatives of the NTP score ``<u, e_c>``, the
auxiliary score and the ranker score, weighted by ``weights``. The ranker and the auxiliary tokens see the target,
half hard negatives (the generator's current top-scoring negatives, detached) and half random ones.

**SASRec** (``query_token=False``, no aux, no ranker): the user vector is the output at the most recent history
position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.retrieval.inputs import CatalogSizes, QueryBatch
from models.retrieval.layers import DecomposedLayer, HistoryEncoder, ItemEncoder, QueryEncoder
from recsys.data.ranking import N_GAP_BUCKETS


@dataclass
class GRankConfig:
    """Sizes and switches of GRank and its variants (``aux=False``: no auxiliary tokens; ``ranker=False``: no
    ranker; ``query_token=False`` + both off: SASRec)."""

    dim: int = 64
    layers: int = 4
    heads: int = 2
    ffn_mult: int = 2
    dropout: float = 0.1
    short_len: int = 64
    long_len: int = 256
    query_token: bool = True
    aux: bool = True
    ranker: bool = True
    temperature: float = 0.07
    weight_ntp: float = 1.0
    weight_sa: float = 1.0
    weight_ca: float = 1.0
    #: whether the SA-info loss (auxiliary tokens) also trains the shared item vectors; False: the auxiliary tokens
    #: read detached item vectors, so that loss shapes only the transformer that the query token shares (brief
    #: §2.3: "the layers are shared, so this target-conditioned task shapes the history representations that U reads")
    sa_updates_items: bool = True
    n_sub: int = 32  # candidates (target included) per anchor for the auxiliary tokens and the ranker
    hard_share: float = 0.5
    #: generator top-k1 that the ranker rescores at inference (ordered by ``fusion``, placed above the rest).
    #: Measured (BENCHMARKS, retrieval): with the ranker's order alone, 200 -> 500 raised NDCG@10 and deeper lost
    #: Recall@500; with fusion, 2000 beats every cascade depth on every metric, and 4000 beats 2000 on every metric
    #: on the full catalogue (on ``small`` both are the whole live pool).
    k1: int = 4000
    #: score fusion: the ranker's weight ``A`` in ``A * z(ranker) + (1 - A) * z(generator)``, which orders the
    #: generator's top k1 (z: standardised per request over that top). None: the ranker's order alone (the paper's
    #: cascade). The generator's score keeps in the list the targets the ranker does not recognise (no past visit,
    #: little popularity), which the ranker's order alone pushes down (BENCHMARKS, retrieval). With
    #: ``learn_fusion`` (the default) this is only the starting point of the weights fitted after training.
    fusion: float | None = 0.5
    #: weight ``C`` of the candidates' popularity in the fusion: ``+ C * z(log1p(streamer clicks in the last 24 h))``
    #: (the ranker's ``cand_pop`` input). 0: no popularity term; ignored without ``fusion``.
    fusion_pop: float = 0.0
    #: after training, replace the fusion weights ``(A, 1 - A, C)`` by the ones that maximise the likelihood of the
    #: validation targets among the generator's top k1 (:func:`fit_fusion_weights`, done by the trainer); the
    #: weights above are then only its starting point and the validation checks' weights during training.
    learn_fusion: bool = True

    def __post_init__(self) -> None:
        if self.short_len > self.long_len:
            raise ValueError(f"short_len ({self.short_len}) must not exceed long_len ({self.long_len})")
        if not 0.0 <= self.hard_share <= 1.0:
            raise ValueError(f"hard_share must lie in [0, 1], got {self.hard_share}")
        if min(self.dim, self.layers, self.heads, self.n_sub, self.k1) < 1 or self.temperature <= 0:
            raise ValueError(f"GRank sizes must be positive: {self}")
        if self.fusion is not None and not 0.0 <= self.fusion <= 1.0:
            raise ValueError(f"fusion (the ranker's weight) must lie in [0, 1], got {self.fusion}")
        if self.fusion_pop < 0:
            raise ValueError(f"fusion_pop must be >= 0, got {self.fusion_pop}")


def standardise_rows(x: Tensor, valid: Tensor) -> Tensor:
    """Per-row z-scores of ``x [B, K]`` over its ``valid [B, K]`` entries (the values at invalid entries are
    meaningless; rows with one valid entry or equal scores get 0)."""
    w = valid.to(x.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1)
    xv = torch.where(valid, x, torch.zeros_like(x))
    mean = xv.sum(1, keepdim=True) / n
    sd = (((xv - mean) * w) ** 2).sum(1, keepdim=True).div(n).sqrt().clamp_min(1e-9)
    return torch.where(valid, (x - mean) / sd, torch.zeros_like(x))


def fusion_features(ranker: Tensor, generator: Tensor, valid: Tensor, pop: Tensor | None = None) -> Tensor:
    """The per-request z-scores (:func:`standardise_rows` over the ``valid`` candidates) that the fusion weighs:
    ``[B, K, 3]`` = ranker, generator, popularity (zeros without ``pop``), for candidates ``[B, K]``. Each score is
    standardised per request, so no one's scale decides."""
    z_pop = torch.zeros_like(ranker) if pop is None else standardise_rows(pop.to(ranker.dtype), valid)
    return torch.stack([standardise_rows(ranker, valid), standardise_rows(generator.to(ranker.dtype), valid), z_pop],
                       dim=-1)


def fuse_scores(ranker: Tensor, generator: Tensor, valid: Tensor, weights: Tensor | tuple[float, float, float],
                pop: Tensor | None = None) -> Tensor:
    """``w_r * z(ranker) + w_g * z(generator) + w_p * z(pop)`` for candidates ``[B, K]`` (see
    :func:`fusion_features`); ``weights = (w_r, w_g, w_p)``. ``(A, 1 - A, C)`` is the hand-set fusion of
    :class:`GRankConfig`."""
    x = fusion_features(ranker, generator, valid, pop)
    return x @ torch.as_tensor(weights, dtype=x.dtype, device=x.device)


def fit_fusion_weights(features: Tensor, valid: Tensor, target: Tensor, init: Tensor | tuple[float, float, float],
                       l2: float = 1e-3, max_iter: int = 200) -> Tensor:
    """The fusion weights ``[3]`` that maximise the likelihood of each request's target among its candidates:
    a conditional logit ``softmax_k(features[i, k] @ w)`` over the ``valid`` candidates, fitted by L-BFGS from
    ``init`` with an L2 penalty ``l2 * |w|^2`` (the scale of ``w`` is the softmax's temperature, so it is free).

    ``features [N, K, 3]`` from :func:`fusion_features`, ``valid [N, K]`` bool, ``target [N]`` the target's column
    (each row's target must be a valid candidate). Only the direction of ``w`` changes an order.
    """
    if features.ndim != 3 or features.shape[:2] != valid.shape or target.shape != features.shape[:1]:
        raise ValueError(f"features [N, K, F], valid [N, K] and target [N] do not match: {tuple(features.shape)}, "
                         f"{tuple(valid.shape)}, {tuple(target.shape)}")
    if features.shape[0] == 0:
        raise ValueError("fit_fusion_weights needs at least one request")
    if not bool(valid.gather(1, target[:, None]).all()):
        raise ValueError("every request's target must be one of its valid candidates")
    x = features.double()
    w = torch.as_tensor(init, dtype=torch.float64).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        logits = (x @ w).masked_fill(~valid, float("-inf"))
        nll = (torch.logsumexp(logits, dim=1) - logits.gather(1, target[:, None]).squeeze(1)).mean()
        loss = nll + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float()


def mips_scores(user: Tensor, item_vectors: Tensor, valid: Tensor) -> Tensor:
    """The inner products ``<u, e_c>`` ``[B, C]`` of user vectors ``[B, d]`` with candidate vectors ``[B, C, d]``, in
    float64 (so that later offsets never round scores into ties), -inf where ``valid [B, C]`` is False."""
    return torch.einsum("bd,bcd->bc", user, item_vectors).double().masked_fill(~valid, float("-inf"))


def info_nce(scores: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE of ``scores [B, C]`` with the positive in column 0; invalid columns are excluded."""
    logits = (scores.float() / temperature).masked_fill(~valid, float("-inf"))
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()


class CrossAttentionRanker(nn.Module):
    """One layer, one head: each candidate attends to the long history, then an MLP scores it.

    ``forward(cand [B, C, d], hist [B, L, d], valid [B, L] bool, user [B, d], match [B, C, L] bool,
    recency [B, L] float, pop [B, C] float | None) -> [B, C]``.

    ``match`` marks history events of the candidate's streamer (a revisit: 27 % of KuaiLive users revisit a streamer
    and repeat visits dominate live streaming). It enters twice: as a learned additive bias on the attention logits
    (so the one head can lock onto the candidate's own past visits instead of having to learn an identity metric in
    ``W_q^T W_k``), and as two scalars for the MLP: ``log1p`` of the number of past visits and the recency
    (``recency`` in [0, 1], 1 = just now) of the latest one. ``pop`` is the candidate's recent popularity
    (``log1p`` of its streamer's clicks in the last 24 h, a feature the online store keeps), which a MIPS score
    cannot carry because it changes by the minute; zeros when not given. A learned null key/value keeps an empty
    history defined.
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.null_k = nn.Parameter(torch.zeros(dim))
        self.null_v = nn.Parameter(torch.zeros(dim))
        self.match_bias = nn.Parameter(torch.tensor(2.0))
        self.mlp = nn.Sequential(nn.Linear(4 * dim + 3, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.scale = dim ** -0.5

    def forward(self, cand: Tensor, hist: Tensor, valid: Tensor, user: Tensor, match: Tensor,
                recency: Tensor, pop: Tensor | None = None) -> Tensor:
        q = self.q(cand)
        k, v = self.k(hist), self.v(hist)
        match = match & valid[:, None, :]
        s = torch.einsum("bcd,bld->bcl", q, k) * self.scale + self.match_bias * match.to(q.dtype)
        s = s.masked_fill(~valid[:, None, :], float("-inf"))
        s_null = (q @ self.null_k) * self.scale
        w = torch.softmax(torch.cat([s, s_null.unsqueeze(-1)], dim=-1), dim=-1)
        a = torch.einsum("bcl,bld->bcd", w[..., :-1], v) + w[..., -1:] * self.null_v
        u = user.unsqueeze(1).expand_as(cand)
        visits = torch.log1p(match.sum(-1).to(q.dtype)).unsqueeze(-1)
        last = (match.to(q.dtype) * recency[:, None, :]).amax(-1, keepdim=True)
        pop = torch.zeros_like(visits) if pop is None else pop.to(q.dtype).unsqueeze(-1)
        return self.mlp(torch.cat([a, cand, a * cand, u * cand, visits, last, pop], dim=-1)).squeeze(-1)


class GRank(nn.Module):
    """Generator (+ auxiliary candidate tokens) + ranker over shared item vectors."""

    def __init__(self, sizes: CatalogSizes, cfg: GRankConfig, buffers: dict[str, Tensor] | None = None) -> None:
        super().__init__()
        self.sizes, self.cfg = sizes, cfg
        d = cfg.dim
        self.items = ItemEncoder(sizes, d, buffers)
        self.history = HistoryEncoder(d, positions=cfg.short_len)
        self.query = QueryEncoder(sizes, d, cfg.short_len) if cfg.query_token else None
        self.layers = nn.ModuleList(DecomposedLayer(d, cfg.heads, cfg.ffn_mult, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(d)
        self.user_proj = nn.Linear(d, d)
        self.aux_mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) if cfg.aux else None
        self.aux_proj = nn.Linear(d, d, bias=False) if cfg.aux else None
        self.long_history = HistoryEncoder(d) if cfg.ranker else None
        self.ranker = CrossAttentionRanker(d) if cfg.ranker else None
        #: (ranker, generator, popularity) weights of the score fusion: the config's (A, 1 - A, C) until
        #: :meth:`set_fusion_weights` (the trainer's :func:`fit_fusion_weights`); saved with the state.
        fusion = cfg.fusion if cfg.fusion is not None else 1.0
        self.register_buffer("fusion_weights", torch.tensor([fusion, 1.0 - fusion, cfg.fusion_pop]))
        self.register_load_state_dict_pre_hook(self._fixed_fusion_if_absent)

    def _fixed_fusion_if_absent(self, module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
        """A state saved before the fusion weights were learned has none: it loads with the config's weights."""
        state_dict.setdefault(prefix + "fusion_weights", self.fusion_weights.clone())

    def set_fusion_weights(self, weights: Tensor) -> None:
        """Replace the (ranker, generator, popularity) fusion weights ``[3]`` (finite)."""
        weights = torch.as_tensor(weights, dtype=self.fusion_weights.dtype)
        if weights.shape != (3,) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"fusion weights must be 3 finite numbers, got {weights}")
        self.fusion_weights.copy_(weights)

    # ---------------------------------------------------------------------------------------------- generator
    def _sequence(self, q: QueryBatch) -> tuple[Tensor, list[tuple[Tensor, Tensor]], Tensor]:
        """Run history + U once: (user vectors [B, d], per-layer keys/values, key validity [B, S])."""
        items = q.hist[:, -self.cfg.short_len:]
        x = self.history(items, q.hist_gap[:, -self.cfg.short_len:], self.items(items))
        valid = items > 0
        if self.query is not None:
            x = torch.cat([x, self.query(q, self.items).unsqueeze(1)], dim=1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        cache = []
        for layer in self.layers:
            x, kv = layer.forward_sequence(x, valid)
            cache.append(kv)
        return self.user_proj(self.final_norm(x[:, -1])), cache, valid

    def _auxiliary(self, cand_vectors: Tensor, cache: list[tuple[Tensor, Tensor]], valid: Tensor) -> Tensor:
        """Auxiliary candidate-token scores ``s_sa`` ``[B, C]`` from item vectors ``[B, C, d]`` and the cached
        sequence of every layer (candidates never see each other)."""
        if self.aux_mlp is None or self.aux_proj is None:
            raise ValueError("this GRank variant has no auxiliary tokens (aux=False)")
        c = self.aux_mlp(cand_vectors)
        for layer, kv in zip(self.layers, cache):
            c = layer.forward_candidates(c, kv, valid)
        return (self.aux_proj(self.final_norm(c)) * cand_vectors).sum(-1)

    def user_vector(self, q: QueryBatch) -> Tensor:
        """The serving user vector ``[B, d]`` (no candidate tokens)."""
        return self._sequence(q)[0]

    def generator_scores(self, user: Tensor, cand: Tensor, valid: Tensor) -> Tensor:
        """The MIPS scores ``<u, e_c>`` ``[B, C]`` of candidate rows for user vectors ``[B, d]`` (float64, -inf where
        ``valid`` is False)."""
        return mips_scores(user, self.item_vectors(cand), valid)

    def item_vectors(self, rows: Tensor) -> Tensor:
        """Item vectors ``[..., d]`` for MIPS (the same vectors the NTP loss scores)."""
        return self.items(rows)

    # ---------------------------------------------------------------------------------------------- ranker
    def rank(self, q: QueryBatch, user: Tensor, cand: Tensor, cand_vectors: Tensor | None = None,
             cand_pop: Tensor | None = None) -> Tensor:
        """Ranker scores ``[B, C]`` of candidate rows ``[B, C]`` (their item vectors may be passed in; ``cand_pop``
        ``[B, C]`` is their recent popularity, see :class:`CrossAttentionRanker`)."""
        if self.ranker is None or self.long_history is None:
            raise ValueError("this GRank variant has no ranker (ranker=False)")
        hist = self.long_history(q.hist, q.hist_gap, self.items(q.hist))
        e = self.items(cand) if cand_vectors is None else cand_vectors
        streamer = self.items.item_streamer_row
        match = streamer[cand].unsqueeze(-1) == streamer[q.hist].unsqueeze(1)  # [B, C, L]
        recency = 1.0 - q.hist_gap.to(e.dtype) / N_GAP_BUCKETS
        return self.ranker(e, hist, q.hist > 0, user, match, recency, cand_pop)

    @torch.no_grad()
    def scores(self, q: QueryBatch, cand: Tensor, valid: Tensor, cand_pop: Tensor | None = None) -> Tensor:
        """Final scores ``[B, C]`` of candidate rows (inference): generator scores; with a ranker, the generator's
        top-``k1`` valid candidates are rescored (:meth:`rerank`) and placed above the rest (float64, so that the
        offset never rounds ranker scores into ties)."""
        u = self.user_vector(q)
        gen = self.generator_scores(u, cand, valid)
        if self.ranker is None:
            return gen
        k1 = min(self.cfg.k1, cand.shape[1])
        top = gen.topk(k1, dim=1).indices
        pop = cand_pop.gather(1, top) if cand_pop is not None else None
        rs = self.rank(q, u, cand.gather(1, top), cand_pop=pop).double()
        return self.place_ranked(gen, valid, top, self.rerank(rs, gen.gather(1, top), valid.gather(1, top), pop))

    def rerank(self, ranker: Tensor, generator: Tensor, valid: Tensor, pop: Tensor | None = None) -> Tensor:
        """The scores that order the generator's top candidates ``[B, K]``: the ranker's, or with
        ``cfg.fusion`` set, their :func:`fuse_scores` with the generator's and the candidates' popularity ``pop``
        under :attr:`fusion_weights` (the service calls this too)."""
        if self.cfg.fusion is None:
            return ranker
        return fuse_scores(ranker, generator, valid, self.fusion_weights, pop)

    @staticmethod
    def place_ranked(gen: Tensor, valid: Tensor, top: Tensor, rs: Tensor) -> Tensor:
        """Final scores: the generator scores ``gen [B, C]`` (float64, -inf where ``valid`` is False) with the columns
        ``top [B, k]`` replaced by their ranker scores ``rs [B, k]``, placed above every other candidate."""
        out = gen.clone()
        # the ranked block sits above every generator score; ties keep the ranker's order
        offset = gen.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True).clamp_min(0) + 1e4
        out.scatter_(1, top, torch.where(valid.gather(1, top), rs + offset - rs.amin(1, keepdim=True),
                                         gen.gather(1, top)))
        return out

    # ---------------------------------------------------------------------------------------------- training
    def losses(self, q: QueryBatch, cand: Tensor, valid: Tensor, cand_pop: Tensor | None = None
               ) -> dict[str, Tensor]:
        """Training losses for candidate rows ``[B, C]`` (column 0 = target, the rest live-at-t negatives;
        ``cand_pop`` ``[B, C]`` their recent popularity for the ranker)."""
        u, cache, seq_valid = self._sequence(q)
        e = self.items(cand)
        ntp = torch.einsum("bd,bcd->bc", u, e)
        out = {"ntp": info_nce(ntp, valid, self.cfg.temperature)}
        total = self.cfg.weight_ntp * out["ntp"]
        if self.aux_mlp is not None or self.ranker is not None:
            sub = self._subset(ntp.detach(), valid)
            sub_cand, sub_valid = cand.gather(1, sub), valid.gather(1, sub)
            sub_e = e.gather(1, sub[..., None].expand(-1, -1, e.shape[-1]))
            if self.aux_mlp is not None:
                aux_e = sub_e if self.cfg.sa_updates_items else sub_e.detach()
                out["sa"] = info_nce(self._auxiliary(aux_e, cache, seq_valid), sub_valid, self.cfg.temperature)
                total = total + self.cfg.weight_sa * out["sa"]
            if self.ranker is not None:
                pop = cand_pop.gather(1, sub) if cand_pop is not None else None
                out["ca"] = info_nce(self.rank(q, u, sub_cand, sub_e, pop), sub_valid, 1.0)
                total = total + self.cfg.weight_ca * out["ca"]
        out["loss"] = total
        return out

    def _subset(self, ntp: Tensor, valid: Tensor) -> Tensor:
        """Column indices ``[B, n_sub]``: the target, the hardest valid negatives by the current NTP score, then
        random ones (the columns after 0 are already in random order)."""
        c = ntp.shape[1]
        n = min(self.cfg.n_sub, c)
        n_hard = int(round((n - 1) * self.cfg.hard_share))
        neg = ntp[:, 1:].masked_fill(~valid[:, 1:], float("-inf"))
        hard = neg.topk(n_hard, dim=1).indices + 1 if n_hard else ntp.new_zeros((ntp.shape[0], 0), dtype=torch.long)
        taken = torch.zeros_like(valid)
        taken.scatter_(1, hard, True)
        taken[:, 0] = True
        # the first remaining columns in order: stable sort of "taken" puts untaken columns first
        rest = torch.sort(taken.to(torch.int8), dim=1, stable=True).indices[:, : n - 1 - n_hard]
        zero = torch.zeros_like(ntp[:, :1], dtype=torch.long)
        return torch.cat([zero, hard, rest], dim=1)


__all__ = ["CrossAttentionRanker", "GRank", "GRankConfig", "fit_fusion_weights", "fuse_scores", "fusion_features",
           "info_nce", "mips_scores", "standardise_rows"]
