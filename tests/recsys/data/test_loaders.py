"""Loader tests on a generated tiny KuaiLive dataset: happy path, every corruption named by file/column/row,
old names, column order, the Parquet cache and the title-embedding shape check."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.data import loaders
from recsys.data.errors import DataValidationError
from recsys.data.loaders import check_cross_file, load_kuailive
from recsys.data.schema import ALL_FILES, FILES_BY_STEM
from recsys.data.synthetic import SynthConfig, SynthResult, generate

STEMS = [f.stem for f in ALL_FILES]


# --------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """One generated tiny dataset per module; tests never modify it (they copy it first)."""
    return generate(tmp_path_factory.mktemp("tiny") / "data", SynthConfig(scale="tiny", seed=3), progress=False)


@pytest.fixture(scope="module")
def baseline(tiny: SynthResult) -> loaders.KuaiLiveData:
    return load_kuailive(tiny.out_dir)


@pytest.fixture
def root(tiny: SynthResult, tmp_path: Path) -> Path:
    """A private, modifiable copy of the tiny dataset (without the ground-truth folder)."""
    dst = tmp_path / "kuailive"
    shutil.copytree(tiny.out_dir, dst, ignore=shutil.ignore_patterns("truth"))
    return dst


# --------------------------------------------------------------------------------------------------------- helpers
def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _cell(path: Path, row: int, col: str) -> str:
    lines = _lines(path)
    return lines[row].split(",")[lines[0].split(",").index(col)]


def _set_cell(path: Path, row: int, col: str, value: str) -> None:
    """Set ``col`` of 1-based data row ``row`` (text line ``row + 1``) to ``value``."""
    lines = _lines(path)
    idx = lines[0].split(",").index(col)
    cells = lines[row].split(",")
    cells[idx] = value
    lines[row] = ",".join(cells)
    _write_lines(path, lines)


def _drop_column(path: Path, col: str) -> None:
    lines = _lines(path)
    idx = lines[0].split(",").index(col)
    _write_lines(path, [",".join(c for i, c in enumerate(line.split(",")) if i != idx) for line in lines])


def _raises(root: Path, file: str, column: str | None, row: int | None = None) -> DataValidationError:
    """Load ``root``, expect a DataValidationError naming ``file``, ``column`` and ``row``; return it."""
    with pytest.raises(DataValidationError) as info:
        load_kuailive(root)
    exc = info.value
    msg = str(exc)
    assert file in msg, msg
    assert Path(exc.file).name == file, msg
    assert exc.column == column, msg
    if column is not None:
        assert f"'{column}'" in msg, msg
    assert exc.row == row, msg
    if row is not None:
        assert f"row {row} (line {row + 1})" in msg, msg
    return exc


# --------------------------------------------------------------------------------------------------------- happy path
def test_tiny_dataset_loads_all_tables(tiny: SynthResult, baseline: loaders.KuaiLiveData) -> None:
    data = baseline
    assert set(data.tables) == set(STEMS) | {"rooms"}
    for stem in STEMS:
        df = data.tables[stem]
        assert df.columns == list(FILES_BY_STEM[stem].columns), stem
        assert dict(df.schema) == FILES_BY_STEM[stem].columns, stem
        expected = tiny.counts["room_rows" if stem == "room" else stem]
        assert df.height == expected > 0, stem
    assert data.rooms.height == tiny.counts["room"]
    assert data.rooms["live_id"].n_unique() == data.rooms.height
    assert "end_censored" in data.rooms.columns
    assert data.title_embeddings is not None
    assert data.title_embeddings.shape == (tiny.counts["title_embeddings"], 128)
    assert data.click is data.tables["click"]  # attribute access
    with pytest.raises(AttributeError):
        _ = data.follow
    check_cross_file(data)  # must not raise


def test_load_subset_of_tables(tiny: SynthResult) -> None:
    data = load_kuailive(tiny.out_dir, tables=["click", "user"], with_embeddings=False)
    assert set(data.tables) == {"click", "user"}
    assert data.title_embeddings is None
    with pytest.raises(ValueError, match="follow"):
        load_kuailive(tiny.out_dir, tables=["follow"])


# --------------------------------------------------------------------------------------------------------- corruptions
def test_missing_column(root: Path) -> None:
    _drop_column(root / "click.csv", "timestamp")
    exc = _raises(root, "click.csv", "timestamp")
    assert "missing column" in str(exc)


@pytest.mark.parametrize("value", ["2025-05-05 10:00", "abc"])
def test_unparsable_timestamp(root: Path, value: str) -> None:
    _set_cell(root / "comment.csv", 7, "timestamp", value)
    exc = _raises(root, "comment.csv", "timestamp", 7)
    assert "timestamp" in exc.problem and value in str(exc)


def test_float_in_id_column(root: Path) -> None:
    _set_cell(root / "click.csv", 12, "user_id", "12.5")
    exc = _raises(root, "click.csv", "user_id", 12)
    assert "12.5" in str(exc) and "wrong type" in exc.problem


def test_negative_room_duration(root: Path) -> None:
    path = root / "room.csv"
    start = int(_cell(path, 9, "start_timestamp"))
    _set_cell(path, 9, "end_timestamp", str(start - 60_000))
    exc = _raises(root, "room.csv", "end_timestamp", 9)
    assert "negative duration" in exc.problem


def test_negative_watch_live_time(root: Path) -> None:
    _set_cell(root / "click.csv", 5, "watch_live_time", "-1500")
    exc = _raises(root, "click.csv", "watch_live_time", 5)
    assert "-1500" in exc.problem


def test_user_id_zero(root: Path) -> None:
    _set_cell(root / "like.csv", 4, "user_id", "0")
    exc = _raises(root, "like.csv", "user_id", 4)
    assert "out of range" in exc.problem


def test_user_id_above_user_table(root: Path, baseline: loaders.KuaiLiveData) -> None:
    too_big = int(baseline.user["user_id"].max()) + 1
    _set_cell(root / "click.csv", 6, "user_id", str(too_big))
    exc = _raises(root, "click.csv", "user_id", 6)
    assert str(too_big) in exc.problem and "user.csv" in exc.problem


def test_streamer_id_above_streamer_table(root: Path, baseline: loaders.KuaiLiveData) -> None:
    too_big = int(baseline.streamer["streamer_id"].max()) + 1
    _set_cell(root / "gift.csv", 3, "streamer_id", str(too_big))
    exc = _raises(root, "gift.csv", "streamer_id", 3)
    assert "streamer.csv" in exc.problem


def test_live_name_id_beyond_title_embeddings(root: Path, baseline: loaders.KuaiLiveData) -> None:
    n_titles = baseline.title_embeddings.shape[0]
    _set_cell(root / "room.csv", 8, "live_name_id", str(n_titles))  # == rows: one past the last valid index
    exc = _raises(root, "room.csv", "live_name_id", 8)
    assert str(n_titles) in exc.problem
    # without the embeddings the same file is fine
    load_kuailive(root, with_embeddings=False)


def test_timestamp_in_seconds(root: Path) -> None:
    path = root / "click.csv"
    ms = int(_cell(path, 10, "timestamp"))
    _set_cell(path, 10, "timestamp", str(ms // 1000))
    exc = _raises(root, "click.csv", "timestamp", 10)
    assert str(ms // 1000) in exc.problem and "milliseconds" in exc.problem


def test_start_timestamp_in_seconds(root: Path) -> None:
    path = root / "room.csv"
    _set_cell(path, 2, "start_timestamp", str(int(_cell(path, 2, "start_timestamp")) // 1000))
    _raises(root, "room.csv", "start_timestamp", 2)


def test_empty_file(root: Path) -> None:
    (root / "like.csv").write_text("")
    exc = _raises(root, "like.csv", None)
    assert "empty" in exc.problem


def test_missing_file(root: Path) -> None:
    (root / "gift.csv").unlink()
    exc = _raises(root, "gift.csv", None)
    assert "not found" in exc.problem


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="does not exist"):
        load_kuailive(tmp_path / "nope")


# --------------------------------------------------------------------------------------------------------- old names
def test_old_file_and_column_names(root: Path, baseline: loaders.KuaiLiveData) -> None:
    (root / "streamer.csv").rename(root / "author.csv")
    (root / "room.csv").rename(root / "mapped_room.csv")
    lines = _lines(root / "click.csv")
    assert lines[0].split(",").count("streamer_id") == 1
    lines[0] = lines[0].replace("streamer_id", "author_id")
    _write_lines(root / "click.csv", lines)

    with pytest.warns(UserWarning) as record:
        data = load_kuailive(root)
    messages = " | ".join(str(w.message) for w in record)
    assert "author.csv" in messages and "mapped_room.csv" in messages
    assert "author_id" in messages

    assert "streamer_id" in data.click.columns and "author_id" not in data.click.columns
    assert data.click.equals(baseline.click)
    assert data.streamer.equals(baseline.streamer)
    assert data.room.equals(baseline.room)


def test_old_title_embedding_name(root: Path, baseline: loaders.KuaiLiveData) -> None:
    (root / "title_embeddings.npy").rename(root / "title_embeddings_pca128.npy")
    data = load_kuailive(root)
    assert data.title_embeddings is not None
    np.testing.assert_array_equal(np.asarray(data.title_embeddings), np.asarray(baseline.title_embeddings))


def test_npz_title_embeddings(root: Path, baseline: loaders.KuaiLiveData) -> None:
    arr = np.load(root / "title_embeddings.npy")
    (root / "title_embeddings.npy").unlink()
    np.savez(root / "title_embeddings.npz", emb=arr)
    data = load_kuailive(root)
    np.testing.assert_array_equal(data.title_embeddings, np.asarray(baseline.title_embeddings))


# --------------------------------------------------------------------------------------------------------- column order
@pytest.mark.parametrize("stem", ["click", "room", "user"])
def test_column_order_does_not_matter(root: Path, baseline: loaders.KuaiLiveData, stem: str) -> None:
    path = root / f"{stem}.csv"
    raw = pl.read_csv(path, infer_schema=False)
    shuffled = list(np.random.default_rng(0).permutation(raw.columns))
    shuffled = shuffled[::-1] if shuffled == raw.columns else shuffled
    assert shuffled != raw.columns
    raw.select(shuffled).write_csv(path)
    assert _lines(path)[0].split(",") == shuffled
    data = load_kuailive(root)
    assert data.tables[stem].columns == list(FILES_BY_STEM[stem].columns)
    assert data.tables[stem].equals(baseline.tables[stem])


# --------------------------------------------------------------------------------------------------------- cache
def test_parquet_cache_hit_and_invalidation(
    root: Path, tmp_path: Path, baseline: loaders.KuaiLiveData, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    calls: list[str] = []
    real = loaders.read_csv_validated

    def spy(path: Path, spec):  # noqa: ANN001
        calls.append(spec.stem)
        return real(path, spec)

    monkeypatch.setattr(loaders, "read_csv_validated", spy)

    first = load_kuailive(root, cache_dir=cache)
    assert sorted(calls) == sorted(STEMS)
    cached = sorted(p.name for p in cache.glob("*.parquet"))
    assert len(cached) == len(STEMS)
    for stem in STEMS:
        assert any(name.startswith(f"{stem}-") for name in cached), (stem, cached)
        assert first.tables[stem].equals(baseline.tables[stem])

    calls.clear()
    second = load_kuailive(root, cache_dir=cache)
    assert calls == []  # every table came from Parquet
    for stem in [*STEMS, "rooms"]:
        assert second.tables[stem].equals(first.tables[stem]), stem

    # change click.csv's content (fewer rows): only click is re-read, and the new content is what loads
    lines = _lines(root / "click.csv")
    _write_lines(root / "click.csv", lines[:-10])
    calls.clear()
    third = load_kuailive(root, cache_dir=cache)
    assert calls == ["click"]
    assert third.click.height == baseline.click.height - 10
    assert third.click.equals(baseline.click.head(baseline.click.height - 10))

    # same size, new content and a new mtime: still re-read
    path = root / "comment.csv"
    old = _cell(path, 1, "live_id")
    new = str(int(old) + 1) if not old.endswith("9") else str(int(old) - 1)
    assert len(new) == len(old)
    size = path.stat().st_size
    _set_cell(path, 1, "live_id", new)
    assert path.stat().st_size == size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    calls.clear()
    fourth = load_kuailive(root, cache_dir=cache)
    assert calls == ["comment"]
    assert fourth.comment["live_id"][0] == int(new)


def test_cache_does_not_hide_new_corruption(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_kuailive(root, cache_dir=cache)
    _set_cell(root / "click.csv", 3, "watch_live_time", "-7")
    with pytest.raises(DataValidationError) as info:
        load_kuailive(root, cache_dir=cache)
    assert info.value.column == "watch_live_time" and info.value.row == 3


# --------------------------------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("shape", [(50, 64), (50,), (50, 128, 1)])
def test_title_embeddings_wrong_shape(root: Path, shape: tuple[int, ...]) -> None:
    np.save(root / "title_embeddings.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(DataValidationError) as info:
        load_kuailive(root)
    assert "title_embeddings.npy" in str(info.value)
    assert str(shape) in str(info.value)


def test_title_embeddings_wrong_shape_npz(root: Path) -> None:
    (root / "title_embeddings.npy").unlink()
    np.savez(root / "title_embeddings.npz", emb=np.zeros((10, 127), dtype=np.float32))
    with pytest.raises(DataValidationError, match=r"title_embeddings\.npz"):
        load_kuailive(root)
