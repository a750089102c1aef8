"""RankMixer and TokenMixer-Large (TML) ranking backbones (brief ``ranking.md`` §1-6, §9).

Pure ``torch.nn`` modules, no I/O. Every per-token weight is stored token-major (``[T, D, F]``) and applied with one
``torch.einsum`` per matrix; nothing loops over tokens in Python (the tokenizer loops over the feature *groups* once,
because every group has its own input width and its own MLP).

Notation used in the shape comments:

* ``B``: batch size.
* ``T``: number of tokens (for TML it includes the global token).
* ``D``: token width (``dim``).
* ``H``: number of mixing heads; a mixed "head-token" has width ``W = T * D // H``.
* ``F``: FFN hidden width (``expansion * width``).
* ``E``: experts per token in the sparse per-token MoE (1 shared + ``E - 1`` routed); ``Fe = F // E``.

Contents:

* :func:`mix` / :func:`revert`: the parameter-free multi-head token mixing and its exact inverse (§2).
* :class:`PerTokenSwiGLU` (TML pSwiGLU, §3.2), :class:`PerTokenFFN` (RankMixer GELU PFFN, §3.1),
  :class:`SparsePerTokenMoE` (TML S-P MoE, §6.2/6.3).
* :class:`RankMixerBlock` (Post-LN, H = T, §4) and :class:`TokenMixerLargeBlock` (pre-RMSNorm mix -> FFN -> revert
  -> FFN, residual to the original tokens, §5.2).
* :class:`MixerConfig` and :class:`MixerBackbone`, the :class:`~models.ranking.backbone.Backbone` used by the
  multi-task ranker: tokenizer, ``L`` blocks with optional inter-layer residuals (§5.4), mean-pool over tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.ranking.backbone import Backbone, BackboneOutput, CrossLayerV2, mlp

MixerKind = Literal["tokenmixer", "rankmixer"]
GateSoftmax = Literal["topk", "all"]
GlobalToken = Literal["mlp", "cross"]


# =============================================================================
# Token mixing (brief §2)
# =============================================================================


def mix(x: Tensor, heads: int) -> Tensor:
    """Multi-head token mixing, ``[B, T, D] -> [B, H, T*D//H]``.

    Token ``t`` is split into ``H`` heads of width ``D // H``; mixed token ``h`` is the concatenation of head ``h`` of
    every original token, in token order (``out[:, h, t*D//H:(t+1)*D//H] == x[:, t, h*D//H:(h+1)*D//H]``).
    Parameter-free: a view, a transpose and a reshape.
    """
    if x.dim() != 3:
        raise ValueError(f"mix expects [B, T, D], got shape {list(x.shape)}")
    b, t, d = x.shape
    if heads < 1 or d % heads != 0:
        raise ValueError(f"mix: token width D={d} must be divisible by the number of heads H={heads}")
    return x.reshape(b, t, heads, d // heads).transpose(1, 2).reshape(b, heads, t * d // heads)


def revert(h: Tensor, n_tokens: int) -> Tensor:
    """Exact inverse of :func:`mix`, ``[B, H, T*D//H] -> [B, T, D]`` (``revert(mix(x, H), T) == x``)."""
    if h.dim() != 3:
        raise ValueError(f"revert expects [B, H, W], got shape {list(h.shape)}")
    b, heads, w = h.shape
    if n_tokens < 1 or w % n_tokens != 0:
        raise ValueError(f"revert: head-token width W={w} must be divisible by the number of tokens T={n_tokens}")
    return h.reshape(b, heads, n_tokens, w // n_tokens).transpose(1, 2).reshape(b, n_tokens, heads * (w // n_tokens))


# =============================================================================
# Per-token FFNs (brief §3, §5.5, §6.2)
# =============================================================================


def _xavier_uniform_(w: Tensor, fan_in: int, fan_out: int, scale: float = 1.0) -> None:
    """Xavier-uniform init of every ``[fan_in, fan_out]`` matrix stacked in ``w`` (leading dims = tokens/experts),
    times ``scale``. ``nn.init.xavier_uniform_`` would compute the fans of a 3-D tensor wrongly."""
    bound = scale * math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        w.uniform_(-bound, bound)


def _check_sizes(owner: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")


class PerTokenSwiGLU(nn.Module):
    """TML per-token SwiGLU (pSwiGLU), no biases: ``y_t = W_down^t (SiLU(W_gate^t x_t) * W_up^t x_t)``.

    Shapes: input ``[B, T, D]`` -> output ``[B, T, D]``. Weights ``w_gate, w_up: [T, D, F]``, ``w_down: [T, F, D]``.
    ``shared=True`` (ablation "pSwiGLU -> shared SwiGLU") stores a single SwiGLU as ``[1, D, F]`` / ``[1, F, D]``
    and broadcasts it over the tokens: same FLOPs, ``1/T`` of the parameters.

    Init (brief §5.5): Xavier-uniform per token for all three matrices, then ``w_down *= down_init_scale``, so a
    residual block ``x + pSwiGLU(x)`` starts close to the identity.
    """

    def __init__(self, n_tokens: int, dim: int, hidden: int, down_init_scale: float = 0.01,
                 shared: bool = False) -> None:
        super().__init__()
        _check_sizes("PerTokenSwiGLU", n_tokens=n_tokens, dim=dim, hidden=hidden)
        self.n_tokens, self.dim, self.hidden, self.shared = n_tokens, dim, hidden, shared
        n_w = 1 if shared else n_tokens
        self.w_gate = nn.Parameter(torch.empty(n_w, dim, hidden))
        self.w_up = nn.Parameter(torch.empty(n_w, dim, hidden))
        self.w_down = nn.Parameter(torch.empty(n_w, hidden, dim))
        _xavier_uniform_(self.w_gate, dim, hidden)
        _xavier_uniform_(self.w_up, dim, hidden)
        _xavier_uniform_(self.w_down, hidden, dim, scale=down_init_scale)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, T, D] -> [B, T, D]."""
        t = self.n_tokens
        g = torch.einsum("btd,tdf->btf", x, self.w_gate.expand(t, -1, -1))
        u = torch.einsum("btd,tdf->btf", x, self.w_up.expand(t, -1, -1))
        return torch.einsum("btf,tfd->btd", F.silu(g) * u, self.w_down.expand(t, -1, -1))


class PerTokenFFN(nn.Module):
    """RankMixer per-token GELU FFN (PFFN): ``v_t = W2^t GELU(W1^t s_t + b1^t) + b2^t``.

    Shapes: input ``[B, T, D]`` -> output ``[B, T, D]``. ``w1: [T, D, F]``, ``b1: [T, F]``, ``w2: [T, F, D]``,
    ``b2: [T, D]``. ``shared=True`` (ablation "PFFN -> shared FFN") stores one FFN with a leading dim of 1 and
    broadcasts it over the tokens. Init: Xavier-uniform weights, zero biases.
    """

    def __init__(self, n_tokens: int, dim: int, hidden: int, shared: bool = False) -> None:
        super().__init__()
        _check_sizes("PerTokenFFN", n_tokens=n_tokens, dim=dim, hidden=hidden)
        self.n_tokens, self.dim, self.hidden, self.shared = n_tokens, dim, hidden, shared
        n_w = 1 if shared else n_tokens
        self.w1 = nn.Parameter(torch.empty(n_w, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_w, hidden))
        self.w2 = nn.Parameter(torch.empty(n_w, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(n_w, dim))
        _xavier_uniform_(self.w1, dim, hidden)
        _xavier_uniform_(self.w2, hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, T, D] -> [B, T, D]."""
        t = self.n_tokens
        h = F.gelu(torch.einsum("btd,tdf->btf", x, self.w1.expand(t, -1, -1)) + self.b1)
        return torch.einsum("btf,tfd->btd", h, self.w2.expand(t, -1, -1)) + self.b2


class SparsePerTokenMoE(nn.Module):
    """TML Sparse-Pertoken MoE (brief §6.2/6.3), a drop-in for :class:`PerTokenSwiGLU` with the same total hidden.

    Per token ``t``: ``E = n_experts`` SwiGLU experts of hidden ``Fe = hidden // E`` ("first enlarge, then sparse").
    Expert 0 is the always-on shared expert; experts ``1..E-1`` are routed by a per-token router
    (``w_router: [T, D, E-1]``) that keeps a fixed ``top_k - 1`` experts (``top_k`` counts the shared expert) in
    training *and* in eval::

        out_t = gate_scale * sum_{i in top(k-1)} g_i(x_t) * Expert_i^t(x_t) + Expert_0^t(x_t)

    Gates ``g``: with ``gate_softmax="topk"`` (the brief's reading) a softmax over the selected logits only. Note that
    with ``top_k=2`` (one routed expert) that gate is identically 1, so the router then receives **no gradient** and
    routing stays as initialised; ``gate_softmax="all"`` (Switch-style) uses the softmax over all ``E-1`` routed
    logits, taken at the selected experts (not renormalised), which keeps the router trainable for any ``top_k``.

    All experts are computed densely with one einsum per matrix over ``[T, E, D, Fe]`` weights and the unselected
    ones are masked by zero gates (their parameters get zero gradient from that sample).

    Shapes: input ``[B, T, D]`` -> output ``[B, T, D]``. ``w_gate, w_up: [T, E, D, Fe]``, ``w_down: [T, E, Fe, D]``.
    ``shared=True`` (ablation "S-P MoE -> global sparse MoE") stores one expert pool and one router with a leading
    dim of 1, broadcast over the tokens; routing stays per token.

    After every forward, ``last_util`` holds the detached per-token expert utilisation ``[T, E-1]``: the fraction of
    the batch's routing slots that went to each routed expert (each row sums to 1; with ``top_k=2`` it is the fraction
    of samples routed to each expert).
    """

    def __init__(self, n_tokens: int, dim: int, hidden: int, n_experts: int = 4, top_k: int = 2,
                 gate_scale: float = 2.0, down_init_scale: float = 0.01, shared: bool = False,
                 gate_softmax: GateSoftmax = "topk") -> None:
        super().__init__()
        _check_sizes("SparsePerTokenMoE", n_tokens=n_tokens, dim=dim, hidden=hidden, n_experts=n_experts,
                     top_k=top_k)
        _check_moe("SparsePerTokenMoE", n_experts, top_k, gate_scale, gate_softmax)
        if hidden % n_experts != 0:
            raise ValueError(f"SparsePerTokenMoE: hidden={hidden} must be divisible by n_experts={n_experts} "
                             "(each expert is a 1/E slice of the dense hidden)")
        self.n_tokens, self.dim, self.hidden, self.shared = n_tokens, dim, hidden, shared
        self.n_experts, self.top_k, self.gate_scale, self.gate_softmax = n_experts, top_k, gate_scale, gate_softmax
        self.expert_hidden = fe = hidden // n_experts
        n_w = 1 if shared else n_tokens
        self.w_gate = nn.Parameter(torch.empty(n_w, n_experts, dim, fe))
        self.w_up = nn.Parameter(torch.empty(n_w, n_experts, dim, fe))
        self.w_down = nn.Parameter(torch.empty(n_w, n_experts, fe, dim))
        self.w_router = nn.Parameter(torch.empty(n_w, dim, n_experts - 1))
        _xavier_uniform_(self.w_gate, dim, fe)
        _xavier_uniform_(self.w_up, dim, fe)
        _xavier_uniform_(self.w_down, fe, dim, scale=down_init_scale)
        _xavier_uniform_(self.w_router, dim, n_experts - 1)
        self.last_util: Tensor | None = None

    def route(self, x: Tensor) -> Tensor:
        """Routing gates ``[B, T, E-1]`` for input ``[B, T, D]``: exactly ``top_k - 1`` non-zero entries per
        (sample, token), zeros elsewhere. Also updates ``last_util``."""
        logits = torch.einsum("btd,tde->bte", x, self.w_router.expand(self.n_tokens, -1, -1))
        k = self.top_k - 1
        top_logits, top_idx = logits.topk(k, dim=-1)
        if self.gate_softmax == "topk":
            top_gates = torch.softmax(top_logits, dim=-1)
        else:
            top_gates = torch.softmax(logits, dim=-1).gather(-1, top_idx)
        gates = torch.zeros_like(logits).scatter(-1, top_idx, top_gates)
        with torch.no_grad():
            chosen = torch.zeros_like(logits).scatter(-1, top_idx, 1.0)
            self.last_util = chosen.mean(dim=0) / k  # [T, E-1]
        return gates

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, T, D] -> [B, T, D]."""
        b, t, d = x.shape
        e, fe = self.n_experts, self.expert_hidden
        gates = self.route(x)  # [B, T, E-1]
        # shared expert weight 1, routed experts gate_scale * g; applied to the hidden activations, so that the
        # experts' down projections collapse into one [T, E*Fe, D] matmul (same result as summing expert outputs)
        coef = torch.cat([torch.ones_like(gates[..., :1]), self.gate_scale * gates], dim=-1)  # [B, T, E]
        w_gate = self.w_gate.expand(t, -1, -1, -1).permute(0, 2, 1, 3).reshape(t, d, e * fe)
        w_up = self.w_up.expand(t, -1, -1, -1).permute(0, 2, 1, 3).reshape(t, d, e * fe)
        w_down = self.w_down.expand(t, -1, -1, -1).reshape(t, e * fe, d)
        h = F.silu(torch.einsum("btd,tdf->btf", x, w_gate)) * torch.einsum("btd,tdf->btf", x, w_up)
        h = (h.view(b, t, e, fe) * coef.unsqueeze(-1)).reshape(b, t, e * fe)
        return torch.einsum("btf,tfd->btd", h, w_down)


def _check_moe(owner: str, n_experts: int, top_k: int, gate_scale: float, gate_softmax: str) -> None:
    if n_experts < 2:
        raise ValueError(f"{owner}: n_experts={n_experts} must be >= 2 (1 shared + at least 1 routed expert)")
    if not 2 <= top_k <= n_experts:
        raise ValueError(f"{owner}: top_k={top_k} must satisfy 2 <= top_k <= n_experts={n_experts} "
                         "(top_k counts the always-on shared expert, so top_k - 1 experts are routed)")
    if not gate_scale > 0:
        raise ValueError(f"{owner}: gate_scale must be > 0, got {gate_scale}")
    if gate_softmax not in ("topk", "all"):
        raise ValueError(f"{owner}: gate_softmax must be 'topk' or 'all', got {gate_softmax!r}")


# =============================================================================
# Blocks (brief §4, §5.2)
# =============================================================================


class RankMixerBlock(nn.Module):
    """RankMixer block, Post-LN with ``H = T`` (brief §4)::

        S  = LN(TokenMixing(X) + X)        # mixing=False (ablation): S = LN(X)
        X' = LN(PFFN(S) + S)

    Shapes: ``[B, T, D] -> [B, T, D]``; requires ``D % T == 0``. ``per_token=False``: shared FFN ablation.
    """

    def __init__(self, n_tokens: int, dim: int, expansion: int, mixing: bool = True, per_token: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        _check_sizes("RankMixerBlock", n_tokens=n_tokens, dim=dim, expansion=expansion)
        if dim % n_tokens != 0:
            raise ValueError(f"RankMixerBlock: dim={dim} must be divisible by n_tokens={n_tokens} (RankMixer uses "
                             "H = T heads)")
        self.n_tokens, self.dim, self.mixing = n_tokens, dim, mixing
        self.norm_mix = nn.LayerNorm(dim)
        self.ffn = PerTokenFFN(n_tokens, dim, expansion * dim, shared=not per_token)
        self.norm_ffn = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, T, D] -> [B, T, D]."""
        s = self.norm_mix(mix(x, self.n_tokens) + x) if self.mixing else self.norm_mix(x)
        return self.norm_ffn(self.drop(self.ffn(s)) + s)


class TokenMixerLargeBlock(nn.Module):
    """TokenMixer-Large block, pre-RMSNorm mix-and-revert (brief §5.2)::

        Hm  = mix(X, H)                              # [B, H, W], W = T*D/H, parameter-free
        Hm' = FFN_mix(RMSNorm(Hm)) + Hm              # H head-tokens of width W, per head-token weights
        Xr  = revert(Hm', T)                         # [B, T, D], exact inverse permutation
        X'  = FFN_rev(RMSNorm(Xr)) + X               # per token, width D; residual to the ORIGINAL X

    FFNs are :class:`PerTokenSwiGLU` (hidden ``expansion * width``) or, with ``moe=True``, :class:`SparsePerTokenMoE`
    of the same total hidden. ``mixing=False`` (ablation "no mixing & reverting") replaces ``mix``/``revert`` by the
    identity: ``FFN_mix`` then acts on the ``T`` original tokens of width ``D`` (``heads`` is ignored), and no
    information crosses tokens inside the block. ``per_token=False``: shared-FFN ablation (shared expert pool for MoE).

    Shapes: ``[B, T, D] -> [B, T, D]``; requires ``D % H == 0``. After a forward with ``moe=True``,
    :meth:`expert_util` returns the two sub-layers' utilisation.
    """

    def __init__(self, n_tokens: int, dim: int, heads: int, expansion: int, moe: bool = False, n_experts: int = 4,
                 top_k: int = 2, gate_scale: float = 2.0, mixing: bool = True, per_token: bool = True,
                 down_init_scale: float = 0.01, dropout: float = 0.0, gate_softmax: GateSoftmax = "topk") -> None:
        super().__init__()
        _check_sizes("TokenMixerLargeBlock", n_tokens=n_tokens, dim=dim, heads=heads, expansion=expansion)
        if dim % heads != 0:
            raise ValueError(f"TokenMixerLargeBlock: dim={dim} must be divisible by heads={heads}")
        self.n_tokens, self.dim, self.heads, self.mixing, self.moe = n_tokens, dim, heads, mixing, moe
        # Mixed stage: H head-tokens of width T*D/H; without mixing: the T original tokens of width D.
        mix_tokens, mix_width = (heads, n_tokens * dim // heads) if mixing else (n_tokens, dim)
        self.norm_mix = nn.RMSNorm(mix_width)
        self.norm_rev = nn.RMSNorm(dim)
        self.ffn_mix: PerTokenSwiGLU | SparsePerTokenMoE
        self.ffn_rev: PerTokenSwiGLU | SparsePerTokenMoE
        if moe:
            self.ffn_mix = SparsePerTokenMoE(mix_tokens, mix_width, expansion * mix_width, n_experts, top_k,
                                             gate_scale, down_init_scale, shared=not per_token,
                                             gate_softmax=gate_softmax)
            self.ffn_rev = SparsePerTokenMoE(n_tokens, dim, expansion * dim, n_experts, top_k, gate_scale,
                                             down_init_scale, shared=not per_token, gate_softmax=gate_softmax)
        else:
            self.ffn_mix = PerTokenSwiGLU(mix_tokens, mix_width, expansion * mix_width, down_init_scale,
                                          shared=not per_token)
            self.ffn_rev = PerTokenSwiGLU(n_tokens, dim, expansion * dim, down_init_scale, shared=not per_token)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [B, T, D] -> [B, T, D]."""
        hm = mix(x, self.heads) if self.mixing else x
        hm = self.drop(self.ffn_mix(self.norm_mix(hm))) + hm
        xr = revert(hm, self.n_tokens) if self.mixing else hm
        return self.drop(self.ffn_rev(self.norm_rev(xr))) + x

    def expert_util(self) -> tuple[Tensor, Tensor] | None:
        """``(util_mix [H or T, E-1], util_rev [T, E-1])`` from the last forward, or None (dense / not run yet)."""
        if not (isinstance(self.ffn_mix, SparsePerTokenMoE) and isinstance(self.ffn_rev, SparsePerTokenMoE)):
            return None
        if self.ffn_mix.last_util is None or self.ffn_rev.last_util is None:
            return None
        return self.ffn_mix.last_util, self.ffn_rev.last_util


# =============================================================================
# Backbone
# =============================================================================


@dataclass(frozen=True)
class MixerConfig:
    """Configuration of :class:`MixerBackbone`.

    * ``kind``: ``"tokenmixer"`` (TML blocks, per-group MLP tokens + global token) or ``"rankmixer"`` (RankMixer
      blocks, concatenate-and-chunk tokens).
    * ``n_tokens``: ``T``. For ``tokenmixer`` it includes the global token and must equal ``len(group_dims) + 1``
      (checked by :class:`MixerBackbone`, which raises instead of silently deriving it). For ``rankmixer`` it is free.
    * ``dim``: token width ``D``. ``heads``: ``H`` for ``tokenmixer`` (``dim % heads == 0``); ignored by
      ``rankmixer``, which always uses ``H = T`` (and needs ``dim % n_tokens == 0``).
    * ``expansion``: FFN hidden = ``expansion * width`` (``k`` for RankMixer, ``n`` for TML). ``layers``: ``L``.
    * ``moe``, ``n_experts``, ``top_k``, ``gate_scale``, ``gate_softmax``: S-P MoE (``tokenmixer`` only), see
      :class:`SparsePerTokenMoE`.
    * ``mixing``, ``per_token``: ablations "no token mixing" and "shared FFN instead of per-token".
    * ``inter_residual_every``: ``s``; 0 = off. With ``X_0`` the tokenizer output and ``X_l`` the output of layer
      ``l`` (1-based), layers ``l = s, 2s, ...`` with ``l < L`` get ``X_l = block_l(X_{l-1}) + X_{l-s}``; never the
      last layer (brief §5.4).
    * ``aux_loss``: expose mean-pooled ``X_l`` of the layers that receive an inter-residual as
      ``BackboneOutput.aux`` (needs ``inter_residual_every > 0``).
    * ``down_init_scale``: ``W_down`` init multiplier (TML, brief §5.5). ``dropout``: on every FFN output.
    * ``global_token``: how ``tokenmixer`` builds its global token, ``"mlp"`` (the paper) or ``"cross"``
      (:class:`CrossGlobalToken`); ignored by ``rankmixer``, which has no global token.
    """

    kind: MixerKind = "tokenmixer"
    n_tokens: int = 8
    dim: int = 64
    heads: int = 8
    expansion: int = 2
    layers: int = 2
    moe: bool = False
    n_experts: int = 4
    top_k: int = 2
    gate_scale: float = 2.0
    mixing: bool = True
    per_token: bool = True
    inter_residual_every: int = 0
    aux_loss: bool = False
    down_init_scale: float = 0.01
    dropout: float = 0.0
    gate_softmax: GateSoftmax = "topk"
    global_token: GlobalToken = "mlp"

    def __post_init__(self) -> None:
        owner = "MixerConfig"
        if self.kind not in ("tokenmixer", "rankmixer"):
            raise ValueError(f"{owner}.kind must be 'tokenmixer' or 'rankmixer', got {self.kind!r}")
        _check_sizes(owner, n_tokens=self.n_tokens, dim=self.dim, heads=self.heads, expansion=self.expansion,
                     layers=self.layers, n_experts=self.n_experts, top_k=self.top_k)
        if self.kind == "tokenmixer" and self.dim % self.heads != 0:
            raise ValueError(f"{owner}: dim={self.dim} must be divisible by heads={self.heads}")
        if self.kind == "rankmixer" and self.dim % self.n_tokens != 0:
            raise ValueError(f"{owner}: dim={self.dim} must be divisible by n_tokens={self.n_tokens} "
                             "(RankMixer mixes with H = T heads)")
        if self.moe:
            if self.kind != "tokenmixer":
                raise ValueError(f"{owner}: moe=True is only implemented for kind='tokenmixer' (S-P MoE); "
                                 "RankMixer's ReLU/DTSI MoE is not implemented")
            _check_moe(owner, self.n_experts, self.top_k, self.gate_scale, self.gate_softmax)
        if isinstance(self.inter_residual_every, bool) or not isinstance(self.inter_residual_every, int) \
                or self.inter_residual_every < 0:
            raise ValueError(f"{owner}.inter_residual_every must be an int >= 0, got {self.inter_residual_every!r}")
        if self.aux_loss and self.inter_residual_every == 0:
            raise ValueError(f"{owner}: aux_loss=True needs inter_residual_every > 0 (aux outputs come from the "
                             "layers that receive inter-layer residuals)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{owner}.dropout must lie in [0, 1), got {self.dropout}")
        if self.global_token not in ("mlp", "cross"):
            raise ValueError(f"{owner}.global_token must be 'mlp' or 'cross', got {self.global_token!r}")
        if not self.down_init_scale > 0:
            raise ValueError(f"{owner}.down_init_scale must be > 0, got {self.down_init_scale}")

    def skip_layers(self) -> list[int]:
        """1-based layers that receive an inter-layer residual (never the last layer)."""
        s = self.inter_residual_every
        return [] if s == 0 else list(range(s, self.layers, s))


class CrossGlobalToken(nn.Module):
    """Global token built with one DCN-V2 cross layer over the raw concatenation, then a projection to ``D``:
    ``Linear(x0 * (W x0 + b) + x0)``, ``[B, D0] -> [B, D]``.

    The paper's global token is ``MLP_global(x0)``. On KuaiLive-sized data that token learns the user x candidate
    interactions slowly (every raw feature is first squeezed through a ReLU MLP); the cross layer gives the mixer
    every pairwise product of raw features in its first layer, as DCN-V2 has (``global_token="cross"``).
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.cross = CrossLayerV2(in_dim)
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x0: Tensor) -> Tensor:
        """``x0``: [B, D0] -> [B, D]."""
        return self.proj(self.cross(x0, x0))


class GroupTokenizer(nn.Module):
    """TML tokenizer (brief §1.2): token ``g + 1`` = ``MLP_g(groups[g])``; token 0 = the global token over the raw
    groups: ``MLP_global(concat(groups))`` (the paper, ``global_token="mlp"``) or :class:`CrossGlobalToken`
    (``"cross"``). ``[B, d_g] x G -> [B, G + 1, D]``.

    Each MLP is ``d_in -> D -> D`` with ReLU in between and no activation after the last layer.
    """

    def __init__(self, group_dims: list[int], dim: int, global_token: GlobalToken = "mlp") -> None:
        super().__init__()
        self.group_mlps = nn.ModuleList(mlp([d, dim, dim], last_activation=False) for d in group_dims)
        self.global_mlp: nn.Module = (CrossGlobalToken(sum(group_dims), dim) if global_token == "cross"
                                      else mlp([sum(group_dims), dim, dim], last_activation=False))

    def forward(self, groups: list[Tensor]) -> Tensor:
        """``groups[g]``: [B, d_g] -> tokens [B, G + 1, D] (global token first)."""
        tokens = [self.global_mlp(torch.cat(groups, dim=1))]
        # one MLP per group (distinct input widths): a loop over the G groups, not over tokens in the blocks
        tokens += [m(g) for m, g in zip(self.group_mlps, groups, strict=True)]
        return torch.stack(tokens, dim=1)


class ChunkTokenizer(nn.Module):
    """RankMixer tokenizer (brief §1.1): concatenate the groups in order, zero-pad to a multiple of ``T``, cut into
    ``T`` equal chunks of width ``c = ceil(sum(d_g) / T)`` and project chunk ``t`` with its own ``Linear(c, D)``
    (one einsum over ``w: [T, c, D]``, bias ``[T, D]``; ``nn.Linear``-style uniform init).
    ``[B, d_g] x G -> [B, T, D]``. Chunk boundaries need not align with group boundaries.
    """

    def __init__(self, group_dims: list[int], n_tokens: int, dim: int) -> None:
        super().__init__()
        total = sum(group_dims)
        self.n_tokens = n_tokens
        self.chunk = -(-total // n_tokens)
        self.pad = self.chunk * n_tokens - total
        bound = 1.0 / math.sqrt(self.chunk)
        self.weight = nn.Parameter(torch.empty(n_tokens, self.chunk, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_tokens, dim).uniform_(-bound, bound))

    def forward(self, groups: list[Tensor]) -> Tensor:
        """``groups[g]``: [B, d_g] -> tokens [B, T, D]."""
        x = F.pad(torch.cat(groups, dim=1), (0, self.pad))  # [B, T * c]
        x = x.reshape(x.shape[0], self.n_tokens, self.chunk)
        return torch.einsum("btc,tcd->btd", x, self.weight) + self.bias


class MixerBackbone(Backbone):
    """RankMixer / TokenMixer-Large backbone: tokenizer -> ``L`` blocks (optional inter-layer residuals) ->
    mean-pool over tokens (brief §1.3; *not* the global token).

    ``forward(groups)`` with ``groups[g]: [B, group_dims[g]]`` returns :class:`BackboneOutput` with

    * ``hidden``: [B, dim] (``out_dim = dim``);
    * ``aux``: when ``cfg.aux_loss``, one [B, dim] mean-pool per layer in ``cfg.skip_layers()``, else ``[]``;
    * ``stats``: when ``cfg.moe``, ``expert_util`` [T, E-1] (revert-stage S-P MoE, per original token) and
      ``expert_util_mix`` [H, E-1] (mixed stage; [T, E-1] when ``mixing=False``), both averaged over layers and
      detached. Otherwise ``{}``.
    """

    def __init__(self, group_dims: list[int], cfg: MixerConfig) -> None:
        super().__init__()
        dims = list(group_dims)
        if not dims:
            raise ValueError("MixerBackbone: group_dims must name at least one feature group")
        for i, d in enumerate(dims):
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise ValueError(f"MixerBackbone: feature group {i} must have an int width >= 1, got {d!r}")
        if cfg.kind == "tokenmixer" and cfg.n_tokens != len(dims) + 1:
            raise ValueError(f"MixerBackbone: kind='tokenmixer' makes one token per feature group plus a global "
                             f"token, i.e. T = {len(dims)} + 1 = {len(dims) + 1}, but cfg.n_tokens={cfg.n_tokens}")
        self.group_dims, self.cfg = dims, cfg
        self.n_tokens = cfg.n_tokens
        self.out_dim = cfg.dim
        self.tokenizer: GroupTokenizer | ChunkTokenizer
        blocks: list[nn.Module]
        if cfg.kind == "tokenmixer":
            self.tokenizer = GroupTokenizer(dims, cfg.dim, cfg.global_token)
            blocks = [TokenMixerLargeBlock(cfg.n_tokens, cfg.dim, cfg.heads, cfg.expansion, moe=cfg.moe,
                                           n_experts=cfg.n_experts, top_k=cfg.top_k, gate_scale=cfg.gate_scale,
                                           mixing=cfg.mixing, per_token=cfg.per_token,
                                           down_init_scale=cfg.down_init_scale, dropout=cfg.dropout,
                                           gate_softmax=cfg.gate_softmax)
                      for _ in range(cfg.layers)]
        else:
            self.tokenizer = ChunkTokenizer(dims, cfg.n_tokens, cfg.dim)
            blocks = [RankMixerBlock(cfg.n_tokens, cfg.dim, cfg.expansion, mixing=cfg.mixing,
                                     per_token=cfg.per_token, dropout=cfg.dropout)
                      for _ in range(cfg.layers)]
        self.blocks = nn.ModuleList(blocks)
        self.skip_layers = set(cfg.skip_layers())

    def forward(self, groups: list[Tensor]) -> BackboneOutput:
        self.check_groups(groups, self.group_dims)
        x = self.tokenizer(groups)  # [B, T, D]
        states = [x]  # states[l] = X_l, the output of layer l (X_0: tokens)
        aux: list[Tensor] = []
        for layer, block in enumerate(self.blocks, start=1):
            x = block(x)
            if layer in self.skip_layers:
                x = x + states[layer - self.cfg.inter_residual_every]
                if self.cfg.aux_loss:
                    aux.append(x.mean(dim=1))
            states.append(x)
        return BackboneOutput(hidden=x.mean(dim=1), aux=aux, stats=self._moe_stats())

    def _moe_stats(self) -> dict[str, Tensor]:
        utils = [b.expert_util() for b in self.blocks if isinstance(b, TokenMixerLargeBlock)]
        present = [u for u in utils if u is not None]
        if not self.cfg.moe or not present:
            return {}
        return {
            "expert_util": torch.stack([u[1] for u in present]).mean(dim=0).detach(),
            "expert_util_mix": torch.stack([u[0] for u in present]).mean(dim=0).detach(),
        }


__all__ = [
    "ChunkTokenizer",
    "CrossGlobalToken",
    "GroupTokenizer",
    "MixerBackbone",
    "MixerConfig",
    "PerTokenFFN",
    "PerTokenSwiGLU",
    "RankMixerBlock",
    "SparsePerTokenMoE",
    "TokenMixerLargeBlock",
    "mix",
    "revert",
]
