#!/usr/bin/env python3
"""What the growth row's millions are made of: a backlog folded by one
`consume` (as `make bench`'s growth row does), sampled at each million
applied.

Usage: bench_growth_io.py BINARY [EVENTS]   (default 10,000,000)

Starts a fresh memory:// Tansu, produces EVENTS to 3 partitions, folds
them into a fresh database with `consume` (default flags) and prints, per
million: seconds, events/s, the CPU seconds of every PostgreSQL process
and of `consume`, WAL bytes and full-page images (`pg_stat_wal`),
checkpoints, and block reads from the OS and buffer hits over history's
and the view's indexes (`pg_statio_user_indexes`). Each partition's
stored offset is polled every 0.25 s, so it also prints when each
partition finished: the last million may be folded by fewer partitions
than the first. Figures in docs/benchmarks.md ("What the last million is
made of").
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import bench_consume as bc  # noqa: E402

TABLES = "relname IN ('order_events', 'orders')"
INDEXES = ("SELECT json_object_agg(indexrelname, json_build_array(idx_blks_read, idx_blks_hit)) "
           f"FROM pg_statio_user_indexes WHERE {TABLES}")
HEAPS = ("SELECT json_object_agg(relname, json_build_array(heap_blks_read, heap_blks_hit)) "
         f"FROM pg_statio_user_tables WHERE {TABLES}")
WAL = ("SELECT json_build_array(wal_records, wal_fpi, wal_bytes::bigint, "
       "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)) FROM pg_stat_wal")
OFFSETS = "SELECT string_agg(next_offset::text, ',' ORDER BY partition) FROM consumer_offsets"


def cpu_of(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process now running."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.index("(") + 1:].startswith(("postgres", "postmaster")):
            total += cpu_of(stat)
    return total


def sample(url: str, applied: int, t: float, pid: int) -> dict:
    with open(f"/proc/{pid}/stat") as f:
        consume_cpu = cpu_of(f.read())
    return {"applied": applied, "t": t, "indexes": json.loads(bc.psql(url, "-c", INDEXES)),
            "heaps": json.loads(bc.psql(url, "-c", HEAPS)),
            "wal": json.loads(bc.psql(url, "-c", WAL)),
            "postgres_cpu": postgres_cpu(), "consume_cpu": consume_cpu}


def report(marks: list, polls: list) -> None:
    print("million  seconds  events/s  postgres-CPU-s  consume-CPU-s  WAL-MB  FPI  "
          "checkpoints  index-reads  index-hits")
    for a, b in zip(marks, marks[1:]):
        per = 1e6 / (b["applied"] - a["applied"])
        secs = b["t"] - a["t"]
        reads = sum(b["indexes"][k][0] - a["indexes"][k][0] for k in b["indexes"])
        hits = sum(b["indexes"][k][1] - a["indexes"][k][1] for k in b["indexes"])
        print(f"{b['applied'] / 1e6:7.1f} {secs * per:8.1f} {(b['applied'] - a['applied']) / secs:9,.0f} "
              f"{(b['postgres_cpu'] - a['postgres_cpu']) * per:15.1f} "
              f"{(b['consume_cpu'] - a['consume_cpu']) * per:14.1f} "
              f"{(b['wal'][2] - a['wal'][2]) * per / 1e6:7.0f} {(b['wal'][1] - a['wal'][1]) * per:6,.0f} "
              f"{b['wal'][3] - a['wal'][3]:12d} {reads * per:12,.0f} {hits * per:11,.0f}")
    ends = [int(x) for x in polls[-1][1].split(",")]
    finished = {}
    for t, offsets in polls:
        for p, (at, end) in enumerate(zip(map(int, offsets.split(",")), ends)):
            if at >= end:
                finished.setdefault(p, t)
    print(f"partition sizes {ends}; finished at " +
          ", ".join(f"partition {p} {t:.1f} s" for p, t in sorted(finished.items())))


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().splitlines()[4], file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    events = int(sys.argv[2]) if len(sys.argv) == 3 else 10_000_000
    bench.quiesce_postgres()
    broker = bench.Broker("memory")
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    try:
        topic = f"growth-io-{int(time.time())}"
        bc.produce(binary, topic, events, 3)
        name, url = bc.fresh_db("growth_io")
        env = {**os.environ, "DATABASE_URL": url, "FOODPIPE_METRICS_ADDR": "off"}
        child = subprocess.Popen([binary, "consume", "--topic", topic], env=env,
                                 stdout=subprocess.DEVNULL)
        marks, polls, due, started = [], [], 0, time.perf_counter()
        try:
            while True:
                if child.poll() is not None:
                    raise SystemExit(f"consume exited with status {child.returncode}")
                applied = bc.stored_offsets(url)
                now = time.perf_counter() - started
                if applied:
                    polls.append((now, bc.psql(url, "-c", OFFSETS).strip()))
                if applied >= due:
                    marks.append(sample(url, applied, now, child.pid))
                    due += 1_000_000
                if applied >= events:
                    break
                time.sleep(0.25)
        finally:
            child.terminate()
            child.wait()
        report(marks, polls)
        bc.psql(bc.ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
