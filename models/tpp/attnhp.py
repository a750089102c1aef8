"""AttNHP, the continuous-time transformer (Yang, Mei & Eisner 2022; brief ``tpp.md`` §2.4), with the PromptTPP
continuous-time retrieval prompt pool built in (brief §5, corrected per §6).

**Backbone.** ``D = d_model + d_time``. Event rows ``x^(0)_j = [tanh(Emb(k_j)); TE(t_j)]``. ``H`` independent
single-head stacks of ``L`` layers; layer ``l`` has ``W_q, W_k, W_v: D -> d_model`` (no output projection):

* event rows: ``x^(l+1)_j = [Attn_l(x^(l)_j; keys/values x^(l)_{<=j}); TE(t_j)]``;
* query ("layer") rows at time ``t`` on row ``i``: ``z^(0) = 0``,
  ``z^(l+1) = z^(l) + tanh(Attn_l(q = [z^(l); TE(t)]; keys/values x^(l)_{<=i} and itself))``;
* ``lambda(t) = sp_beta(W [z_1^(L); ...; z_H^(L)] + b)`` (scaled softplus).

Event rows never see query rows, so they are computed once per batch (:meth:`AttNHP.encode`) and every set of query
times reuses them (:meth:`AttNHP.intensity_at`): the layout equals the reference's 2S-row mask, without the
``(S + S G)^2`` score matrix.

**Prompt pool** (``cfg.prompt``), in every layer of every stack, one k-pool and one v-pool (``2 H L`` pools), each
with keys ``[M, D]`` and type prompts ``[M, L_p, d_model]`` (init U(-1, 1)):

1. Causal retrieval query per position (defect 2): ``q_i = sum_{j<=i} v_j x^(l)_j / sum_{j<=i} v_j`` over EVENT rows
   only (``v`` = validity); query rows of row ``i`` use row ``i``'s selection.
2. ``cos(q_i, key_m)``; top-N PER POSITION (defect 5; ``batchwise_train`` only in training mode).
3. Prompt token ``(m, l)`` = ``[P_{m,l}; TE(t_hat_i)]`` through the layer's own ``W_k`` / ``W_v``; by linearity
   ``W_k [P; TE] = W_k^type P + (W_k^time TE(t_hat_i) + b_k)``, so the per-position prompt keys are never
   materialised (cost ``O(S M L_p)``, brief note to §6).
4. Prompts are prepended to the keys/values of both event and query rows; the mask lives on the concatenated key
   axis ``[prompts | events (| self)]`` (defect 1): prompts are visible to every row, events only causally.
5. Matching loss ``alpha * sum_{stacks, layers, pools} mean_{valid i} (1 - mean_{s in top(i)} cos(q_i, key_s))``,
   reported in ``Encoded.aux_loss``, never in the log-likelihood (defect 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.tpp.base import Encoded, NeuralTPP, PromptConfig, ScaledSoftplus, TPPConfig, causal_mask, time_encoding
from models.tpp.batch import TPPBatch


def prefix_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Masked causal mean ``[B, S, D] -> [B, S, D]``: row ``i`` = mean of the valid rows ``j <= i`` (0 if none)."""
    w = valid.to(x.dtype)
    return (x * w[..., None]).cumsum(1) / w.cumsum(1).clamp_min(1.0)[..., None]


@dataclass
class PromptContext:
    """Prompts selected for one layer: ``idx_k, idx_v [B, S, N]`` (pool ids per position), ``pk, pv [M, L_p, d]``
    (type prompts through ``W_k^type`` / ``W_v^type``), ``k_time, v_time [B, S, d]`` (temporal half + bias)."""

    idx_k: Tensor
    idx_v: Tensor
    pk: Tensor
    pv: Tensor
    k_time: Tensor
    v_time: Tensor

    @property
    def n_tokens(self) -> int:
        return self.idx_k.shape[-1] * self.pk.shape[1]

    def scores(self, q: Tensor) -> Tensor:
        """Raw scores ``q [B, S, R, d] -> [B, S, R, N * L_p]`` against the selected prompt keys of each row."""
        b, s, r, _ = q.shape
        n, lp = self.idx_k.shape[-1], self.pk.shape[1]
        every = torch.einsum("bsrd,mld->bsrml", q, self.pk)
        picked = every.gather(3, self.idx_k[:, :, None, :, None].expand(b, s, r, n, lp))
        return (picked + (q * self.k_time[:, :, None]).sum(-1)[..., None, None]).reshape(b, s, r, n * lp)

    def values(self, a: Tensor) -> Tensor:
        """Attention mass on the prompt tokens ``a [B, S, R, N * L_p]`` -> value contribution ``[B, S, R, d]``. The
        token at rank ``r`` of the k-list pairs with the token at rank ``r`` of the (independent) v-list."""
        b, s, r, _ = a.shape
        n, (m, lp, _) = self.idx_v.shape[-1], self.pv.shape
        full = a.new_zeros(b, s, r, m, lp).scatter(3, self.idx_v[:, :, None, :, None].expand(b, s, r, n, lp),
                                                     a.reshape(b, s, r, n, lp))
        return torch.einsum("bsrml,mld->bsrd", full, self.pv) + a.sum(-1, keepdim=True) * self.v_time[:, :, None]


