"""Train/serve skew of the allocator's state, measured on a ``recsys quickstart`` output directory.

Reads the service's decision log (the state the policy was served) and the exported SL-MGAC policy, and prints:
the policy's insertion probability on the served states without pacing (recomputed from the logged features) and
with it (as logged); the medians of the candidate columns served; and the same medians and the policy's mean
insertion probability on the environment's states (a constant 0.3 logging policy, 2,000 sessions) built from the
truth and from the quickstart's ranker (``FeedEnv(estimator=...)``).

    .venv/bin/recsys quickstart --scale small --out /tmp/qs
    .venv/bin/python benchmarks/allocator_state_skew.py /tmp/qs /tmp/qs/synthetic-small-seed0
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from models.allocation.export import load_policy
from pipelines.allocator_state import ranker_estimator
from recsys.feed.decision_log import read_decisions
from recsys.feed.env import FeedEnv, feature_index
from recsys.feed.policies import constant

COLUMNS = ("p_click_hat", "watch_hat", "log_popularity")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="quickstart output directory (--out)")
    ap.add_argument("data", help="its synthetic dataset directory")
    ap.add_argument("--sessions", type=int, default=2000)
    args = ap.parse_args()
    recs = [r for r in read_decisions(f"{args.run}/serving/decisions.jsonl")
            if r.live_id is not None and not r.fallback]
    x = np.array([r.features for r in recs], float)
    policy = load_policy(f"{args.run}/allocator/slmgac")
    out: dict[str, float] = {"served.decisions": float(len(recs)), "served.p_insert_unpaced": float(policy(x).mean()),
                             "served.p_insert_paced": float(np.mean([r.prob_insert for r in recs]))}
    out |= {f"served.{c}_median": float(np.median(x[:, feature_index(c)])) for c in COLUMNS}
    for label in ("truth", "ranker"):
        est = ranker_estimator(f"{args.run}/ranker/tokenmixer", args.data) if label == "ranker" else None
        lg = FeedEnv(args.data, estimator=est).log(constant(0.3), args.sessions, seed=1)
        xe = lg.features[lg.features[:, feature_index("has_candidate")] > 0]
        out |= {f"env_{label}.{c}_median": float(np.median(xe[:, feature_index(c)])) for c in COLUMNS}
        out[f"env_{label}.p_insert"] = float(policy(xe).mean())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
