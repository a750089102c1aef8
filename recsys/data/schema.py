"""The KuaiLive file layout: file names (current and pre-2025-07-29 aliases), columns and their types.

Columns are validated by name, never by position. Id columns and timestamps are int64; profile columns of
``user.csv`` / ``streamer.csv`` are bucket strings (0/1 flags are int64).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

INT = pl.Int64
STR = pl.String


@dataclass(frozen=True)
class FileSpec:
    """One KuaiLive CSV: its name, accepted old names, columns with dtypes, and the semantic roles of columns."""

    name: str
    columns: dict[str, pl.DataType]
    old_names: tuple[str, ...] = ()
    #: columns holding epoch-ms timestamps (checked for plausibility)
    time_columns: tuple[str, ...] = ()
    #: id columns and the id space they live in ("user", "streamer", "live")
    id_columns: dict[str, str] = field(default_factory=dict)
    #: columns that must be >= 0
    nonnegative: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".csv")


_EVENT = {"user_id": INT, "live_id": INT, "streamer_id": INT, "timestamp": INT}
_EVENT_IDS = {"user_id": "user", "live_id": "live", "streamer_id": "streamer"}

USER_PROFILE_COLUMNS: dict[str, pl.DataType] = {
    "age": STR,
    "gender": STR,
    "country": STR,
    "device_brand": STR,
    "device_price": STR,
    "reg_timestamp": STR,
    "fans_num": STR,
    "follow_num": STR,
    "first_watch_live_timestamp": STR,
    "accu_watch_live_cnt": STR,
    "accu_watch_live_duration": STR,
    "is_live_streamer": INT,
    "is_photo_author": INT,
    **{f"onehot_feat{i}": INT for i in range(7)},
}

STREAMER_PROFILE_COLUMNS: dict[str, pl.DataType] = {
    "gender": STR,
    "age": STR,
    "country": STR,
    "device_brand": STR,
    "device_price": STR,
    "live_operation_tag": STR,
    "fans_user_num": STR,
    "fans_group_fans_num": STR,
    "follow_user_num": STR,
    "first_live_timestamp": STR,
    "reg_timestamp": STR,
    "accu_live_cnt": STR,
    "accu_live_duration": STR,
    "accu_play_cnt": STR,
    "accu_play_duration": STR,
    **{f"onehot_feat{i}": INT for i in range(7)},
}

CLICK = FileSpec(
    "click.csv", {**_EVENT, "watch_live_time": INT}, time_columns=("timestamp",), id_columns=_EVENT_IDS,
    nonnegative=("watch_live_time",),
)
COMMENT = FileSpec("comment.csv", dict(_EVENT), time_columns=("timestamp",), id_columns=_EVENT_IDS)
LIKE = FileSpec("like.csv", dict(_EVENT), time_columns=("timestamp",), id_columns=_EVENT_IDS)
GIFT = FileSpec(
    "gift.csv", {**_EVENT, "gift_price": INT}, time_columns=("timestamp",), id_columns=_EVENT_IDS,
    nonnegative=("gift_price",),
)
NEGATIVE = FileSpec("negative.csv", dict(_EVENT), time_columns=("timestamp",), id_columns=_EVENT_IDS)
ROOM = FileSpec(
    "room.csv",
    {
        "p_date": INT,
        "live_id": INT,
        "streamer_id": INT,
        "live_type": INT,
        "start_timestamp": INT,
        "end_timestamp": INT,
        "live_content_category": STR,
        "live_name_id": INT,
    },
    old_names=("mapped_room.csv",),
    time_columns=("start_timestamp", "end_timestamp"),
    id_columns={"live_id": "live", "streamer_id": "streamer"},
    nonnegative=("live_name_id",),
)
USER = FileSpec("user.csv", {"user_id": INT, **USER_PROFILE_COLUMNS}, id_columns={"user_id": "user"})
STREAMER = FileSpec(
    "streamer.csv", {"streamer_id": INT, **STREAMER_PROFILE_COLUMNS}, old_names=("author.csv",),
    id_columns={"streamer_id": "streamer"},
)

EVENT_FILES: tuple[FileSpec, ...] = (CLICK, COMMENT, LIKE, GIFT)
ALL_FILES: tuple[FileSpec, ...] = (CLICK, COMMENT, LIKE, GIFT, NEGATIVE, ROOM, USER, STREAMER)
FILES_BY_STEM: dict[str, FileSpec] = {f.stem: f for f in ALL_FILES}

#: Old column name -> current one (renamed on 2025-07-29).
COLUMN_ALIASES: dict[str, str] = {"author_id": "streamer_id"}

#: Accepted title-embedding file names, in order of preference.
TITLE_EMBEDDING_GLOBS: tuple[str, ...] = ("title_embeddings.npy", "title_embeddings*.npy", "title_embeddings*.npz")
TITLE_EMBEDDING_DIM = 128

#: Event marks used by sequences and TPPs, in the tie-break order of the TPP brief (click < like < comment < gift).
EVENT_TYPES: tuple[str, ...] = ("click", "like", "comment", "gift")
EVENT_TYPE_ID: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}

#: Published statistics of the real dataset (paper Table 2 plus third-party counts), the synthetic ``full`` target.
PUBLISHED_COUNTS: dict[str, int] = {
    "user": 23_772,
    "streamer": 452_621,
    "room_rows": 11_819_964,
    "room": 11_613_708,
    "click": 4_909_515,
    "comment": 196_526,
    "like": 179_311,
    "gift": 72_646,
    "negative": 12_705_835,
    "title_embeddings": 745_576,
}

#: Bucket vocabularies observed in the real files (brief §8). Unseen strings map to an OOV id, never fail.
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "age": ("0-11", "12-17", "18-23", "24-30", "31-40", "41-49", "50+"),
    "gender": ("M", "F"),
    "device_price": ("0", "1-1000", "1000-2000", "2000-4000", "4000-5000", "5000+"),
    "fans_num": ("0-10", "10-100", "100-1000", "1000-10000", "10000-100000"),
    "follow_num": ("0-10", "10-100", "100-1000", "1000-10000", "10000-100000"),
    "accu_watch_live_cnt": ("0-50000", "50000-100000", "100000-500000", "500000-1000000"),
    "live_content_category": ("shop", "game", "other", "chat", "talent", "outdoor"),
    "live_operation_tag": (
        "Chat", "Beauty", "Lifestyle", "Talent", "E-Commerce", "Game", "Relationship", "Education",
    ),
}