class PromptPool(nn.Module):
    """``keys [M, D]``, ``prompts [M, L_p, d_model]``, both U(-1, 1)."""

    def __init__(self, pool_size: int, prompt_len: int, d_in: int, d_model: int) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.empty(pool_size, d_in).uniform_(-1.0, 1.0))
        self.prompts = nn.Parameter(torch.empty(pool_size, prompt_len, d_model).uniform_(-1.0, 1.0))

    def select(self, query: Tensor, valid: Tensor, top_n: int, batchwise: bool) -> tuple[Tensor, Tensor]:
        """``query [B, S, D]`` -> (``idx [B, S, N]``, ``cos [B, S, N]`` of the selected keys). Per position, or with
        ``batchwise`` the N ids most often in the valid positions' top-N lists (ties: lower id) for every row."""
        cos = F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T  # [B, S, M]
        sim, idx = cos.topk(top_n, dim=-1)
        if batchwise:
            counts = torch.bincount(idx[valid].flatten(), minlength=self.keys.shape[0])
            ids = torch.argsort(-counts, stable=True)[:top_n]
            idx = ids.expand(*cos.shape[:2], top_n)
            sim = cos.gather(-1, idx)
        return idx, sim


class ContTimeAttention(nn.Module):
    """One single-head continuous-time attention layer, ``D = d_model + d_time -> d_model``, optional k/v pools."""

    def __init__(self, d_model: int, d_time: int, dropout: float, prompt: PromptConfig | None) -> None:
        super().__init__()
        d_in = d_model + d_time
        self.d_model, self.prompt_cfg = d_model, prompt
        self.wq, self.wk, self.wv = nn.Linear(d_in, d_model), nn.Linear(d_in, d_model), nn.Linear(d_in, d_model)
        self.drop = nn.Dropout(dropout)
        self.pool_k: PromptPool | None = None
        self.pool_v: PromptPool | None = None
        if prompt is not None:
            self.pool_k = PromptPool(prompt.pool_size, prompt.prompt_len, d_in, d_model)
            self.pool_v = PromptPool(prompt.pool_size, prompt.prompt_len, d_in, d_model)

    def prompt_context(self, x: Tensor, valid: Tensor, te_hat: Tensor | None) -> tuple[PromptContext | None, Tensor]:
        """Select prompts for event rows ``x [B, S, D]``; returns the context and the (unweighted) matching loss."""
        if self.pool_k is None or self.pool_v is None or self.prompt_cfg is None or te_hat is None:
            return None, x.new_zeros(())
        cfg, dm = self.prompt_cfg, self.d_model
        q = prefix_mean(x, valid)
        batchwise = self.training and cfg.batchwise_train
        idx_k, sim_k = self.pool_k.select(q, valid, cfg.top_n, batchwise)
        idx_v, sim_v = self.pool_v.select(q, valid, cfg.top_n, batchwise)
        w = valid.to(x.dtype)
        denom = w.sum().clamp_min(1.0)
        match = (((1.0 - sim_k.mean(-1)) * w).sum() + ((1.0 - sim_v.mean(-1)) * w).sum()) / denom
        ctx = PromptContext(
            idx_k=idx_k, idx_v=idx_v,
            pk=self.pool_k.prompts @ self.wk.weight[:, :dm].T, pv=self.pool_v.prompts @ self.wv.weight[:, :dm].T,
            k_time=te_hat @ self.wk.weight[:, dm:].T + self.wk.bias,
            v_time=te_hat @ self.wv.weight[:, dm:].T + self.wv.bias,
        )
        return ctx, match

    def attend(self, x_q: Tensor, k_ev: Tensor, v_ev: Tensor, ctx: PromptContext | None, include_self: bool,
               return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Rows ``x_q [B, S, R, D]`` of position ``i`` attend to ``[prompts(i) | events j <= i | (self)]`` with
        event keys/values ``k_ev, v_ev [B, S, d]``. Returns ``[B, S, R, d]`` (and the weights ``[B, S, R, P + S
        (+ 1)]`` in that column order when ``return_weights``)."""
        s, d = k_ev.shape[1], self.d_model
        scale = d ** -0.5
        q = self.wq(x_q)
        s_ev = torch.einsum("bird,bjd->birj", q, k_ev).masked_fill(causal_mask(s, q.device)[None, :, None, :],
                                                                   float("-inf"))
        parts = [s_ev * scale]
        if include_self:
            k_self, v_self = self.wk(x_q), self.wv(x_q)
            parts.append((q * k_self).sum(-1, keepdim=True) * scale)
        n_p = 0
        if ctx is not None:
            s_p = ctx.scores(q) * scale
            n_p = s_p.shape[-1]
            parts.insert(0, s_p)
        a = self.drop(torch.softmax(torch.cat(parts, -1), -1))
        out = torch.einsum("birj,bjd->bird", a[..., n_p:n_p + s], v_ev)
        if include_self:
            out = out + a[..., n_p + s:] * v_self
        if ctx is not None:
            out = out + ctx.values(a[..., :n_p])
        return (out, a) if return_weights else out


@dataclass
class _LayerCache:
    k: Tensor  # [B, S, d] event keys of this layer
    v: Tensor  # [B, S, d]
    prompt: PromptContext | None


class AttNHP(NeuralTPP):
    """AttNHP, optionally prompted (``cfg.prompt``). ``encode(batch).hidden``: ``[B, S, H * d_model]`` (last layer's
    event rows of every stack); ``encode(batch).cache[h][l]`` holds layer ``l`` of stack ``h`` (event keys/values
    and the :class:`PromptContext`)."""

    def __init__(self, cfg: TPPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.type_emb = nn.Embedding(cfg.n_types, cfg.d_model)
        self.stacks = nn.ModuleList(
            nn.ModuleList(ContTimeAttention(cfg.d_model, cfg.d_time, cfg.dropout, cfg.prompt)
                          for _ in range(cfg.layers))
            for _ in range(cfg.heads))
        self.head = nn.Linear(cfg.heads * cfg.d_model, cfg.n_types)
        self.softplus = ScaledSoftplus(cfg.n_types)
        if cfg.prompt is not None:
            self.register_buffer("task_time", torch.ones(()))

    def set_task_time(self, value: float) -> None:
        """The constant ``t_hat`` of ``time_prompt="task_const"`` (e.g. the mean gap of the task's training data)."""
        if self.cfg.prompt is None:
            raise ValueError("set_task_time: the model has no prompt pool")
        self.task_time.fill_(float(value))

    def time_hat(self, batch: TPPBatch) -> Tensor:
        """``t_hat [B, S]`` of the temporal prompt (see :class:`PromptConfig`)."""
        assert self.cfg.prompt is not None
        t = batch.times
        b, s = t.shape
        mode = self.cfg.prompt.time_prompt
        if mode == "causal_mean":  # mean of the observed gaps dt_1..dt_i = (t_i - t_0) / i; 0 at i = 0
            pos = torch.arange(s, device=t.device, dtype=t.dtype).clamp_min(1.0)
            return (t - t[:, :1]) / pos
        if mode == "mean":  # whole sequence, padding excluded (not causal)
            n = batch.lengths.to(t.dtype)
            return ((batch.last_time() - t[:, 0]) / (n - 1.0).clamp_min(1.0))[:, None].expand(b, s)
        return self.task_time.to(t.dtype).expand(b, s)

    def encode(self, batch: TPPBatch) -> Encoded:
        cfg = self.cfg
        te = time_encoding(batch.times, cfg.d_time)
        x0 = torch.cat([torch.tanh(self.type_emb(self.marks(batch))), te], -1)
        te_hat = None if cfg.prompt is None else time_encoding(self.time_hat(batch), cfg.d_time)
        aux = x0.new_zeros(())
        cache: list[list[_LayerCache]] = []
        hidden = []
        for stack in self.stacks:
            x, layers = x0, []
            out = x0[..., : cfg.d_model]
            for layer in stack:
                ctx, match = layer.prompt_context(x, batch.valid, te_hat)
                k, v = layer.wk(x), layer.wv(x)
                out = layer.attend(x[:, :, None], k, v, ctx, include_self=False)[:, :, 0]
                layers.append(_LayerCache(k, v, ctx))
                x = torch.cat([out, te], -1)
                aux = aux + match
            cache.append(layers)
            hidden.append(out)
        if cfg.prompt is not None:
            aux = aux * cfg.prompt.alpha
        return Encoded(batch, torch.cat(hidden, -1), aux, cache)

    def intensity_at(self, enc: Encoded, query_times: Tensor) -> Tensor:
        b, s, g = query_times.shape
        cols = s + 1 + (0 if self.cfg.prompt is None else self.cfg.prompt.n_tokens)
        step = max(1, self.cfg.max_attn_elems // (b * s * cols))
        if g > step:  # chunk the query axis: every query row is independent of the others
            return torch.cat([self._intensity_at(enc, q) for q in query_times.split(step, dim=2)], 2)
        return self._intensity_at(enc, query_times)

    def _intensity_at(self, enc: Encoded, query_times: Tensor) -> Tensor:
        b, s, g = query_times.shape
        te_q = time_encoding(query_times, self.cfg.d_time)  # [B, S, G, d_time]
        zs = []
        for stack, layers in zip(self.stacks, enc.cache):
            z = te_q.new_zeros(b, s, g, self.cfg.d_model)
            for layer, c in zip(stack, layers):
                z = z + torch.tanh(layer.attend(torch.cat([z, te_q], -1), c.k, c.v, c.prompt, include_self=True))
            zs.append(z)
        return self.softplus(self.head(torch.cat(zs, -1)))
