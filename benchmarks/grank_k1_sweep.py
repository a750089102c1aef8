"""GRank's test metrics as a function of the ranker's depth k1 (how many of the generator's top candidates the
cross-attention ranker rescores), from one trained model.

The ranker scores each candidate on its own, so the scores of the generator's top ``max(k1s)`` give every smaller
k1 in one pass. Trains GRank (streamer granularity) with the given budget, then scores the test split: the protocol's
10,000 live-at-t negatives (Recall/NDCG@5/10/20) and every item live at t (@50/500). Writes flat JSON keys
``k1_<K>.<metric>``.

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

from models.retrieval.grank import GRank
from models.retrieval.inputs import QueryBatch
from pipelines.train_retrieval import EVAL_CHUNK, RetrievalTrainConfig, _ranks, candidate_popularity, fit_retriever
from recsys.data.loaders import load_kuailive
from recsys.data.retrieval import RetrievalDataset, build_retrieval_dataset, eval_candidates
from recsys.metrics import topk_metrics


@torch.no_grad()
def sweep_ranks(model: GRank, ds: RetrievalDataset, k1s: list[int], users: np.ndarray, times: np.ndarray,
                cands: np.ndarray, valid: np.ndarray, batch: int = 128) -> dict[int, np.ndarray]:
    """``{k1: 1-based rank of the target (column 0)}`` for every k1, from one ranker pass over the top ``max(k1s)``."""
    out: dict[int, list[np.ndarray]] = {k: [] for k in k1s}
    for i in range(0, users.size, batch):
        sl = slice(i, i + batch)
        q = QueryBatch.from_arrays(ds.query(users[sl], times[sl]))
        c, v = torch.as_tensor(cands[sl]), torch.as_tensor(valid[sl])
        u = model.user_vector(q)
        gen = torch.einsum("bd,bcd->bc", u, model.item_vectors(c)).double().masked_fill(~v, float("-inf"))
        top = gen.topk(min(max(k1s), c.shape[1]), dim=1).indices
        sub = c.gather(1, top)
        pop = torch.as_tensor(candidate_popularity(ds, sub.numpy(), times[sl]))
        rs = model.rank(q, u, sub, cand_pop=pop).double()
        for k in k1s:
            out[k].append(_ranks(GRank.place_ranked(gen, v, top[:, :k], rs[:, :k]).numpy(), valid[sl]))
    return {k: np.concatenate(r) for k, r in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="KuaiLive-format directory (e.g. recsys data synth --scale full)")
    ap.add_argument("--out", required=True, help="JSON result file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--k1", type=int, nargs="+", default=[200, 500, 1000, 2000])
    ap.add_argument("--max-steps", type=int, default=0, help="0: one epoch")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict[str, float] = {}
    t0 = time.perf_counter()
    ds = build_retrieval_dataset(load_kuailive(args.data), "streamer")
    res["dataset_s"] = time.perf_counter() - t0
    cfg = RetrievalTrainConfig(model="grank", granularity="streamer", epochs=1, batch_size=256, seed=args.seed,
                               max_steps=args.max_steps, eval_every=args.eval_every, patience=2)
    t0 = time.perf_counter()
    fit = fit_retriever(ds, cfg)
    res.update({"fit_s": time.perf_counter() - t0, **fit.metrics})
    model = fit.model.eval()
    k1s = sorted(args.k1)
    n = ds.eval_sets["test"].targets.height
    ranks: dict[bool, dict[int, list[np.ndarray]]] = {pool: {k: [] for k in k1s} for pool in (False, True)}
    t0 = time.perf_counter()
    for lo in range(0, n, EVAL_CHUNK):
        rows = np.arange(lo, min(lo + EVAL_CHUNK, n))
        for pool in (False, True):
            for k, r in sweep_ranks(model, ds, k1s, *eval_candidates(ds, "test", full_pool=pool, rows=rows)).items():
                ranks[pool][k].append(r)
    for k in k1s:
        m = {**topk_metrics(np.concatenate(ranks[False][k]), (5, 10, 20)),
             **topk_metrics(np.concatenate(ranks[True][k]), (50, 500))}
        res.update({f"k1_{k}.{name}": v for name, v in m.items()})
    res.update({"eval_s": time.perf_counter() - t0, "test_targets": float(n)})
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
