"""Stream workers scale by partitions: two ``recsys ingest --consume`` processes in one consumer group share the
partitions; when one is killed mid-stream the group rebalances, the survivor takes over the dead member's partitions
and drains the stream, and the feature store still equals the batch features (no loss, no double count).

Runs against the real Kafka-protocol broker and the real Redis of the session fixtures.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import pytest

from pipelines.ingest import load_events
from recsys.store.redis_store import RedisStore
from recsys.stream.bus import KafkaSink, TopicLayout, publish
from recsys.stream.features import batch_snapshot, online_snapshot
from recsys.stream.replay import iter_events
from recsys.timeutil import MS_PER_DAY, WINDOW_START_MS

PARTITIONS = 4  # per event topic: 8 partitions, 4 per worker
# Must exceed the fast session timeout (2 s) plus a rejoin: a survivor that has drained its own partitions keeps
# polling (and so stays in the group) until the coordinator has expelled the dead member and handed it the
# dead member's partitions; only then does idleness mean the stream is drained.
IDLE_TIMEOUT_S = 6

# The CLI silences the ``kafka`` logger below ERROR; re-enable just the INFO line a consumer writes on each
# assignment ("Updated partition assignment: [TopicPartition(...), ...]") so every worker's log says which
# partitions it owned. Otherwise this is exactly ``python -m recsys.cli ingest ...`` (same ``main``, same argv).
_WORKER = ("import logging, sys; logging.getLogger('kafka.consumer.subscription_state').setLevel(logging.INFO); "
           "from recsys.cli import main; sys.exit(main(sys.argv[1:]))")
_ASSIGNED = re.compile(r"Updated partition assignment: \[(.*)\]")
_TP = re.compile(r"TopicPartition\(topic='([^']+)', partition=(\d+)\)")
_CONSUMED = re.compile(r"^consumed ([\d,]+) events", re.M)

TP = tuple[str, int]


@pytest.fixture(scope="module")
def tiny_events(tiny_dir: Path) -> pl.DataFrame:
    return load_events(tiny_dir, until=WINDOW_START_MS + 21 * MS_PER_DAY - 1)


def _assignments(log: Path) -> list[frozenset[TP]]:
    """Every partition assignment a worker received, in order (from its log)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [frozenset((t, int(p)) for t, p in _TP.findall(m.group(1))) for m in _ASSIGNED.finditer(text)]


def _committed(admin, group: str) -> dict[TP, int]:
    offsets = admin.list_group_offsets(group).get(group, {})
    return {(tp.topic, tp.partition): max(0, meta.offset) for tp, meta in offsets.items()}


def _publish(bootstrap: str, events: pl.DataFrame, layout: TopicLayout) -> dict[TP, int]:
    """Publish the stream; the end offset of every partition, from the broker's acks of the sends.

    (Not from ListOffsets: the test broker answers it with a stale end offset.)
    """
    sink, acks = KafkaSink(bootstrap), []
    send = sink.producer.send

    def send_and_keep_the_future(*args, **kwargs):
        acks.append(send(*args, **kwargs))
        return acks[-1]

    sink.producer.send = send_and_keep_the_future
    try:
        assert publish(iter_events(events), sink, layout) == events.height  # flushes: every future is done
    finally:
        sink.close()
    ends: dict[TP, int] = {}
    for ack in acks:
        md = ack.get(timeout=0)
        ends[(md.topic, md.partition)] = max(ends.get((md.topic, md.partition), 0), md.offset + 1)
    return ends


def _diff(online: dict, offline: dict, show: int = 3, width: int = 120) -> str:
    keys = sorted(k for k in online.keys() | offline.keys() if online.get(k) != offline.get(k))
    return f"{len(keys)} of {len(offline)} keys differ, e.g. " + "; ".join(
        f"{k}: online {str(online.get(k))[:width]} batch {str(offline.get(k))[:width]}" for k in keys[:show])


