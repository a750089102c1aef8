"""KuaiLive time conventions: epoch milliseconds, days and hours in Asia/Shanghai (UTC+8, no DST).

All functions are vectorised over numpy arrays (and accept Python ints).
"""

from __future__ import annotations

import numpy as np

MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
CST_OFFSET_MS = 8 * MS_PER_HOUR
#: 2025-05-05 00:00:00 CST, the first instant of the KuaiLive window.
WINDOW_START_MS = 1_746_374_400_000
N_WINDOW_DAYS = 21
#: 2025-05-26 00:00:00 CST, the first instant after the window (half-open window).
WINDOW_END_MS = WINDOW_START_MS + N_WINDOW_DAYS * MS_PER_DAY
#: A CST midnight is 16:00 UTC: ``ts % MS_PER_DAY`` equals this for midnight-CST timestamps.
CST_MIDNIGHT_MOD = (MS_PER_DAY - CST_OFFSET_MS) % MS_PER_DAY  # 57_600_000


def cst_day(ts_ms: np.ndarray | int) -> np.ndarray | int:
    """Day number (days since 1970-01-01 CST) of epoch-ms timestamps, bucketed in Asia/Shanghai."""
    return (np.asarray(ts_ms, dtype=np.int64) + CST_OFFSET_MS) // MS_PER_DAY


def cst_hour(ts_ms: np.ndarray | int) -> np.ndarray | int:
    """Hour of day 0..23 in Asia/Shanghai."""
    return ((np.asarray(ts_ms, dtype=np.int64) + CST_OFFSET_MS) // MS_PER_HOUR) % 24


def cst_weekday(ts_ms: np.ndarray | int) -> np.ndarray | int:
    """Day of week 0..6 in Asia/Shanghai, 0 = Monday (1970-01-01 was a Thursday)."""
    return (cst_day(ts_ms) + 3) % 7


def cst_hour_angle(ts_ms: np.ndarray | int) -> np.ndarray | float:
    """Time of day in Asia/Shanghai as an angle in radians (0 at midnight), for ``sin`` / ``cos`` features."""
    return 2 * np.pi * ((np.asarray(ts_ms, dtype=np.int64) + CST_OFFSET_MS) % MS_PER_DAY) / MS_PER_DAY


def window_day(ts_ms: np.ndarray | int) -> np.ndarray | int:
    """Day index relative to the KuaiLive window: 0 for 2025-05-05 CST, 20 for 2025-05-25 CST."""
    return cst_day(ts_ms) - cst_day(WINDOW_START_MS)


def cst_midnight(day: np.ndarray | int) -> np.ndarray | int:
    """Epoch ms of 00:00 CST of a :func:`cst_day` day number."""
    return np.asarray(day, dtype=np.int64) * MS_PER_DAY - CST_OFFSET_MS


def p_date(ts_ms: np.ndarray | int) -> np.ndarray | int:
    """``yyyymmdd`` CST partition date (as int64) of epoch-ms timestamps."""
    days = np.atleast_1d(np.asarray(cst_day(ts_ms), dtype="int64")).astype("datetime64[D]")
    y = days.astype("datetime64[Y]").astype(np.int64) + 1970
    m = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    d = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    out = y * 10_000 + m * 100 + d
    return out if np.ndim(ts_ms) else int(out[0])


def is_cst_midnight(ts_ms: np.ndarray | int) -> np.ndarray | bool:
    """True where a timestamp falls exactly on a CST midnight (the censored-end marker of room.csv)."""
    return np.asarray(ts_ms, dtype=np.int64) % MS_PER_DAY == CST_MIDNIGHT_MOD
