"""Argument checks shared by the numpy metric and estimator modules: errors name the offending argument."""

from __future__ import annotations

import numpy as np


def as_1d(name: str, x: np.ndarray) -> np.ndarray:
    """Return ``x`` as a non-empty 1-D array, or raise ``ValueError`` naming ``name``."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    return arr


def check_same_length(**arrays: np.ndarray) -> None:
    """Raise ``ValueError`` unless all given arrays have the same length."""
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {described}")


def check_real(name: str, x: np.ndarray, ndim: int = 1) -> np.ndarray:
    """A non-empty real-valued array of dimension ``ndim`` as float64, or ``ValueError`` naming ``name``."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    return arr.astype(np.float64)


__all__ = ["as_1d", "check_real", "check_same_length"]
