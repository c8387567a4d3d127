#!/usr/bin/env python3
"""Consumer benchmarks against the local stack, standard library only.

Usage:
  bench_consume.py sink       FOODPIPE_BINARY [--events N]
  bench_consume.py memory     FOODPIPE_BINARY [--events N ...] [--partitions P]
  bench_consume.py rebalance  FOODPIPE_BINARY [--partitions P ...] [--events N]
  bench_consume.py partitions FOODPIPE_BINARY [--partitions P ...] [--events N]
  bench_consume.py growth     FOODPIPE_BINARY [--events N]

sink:   produces N events to a fresh topic, folds them with
        `foodpipe consume --until-caught-up` into a fresh database (wall
        time of the whole process: fetch, decode, history + view + offsets
        in one transaction per batch), exports the resulting history rows
        to CSV, then times `psql \\copy` of those same rows into
        `order_events_copy`, a copy of the history table with the same
        indexes and constraints. Prints both rates and the ratio.
memory: for each N, produces N events to a fresh topic and records the
        peak RSS (VmHWM, sampled every 20 ms) of `foodpipe consume --until-caught-up`
        folding that backlog.
rebalance: for each P, produces N events to a fresh topic of P partitions,
        starts three `foodpipe consume` members at once (default flags, as
        docs/reference.md runs them) and times how long until every partition is
        owned by one of them and every stored offset is at the log end.
partitions: the same N events folded by one `consume --until-caught-up`
        from a topic of each P partitions; events/s, each against the
        first P given.
growth: a backlog of N events (default 10,000,000) on 3 partitions folded
        by one `consume` until its stored offsets reach N: events/s over the first and the
        last million (the stored offsets sampled every 0.25 s), and the
        peak RSS.
"""

import argparse
import json
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


def produce(binary: str, topic: str, events: int, partitions: int = 3) -> None:
    subprocess.run([binary, "produce", "--topic", topic, "--count", str(events),
                    "--partitions", str(partitions), "--seed", "11", "--quiet"], check=True)


def consume(binary: str, topic: str, url: str) -> tuple[float, int]:
    """Runs consume --until-caught-up; returns (seconds, peak RSS in KiB)."""
    env = {**os.environ, "DATABASE_URL": url, "FOODPIPE_METRICS_ADDR": "off"}
    started = time.perf_counter()
    child = subprocess.Popen([binary, "consume", "--until-caught-up", "--topic", topic, "--json"],
                             env=env, stdout=subprocess.DEVNULL)
    # Peak RSS from the child's own VmHWM, sampled until it exits: wait4's
    # ru_maxrss also counts the forking parent's memory (Linux records the
    # old image's high-water mark at exec), which a driver holding the
    # benchmark's events in memory would inflate.
    peak = 0
    while True:
        pid, status, _ = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, vm_hwm_kib(child.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"consume failed with status {status}")
    return seconds, peak


def consume_to(binary: str, topic: str, url: str, total: int) -> tuple[float, int]:
    """Runs `consume` (no --until-caught-up) until the stored offsets add
    up to `total`, polled every 0.1 s; returns (seconds from start to
    there, peak RSS in KiB) and stops it.

    For Tansu's memory:// engine, whose ListOffsets answers the last
    batch's base offset + 1 for the log end (0.6.0; Fetch's high watermark
    is right), so `--until-caught-up` stops one batch short per partition."""
    env = {**os.environ, "DATABASE_URL": url, "FOODPIPE_METRICS_ADDR": "off"}
    started = time.perf_counter()
    child = subprocess.Popen([binary, "consume", "--topic", topic], env=env,
                             stdout=subprocess.DEVNULL)
    peak, polled = 0, 0.0
    try:
        while True:
            if child.poll() is not None:
                raise SystemExit(f"consume exited with status {child.returncode}")
            peak = max(peak, vm_hwm_kib(child.pid))
            now = time.perf_counter()
            if now - polled >= 0.1:
                polled = now
                if stored_offsets(url) >= total:
                    return time.perf_counter() - started, peak
            time.sleep(0.02)
    finally:
        child.terminate()
        child.wait()


def stored_offsets(url: str) -> int:
    """The sum of the stored next offsets (0 before consume made the tables)."""
    if not tables_exist(url):
        return 0
    return int(psql(url, "-c", "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets"))


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set in KiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fresh_db(tag: str) -> tuple[str, str]:
    name = f"fp_bench_{tag}_{int(time.time())}"
    psql(ADMIN_URL, "-c", f"CREATE DATABASE {name}")
    return name, with_db(ADMIN_URL, name)


