"""Shared pieces of the neural TPPs (brief ``tpp.md`` §1-3): configs, the temporal encoding, the scaled softplus, and
the :class:`NeuralTPP` contract with its log-likelihood, loss and thinning predictor.

Contract. Row ``i`` of a batch is the history up to and including event ``i``; a model gives the intensities at any
query times in ``(t_i, t_{i+1}]`` (in practice any ``t >= t_i``) from that history::

    enc = model.encode(batch)                      # everything that depends on the events only
    lam = model.intensity_at(enc, query_times)     # [B, S, G] absolute times -> [B, S, G, K]

Log-likelihood (NHP Eq. 8, the first event is conditioned on, not scored)::

    ll_b = sum_{i=1}^{N-1} log lambda_{k_i}(t_i | events < i) - int_{t_0}^{t_{N-1}} lambda(s) ds
           [ - int_{t_{N-1}}^{t_end} lambda(s) ds   when batch.t_end is given ]

The event term is exact (the left limit ``t_i^-`` is the query time ``t_i`` on row ``i-1``); the integral uses, per
interval, ``n`` uniform Monte Carlo points (unbiased, for training) or the ``n``-point trapezoid rule (deterministic,
for reported evaluation; brief §1 "Integral estimators"). All points of all intervals go through ONE ``intensity_at``
call together with the event end points.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.tpp.batch import TPPBatch
from models.tpp.thinning import NextEventSample, sample_next

TimePrompt = Literal["causal_mean", "mean", "task_const"]
IntegralRule = Literal["mc", "trapezoid"]


@dataclass
class PromptConfig:
    """Continuous-time retrieval prompt pool (brief §5, corrected per §6), one k-pool and one v-pool per attention
    layer of every stack.

    * ``pool_size`` M keys/prompts per pool, ``prompt_len`` L_p tokens per prompt, ``top_n`` N prompts retrieved per
      position (``N * L_p`` prompt tokens prepended to the keys/values). The reference code uses L_p = N = 5 (25
      prompt tokens per layer); on KuaiLive sequences of at most 64 events that many tokens swamp the events early
      in training (first-window dev log-likelihood per event on the small twin, seed 0: -4.03 with 25 tokens,
      -3.53 with 4, -3.28 with 2, -3.25 with 1; no prompts: -3.47), so the default is one token.
    * ``alpha``: weight of the key-matching loss ``alpha * sum_{layers, pools} mean_i (1 - mean_top cos(q_i, key))``.
    * ``time_prompt``: the temporal half ``TE(t_hat)`` of every prompt token. ``causal_mean`` (default): ``t_hat_i``
      = mean observed gap up to event ``i``; ``mean``: mean gap of the whole sequence (NOT causal, the reference
      behaviour minus padding); ``task_const``: a constant per task, set with ``AttNHP.set_task_time``.
    * ``batchwise_train``: in training mode only, every position uses the N prompts most often retrieved in the batch
      (the reference ``batchwise_prompt``; this leaks across sequences and future positions). Evaluation always
      selects per position (defect 5).
    """

    pool_size: int = 10
    prompt_len: int = 1
    top_n: int = 1
    alpha: float = 0.1
    time_prompt: TimePrompt = "causal_mean"
    batchwise_train: bool = False

    def __post_init__(self) -> None:
        if min(self.pool_size, self.prompt_len, self.top_n) < 1:
            raise ValueError(f"PromptConfig sizes must be >= 1: {self}")
        if self.top_n > self.pool_size:
            raise ValueError(f"PromptConfig: top_n={self.top_n} must not exceed pool_size={self.pool_size}")
        if self.time_prompt not in ("causal_mean", "mean", "task_const"):
            raise ValueError(f"PromptConfig: unknown time_prompt {self.time_prompt!r}")
        if self.alpha < 0:
            raise ValueError(f"PromptConfig: alpha must be >= 0, got {self.alpha}")

    @property
    def n_tokens(self) -> int:
        """Prompt tokens prepended per position, layer and pool (``top_n * prompt_len``)."""
        return self.top_n * self.prompt_len


@dataclass
class TPPConfig:
    """Sizes and evaluation settings shared by the TPPs (defaults: EasyTPP / PromptTPP, brief §8).

    * ``n_types`` K; ``d_model`` hidden width; ``d_time`` width of the AttNHP temporal encoding (even); ``layers`` L;
      ``heads`` H (AttNHP: independent single-head stacks; THP: attention heads, ``d_model % heads == 0``).
    * ``n_mc``: integral points per inter-event interval for training (Monte Carlo).
    * ``n_samples``, ``n_exp``, ``dtime_max``: thinning chains per position, arrivals drawn per round, horizon.
    * ``bound_grid``, ``bound_factor``: the dense-grid bound (max over ``bound_grid`` points of the horizon, times
      ``bound_factor``) used by models without a closed-form bound (AttNHP, brief §3.3).
    * ``max_attn_elems``: AttNHP evaluates query times in chunks along ``G`` so that one attention score tensor
      ``[B, S, g, P + S + 1]`` holds at most this many elements (bounds the peak memory of thinning; same results).
    * ``prompt``: :class:`PromptConfig` to build the prompt pool into AttNHP; ``None`` = no prompts.
    """

    n_types: int = 4
    d_model: int = 32
    d_time: int = 16
    layers: int = 2
    heads: int = 2
    dropout: float = 0.0
    n_mc: int = 20
    n_samples: int = 50
    n_exp: int = 2
    dtime_max: float = 5.0
    bound_grid: int = 32
    bound_factor: float = 2.0
    max_attn_elems: int = 1 << 26
    prompt: PromptConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        sizes = (self.n_types, self.d_model, self.d_time, self.layers, self.heads, self.n_mc, self.n_samples,
                 self.n_exp, self.bound_grid, self.max_attn_elems)
        if min(sizes) < 1:
            raise ValueError(f"TPPConfig sizes must be >= 1: {self}")
        if self.d_time % 2:
            raise ValueError(f"TPPConfig: d_time must be even, got {self.d_time}")
        if not 0.0 <= self.dropout < 1.0 or not self.dtime_max > 0 or not self.bound_factor >= 1.0:
            raise ValueError(f"TPPConfig: need 0 <= dropout < 1, dtime_max > 0, bound_factor >= 1: {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (ints, floats, strings, bools, None), e.g. for :func:`models.tpp.state.save_state`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TPPConfig:
        return cls(**d)


def time_encoding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal temporal encoding ``[...] -> [..., dim]``: ``TE_{2m} = sin(t w_m)``, ``TE_{2m+1} = cos(t w_m)``,
    ``w_m = 10000^{-2m/dim}`` (brief §2.4; THP uses the same with ``dim = d_model``). ``dim`` must be even."""
    m = torch.arange(0, dim, 2, device=t.device, dtype=t.dtype)
    arg = t[..., None] * torch.exp(m * (-math.log(10000.0) / dim))
    return torch.stack([arg.sin(), arg.cos()], dim=-1).flatten(-2)


