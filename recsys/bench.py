"""The benchmark result contract shared by every ``recsys bench NAME``.

One JSON object: ``{"name", "scale", "device", "metrics": {flat dotted keys}, "env": {...}}``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numpy
    import polars

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": numpy.__version__,
        "polars": polars.__version__,
        "git_commit": _git_commit(),
    }
    if "torch" in sys.modules:
        import torch

        env["torch"] = torch.__version__
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return env


def validate_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metrics must be flat (dotted keys) and numeric."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            raise ValueError(f"benchmark metric {key!r} is nested; use flat dotted keys such as 'model.auc'")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"benchmark metric {key!r} must be a number, got {type(value).__name__}")
        out[key] = float(value) if isinstance(value, float) else value
    return out


def bench_result(name: str, scale: str, device: str, metrics: Mapping[str, Any],
                 extra_env: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The result envelope of one benchmark run."""
    return {
        "name": name,
        "scale": scale,
        "device": device,
        "metrics": validate_metrics(metrics),
        "env": {**environment(), **(extra_env or {})},
    }


def write_result(result: Mapping[str, Any], out: str | Path | None) -> str:
    """JSON text of ``result``; also written to ``out`` when given (parent folders created)."""
    text = json.dumps(result, indent=2, sort_keys=False)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return text
