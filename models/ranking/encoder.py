"""The shared feature encoder of every ranker: TorchRec embeddings -> seven feature groups.

Groups (ranking brief §9; T = 7 groups + TokenMixer's global token = 8 tokens):

| # | group | width |
|---|---|---|
| 0 | user profile: user id, profile fields, past activity | id_dim + 20 * field_dim + 7 |
| 1 | streamer profile: candidate id, profile fields, past popularity | id_dim + 22 * field_dim + 4 |
| 2 | room and context: context fields, projected title embedding | 5 * field_dim + id_dim |
| 3 | short-term interest: DIN target attention of the candidate over the last clicked streamers (+ gap buckets) | id_dim |
| 4 | multi-behaviour: target attention over commented / liked / gifted streamers | 3 * id_dim |
| 5 | user x streamer and user x category cross statistics, and <user id emb, candidate emb> (DLRM dot) | 13 |
| 6 | streamer / room real-time statistics | 6 |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
)
from torchrec.modules.embedding_configs import PoolingType

from recsys.data.ranking import N_GAP_BUCKETS, SEQ_KEYS, RankingFeatureSpec
from models.ranking.inputs import FIELD_FEATURES, RankingInput

#: the largest drift time: half a training period after its end (see :meth:`RankingEncoder.drift_time`)
MAX_DRIFT_TIME = 1.0
#: the user-drift table's feature: the user id again (a TorchRec feature feeds one table of a collection)
DRIFT_FEATURE = "user_id_drift"


def with_drift_feature(ids: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """``ids`` (key ``user_id``) plus the same values under :data:`DRIFT_FEATURE`."""
    v, lengths = ids.values(), ids.lengths()
    return KeyedJaggedTensor.from_lengths_sync(keys=["user_id", DRIFT_FEATURE], values=torch.cat([v, v]),
                                               lengths=torch.cat([lengths, lengths]))


GROUP_NAMES: tuple[str, ...] = ("user", "streamer", "context", "short_term", "behaviour", "cross", "realtime")


@dataclass
class EncoderConfig:
    id_dim: int = 32
    field_dim: int = 8
    attention_hidden: int = 32
    init_std: float = 0.05
    #: time-dependent user vector ``e_u + tau(t) d_u`` (timeSVD++'s drifting user factor, Koren 2009), ``tau`` the
    #: centred drift time (-1/2 / +1/2 at the first / last training sample of :class:`RankingFeatureSpec`'s period).
    #: Only built when the spec has a training period (``time_span_ms > 0``).
    user_drift: bool = True

    def __post_init__(self) -> None:
        if min(self.id_dim, self.field_dim, self.attention_hidden) < 1:
            raise ValueError(f"encoder dimensions must be positive: {self}")


class TargetAttention(nn.Module):
    """Attention pooling of a history by a target (DIN-style when ``mlp``; scaled dot product otherwise).

    ``forward(query [B, d], keys [B, L, d], values [B, L, d], mask [B, L] bool) -> [B, d]``; rows with an empty
    history get zeros (never NaN).
    """

    def __init__(self, dim: int, hidden: int = 32, mlp: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.score = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)) if mlp else None

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
        if self.score is not None:
            # first layer of MLP([q, k, q - k, q * k]) without materialising the concatenation:
            # W [q; k; q-k; q*k] = (Wq + Wd) q + (Wk - Wd) k + Wp (q * k)   (same parameters, same result)
            first, rest = self.score[0], self.score[1:]
            wq, wk, wd, wp = first.weight.split(self.dim, dim=1)
            h = (query @ (wq + wd).T + first.bias).unsqueeze(1) + keys @ (wk - wd).T \
                + (query.unsqueeze(1) * keys) @ wp.T
            s = rest(h).squeeze(-1)
        else:
            s = torch.einsum("bd,bld->bl", query, keys) / self.dim ** 0.5
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
        w = torch.softmax(s, dim=-1) * mask.to(s.dtype)
        return torch.einsum("bl,bld->bd", w, values)


def _init_fn(std: float):
    def init(t: Tensor) -> Tensor:
        return nn.init.normal_(t, 0.0, std)
    return init


class RankingEncoder(nn.Module):
    """``forward(RankingInput) -> list of 7 group tensors`` (see module docstring for widths)."""

    def __init__(self, spec: RankingFeatureSpec, cfg: EncoderConfig | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.cfg = cfg = cfg or EncoderConfig()
        init = _init_fn(cfg.init_std)
        cpu = torch.device("cpu")
        self.drift = cfg.user_drift and spec.time_span_ms > 0
        self.ids = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="user", embedding_dim=cfg.id_dim, num_embeddings=spec.n_users,
                               feature_names=["user_id"], pooling=PoolingType.SUM, init_fn=init),
            *([EmbeddingBagConfig(name="user_drift", embedding_dim=cfg.id_dim, num_embeddings=spec.n_users,
                                  feature_names=[DRIFT_FEATURE], pooling=PoolingType.SUM,
                                  init_fn=nn.init.zeros_)] if self.drift else []),
        ], device=cpu)
        self.seqs = EmbeddingCollection(tables=[
            EmbeddingConfig(name="streamer", embedding_dim=cfg.id_dim, num_embeddings=spec.n_streamers,
                            feature_names=["cand_streamer", *SEQ_KEYS], init_fn=init),
            EmbeddingConfig(name="gap", embedding_dim=cfg.id_dim, num_embeddings=N_GAP_BUCKETS,
                            feature_names=["hist_click_gap"], init_fn=init),
        ], device=cpu)
        vocab_sizes = (spec.user_vocab.size, spec.streamer_vocab.size, spec.context_vocab.size)
        self.fields = EmbeddingCollection(tables=[
            EmbeddingConfig(name=name, embedding_dim=cfg.field_dim, num_embeddings=n, feature_names=[name],
                            init_fn=init)
            for name, n in zip(FIELD_FEATURES, vocab_sizes)
        ], device=cpu)
        self.n_fields = (len(spec.user_vocab.columns), len(spec.streamer_vocab.columns),
                         len(spec.context_vocab.columns))
        self.title_proj = nn.Linear(spec.title_dim, cfg.id_dim)
        self.short_term = TargetAttention(cfg.id_dim, cfg.attention_hidden, mlp=True)
        self.behaviour = TargetAttention(cfg.id_dim, mlp=False)
        self.dense_slices: dict[str, slice] = {}
        start = 0
        for group, cols in spec.dense_features.items():
            self.dense_slices[group] = slice(start, start + len(cols))
            start += len(cols)
        self.n_dense = start

    @property
    def group_dims(self) -> list[int]:
        c, d = self.cfg, self.spec.dense_features
        nu, ns, nc = self.n_fields
        return [c.id_dim + nu * c.field_dim + len(d["user"]), c.id_dim + ns * c.field_dim + len(d["streamer"]),
                nc * c.field_dim + c.id_dim, c.id_dim, 3 * c.id_dim, len(d["cross"]) + 1, len(d["realtime"])]

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [*self.ids.parameters(), *self.seqs.parameters(), *self.fields.parameters()]

    def drift_time(self, time_ms: Tensor) -> Tensor:
        """``tau (B,)`` float32: -1/2 at the first training sample, +1/2 at the last (centred, so that the drift table
        learns the trend and the static table the mean), growing linearly after training up to :data:`MAX_DRIFT_TIME`
        (half a training period later), where it stays: a model served for weeks does not extrapolate without bound."""
        tau = (time_ms - self.spec.time_origin_ms).to(torch.float32) / float(self.spec.time_span_ms) - 0.5
        return tau.clamp(-0.5, MAX_DRIFT_TIME)

    def user_vector(self, x: RankingInput) -> Tensor:
        """``(B, id_dim)``: ``e_u``, plus ``tau(t) d_u`` with the drift table."""
        ids = self.ids(x.ids if not self.drift else with_drift_feature(x.ids)).to_dict()
        user = ids["user_id"]
        if self.drift:
            user = user + self.drift_time(x.time_ms).unsqueeze(1) * ids[DRIFT_FEATURE]
        return user

    def forward(self, x: RankingInput) -> list[Tensor]:
        b = x.batch_size
        if x.dense.shape[1] != self.n_dense:
            raise ValueError(f"expected {self.n_dense} dense features, got {x.dense.shape[1]}")
        user = self.user_vector(x)
        seq = self.seqs(x.seqs)
        fields = self.fields(x.fields)
        flat = [fields[k].values().reshape(b, n * self.cfg.field_dim) for k, n in zip(FIELD_FEATURES, self.n_fields)]
        cand = seq["cand_streamer"].values().reshape(b, -1)
        lens = self.spec.seq_lengths

        def history(key: str) -> tuple[Tensor, Tensor]:
            jt = seq[key]
            padded = jt.to_padded_dense(desired_length=lens[key])[x.user_of]  # [B, L, d]
            mask = (torch.arange(lens[key], device=padded.device)[None, :]
                    < jt.lengths()[x.user_of].to(torch.long)[:, None])
            return padded, mask

        clicks, click_mask = history("hist_click")
        gaps = seq["hist_click_gap"].to_padded_dense(desired_length=lens["hist_click"])[x.user_of]
        short = self.short_term(cand, clicks + gaps, clicks, click_mask)
        behaviour = [self.behaviour(cand, h, h, m) for h, m in (history(k) for k in SEQ_KEYS[1:])]
        dense = x.dense
        ds = self.dense_slices
        return [
            torch.cat([user, flat[0], dense[:, ds["user"]]], dim=1),
            torch.cat([cand, flat[1], dense[:, ds["streamer"]]], dim=1),
            torch.cat([flat[2], self.title_proj(x.title)], dim=1),
            short,
            torch.cat(behaviour, dim=1),
            torch.cat([dense[:, ds["cross"]], (user * cand).sum(-1, keepdim=True)], dim=1),
            dense[:, ds["realtime"]],
        ]
