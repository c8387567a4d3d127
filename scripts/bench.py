#!/usr/bin/env python3
"""`make bench`: every headline figure in one run, foodpipe beside the real
reference tool, on one fresh private Tansu, the local PostgreSQL and the
same generated events.

Usage: bench.py FOODPIPE_BINARY [--events N] [--out DIR]

Writes DIR/report.md (the table for the README) and DIR/report.json (a
list of {"name", "foodpipe", "reference", "unit", "ratio"}, plus "goal",
"reference_is" and the broker's CPU share). The pieces are those of
`make bench-produce`, `bench-sink`, `bench-memory` and `bench-partitions`
(bench_produce.py, bench_consume.py, librdkafka_drain.py, benches/sink.rs),
run once each:

  produce_vs_librdkafka      `foodpipe send` vs librdkafka (confluent-kafka),
                             the same N events, 2 rounds in alternating order,
                             medians; no codec
  produce_lz4_vs_librdkafka  the same with lz4 on both sides
  drain_vs_librdkafka        `foodpipe tail --from-beginning` (fetch, decode,
                             print to /dev/null) vs librdkafka_drain.py, the
                             topic foodpipe produced above; no database
  fold_vs_copy               `consume --until-caught-up` of that topic into a
                             fresh database vs `psql \\copy` of its history rows
  sink_vs_copy               `cargo bench --bench sink` (records in memory ->
                             Store::apply_batch) vs `psql \\copy`
  cpu_per_event_vs_librdkafka  client CPU seconds per million events, produce
                             (no codec) plus drain: foodpipe / librdkafka
  latency_p99_ms             2,000 events/s paced into `foodpipe send`, one
                             `consume`: p99 of (transaction that committed the
                             event) - (record timestamp set by send)
  rss_1m_backlog_mib         peak RSS of consume folding a 1M backlog; the
                             reference is the same with 100k
  rebalance_400_partitions_s three default members on 400 partitions: start to
                             every partition owned and lag 0

The broker's CPU share (Tansu's utime+stime over the wall time of the
measured interval, 100 % = one core) is recorded beside each row: above
~85 % the single-threaded sqlite storage is the bottleneck, and the row
measures Tansu more than either client.
"""

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_consume  # noqa: E402
import bench_produce  # noqa: E402

BROKER_BOUND = 0.85