class ScaledSoftplus(nn.Module):
    """Per-mark scaled softplus ``sp_beta(x) = log(1 + exp(beta x)) / beta`` with learnable ``beta_k = exp(log_beta_k)``
    (init 1), linear once ``beta x > 20`` (brief §1). ``[..., K] -> [..., K]``, strictly increasing in ``x``."""

    def __init__(self, n_types: int) -> None:
        super().__init__()
        self.log_beta = nn.Parameter(torch.zeros(n_types))

    def forward(self, x: Tensor) -> Tensor:
        beta = self.log_beta.exp()
        bx = beta * x
        return torch.where(bx > 20.0, x, torch.log1p(bx.clamp(max=20.0).exp()) / beta)


@dataclass
class Encoded:
    """What :meth:`NeuralTPP.encode` computed from the events: the batch, ``hidden [B, S, H]`` (final per-event
    representation of the history up to and including each event), ``aux_loss`` (scalar: the prompt key-matching loss,
    0 without prompts) and a model-specific ``cache`` reused by every :meth:`NeuralTPP.intensity_at` call."""

    batch: TPPBatch
    hidden: Tensor
    aux_loss: Tensor
    cache: Any = None


@dataclass
class LogLikelihood:
    """Per-sequence pure log-likelihood parts (never includes the prompt term, defect 7): ``event_ll [B]`` = sum of
    ``log lambda_{k_i}(t_i)`` over scored events, ``non_event [B]`` = the integral (incl. survival when ``t_end``),
    ``n_events [B]`` = scored events (``max(N - 1, 0)``); ``aux_loss`` scalar, carried separately for the loss."""

    event_ll: Tensor
    non_event: Tensor
    n_events: Tensor
    aux_loss: Tensor

    @property
    def total(self) -> Tensor:
        """``event_ll - non_event``, ``[B]``."""
        return self.event_ll - self.non_event


