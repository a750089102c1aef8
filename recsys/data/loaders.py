"""Load and validate the KuaiLive files (real or synthetic) with a Parquet cache.

Every check names the file, the column, the first offending row and the problem. Old file names
(``author.csv``, ``mapped_room.csv``) and the old ``author_id`` column are accepted with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.errors import DataValidationError
from recsys.data.rooms import aggregate_rooms
from recsys.data.schema import (
    ALL_FILES,
    COLUMN_ALIASES,
    FILES_BY_STEM,
    TITLE_EMBEDDING_DIM,
    TITLE_EMBEDDING_GLOBS,
    FileSpec,
)

log = logging.getLogger(__name__)

#: Plausible epoch-millisecond range (2015-01-01 .. 2035-01-01): catches seconds, microseconds and garbage.
TS_MIN_MS = 1_420_070_400_000
TS_MAX_MS = 2_051_222_400_000
#: Bump when loader semantics change, to invalidate Parquet caches.
CACHE_VERSION = "1"


def find_file(root: Path, spec: FileSpec) -> Path:
    """Path of ``spec`` under ``root``, accepting the pre-2025-07-29 names; raises a clear error when absent."""
    for name in (spec.name, *spec.old_names):
        path = root / name
        if path.exists():
            if name != spec.name:
                warnings.warn(f"{path}: old KuaiLive file name, read as {spec.name}", stacklevel=2)
            return path
    raise DataValidationError(
        str(root / spec.name), None,
        f"file not found (looked for {', '.join((spec.name, *spec.old_names))} in {root})",
    )


def _header(path: Path) -> list[str]:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        line = fh.readline().rstrip("\r\n")
    if not line:
        raise DataValidationError(str(path), None, "file is empty (no header line)")
    return [c.strip() for c in line.split(",")]


def _first_bad_row(mask: pl.Series) -> int:
    """1-based row number of the first True in ``mask``."""
    return int(mask.arg_true()[0]) + 1


def _parse_strict(path: Path, spec: FileSpec, rename: dict[str, str]) -> pl.DataFrame:
    """Read every column as text, then cast; the first value that does not parse is reported by row."""
    raw = pl.read_csv(path, infer_schema=False).rename(rename)
    out = {}
    for col, dtype in spec.columns.items():
        text = raw[col].str.strip_chars()
        if dtype == pl.String:
            out[col] = text
            continue
        parsed = text.cast(dtype, strict=False)
        bad = parsed.is_null() & text.is_not_null() & (text != "")
        if bad.any():
            row = _first_bad_row(bad)
            kind = "unparsable timestamp" if col in spec.time_columns else "wrong type"
            raise DataValidationError(
                str(path), col, f"{kind}: {text[row - 1]!r} is not an integer ({dtype})", row
            )
        out[col] = parsed
    return pl.DataFrame(out)


def read_csv_validated(path: Path, spec: FileSpec) -> pl.DataFrame:
    """Read one KuaiLive CSV, check columns, types and per-file value rules; return only the schema columns."""
    header = _header(path)
    rename = {old: new for old, new in COLUMN_ALIASES.items() if old in header and new not in header}
    if rename:
        warnings.warn(f"{path}: old column names {sorted(rename)} renamed to {sorted(rename.values())}", stacklevel=2)
    present = {rename.get(c, c) for c in header}
    for col in spec.columns:
        if col not in present:
            raise DataValidationError(str(path), col, f"missing column (header has: {', '.join(header)})")
    original = {new: old for old, new in rename.items()}
    wanted = {original.get(c, c): dtype for c, dtype in spec.columns.items()}
    try:
        df = pl.read_csv(path, schema_overrides=wanted, columns=list(wanted)).rename(rename)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError, pl.exceptions.SchemaError):
        df = _parse_strict(path, spec, rename)  # raises with the row of the first bad value
    df = df.select(list(spec.columns))
    check_values(df, spec, str(path))
    return df


def check_values(df: pl.DataFrame, spec: FileSpec, file: str) -> None:
    """Value rules: no missing ids/times, plausible epoch-ms timestamps, ids >= 1, non-negative amounts, end >= start."""
    for col, dtype in spec.columns.items():
        if dtype != pl.String and df[col].null_count():
            raise DataValidationError(file, col, "missing value", _first_bad_row(df[col].is_null()))
    for col in spec.time_columns:
        bad = (df[col] < TS_MIN_MS) | (df[col] >= TS_MAX_MS)
        if bad.any():
            row = _first_bad_row(bad)
            raise DataValidationError(
                file, col, f"unparsable timestamp {df[col][row - 1]} (expected epoch milliseconds, 2015..2035)", row
            )
    for col in spec.id_columns:
        bad = df[col] < 1
        if bad.any():
            row = _first_bad_row(bad)
            raise DataValidationError(file, col, f"id out of range: {df[col][row - 1]} (ids start at 1)", row)
    for col in spec.nonnegative:
        bad = df[col] < 0
        if bad.any():
            row = _first_bad_row(bad)
            raise DataValidationError(file, col, f"negative value {df[col][row - 1]}", row)
    if "start_timestamp" in spec.columns and "end_timestamp" in spec.columns:
        bad = df["end_timestamp"] < df["start_timestamp"]
        if bad.any():
            row = _first_bad_row(bad)
            raise DataValidationError(
                file, "end_timestamp",
                f"negative duration: end {df['end_timestamp'][row - 1]} < start {df['start_timestamp'][row - 1]}", row,
            )


def _cache_path(cache_dir: Path, path: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_VERSION}"
    return cache_dir / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.parquet"


def load_table(root: Path, stem: str, cache_dir: Path | None = None) -> pl.DataFrame:
    """One validated KuaiLive table by stem (``click``, ``room``, ...), cached as Parquet when ``cache_dir`` is set."""
    spec = FILES_BY_STEM[stem]
    path = find_file(root, spec)
    if cache_dir is None:
        return read_csv_validated(path, spec)
    cached = _cache_path(cache_dir, path)
    if cached.exists():
        return pl.read_parquet(cached)
    df = read_csv_validated(path, spec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    df.write_parquet(tmp)
    tmp.replace(cached)
    return df


def find_title_embeddings(root: Path) -> Path | None:
    """The title-embedding file (``title_embeddings*.np[yz]``), or None when the dataset ships none."""
    for pattern in TITLE_EMBEDDING_GLOBS:
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    return None


def load_title_embeddings(path: Path) -> np.ndarray:
    """Title embeddings as a (n_titles, 128) float array (memory-mapped for .npy); shape is checked."""
    if path.suffix == ".npz":
        with np.load(path) as z:
            arr = z[z.files[0]]
    else:
        arr = np.load(path, mmap_mode="r")
    if arr.ndim != 2 or arr.shape[1] != TITLE_EMBEDDING_DIM:
        raise DataValidationError(str(path), None, f"expected shape (n, {TITLE_EMBEDDING_DIM}), got {arr.shape}")
    return arr


@dataclass
class KuaiLiveData:
    """The validated KuaiLive tables. ``rooms`` is ``room.csv`` aggregated to one row per live_id."""

    root: Path
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    title_embeddings: np.ndarray | None = None
    room_violations: pl.DataFrame | None = None

    def __getattr__(self, name: str) -> pl.DataFrame:
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        raise AttributeError(f"KuaiLiveData has no table {name!r} (loaded: {sorted(tables)})")


def check_cross_file(data: KuaiLiveData) -> None:
    """Ids in event files must exist in the user/streamer tables; live_name_id must index the title embeddings."""
    t = data.tables
    limits = {}
    if "user" in t:
        limits["user_id"] = ("user.csv", int(t["user"]["user_id"].max() or 0))
    if "streamer" in t:
        limits["streamer_id"] = ("streamer.csv", int(t["streamer"]["streamer_id"].max() or 0))
    for stem, df in t.items():
        if stem in ("user", "streamer", "rooms"):
            continue
        for col, (ref, max_id) in limits.items():
            if col in df.columns:
                bad = df[col] > max_id
                if bad.any():
                    row = _first_bad_row(bad)
                    raise DataValidationError(
                        FILES_BY_STEM[stem].name, col,
                        f"id out of range: {df[col][row - 1]} > largest id {max_id} in {ref}", row,
                    )
    if data.title_embeddings is not None and "room" in t:
        n = data.title_embeddings.shape[0]
        bad = t["room"]["live_name_id"] >= n
        if bad.any():
            row = _first_bad_row(bad)
            raise DataValidationError(
                "room.csv", "live_name_id",
                f"id out of range: {t['room']['live_name_id'][row - 1]} >= {n} title-embedding rows", row,
            )


def load_kuailive(
    root: str | Path,
    tables: Iterable[str] | None = None,
    cache_dir: str | Path | None = None,
    with_embeddings: bool = True,
) -> KuaiLiveData:
    """Load (and validate) the KuaiLive tables under ``root``.

    ``tables`` selects file stems (default: all eight). When ``room`` is loaded, ``rooms`` (one row per live_id,
    ``end_censored`` flag, ``n_days``) is added. Cross-file id checks run on whatever was loaded.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(str(root), None, "dataset directory does not exist")
    stems = list(tables) if tables is not None else [f.stem for f in ALL_FILES]
    unknown = [s for s in stems if s not in FILES_BY_STEM]
    if unknown:
        raise ValueError(f"unknown KuaiLive table(s) {unknown}; known: {sorted(FILES_BY_STEM)}")
    cache = Path(cache_dir) if cache_dir is not None else None
    data = KuaiLiveData(root=root)
    for stem in stems:
        data.tables[stem] = load_table(root, stem, cache)
    if with_embeddings:
        emb = find_title_embeddings(root)
        if emb is not None:
            data.title_embeddings = load_title_embeddings(emb)
    if "room" in data.tables:
        rooms, violations = aggregate_rooms(data.tables["room"])
        data.tables["rooms"] = rooms
        data.room_violations = violations
        if violations.height:
            log.warning("room.csv: %d live_ids have inconsistent attributes across p_date rows", violations.height)
    check_cross_file(data)
    return data