class Broker:
    """A fresh private Tansu whose CPU time can be read at any moment."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-tansu-")
        self.proc, self.bootstrap = bench_produce.start_tansu(self.dir)

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def measure(self, fn):
        """Runs fn(); returns (its result, the broker's CPU share meanwhile)."""
        cpu, started = self.cpu(), time.perf_counter()
        result = fn()
        return result, (self.cpu() - cpu) / max(time.perf_counter() - started, 1e-9)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def row(name, foodpipe, reference, unit, reference_is, goal, broker, lower_is_better=False):
    ratio = foodpipe / reference if reference else None
    return {
        "name": name,
        "foodpipe": round(foodpipe, 3),
        "reference": round(reference, 3),
        "unit": unit,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "reference_is": reference_is,
        "goal": goal,
        "lower_is_better": lower_is_better,
        "broker_cpu_share": {k: round(v, 2) for k, v in broker.items()},
    }


def produce_rows(binary, broker, path, lines, codec, rounds, stamp):
    """Median events/s of each producer; CPU seconds and broker share of each."""
    rates = {"foodpipe": [], "librdkafka": []}
    cpu = {"foodpipe": 0.0, "librdkafka": 0.0}
    share = {"foodpipe": [], "librdkafka": []}
    topics = []
    for r in range(rounds):
        order = ["foodpipe", "librdkafka"] if r % 2 == 0 else ["librdkafka", "foodpipe"]
        for who in order:
            topic = f"bench-{stamp}-{codec}-{r}-{who}"
            if who == "foodpipe":
                before = children_cpu()
                res, s = broker.measure(lambda: bench_produce.run_foodpipe(
                    binary, broker.bootstrap, topic, path, codec))
                cpu[who] += children_cpu() - before
                topics.append(topic)
            else:
                before = self_cpu()
                res, s = broker.measure(lambda: bench_produce.run_librdkafka(
                    broker.bootstrap, topic, lines, codec))
                cpu[who] += self_cpu() - before
            if res["events"] != len(lines):
                raise SystemExit(f"{who} delivered {res['events']} of {len(lines)} ({codec})")
            rates[who].append(res["events"] / res["secs"])
            share[who].append(s)
            print(f"  {codec:<5} round {r + 1} {who:<10} {rates[who][-1]:>9,.0f} events/s, "
                  f"broker {s:.0%}", flush=True)
    return ({w: statistics.median(v) for w, v in rates.items()},
            {w: c / rounds for w, c in cpu.items()},
            {w: max(v) for w, v in share.items()},
            topics[0])


def drain(binary, broker, topic, events):
    """events/s and client CPU seconds of foodpipe tail and librdkafka reading topic."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
    before = children_cpu()
    started = time.perf_counter()
    (_, share_fp) = broker.measure(lambda: subprocess.run(
        [binary, "tail", "--topic", topic, "--from-beginning"], env=env, check=True,
        stdout=subprocess.DEVNULL))
    fp_secs = time.perf_counter() - started
    fp_cpu = children_cpu() - before

    python = sys.executable
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "librdkafka_drain.py")
    before = children_cpu()
    out, share_rd = broker.measure(lambda: subprocess.run(
        [python, script, broker.bootstrap, topic], check=True, capture_output=True,
        text=True).stdout)
    rd_cpu = children_cpu() - before
    result = json.loads(out)
    if result["records"] != events:
        raise SystemExit(f"librdkafka read {result['records']} of {events}")
    return ({"foodpipe": events / fp_secs, "librdkafka": events / result["seconds"]},
            {"foodpipe": fp_cpu, "librdkafka": rd_cpu},
            {"foodpipe": share_fp, "librdkafka": share_rd})


def sink_only(events):
    """`cargo bench --bench sink`: (foodpipe rows/s, psql \\copy rows/s)."""
    cargo = os.environ.get("CARGO", "cargo")
    out = subprocess.run([cargo, "bench", "--bench", "sink"], check=True, capture_output=True,
                         text=True, env={**os.environ, "BENCH_EVENTS": str(events)}).stdout
    copy = re.search(r"^\| psql \\copy [^|]*\| (\d+) \|", out, re.M)
    sink = re.search(r"^\| foodpipe Store::apply_batch [^|]*\| (\d+) \|", out, re.M)
    if not (copy and sink):
        raise SystemExit(f"cannot read the sink bench's table:\n{out}")
    return float(sink.group(1)), float(copy.group(1))


def latency(binary, broker, lines, rate, seconds, extra=()):
    """p50/p99 ms from send's record timestamp to the committing transaction."""
    topic = f"bench-latency-{int(time.time())}-{len(extra)}"
    name, url = bench_consume.fresh_db("latency")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "DATABASE_URL": url,
           "FOODPIPE_METRICS_ADDR": "off"}
    count = rate * seconds
    consumer = None
    try:
        # The topic first (one event), then a member that owns every partition.
        first = b"\t".join(lines[0]) + b"\n"
        subprocess.run([binary, "send", "--topic", topic, "--quiet"], input=first, env=env,
                       check=True)
        consumer = subprocess.Popen([binary, "consume", "--topic", topic, *extra], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(url, "SELECT count(*) FROM consumer_offsets WHERE owner IS NOT NULL", 3, 60)
        wait_for(url, "SELECT count(*) FROM order_events", 1, 60)
        sender = subprocess.Popen([binary, "send", "--topic", topic, "--quiet"], env=env,
                                  stdin=subprocess.PIPE)

        def paced():
            started = time.perf_counter()
            tick = 0.01
            per_tick = int(rate * tick)
            for i in range(1, count + 1, per_tick):
                chunk = lines[i:min(i + per_tick, count + 1)]
                sender.stdin.write(b"".join(k + b"\t" + v + b"\n" for k, v in chunk))
                sender.stdin.flush()
                due = started + (i // per_tick + 1) * tick
                time.sleep(max(0.0, due - time.perf_counter()))
            sender.stdin.close()
            if sender.wait() != 0:
                raise SystemExit("send failed")
            wait_for(url, "SELECT count(*) FROM order_events", count + 1, 120)

        _, share = broker.measure(paced)
        p50, p99 = (float(x) for x in bench_consume.psql(url, "-c", (
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
            "(ORDER BY extract(epoch FROM recorded_at - kafka_timestamp) * 1000) "
            # Not the first event, committed alone before the paced run.
            "FROM order_events WHERE recorded_at > (SELECT min(recorded_at) FROM order_events)"
        )).strip().strip("{}").split(","))
        return p50, p99, share
    finally:
        if consumer is not None:
            consumer.terminate()
            consumer.wait()
        bench_consume.psql(bench_consume.ADMIN_URL, "-c",
                           f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def wait_for(url, query, at_least, limit):
    deadline = time.time() + limit
    while time.time() < deadline:
        if bench_consume.tables_exist(url) and int(bench_consume.psql(url, "-c", query)) >= at_least:
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {query} >= {at_least}")


def markdown(rows, meta) -> str:
    out = [
        f"Measured {meta['date']} on {meta['machine']}: one `make bench` run "
        f"({meta['minutes']:.1f} min), a fresh private Tansu 0.6.0 (sqlite), "
        f"PostgreSQL on 127.0.0.1, librdkafka {meta['librdkafka']} (confluent-kafka), "
        f"{meta['events']:,} generated events.",
        "",
        "| name | foodpipe | reference | unit | ratio | goal | broker CPU (foodpipe / reference) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["broker_cpu_share"]
        broker = " / ".join(f"{v:.0%}" for v in b.values()) if b else "-"
        if any(v >= BROKER_BOUND for v in b.values()):
            broker += " (broker-bound)"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        out.append(f"| `{r['name']}` | {fmt(r['foodpipe'])} | {fmt(r['reference'])} "
                   f"({r['reference_is']}) | {r['unit']} | {ratio} | {r['goal']} | {broker} |")
    out += ["", "Broker CPU: Tansu's CPU time over the measured wall time (100 % = one core; "
            f"marked broker-bound from {BROKER_BOUND:.0%}). Where a row is broker-bound, Tansu's "
            "single-threaded sqlite storage limits both clients and the ratio says little "
            "about them."]
    out += [f"\n{n}" for n in meta["notes"]]
    return "\n".join(out) + "\n"


def fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--out", default="target/bench")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary)
    began = time.perf_counter()
    broker = Broker()
    # bench_consume's helpers run foodpipe with the inherited environment.
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    rows = []
    notes = []
    try:
        path, lines = bench_produce.generate_events(binary, args.events)
        stamp = int(time.time())
        print(f"== produce, no codec ({args.events:,} events, broker {broker.bootstrap})", flush=True)
        rates, produce_cpu, share, topic = produce_rows(binary, broker, path, lines, "none", 2, stamp)
        rows.append(row("produce_vs_librdkafka", rates["foodpipe"], rates["librdkafka"],
                        "events/s", "librdkafka", ">= 1.0", share))
        print("== produce, lz4", flush=True)
        rates, _, share, _ = produce_rows(binary, broker, path, lines, "lz4", 2, stamp)
        rows.append(row("produce_lz4_vs_librdkafka", rates["foodpipe"], rates["librdkafka"],
                        "events/s", "librdkafka", ">= 1.0", share))

        print(f"== drain {topic}", flush=True)
        rates, drain_cpu, share = drain(binary, broker, topic, args.events)
        rows.append(row("drain_vs_librdkafka", rates["foodpipe"], rates["librdkafka"],
                        "events/s", "librdkafka", ">= 1.0", share))

        print("== fold into PostgreSQL vs psql \\copy", flush=True)
        shares = []

        def during(fn):
            result, s = broker.measure(fn)
            shares.append(s)
            return result

        fold = bench_consume.fold_vs_copy(binary, topic, args.events, during)
        rows.append(row("fold_vs_copy", fold["foodpipe"], fold["copy"], "rows/s", "psql \\copy",
                        ">= 0.5", {"foodpipe": shares[0]}))

        print("== sink alone vs psql \\copy (cargo bench --bench sink)", flush=True)
        # No broker in this row: records come from memory.
        sink, copy = sink_only(args.events)
        rows.append(row("sink_vs_copy", sink, copy, "rows/s", "psql \\copy", ">= 0.9", {}))

        per_million = 1e6 / args.events
        fp = (produce_cpu["foodpipe"] + drain_cpu["foodpipe"]) * per_million
        rd = (produce_cpu["librdkafka"] + drain_cpu["librdkafka"]) * per_million
        rows.append(row("cpu_per_event_vs_librdkafka", fp, rd, "CPU s per 1M events",
                        "librdkafka", "<= 1.0", {}, lower_is_better=True))

        print("== latency at 2,000 events/s", flush=True)
        p50, p99, share = latency(binary, broker, lines, 2000, 10)
        print(f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        rows.append(row("latency_p99_ms", p99, 50.0, "ms", "goal", "< 50", {"foodpipe": share},
                        lower_is_better=True))
        # The same with a short fetch wait: Tansu answers a fetch with no
        # records only when the wait is over, so the default 500 ms wait
        # sets the latency of a consumer that keeps up.
        t50, t99, _ = latency(binary, broker, lines, 2000, 10, ["--fetch-max-wait", "20ms"])
        print(f"  --fetch-max-wait 20ms: p50 {t50:.1f} ms, p99 {t99:.1f} ms", flush=True)
        notes.append(f"`latency_p99_ms` is with default flags (p50 {p50:.0f} ms); with "
                     f"`consume --fetch-max-wait 20ms`: p50 {t50:.0f} ms, p99 {t99:.0f} ms. "
                     "Committed = the start of the transaction that stored the event "
                     "(`recorded_at`), from the record timestamp `send` set.")

        print("== peak RSS with a 100k and a 1M backlog", flush=True)
        peaks = bench_consume.memory(binary, [100_000, args.backlog], 3)
        rows.append(row("rss_1m_backlog_mib", peaks[args.backlog] / 1024, peaks[100_000] / 1024,
                        "MiB", "100k backlog", "< 100, ratio <= 1.2", {}, lower_is_better=True))

        print("== rebalance, 400 partitions, three members", flush=True)
        done, share = broker.measure(lambda: bench_consume.rebalance(binary, [400], 20_000))
        rows.append(row("rebalance_400_partitions_s", done[400], 5.0, "s", "goal", "< 5",
                        {"foodpipe": share}, lower_is_better=True))
    finally:
        broker.stop()

    import confluent_kafka
    meta = {
        "date": os.environ.get("BENCH_DATE", datetime.date.today().isoformat()),
        "machine": os.environ.get("BENCH_MACHINE", f"{os.cpu_count()} cores"),
        "minutes": (time.perf_counter() - began) / 60,
        "librdkafka": confluent_kafka.libversion()[0],
        "events": args.events,
        "notes": notes,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
    report = markdown(rows, meta)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report)
    print()
    print(report)
    print(f"wrote {args.out}/report.md and {args.out}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