class NeuralTPP(nn.Module, ABC):
    """Base class of the TPPs. Subclasses set ``self.cfg`` (:class:`TPPConfig`) and implement :meth:`encode` and
    :meth:`intensity_at`; they may override :meth:`intensity_bound` with a closed form."""

    cfg: TPPConfig

    @abstractmethod
    def encode(self, batch: TPPBatch) -> Encoded:
        """Encode the events of ``batch`` (causally: row ``i`` depends on events ``<= i`` only)."""

    @abstractmethod
    def intensity_at(self, enc: Encoded, query_times: Tensor) -> Tensor:
        """Intensities ``[B, S, G, K]`` at absolute ``query_times [B, S, G]``, row ``i`` given events ``<= i``."""

    @staticmethod
    def marks(batch: TPPBatch) -> Tensor:
        """``batch.types`` with padded positions set to mark 0 (any padding value is safe to embed)."""
        return torch.where(batch.valid, batch.types, torch.zeros_like(batch.types))

    def intensities(self, batch: TPPBatch, query_times: Tensor) -> Tensor:
        """``query_times [B, S, G]`` (absolute, in ``(t_i, t_{i+1}]`` for row ``i``) -> ``[B, S, G, K]``."""
        return self.intensity_at(self.encode(batch), query_times)

    # ------------------------------------------------------------------ likelihood

    def log_likelihood(self, batch: TPPBatch, n_points: int | None = None, rule: IntegralRule = "mc",
                       generator: torch.Generator | None = None, enc: Encoded | None = None) -> LogLikelihood:
        """Exact event term + integral by ``rule`` with ``n_points`` (default ``cfg.n_mc``) per interval."""
        n = self.cfg.n_mc if n_points is None else n_points
        if n < (2 if rule == "trapezoid" else 1):
            raise ValueError(f"log_likelihood: too few integral points ({n}) for rule {rule!r}")
        enc = self.encode(batch) if enc is None else enc
        t, v = batch.times, batch.valid
        b, s = t.shape
        has_next = torch.zeros_like(v)
        has_next[:, :-1] = v[:, 1:]
        nxt = torch.cat([t[:, 1:], t[:, -1:]], 1)
        next_types = torch.cat([batch.types[:, 1:], batch.types[:, -1:]], 1)
        in_int = has_next
        if batch.t_end is not None:
            last = v & ~has_next
            nxt = torch.where(last, batch.t_end[:, None].to(t.dtype), nxt)
            in_int = has_next | last
        length = torch.where(in_int, nxt - t, torch.zeros_like(t))  # [B, S]
        if rule == "mc":
            u = torch.rand(b, s, n, dtype=t.dtype, device=t.device, generator=generator)
        elif rule == "trapezoid":
            u = torch.linspace(0.0, 1.0, n, dtype=t.dtype, device=t.device).expand(b, s, n)
        else:
            raise ValueError(f"log_likelihood: unknown integral rule {rule!r}")
        q = torch.cat([t[..., None] + u * length[..., None], (t + length)[..., None]], -1)  # [B, S, n + 1]
        lam = self.intensity_at(enc, q)  # [B, S, n + 1, K]
        tot = lam[..., :n, :].sum(-1)  # [B, S, n]
        if rule == "mc":
            mean_lam = tot.mean(-1)
        else:
            mean_lam = 0.5 * (tot[..., 1:] + tot[..., :-1]).mean(-1)
        non_event = (length * mean_lam * in_int).sum(1)
        lam_ev = lam[..., n, :].gather(-1, next_types.clamp_min(0)[..., None])[..., 0]  # [B, S]
        event_ll = torch.where(has_next, lam_ev.clamp_min(1e-20).log(), torch.zeros_like(lam_ev)).sum(1)
        return LogLikelihood(event_ll, non_event, has_next.sum(1), enc.aux_loss)

    def loss(self, batch: TPPBatch, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """``-(sum ll) / (sum scored events) + aux_loss`` (the prompt matching loss; 0 without prompts). ``stats``:
        ``ll_per_event`` (pure, defect 7), ``nll``, ``aux_loss``, ``n_events``, ``loss``."""
        ll = self.log_likelihood(batch, generator=generator)
        n_ev = ll.n_events.sum()
        nll = -ll.total.sum() / n_ev.clamp_min(1)
        loss = nll + ll.aux_loss
        stats = {"ll_per_event": float(-nll.detach()), "nll": float(nll.detach()),
                 "aux_loss": float(ll.aux_loss.detach()), "n_events": float(n_ev), "loss": float(loss.detach())}
        return loss, stats

    # ------------------------------------------------------------------ prediction

    def intensity_bound(self, enc: Encoded, dtime_max: float) -> Tensor:
        """Upper bound ``[B, S]`` of the total intensity on ``(t_i, t_i + dtime_max]``. Default (no closed form):
        ``bound_factor`` x the max over a ``bound_grid``-point grid of the horizon (heuristic, brief §3.3; check
        ``bound_violations``)."""
        t = enc.batch.times
        u = torch.linspace(0.0, 1.0, self.cfg.bound_grid, dtype=t.dtype, device=t.device)
        lam = self.intensity_at(enc, t[..., None] + u * dtime_max).sum(-1)
        return lam.amax(-1) * self.cfg.bound_factor

    @torch.no_grad()
    def predict_next(self, batch: TPPBatch, n_samples: int | None = None, generator: torch.Generator | None = None,
                     dtime_max: float | None = None) -> NextEventSample:
        """Next event after every valid position ``i`` (time ``t_i + dt_mean[:, i]``, mark ``type_pred[:, i]``) by
        thinning with ``n_samples`` chains (default ``cfg.n_samples``) and the model's :meth:`intensity_bound`."""
        h = self.cfg.dtime_max if dtime_max is None else dtime_max
        enc = self.encode(batch)
        bound = self.intensity_bound(enc, h)
        return sample_next(lambda q: self.intensity_at(enc, q), batch.times, bound,
                           n_samples=self.cfg.n_samples if n_samples is None else n_samples, dtime_max=h,
                           n_exp=self.cfg.n_exp, mask=batch.valid, generator=generator)


def causal_mask(s: int, device: torch.device) -> Tensor:
    """``[S, S]`` bool, True where column ``j > i`` (hidden)."""
    return torch.ones(s, s, dtype=torch.bool, device=device).triu(1)
