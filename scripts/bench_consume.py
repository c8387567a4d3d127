#!/usr/bin/env python3
"""Consumer benchmarks against the local stack, standard library only.

Usage:
  bench_consume.py sink   FOODPIPE_BINARY [--events N]
  bench_consume.py memory FOODPIPE_BINARY [--events N ...]

sink:   produces N events to a fresh topic, folds them with
        `foodpipe consume --until-caught-up` into a fresh database (wall
        time of the whole process: fetch, decode, history + view + offsets
        in one transaction per batch), exports the resulting history rows
        to CSV, then times `psql \\copy` of those same rows into
        `order_events_copy`, a copy of the history table with the same
        indexes and constraints. Prints both rates and the ratio.
memory: for each N, produces N events to a fresh topic and records the
        peak RSS (wait4's ru_maxrss) of `foodpipe consume --until-caught-up`
        folding that backlog.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ADMIN_URL = os.environ.get(
    "FOODPIPE_TEST_DATABASE_URL",
    "postgres://kafka_user:kafka_password@127.0.0.1:5432/food_orders",
)


def psql(url: str, *args: str) -> str:
    return subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qtA", *args],
                          check=True, capture_output=True, text=True).stdout


def with_db(url: str, name: str) -> str:
    base = url.rsplit("/", 1)[0]
    return f"{base}/{name}"


def produce(binary: str, topic: str, events: int) -> None:
    subprocess.run([binary, "produce", "--topic", topic, "--count", str(events),
                    "--partitions", "3", "--seed", "11", "--quiet"], check=True)


def consume(binary: str, topic: str, url: str) -> tuple[float, int]:
    """Runs consume --until-caught-up; returns (seconds, peak RSS in KiB)."""
    env = {**os.environ, "DATABASE_URL": url, "FOODPIPE_METRICS_ADDR": "off"}
    started = time.perf_counter()
    child = subprocess.Popen([binary, "consume", "--until-caught-up", "--topic", topic, "--json"],
                             env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"consume failed with status {status}")
    return seconds, usage.ru_maxrss


def fresh_db(tag: str) -> tuple[str, str]:
    name = f"fp_bench_{tag}_{int(time.time())}"
    psql(ADMIN_URL, "-c", f"CREATE DATABASE {name}")
    return name, with_db(ADMIN_URL, name)


def sink(binary: str, events: int) -> None:
    topic = f"bench-sink-{int(time.time())}"
    produce(binary, topic, events)
    name, url = fresh_db("sink")
    try:
        secs, _ = consume(binary, topic, url)
        rows = int(psql(url, "-c", "SELECT count(*) FROM order_events"))
        assert rows == events, f"history has {rows} rows, expected {events}"
        with tempfile.TemporaryDirectory() as tmp:
            csv = os.path.join(tmp, "history.csv")
            psql(url, "-c", f"\\copy (SELECT * FROM order_events) TO '{csv}' CSV")
            psql(url, "-c", "CREATE TABLE order_events_copy (LIKE order_events INCLUDING ALL)")
            started = time.perf_counter()
            psql(url, "-c", f"\\copy order_events_copy FROM '{csv}' CSV")
            copy_secs = time.perf_counter() - started
            size = os.path.getsize(csv)
        fp, cp = events / secs, events / copy_secs
        print(f"{events} events, {size / 1e6:.1f} MB of history CSV, 3 partitions")
        print()
        print("| writer | rows/s | ratio |")
        print("|---|---|---|")
        print(f"| psql \\copy into a copy of order_events | {cp:,.0f} | 1.00x |")
        print(f"| foodpipe consume (history + view + offsets, from Kafka) | {fp:,.0f} | {fp / cp:.2f}x |")
    finally:
        psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def memory(binary: str, sizes: list) -> None:
    print("| backlog (events) | consume time | peak RSS |")
    print("|---|---|---|")
    for events in sizes:
        topic = f"bench-memory-{events}-{int(time.time())}"
        produce(binary, topic, events)
        name, url = fresh_db("mem")
        try:
            secs, rss_kib = consume(binary, topic, url)
            print(f"| {events:,} | {secs:.1f} s | {rss_kib / 1024:.1f} MiB |", flush=True)
        finally:
            psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sink", "memory"])
    parser.add_argument("binary")
    parser.add_argument("--events", type=int, action="append")
    args = parser.parse_args()
    if args.mode == "sink":
        sink(args.binary, (args.events or [200_000])[0])
    else:
        memory(args.binary, args.events or [100_000, 1_000_000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
