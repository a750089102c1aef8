"""What every model export directory shares: a ``meta.json`` with the format version, and a check on load."""

from __future__ import annotations

import json
from pathlib import Path


def write_meta(directory: Path, format_version: int, meta: dict | None) -> None:
    (directory / "meta.json").write_text(json.dumps({"format_version": format_version, **(meta or {})}, indent=1))


def read_checked(directory: str | Path, kind: str, files: tuple[str, ...], format_version: int) -> tuple[Path, dict]:
    """(directory, meta) after checking that the export of ``kind`` has all ``files`` and the expected format."""
    d = Path(directory)
    missing = [f for f in files if not (d / f).exists()]
    if missing:
        raise FileNotFoundError(f"{d} is not a {kind} export: missing {', '.join(missing)}")
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    if meta.get("format_version", format_version) != format_version:
        raise ValueError(f"{d}: export format {meta.get('format_version')} is not {format_version}")
    return d, meta
