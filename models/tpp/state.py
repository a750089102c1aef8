"""Full-state checkpoints between continual-learning tasks (brief ``tpp.md`` §6, defect 6).

The payload holds the model state dict (backbone, every prompt pool and key, buffers), its tensor count, the model
class name, the config (plain dict), the optimiser state, the RNG states (torch CPU/CUDA, python ``random``, numpy)
and a caller ``extra`` dict (e.g. the task index). Everything is a tensor or a plain python value, so it loads with
``torch.load(weights_only=True)``. Loading is ``strict=True`` and checks the class, the config and the tensor count.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = 1
_PLAIN = (int, float, str, bool, type(None), Tensor)


@dataclass
class LoadedState:
    """What :func:`load_state` restored: ``n_tensors`` model tensors, the saved ``config`` and ``extra``."""

    n_tensors: int
    config: dict[str, Any] | None
    extra: dict[str, Any]
    rng_restored: bool


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"save_state: {where} has a non-str/int key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"save_state: {where} is a {type(obj).__name__}; store tensors and plain values only")


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors / plain values."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].copy()),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "state": {"key": n["key"].numpy(), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_dict(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "cfg", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else None


def save_state(dest: str | os.PathLike[str] | IO[bytes], model: nn.Module,
               optimizer: torch.optim.Optimizer | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write model + optimiser + config + RNG + ``extra`` (plain values and tensors only) to a path or a buffer."""
    extra = {} if extra is None else extra
    _check_plain(extra, "extra")
    sd = model.state_dict()
    payload = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "model": dict(sd),
        "n_model_tensors": len(sd),
        "config": _config_dict(model),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng": rng_state(),
        "extra": extra,
    }
    torch.save(payload, dest)


def load_state(src: str | os.PathLike[str] | IO[bytes], model: nn.Module,
               optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = True,
               map_location: str | torch.device = "cpu") -> LoadedState:
    """Restore a :func:`save_state` checkpoint into ``model`` (and ``optimizer``), strictly: a different class,
    config, key set, shape or tensor count raises (``ValueError`` / ``RuntimeError``)."""
    p = torch.load(src, map_location=map_location, weights_only=True)
    if p.get("format") != FORMAT:
        raise ValueError(f"load_state: unknown checkpoint format {p.get('format')!r}")
    if p["model_class"] != type(model).__name__:
        raise ValueError(f"load_state: checkpoint of {p['model_class']}, model is {type(model).__name__}")
    cfg = _config_dict(model)
    if p["config"] is not None and cfg is not None and p["config"] != cfg:
        raise ValueError(f"load_state: config mismatch\n saved: {p['config']}\n model: {cfg}")
    sd = p["model"]
    expected = len(model.state_dict())
    if len(sd) != p["n_model_tensors"] or len(sd) != expected:
        raise RuntimeError(f"load_state: checkpoint has {len(sd)} tensors (header {p['n_model_tensors']}), "
                           f"model has {expected}")
    model.load_state_dict(sd, strict=True)
    if optimizer is not None:
        if p["optimizer"] is None:
            raise ValueError("load_state: the checkpoint holds no optimizer state")
        optimizer.load_state_dict(p["optimizer"])
    if restore_rng:
        set_rng_state(p["rng"])
    return LoadedState(len(sd), p["config"], p["extra"], restore_rng)
