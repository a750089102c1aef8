"""Next-event sampling by Ogata thinning, done correctly (brief ``tpp.md`` §3.1-3.3, defects 3 and 4).

For every history position ``(b, i)`` with last event time ``t_i`` and an upper bound ``bound[b, i]`` on the total
intensity over ``(t_i, t_i + dtime_max]``, each of ``n_samples`` independent chains runs NHP Algorithm 2::

    s = 0
    repeat:
        s += Exp(rate = bound)                      # homogeneous Poisson arrivals: a CUMULATIVE sum
        if s > dtime_max: censored, sample = dtime_max
        if U(0, 1) * bound <= lambda(t_i + s): accept s

vectorised ``n_exp`` arrivals at a time; chains that neither accepted nor crossed the horizon draw again from their
last arrival (nothing is silently returned as ``dtime_max``), packed so that a round only evaluates as many chains
per position as the busiest position still has. The intensity is always evaluated at the ABSOLUTE times
``t_i + s`` (defect 3). Every evaluated candidate inside the horizon with ``lambda > bound`` counts as a bound
violation; a valid bound gives 0.

Predictors (§3.2): ``dt_mean`` = mean of the samples (squared-error optimal, for ``rmse_dt``); ``type_probs[k]`` = mean
over samples of ``lambda_k / lambda`` at the sampled time (P(mark | next event), for ``type_error``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

IntensityFn = Callable[[Tensor], Tensor]
"""``query_times [B, S, G]`` (absolute) -> intensities ``[B, S, G, K]``."""


@dataclass
class NextEventSample:
    """Thinning output. ``samples [B, S, n]`` (censored chains hold ``dtime_max``), ``dt_mean [B, S]``,
    ``type_probs [B, S, K]``; statistics over the ``mask``-ed positions: ``accepted_share`` = accepted / candidates
    tested inside the horizon (up to each chain's acceptance; ~ mean lambda / bound), ``censored_share`` = share of
    chains that crossed ``dtime_max`` (or exhausted ``max_rounds``), ``bound_violations`` = candidates with ``lambda > bound`` (must be 0), ``n_candidates``."""

    samples: Tensor
    dt_mean: Tensor
    type_probs: Tensor
    accepted_share: float
    censored_share: float
    bound_violations: int
    n_candidates: int

    @property
    def type_pred(self) -> Tensor:
        """Predicted mark ``[B, S]`` (argmax of ``type_probs``)."""
        return self.type_probs.argmax(-1)

    @property
    def dt(self) -> Tensor:
        """Alias of ``dt_mean``: predicted time to the next event ``[B, S]``."""
        return self.dt_mean

    @property
    def types(self) -> Tensor:
        """Alias of ``type_pred``."""
        return self.type_pred


def sample_next(intensity_fn: IntensityFn, last_times: Tensor, bound: Tensor, n_samples: int = 50,
                dtime_max: float = 5.0, n_exp: int = 2, max_rounds: int = 10_000, mask: Tensor | None = None,
                generator: torch.Generator | None = None, rtol: float = 1e-5) -> NextEventSample:
    """Ogata thinning for every position at once.

    ``intensity_fn(q [B, S, G]) -> [B, S, G, K]`` must return the intensity at absolute times ``q`` given the history
    up to and including position ``i`` (row ``i``); ``last_times [B, S]`` = ``t_i``; ``bound [B, S]`` must dominate
    the total intensity on ``(t_i, t_i + dtime_max]``. ``mask [B, S]`` (default all True) selects the positions that
    are sampled and counted; masked positions return ``dt_mean = 0``. A candidate violates the bound when
    ``lambda > bound * (1 + rtol)``.
    """
    if n_samples < 1 or n_exp < 1 or max_rounds < 1:
        raise ValueError("sample_next: n_samples, n_exp and max_rounds must be >= 1")
    if not dtime_max > 0:
        raise ValueError(f"sample_next: dtime_max must be > 0, got {dtime_max}")
    if bound.shape != last_times.shape or last_times.dim() != 2:
        raise ValueError(f"sample_next: last_times and bound must be [B, S], got {list(last_times.shape)} and "
                         f"{list(bound.shape)}")
    b, s = last_times.shape
    dev, dtype = last_times.device, last_times.dtype
    mask = torch.ones(b, s, dtype=torch.bool, device=dev) if mask is None else mask.to(torch.bool)
    rate = bound.to(dtype).clamp_min(torch.finfo(dtype).tiny)[..., None, None]  # [B, S, 1, 1]

    done = (~mask)[..., None].expand(b, s, n_samples).clone()  # [B, S, n]
    start = torch.zeros(b, s, n_samples, dtype=dtype, device=dev)
    result = torch.zeros_like(start)
    censored = torch.zeros_like(done)
    violations, n_cand, n_acc = 0, 0, 0
    for _ in range(max_rounds):
        width = int((~done).sum(-1).max())
        if width == 0:
            break
        # pack the unfinished chains of every position into the first `width` slots (later rounds are small)
        order = torch.argsort(done.to(torch.int8), dim=-1, stable=True)[..., :width]  # [B, S, w] chain ids
        act = ~done.gather(-1, order)  # [B, S, w] slot holds an unfinished chain
        st = start.gather(-1, order)
        e = torch.empty(b, s, width, n_exp, dtype=dtype, device=dev).exponential_(generator=generator)
        cand = st[..., None] + (e / rate).cumsum(-1)  # [B, S, w, M] Poisson arrivals after the chain's start
        inside = (cand <= dtime_max) & act[..., None]
        query = last_times[..., None, None] + cand.clamp(max=dtime_max)  # ABSOLUTE times t_i + s
        lam = intensity_fn(query.reshape(b, s, width * n_exp)).sum(-1).reshape(b, s, width, n_exp)
        u = torch.rand(b, s, width, n_exp, dtype=dtype, device=dev, generator=generator)
        accept = (u * rate <= lam) & inside
        violations += int(((lam > rate * (1.0 + rtol)) & inside).sum())
        hit = accept.any(-1)
        first = accept.to(torch.int32).argmax(-1, keepdim=True)  # index of the FIRST accepted arrival
        n_cand += int((inside & (~hit[..., None] | (torch.arange(n_exp, device=dev) <= first))).sum())
        n_acc += int(hit.sum())
        crossed = act & ~hit & (cand[..., -1] > dtime_max)
        res = torch.where(hit, cand.gather(-1, first)[..., 0], result.gather(-1, order))
        res = torch.where(crossed, torch.full_like(res, dtime_max), res)
        result = result.scatter(-1, order, res)
        censored = censored.scatter(-1, order, censored.gather(-1, order) | crossed)
        done = done.scatter(-1, order, ~act | hit | crossed)
        start = start.scatter(-1, order, torch.where(act, cand[..., -1], st))
    else:  # max_rounds exhausted: the remaining chains are censored and reported as such
        left = ~done
        result = torch.where(left, torch.full_like(result, dtime_max), result)
        censored |= left

    lam = intensity_fn(last_times[..., None] + result)  # [B, S, n, K]
    ratio = lam / lam.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    m = mask[..., None]
    dt_mean = torch.where(mask, result.mean(-1), torch.zeros_like(last_times))
    n_chains = int(mask.sum()) * n_samples
    return NextEventSample(
        samples=result * m,
        dt_mean=dt_mean,
        type_probs=ratio.mean(2),
        accepted_share=n_acc / max(n_cand, 1),
        censored_share=int((censored & m).sum()) / max(n_chains, 1),
        bound_violations=violations,
        n_candidates=n_cand,
    )