def sink(binary: str, events: int) -> None:
    topic = f"bench-sink-{int(time.time())}"
    produce(binary, topic, events)
    result = fold_vs_copy(binary, topic, events)
    fp, cp = result["foodpipe"], result["copy"]
    print(f"{events} events, {result['csv_bytes'] / 1e6:.1f} MB of history CSV, 3 partitions")
    print()
    print("| writer | rows/s | ratio |")
    print("|---|---|---|")
    print(f"| psql \\copy into a copy of order_events | {cp:,.0f} | 1.00x |")
    print(f"| foodpipe consume (history + view + offsets, from Kafka) | {fp:,.0f} | {fp / cp:.2f}x |")


def fold_vs_copy(binary: str, topic: str, events: int, during=None, poll=False) -> dict:
    """Folds `topic` (N events) into a fresh database with `consume
    --until-caught-up` (with `poll`, `consume` until its stored offsets
    reach N: see consume_to), then `psql \\copy`s the resulting history
    rows into a copy of order_events; rows/s of each. `during(fn)` wraps
    the fold (the bench driver measures the broker's CPU around it)."""
    name, url = fresh_db("sink")
    try:
        run = (lambda: consume_to(binary, topic, url, events)) if poll else (
            lambda: consume(binary, topic, url))
        secs, _ = (during or (lambda fn: fn()))(run)
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
        return {"foodpipe": events / secs, "copy": events / copy_secs, "csv_bytes": size}
    finally:
        psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def memory(binary: str, sizes: list, partitions: int) -> dict:
    """Peak RSS in KiB of consume folding each backlog size."""
    print(f"{partitions} partitions")
    print()
    print("| backlog (events) | consume time | peak RSS |")
    print("|---|---|---|")
    peaks = {}
    for events in sizes:
        topic = f"bench-memory-{events}-{int(time.time())}"
        produce(binary, topic, events, partitions)
        name, url = fresh_db("mem")
        try:
            secs, rss_kib = consume(binary, topic, url)
            peaks[events] = rss_kib
            print(f"| {events:,} | {secs:.1f} s | {rss_kib / 1024:.1f} MiB |", flush=True)
        finally:
            psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return peaks


