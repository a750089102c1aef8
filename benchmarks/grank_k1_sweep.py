"""GRank's test metrics as a function of the ranker's depth k1 (how many of the generator's top candidates the
cross-attention ranker rescores), from one trained model.

The ranker scores each candidate on its own, so the scores of the generator's top ``max(k1s)`` give every smaller
k1 in one pass. Trains GRank (``--granularity``, streamer by default) with the given budget (or loads
``--weights``), then scores the test split (or ``--max-targets`` of it): the protocol's 10,000 live-at-t negatives
(Recall/NDCG@5/10/20) and every item live at t (@50/500). Writes flat JSON keys ``k1_<K>.<metric>`` (the ranker's
order over the top K, placed above the rest); with ``--fusion A ...`` also ``fusion_<A>.<metric>``: the generator's
top ``max(k1)`` ordered by ``A * z(ranker) + (1 - A) * z(generator)`` (scores standardised per request over that
top), placed above the rest; ``--fusion-depths D ...`` gives ``fusion_<A>@<D>`` over other depths, and
``--pop-weights C ...`` ``fusion_<A>[@<D>]_pop<C>`` with ``C * z(candidate popularity)`` added, and
``fusion_learned`` the model's own weights, fitted on the validation split (by training, or ``--learn-fusion``
for ``--weights``).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/grank_k1_sweep.py --data /tmp/full --out k1.json --threads 2 \\
        --max-steps 600 --eval-every 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from models.retrieval.grank import GRank, fuse_scores
from models.retrieval.inputs import catalog_tensors
from models.retrieval.registry import build_retriever
from pipelines.train_retrieval import (
    EVAL_CHUNK,
    RetrievalTrainConfig,
    _ranks,
    catalog_sizes,
    fit_retriever,
    learn_fusion,
    learns_fusion,
    retriever_config,
    score_candidates,
    top_scores,
)
from recsys.data.loaders import load_kuailive
from recsys.data.retrieval import RetrievalDataset, build_retrieval_dataset, eval_candidates
from recsys.metrics import topk_metrics


@torch.no_grad()
def sweep_ranks(model: GRank, ds: RetrievalDataset, k1s: list[int], fusion: list[float], users: np.ndarray,
                times: np.ndarray, cands: np.ndarray, valid: np.ndarray, batch: int = 128,
                depths: list[int] | None = None, pop_weights: list[float] = (), learned: bool = False
                ) -> dict[str, np.ndarray]:
    """``{"k1_<K>" | "fusion_<A>[@<D>][_pop<C>]" | "fusion_learned": 1-based rank of the target (column 0)}``, from
    one ranker pass over the generator's top ``max(k1s + depths)``. Fusion over the top ``D`` of ``depths`` (default
    ``max(k1s)``, whose keys carry no ``@D``); ``_pop<C>`` adds ``C * z(candidate popularity)`` to the fused score;
    ``fusion_learned`` uses the model's own fusion weights over the top ``max(k1s)``."""
    depths = depths or [max(k1s)]
    variants = {("fusion_" + f"{a:g}" + ("" if d == max(k1s) else f"@{d}") + (f"_pop{c:g}" if c else "")):
                (d, (a, 1.0 - a, c)) for a in fusion for d in depths for c in (0.0, *pop_weights)}
    if learned:
        variants["fusion_learned"] = (max(k1s), tuple(model.fusion_weights.tolist()))
    out: dict[str, list[np.ndarray]] = {f"k1_{k}": [] for k in k1s} | {key: [] for key in variants}
    for b in top_scores(model, ds, users, times, cands, valid, max(k1s + depths), batch):
        v = torch.as_tensor(valid[b.rows])
        for k in k1s:
            out[f"k1_{k}"].append(_ranks(GRank.place_ranked(b.gen, v, b.top[:, :k], b.ranker[:, :k]).numpy(),
                                         valid[b.rows]))
        g, vt = b.gen.gather(1, b.top), v.gather(1, b.top)
        for key, (d, w) in variants.items():
            fused = fuse_scores(b.ranker[:, :d], g[:, :d], vt[:, :d], w, b.pop[:, :d])
            out[key].append(_ranks(GRank.place_ranked(b.gen, v, b.top[:, :d], fused).numpy(), valid[b.rows]))
    return {k: np.concatenate(r) for k, r in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="KuaiLive-format directory (e.g. recsys data synth --scale full)")
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--granularity", choices=("streamer", "room"), default="streamer")
    ap.add_argument("--model", default="grank", help="another retriever (e.g. two_tower) to train and evaluate on the "
                    "same targets: keys <model>.<metric>, no sweep")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k1", type=int, nargs="+", default=[200, 500, 1000, 2000])
    ap.add_argument("--max-steps", type=int, default=0, help="0: one epoch")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="{}", help="JSON overrides of the model config, e.g. '{\"weight_sa\": 0.3}'")
    ap.add_argument("--weights", help="a GRank state_dict to evaluate instead of training one")
    ap.add_argument("--save", help="write the trained model's state_dict here")
    ap.add_argument("--fusion", type=float, nargs="*", default=[], help="ranker weights A of the score fusion")
    ap.add_argument("--fusion-depths", type=int, nargs="*", default=[],
                    help="generator top-D the fusion orders (default: max --k1)")
    ap.add_argument("--pop-weights", type=float, nargs="*", default=[],
                    help="also add C * z(candidate popularity) to each fused score")
    ap.add_argument("--max-targets", type=int, default=0, help="evaluate a seeded random subset of the test targets")
    ap.add_argument("--learn-fusion", action="store_true",
                    help="fit the fusion weights on the validation split (training does it already; this is for "
                         "--weights) and report fusion_learned.<metric> over the top max(--k1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = build_retrieval_dataset(load_kuailive(args.data), args.granularity)
    res["dataset_s"] = time.perf_counter() - t0
    cfg = RetrievalTrainConfig(model=args.model, granularity=args.granularity, epochs=1, batch_size=256, seed=args.seed,
                               max_steps=args.max_steps, eval_every=args.eval_every, patience=2,
                               overrides=json.loads(args.options))
    t0 = time.perf_counter()
    if args.weights:
        model = build_retriever(catalog_sizes(ds), retriever_config(ds, cfg), catalog_tensors(ds.catalog))
        model.load_state_dict(torch.load(args.weights, weights_only=True))
    else:
        fit = fit_retriever(ds, cfg)
        res.update({"fit_s": time.perf_counter() - t0, **fit.metrics})
        model = fit.model
        if args.save:
            torch.save(model.state_dict(), args.save)
    model.eval()
    if args.model == "grank" and args.learn_fusion:
        t0 = time.perf_counter()
        res.update(learn_fusion(model, ds, "valid", seed=args.seed))
        res["learn_fusion_s"] = time.perf_counter() - t0
    k1s = sorted(args.k1)
    n_all = ds.eval_sets["test"].targets.height
    subset = np.arange(n_all)
    if 0 < args.max_targets < n_all:
        subset = np.sort(np.random.default_rng(args.seed).choice(n_all, args.max_targets, replace=False))
    n = subset.size
    ranks: dict[bool, dict[str, list[np.ndarray]]] = {False: {}, True: {}}
    t0 = time.perf_counter()
    for lo in range(0, n, EVAL_CHUNK):
        rows = subset[lo: lo + EVAL_CHUNK]
        for pool in (False, True):
            found_in = eval_candidates(ds, "test", full_pool=pool, rows=rows)
            if args.model == "grank":
                found = sweep_ranks(model, ds, k1s, args.fusion, *found_in, depths=args.fusion_depths,
                                    pop_weights=args.pop_weights,
                                    learned=args.learn_fusion or (args.weights is None and learns_fusion(model)))
            else:
                found = {args.model: _ranks(score_candidates(model, ds, *found_in), found_in[3])}
            for key, r in found.items():
                ranks[pool].setdefault(key, []).append(r)
    for key in ranks[False]:
        m = {**topk_metrics(np.concatenate(ranks[False][key]), (5, 10, 20)),
             **topk_metrics(np.concatenate(ranks[True][key]), (50, 500))}
        res.update({f"{key}.{name}": v for name, v in m.items()})
    res.update({"eval_s": time.perf_counter() - t0, "test_targets": float(n)})
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
