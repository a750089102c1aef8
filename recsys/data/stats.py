"""Dataset statistics in the layout of the KuaiLive paper's Table 2, plus protocol-relevant extras."""

from __future__ import annotations

import numpy as np

from recsys.data.live_index import LiveIndex
from recsys.data.loaders import KuaiLiveData
from recsys.data.schema import PUBLISHED_COUNTS
from recsys.timeutil import MS_PER_HOUR, N_WINDOW_DAYS, WINDOW_START_MS

TABLE2_COLUMNS = ("#Users", "#Streamers", "#Rooms", "#Interactions", "#Clicks", "#Comments", "#Likes", "#Gifts")


def table2(data: KuaiLiveData) -> dict[str, int]:
    """The paper's Table 2 counts; #Interactions = clicks + comments + likes + gifts (negatives not counted)."""
    t = data.tables
    n = {k: t[k].height for k in ("click", "comment", "like", "gift")}
    return {
        "#Users": t["user"].height,
        "#Streamers": t["streamer"].height,
        "#Rooms": t["rooms"].height,
        "#Interactions": sum(n.values()),
        "#Clicks": n["click"],
        "#Comments": n["comment"],
        "#Likes": n["like"],
        "#Gifts": n["gift"],
    }


def published_table2() -> dict[str, int]:
    p = PUBLISHED_COUNTS
    return {
        "#Users": p["user"], "#Streamers": p["streamer"], "#Rooms": p["room"],
        "#Interactions": p["click"] + p["comment"] + p["like"] + p["gift"],
        "#Clicks": p["click"], "#Comments": p["comment"], "#Likes": p["like"], "#Gifts": p["gift"],
    }


def extras(data: KuaiLiveData, index: LiveIndex | None = None) -> dict[str, float]:
    """Negatives, CTR, room rows, censored ends, watch-time and gift-price quantiles, live rooms at 21:00 CST."""
    t = data.tables
    clicks, negatives, rooms = t["click"].height, t["negative"].height, t["rooms"]
    watch = t["click"]["watch_live_time"]
    price = t["gift"]["gift_price"]
    index = index or LiveIndex.from_rooms(rooms)
    evenings = WINDOW_START_MS + np.arange(N_WINDOW_DAYS) * 24 * MS_PER_HOUR + 21 * MS_PER_HOUR
    live = index.n_live(evenings)
    return {
        "negatives": negatives,
        "ctr": clicks / max(clicks + negatives, 1),
        "room_rows": t["room"].height,
        "censored_rooms": int(rooms["end_censored"].sum()),
        "watch_p50_s": float(watch.median() or 0) / 1000,
        "watch_p90_s": float(watch.quantile(0.9) or 0) / 1000,
        "gift_price_median": float(price.median() or 0),
        "gift_price_mean": float(price.mean() or 0),
        "live_rooms_21h_median": float(np.median(live)),
    }


def format_table(rows: dict[str, dict[str, float]], columns: tuple[str, ...]) -> str:
    """A plain-text table: one line per row label, right-aligned numbers with thousands separators."""
    width = max(12, *(len(c) for c in columns))
    label_w = max(len(k) for k in rows)
    head = " " * label_w + " | " + " | ".join(c.rjust(width) for c in columns)
    lines = [head, "-" * len(head)]
    for label, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            cells.append(("" if v is None else f"{v:,.0f}" if float(v).is_integer() else f"{v:,.4f}").rjust(width))
        lines.append(label.ljust(label_w) + " | " + " | ".join(cells))
    return "\n".join(lines)


def stats_report(data: KuaiLiveData) -> str:
    """Table 2 for this dataset next to the published KuaiLive counts, then the extras."""
    ours = table2(data)
    table = format_table({"this dataset": ours, "KuaiLive (paper)": published_table2()}, TABLE2_COLUMNS)
    ex = extras(data)
    lines = [table, ""] + [f"{k:>24}: {v:,.4g}" if isinstance(v, float) else f"{k:>24}: {v:,}" for k, v in ex.items()]
    return "\n".join(lines)