def rebalance(binary: str, counts: list, events: int) -> dict:
    """Seconds from start to all owned and lag 0, per partition count."""
    print(f"{events:,} events; three `consume` members started at once, default flags")
    print()
    print("| partitions | start to all owned | start to all owned and lag 0 |")
    print("|---|---|---|")
    done = {}
    for partitions in counts:
        topic = f"bench-rebalance-{partitions}-{int(time.time())}"
        produce(binary, topic, events, partitions)
        name, url = fresh_db("rebalance")
        env = {**os.environ, "DATABASE_URL": url}
        env.pop("FOODPIPE_METRICS_ADDR", None)
        members = []
        try:
            started = time.perf_counter()
            members = [subprocess.Popen([binary, "consume", "--topic", topic], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for _ in range(3)]
            owned_at = None
            while True:
                row = psql(url, "-c",
                           "SELECT count(DISTINCT owner), count(owner), coalesce(sum(next_offset), 0) "
                           "FROM consumer_offsets") if tables_exist(url) else "0|0|0"
                owners, owned, applied = (int(x) for x in row.strip().split("|"))
                now = time.perf_counter() - started
                if owned_at is None and owners == 3 and owned == partitions:
                    owned_at = now
                if owned_at is not None and applied == events:
                    print(f"| {partitions:,} | {owned_at:.2f} s | {now:.2f} s |", flush=True)
                    done[partitions] = now
                    break
                if now > 300:
                    raise SystemExit(f"{partitions} partitions: not done after 300 s ({row.strip()})")
                time.sleep(0.05)
        finally:
            for m in members:
                m.terminate()
            for m in members:
                m.wait()
            psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return done


def tables_exist(url: str) -> bool:
    return psql(url, "-c", "SELECT to_regclass('consumer_offsets') IS NOT NULL").strip() == "t"


def librdkafka_drain(topic: str) -> float:
    """Records/s of librdkafka reading the whole topic (no database)."""
    python = os.environ.get("FOODPIPE_PYTHON", os.path.join(os.path.dirname(__file__),
                                                            "..", ".stack", "venv", "bin", "python"))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    out = subprocess.run([python, os.path.join(os.path.dirname(__file__), "librdkafka_drain.py"),
                          bootstrap, topic], check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    return result["records"] / result["seconds"]


def partitions_throughput(binary: str, counts: list, events: int) -> None:
    print(f"{events:,} events; foodpipe: one `consume --until-caught-up` into PostgreSQL;")
    print("librdkafka: reading the same topic, no database (the broker's share)")
    print()
    print("| partitions | foodpipe events/s | ratio | librdkafka reads/s | ratio | foodpipe peak RSS |")
    print("|---|---|---|---|---|---|")
    base = ref_base = None
    for partitions in counts:
        topic = f"bench-partitions-{partitions}-{int(time.time())}"
        produce(binary, topic, events, partitions)
        name, url = fresh_db("partitions")
        try:
            secs, rss_kib = consume(binary, topic, url)
            rate = events / secs
            reference = librdkafka_drain(topic)
            base = base or rate
            ref_base = ref_base or reference
            print(f"| {partitions:,} | {rate:,.0f} | {rate / base:.2f}x | {reference:,.0f} | "
                  f"{reference / ref_base:.2f}x | {rss_kib / 1024:.1f} MiB |", flush=True)
        finally:
            psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def growth(binary: str, events: int, topic: str | None = None, partitions: int = 3) -> dict:
    """Folds a backlog of `events` (produced first to a fresh topic unless
    `topic` already holds it) with one `consume` (see consume_to); returns
    events/s over the first and last million (a tenth of the backlog if
    that is less), peak RSS in KiB and the seconds of each part."""
    segment = min(1_000_000, events // 10)
    produced = 0.0
    if topic is None:
        topic = f"bench-growth-{events}-{int(time.time())}"
        started = time.perf_counter()
        produce(binary, topic, events, partitions)
        produced = time.perf_counter() - started
    name, url = fresh_db("growth")
    env = {**os.environ, "DATABASE_URL": url, "FOODPIPE_METRICS_ADDR": "off"}
    try:
        started = time.perf_counter()
        # Not --until-caught-up: see consume_to.
        child = subprocess.Popen([binary, "consume", "--topic", topic],
                                 env=env, stdout=subprocess.DEVNULL)
        peak, samples, polled = 0, [], 0.0
        try:
            while True:
                if child.poll() is not None:
                    raise SystemExit(f"consume exited with status {child.returncode}")
                peak = max(peak, vm_hwm_kib(child.pid))
                now = time.perf_counter()
                if now - polled >= 0.25:
                    polled = now
                    applied = stored_offsets(url)
                    samples.append((time.perf_counter(), applied))
                    if applied >= events:
                        break
                time.sleep(0.02)
        finally:
            child.terminate()
            child.wait()
        seconds = time.perf_counter() - started
        rows = int(psql(url, "-c", "SELECT count(*) FROM order_events"))
        assert rows == events, f"history has {rows} rows, expected {events}"
    finally:
        psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def rate(lo: int, hi: int) -> float:
        # From the first sample at or past lo to the first at or past hi.
        t0, a0 = next((t, a) for t, a in samples if a >= lo)
        t1, a1 = next((t, a) for t, a in samples if a >= hi)
        return (a1 - a0) / max(t1 - t0, 1e-9)

    first_seen = next(a for _, a in samples if a > 0)
    return {"events": events, "segment": segment, "produce_secs": produced,
            "fold_secs": seconds, "peak_kib": peak,
            "first": rate(first_seen, first_seen + segment),
            "last": rate(events - segment, events)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sink", "memory", "rebalance", "partitions", "growth"])
    parser.add_argument("binary")
    parser.add_argument("--events", type=int, action="append")
    parser.add_argument("--partitions", type=int, action="append")
    args = parser.parse_args()
    if args.mode == "sink":
        sink(args.binary, (args.events or [200_000])[0])
    elif args.mode == "memory":
        memory(args.binary, args.events or [100_000, 1_000_000], (args.partitions or [3])[0])
    elif args.mode == "rebalance":
        rebalance(args.binary, args.partitions or [6, 100, 400, 1000], (args.events or [20_000])[0])
    elif args.mode == "growth":
        g = growth(args.binary, (args.events or [10_000_000])[0])
        print(f"{g['events']:,} events: produced in {g['produce_secs']:.0f} s, folded in "
              f"{g['fold_secs']:.0f} s; first {g['segment']:,}: {g['first']:,.0f} events/s, last "
              f"{g['segment']:,}: {g['last']:,.0f} events/s ({g['last'] / g['first']:.2f}x); "
              f"peak RSS {g['peak_kib'] / 1024:.1f} MiB")
    else:
        partitions_throughput(args.binary, args.partitions or [3, 400], (args.events or [200_000])[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