def _on(offsets: dict[TP, int], parts: frozenset[TP]) -> int:
    return sum(offsets.get(tp, 0) for tp in parts)


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_share_partitions_and_the_survivor_of_a_kill_drains_the_stream_exactly_once(
    tiny_events: pl.DataFrame, kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    from kafka import KafkaAdminClient

    tag = uuid.uuid4().hex[:8]
    layout, group, ns = TopicLayout(prefix=f"so{tag}", partitions=PARTITIONS), f"g{tag}", f"scale{tag}:"
    total = tiny_events.height

    # 1. the whole stream on the bus before any worker starts (produce only)
    layout.ensure(kafka_bootstrap)
    ends = _publish(kafka_bootstrap, tiny_events, layout)
    all_parts = frozenset(ends)
    assert len(all_parts) == 2 * PARTITIONS and sum(ends.values()) == total

    # 2. two stream workers in one consumer group
    args = ["ingest", "--consume", "--kafka", kafka_bootstrap, "--store", "redis", "--redis-url", redis_url,
            "--namespace", ns, "--topic-prefix", layout.prefix, "--partitions", str(PARTITIONS), "--group", group,
            "--idle-timeout", str(IDLE_TIMEOUT_S), "--fast-kafka-timeouts", "--quiet"]
    env = {**os.environ, "RECSYS_TRACKING__ENABLED": "false"}
    logs = [tmp_path / "victim.log", tmp_path / "survivor.log"]
    store = RedisStore(redis_url, namespace=ns)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    procs: list[subprocess.Popen] = []
    canary = ns + "canary"  # tells a lost namespace (another process flushing the shared test db) from a stream bug
    try:
        store.client.set(canary, b"1")
        for log in logs:
            with log.open("wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, *args], env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
        victim, survivor = procs

        # 3. wait until the partitions are split between the two and both have committed progress in that
        #    generation, while the victim still has work left on its partitions; then kill it (a real crash)
        baseline: dict[TP, int] | None = None
        mine = theirs = frozenset()
        deadline = time.monotonic() + 60
        while True:
            for p, log in zip(procs, logs):
                assert p.poll() is None, f"worker exited early ({p.returncode}):\n{log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, (
                f"no shared, progressing generation: victim {_assignments(logs[0])}, survivor "
                f"{_assignments(logs[1])}, committed {_committed(admin, group)}")
            got_v, got_s = _assignments(logs[0]), _assignments(logs[1])
            if got_v and got_s and got_v[-1] and got_s[-1] and not got_v[-1] & got_s[-1] \
                    and got_v[-1] | got_s[-1] == all_parts:
                if (got_v[-1], got_s[-1]) != (mine, theirs):  # (new) generation shared by both
                    mine, theirs, baseline = got_v[-1], got_s[-1], _committed(admin, group)
                now = _committed(admin, group)
                victim_done, survivor_done = _on(now, mine), _on(now, theirs)
                if victim_done > _on(baseline, mine) and survivor_done > _on(baseline, theirs):
                    assert victim_done < _on(ends, mine), f"the victim drained its share before the kill: {now}"
                    break
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)  # no shutdown hook runs: no commit, no LeaveGroup
        assert victim.wait(timeout=10) == -signal.SIGKILL
        at_kill = _committed(admin, group)
        assert _on(at_kill, mine) > 0 and _on(at_kill, theirs) > 0, "both workers consumed and committed"
        assert _on(at_kill, mine) < _on(ends, mine), "the kill must land mid-stream on the victim's partitions"
        assert sum(at_kill.values()) < total

        # 4. the group expels the dead member after its session timeout; the survivor gets every partition
        #    and drains the stream on its own, then stops on the idle timeout
        survivor.wait(timeout=120)
        out = logs[1].read_text(errors="replace")
        assert survivor.returncode == 0, out
        # its last assignment (closing the consumer logs a final, empty one) holds the dead member's partitions too
        took = [a for a in _assignments(logs[1]) if a]
        assert took[-1] == all_parts and theirs in took[:-1], f"survivor's assignments: {took}"
        assert _committed(admin, group) == ends  # every partition committed to its end: nothing lost
        consumed = [int(n.replace(",", "")) for n in _CONSUMED.findall(out)]
        assert len(consumed) == 1, out
        # it consumed everything left uncommitted at the kill, but not the victim's committed share
        assert total - sum(at_kill.values()) <= consumed[0] < total

        # 5. no loss and no double count: the Redis features equal the batch features from the files
        now_ms = int(tiny_events["event_time"].max())
        online, offline = online_snapshot(store, now_ms), batch_snapshot(tiny_events, now_ms)
        intact = "intact" if store.client.exists(canary) else "GONE: the test db was flushed during the test"
        for name in offline:
            assert online[name] == offline[name], (
                f"online {name} differs from batch ({_diff(online[name], offline[name])}); namespace {intact}")
        assert offline["seq"] and offline["live"] and offline["user_cnt"]  # the comparison is not vacuous
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        admin.close()
        store.clear()
        store.close()
