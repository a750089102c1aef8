"""The allocation policy's export format: what serving loads to decide insertions, without the trainer.

A directory with

- ``policy.json``: the servable's kind (``StudentPolicy`` for SL-MGAC and the plain actor-critic, which serve their
  distilled student; ``BehaviorCloning`` / ``DoubleDQN`` / ``DiscreteCQL``; ``ThresholdGreedy``) and its
  constructor arguments;
- ``weights.pt``: the servable's ``state_dict`` (loaded with ``weights_only=True``; absent for the threshold);
- ``meta.json``: format version and the caller's meta (policy name, metrics, ...).

:func:`load_policy` returns a numpy callable ``features (n, F) float64 -> prob_insert (n,) float64``, the
:data:`recsys.feed.env.Policy` contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.allocation.baselines import BaselineConfig, BehaviorCloning, DiscreteCQL, DoubleDQN, ThresholdGreedy
from models.allocation.slmgac import StudentPolicy
from models.export_dir import read_checked, write_meta

FORMAT_VERSION = 1
FILES = ("policy.json",)
_BASELINES = {"BehaviorCloning": BehaviorCloning, "DoubleDQN": DoubleDQN, "DiscreteCQL": DiscreteCQL}


class TorchPolicy:
    """Numpy wrapper of a module whose ``forward(x (n, F) float32) -> prob_insert (n,)``; ``name`` for logs."""

    def __init__(self, module: nn.Module, name: str = "") -> None:
        self.module = module.eval()
        self.name = name or type(module).__name__

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            p = self.module(torch.as_tensor(np.asarray(x), dtype=torch.float32))
        return np.clip(p.double().numpy(), 0.0, 1.0)


def save_policy(model_or_policy: object, directory: str | Path, meta: dict | None = None) -> Path:
    """Write the servable part of a trained allocator (anything with ``serving() -> (kind, init_args, module)``:
    the SL-MGAC student, a torch baseline, the threshold; or a :class:`TorchPolicy` around one of them)."""
    obj = model_or_policy.module if isinstance(model_or_policy, TorchPolicy) else model_or_policy
    if isinstance(obj, StudentPolicy):
        kind, args, module = "StudentPolicy", obj.init_args(), obj
    elif hasattr(obj, "serving"):
        kind, args, module = obj.serving()
    else:
        raise TypeError(f"cannot export {type(obj).__name__}: it has no serving()")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "policy.json").write_text(json.dumps({"kind": kind, "args": args}, indent=1))
    if module is not None:
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, d / "weights.pt")
    write_meta(d, FORMAT_VERSION, meta)
    return d


def load_policy(directory: str | Path):
    """The served policy of an export: ``features (n, F) -> prob_insert (n,)`` in [0, 1]."""
    d, meta = read_checked(directory, "allocation policy", FILES, FORMAT_VERSION)
    spec = json.loads((d / "policy.json").read_text())
    kind, args = spec["kind"], spec["args"]
    name = str(meta.get("name", kind))
    if kind == "ThresholdGreedy":
        return ThresholdGreedy(**args)
    if kind == "StudentPolicy":
        module: nn.Module = StudentPolicy(**args)
    elif kind in _BASELINES:
        module = _BASELINES[kind](BaselineConfig(**args))
    else:
        raise ValueError(f"{d}: unknown policy kind {kind!r}")
    if not (d / "weights.pt").exists():
        raise FileNotFoundError(f"{d} is not an allocation policy export: missing weights.pt")
    module.load_state_dict(torch.load(d / "weights.pt", map_location="cpu", weights_only=True))
    return TorchPolicy(module, name)


__all__ = ["FILES", "TorchPolicy", "load_policy", "save_policy"]
