#!/usr/bin/env python3
"""`make bench`: every headline figure in one run, foodpipe beside the real
reference tool, on fresh private Tansu brokers, the local PostgreSQL and
the same generated events.

Usage: bench.py FOODPIPE_BINARY [--events N] [--backlog N] [--growth N]
                [--engines sqlite,memory] [--out DIR]

Writes DIR/report.md (the table for docs/benchmarks.md) and DIR/report.json (a
list of {"name", "engine", "foodpipe", "reference", "unit", "ratio",
"goal", "met", "bound_by", ...} with the CPU shares of the broker, the
client and the machine, and the latency row's breakdown). The pieces are
those of `make bench-produce`, `bench-sink`, `bench-memory` and
`bench-partitions` (bench_produce.py, bench_consume.py,
librdkafka_drain.py, bench_capture.py, benches/sink.rs).

Every Kafka row runs twice, against a private Tansu on its sqlite store
(the row's plain name) and one on its memory:// store (`_memory`; Tansu
built with `dynostore`), each broker fresh:

  produce_vs_librdkafka      `foodpipe send` vs librdkafka (confluent-kafka),
                             the same N events, 2 rounds in alternating order,
                             medians; no codec
  produce_lz4_vs_librdkafka  the same with lz4 on both sides
  drain_vs_librdkafka        `foodpipe tail --from-beginning` (fetch, decode,
                             print to /dev/null; one partition fetch at a
                             time) vs librdkafka_drain.py, the topic foodpipe
                             produced above; no database
  drain_all_partitions_vs_librdkafka  `cargo bench --bench drain`: consume's
                             fetch call (TopicFetcher::fetch_many, every
                             partition in one request) and decode, no database,
                             vs the same librdkafka run
  fold_vs_copy               `consume --until-caught-up` of that topic into a
                             fresh database vs `psql \\copy` of its history rows
  cpu_per_event_vs_librdkafka  client CPU seconds per million events, produce
                             (no codec) plus drain: foodpipe / librdkafka
  latency_p99_ms             2,000 events/s paced into `foodpipe send`, one
                             `consume`: p99 of (transaction that committed the
                             event) - (record timestamp set by send), with
                             where the time goes (see latency_breakdown)

Without a broker:

  sink_vs_copy               `cargo bench --bench sink` (generated records in
                             memory -> Store::apply_batch) vs `psql \\copy`
  fold_broker_free_vs_copy   the memory broker's Fetch answers for the
                             produce topic, captured byte for byte
                             (bench_capture.py), replayed through rskafka's
                             batch decoding, read_committed, consume's decode
                             and Store::apply_batch (`cargo bench --bench sink`
                             with BENCH_CAPTURE) vs `psql \\copy`

Once (sqlite, as before): rss_1m_backlog_mib, rebalance_400_partitions_s.
With --growth N (memory engine, a broker of its own):
backlog_last_vs_first_million (events/s over the last million of an
N-event backlog folded by one member, against the first) and
backlog_peak_rss_mib.

CPU shares are measured around each timed run: the broker's (Tansu's
utime+stime over the wall time, 100 % = one core), the client's (the
timed child processes, or this process for librdkafka's producer) and the
machine's (/proc/stat, 100 % = every core busy). A row is marked
broker-bound when the broker used >= 85 % of a core on either side (Tansu's
sqlite storage is single-threaded), machine-bound when >= 90 % of all
cores were busy.
"""

import argparse
import bisect
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

import bench_capture  # noqa: E402
import bench_consume  # noqa: E402
import bench_produce  # noqa: E402

BROKER_BOUND = 0.85
MACHINE_BOUND = 0.90
LATENCY_RATE = 2000
LATENCY_SECONDS = 10
# consume's debug lines the latency breakdown reads ("fetch round", "batch
# committed"); everything else as by default.
DEBUG_LOG = "error,rskafka=off,foodpipe=info,pipeline=debug,producers=info,ops=info,kafka=info,store=info"


def machine_cpu() -> tuple:
    """(busy, total) clock ticks of all cores since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Broker:
    """A fresh private Tansu whose CPU time can be read at any moment."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.dir = tempfile.mkdtemp(prefix=f"bench-tansu-{engine}-")
        self.proc, self.bootstrap = bench_produce.start_tansu(self.dir, engine=engine)

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        return bench_consume.vm_hwm_kib(self.proc.pid) / 1024

    def measure(self, fn):
        """Runs fn(); returns (its result, CPU shares meanwhile: broker and
        client in cores, machine as the fraction of all cores busy)."""
        broker, client = self.cpu(), children_cpu() + self_cpu()
        busy, total = machine_cpu()
        started = time.perf_counter()
        result = fn()
        wall = max(time.perf_counter() - started, 1e-9)
        busy2, total2 = machine_cpu()
        return result, {
            "broker": (self.cpu() - broker) / wall,
            "client": (children_cpu() + self_cpu() - client) / wall,
            "machine": (busy2 - busy) / max(total2 - total, 1),
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def bound_by(cpu: dict) -> str:
    """What limited a run, from its CPU shares."""
    if cpu.get("broker", 0) >= BROKER_BOUND:
        return "broker"
    if cpu.get("machine", 0) >= MACHINE_BOUND:
        return "machine"
    return "-"


def goal_met(value, goal: str):
    """`goal` like '>= 1.3' or '< 20' against `value`; None if not a plain goal."""
    m = re.fullmatch(r"\s*(>=|<=|<|>)\s*([\d.]+)\s*", goal or "")
    if not m or value is None:
        return None
    op, limit = m.group(1), float(m.group(2))
    return {">=": value >= limit, "<=": value <= limit, "<": value < limit,
            ">": value > limit}[op]


def row(name, engine, foodpipe, reference, unit, reference_is, goal, cpu=None,
        lower_is_better=False, goal_on="ratio", **extra):
    """cpu: {"foodpipe": shares, "reference": shares} (either may be missing)."""
    cpu = cpu or {}
    ratio = foodpipe / reference if reference else None
    measured = ratio if goal_on == "ratio" else foodpipe
    sides = {side: bound_by(shares) for side, shares in cpu.items()}
    bound = "broker" if "broker" in sides.values() else (
        "machine" if "machine" in sides.values() else "-")
    return {
        "name": name,
        "engine": engine,
        "foodpipe": round(foodpipe, 3),
        "reference": round(reference, 3),
        "unit": unit,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "reference_is": reference_is,
        "goal": goal,
        "goal_on": goal_on,
        "met": goal_met(measured, goal),
        "lower_is_better": lower_is_better,
        "broker_cpu_share": {k: round(v["broker"], 2) for k, v in cpu.items() if "broker" in v},
        "cpu": {k: {m: round(x, 2) for m, x in v.items()} for k, v in cpu.items()},
        "bound_by": bound,
        **extra,
    }


def produce_rows(binary, broker, path, lines, codec, rounds, stamp):
    """Median events/s of each producer; client CPU seconds, the highest
    CPU shares and the first foodpipe topic."""
    rates = {"foodpipe": [], "librdkafka": []}
    cpu = {"foodpipe": 0.0, "librdkafka": 0.0}
    shares = {"foodpipe": [], "librdkafka": []}
    topics = []
    for r in range(rounds):
        order = ["foodpipe", "librdkafka"] if r % 2 == 0 else ["librdkafka", "foodpipe"]
        for who in order:
            topic = f"bench-{stamp}-{codec}-{r}-{who}"
            before = children_cpu() + self_cpu()
            if who == "foodpipe":
                res, s = broker.measure(lambda: bench_produce.run_foodpipe(
                    binary, broker.bootstrap, topic, path, codec))
                topics.append(topic)
            else:
                res, s = broker.measure(lambda: bench_produce.run_librdkafka(
                    broker.bootstrap, topic, lines, codec))
            cpu[who] += children_cpu() + self_cpu() - before
            if res["events"] != len(lines):
                raise SystemExit(f"{who} delivered {res['events']} of {len(lines)} ({codec})")
            rates[who].append(res["events"] / res["secs"])
            shares[who].append(s)
            print(f"  {broker.engine:<6} {codec:<5} round {r + 1} {who:<10} "
                  f"{rates[who][-1]:>9,.0f} events/s, broker {s['broker']:.0%}, "
                  f"client {s['client']:.0%}, machine {s['machine']:.0%}", flush=True)
    return ({w: statistics.median(v) for w, v in rates.items()},
            {w: c / rounds for w, c in cpu.items()},
            {w: max_shares(v) for w, v in shares.items()},
            topics[0])


def max_shares(samples: list) -> dict:
    return {k: max(s[k] for s in samples) for k in samples[0]}


def drain(binary, broker, topic, events):
    """events/s, client CPU seconds and CPU shares of foodpipe tail and
    librdkafka reading topic."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
    before = children_cpu()
    started = time.perf_counter()
    printed = os.path.join(tempfile.gettempdir(), f"bench-tail-{os.getpid()}.txt")
    with open(printed, "wb") as out:
        (_, share_fp) = broker.measure(lambda: subprocess.run(
            [binary, "tail", "--topic", topic, "--from-beginning"], env=env, check=True,
            stdout=out))
    fp_secs = time.perf_counter() - started
    fp_cpu = children_cpu() - before
    # The records tail printed: it stops at the log end ListOffsets gives,
    # which memory:// answers short (the last batch's base offset + 1).
    with open(printed, "rb") as f:
        tailed = sum(1 for _ in f)
    os.remove(printed)

    # consume's own fetch path, all partitions in one request, no database.
    out, share_all = broker.measure(lambda: subprocess.run(
        [os.environ.get("CARGO", "cargo"), "bench", "--bench", "drain"], check=True,
        capture_output=True, text=True,
        env={**os.environ, "BENCH_BOOTSTRAP": broker.bootstrap, "BENCH_TOPIC": topic}).stdout)
    fetched = json.loads(out.strip().splitlines()[-1])
    if fetched["records"] != events:
        raise SystemExit(f"the drain bench read {fetched['records']} of {events}")

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "librdkafka_drain.py")
    before = children_cpu()
    out, share_rd = broker.measure(lambda: subprocess.run(
        [sys.executable, script, broker.bootstrap, topic], check=True, capture_output=True,
        text=True).stdout)
    rd_cpu = children_cpu() - before
    result = json.loads(out)
    if result["records"] != events:
        raise SystemExit(f"librdkafka read {result['records']} of {events}")
    # The drain bench's CPU share is its own, not cargo's.
    share_all["client"] = fetched["cpu_seconds"] / fetched["seconds"]
    return ({"foodpipe": tailed / fp_secs, "librdkafka": events / result["seconds"],
             "tailed": tailed,
             "all": events / fetched["seconds"]},
            {"foodpipe": fp_cpu, "librdkafka": rd_cpu, "all": fetched["cpu_seconds"]},
            {"foodpipe": share_fp, "librdkafka": share_rd, "all": share_all})


def cargo_bench_sink(env_extra: dict) -> str:
    cargo = os.environ.get("CARGO", "cargo")
    return subprocess.run([cargo, "bench", "--bench", "sink"], check=True, capture_output=True,
                          text=True, env={**os.environ, **env_extra}).stdout


def table_rate(out: str, label: str) -> float:
    m = re.search(r"^\| " + re.escape(label) + r"[^|]*\| (\d+) \|", out, re.M)
    if not m:
        raise SystemExit(f"no '{label}' row in the sink bench's table:\n{out}")
    return float(m.group(1))


def sink_only(events):
    """`cargo bench --bench sink`: (foodpipe rows/s, psql \\copy rows/s)."""
    out = cargo_bench_sink({"BENCH_EVENTS": str(events)})
    return table_rate(out, "foodpipe Store::apply_batch"), table_rate(out, "psql \\copy")


def broker_free(capture: str) -> dict:
    """`cargo bench --bench sink` replaying a capture: rows/s of the fold,
    of psql \\copy and of the decode alone, and the bench's first line."""
    out = cargo_bench_sink({"BENCH_CAPTURE": capture})
    return {"fold": table_rate(out, "foodpipe broker-free fold"),
            "copy": table_rate(out, "psql \\copy"),
            "decode": table_rate(out, "decode alone"),
            "what": out.strip().splitlines()[0]}


# --- latency ----------------------------------------------------------------

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+DEBUG\s+(.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")


def log_time(stamp: str) -> float:
    whole, _, frac = stamp.partition(".")
    t = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S")
    t = t.replace(tzinfo=datetime.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def parse_consume_log(path: str):
    """The 'fetch round' and 'batch committed' debug lines of consume:
    rounds as (start, end) seconds and the wait asked (ms), batches as dicts."""
    rounds, batches = [], []
    with open(path, errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line.strip())
            if not m:
                continue
            t, rest = log_time(m.group(1)), m.group(2)
            fields = dict(FIELD.findall(rest))
            if "fetch round" in rest and fields.get("progress") == "true":
                rounds.append((t - int(fields["elapsed_ms"]) / 1000, t, int(fields["wait_ms"])))
            elif "batch committed" in rest:
                batches.append({"partition": int(fields["partition"]),
                                "first": int(fields["first_offset"]),
                                "last": int(fields["last_offset"]),
                                "rows": int(fields["rows"]),
                                "end": t,
                                "start": t - int(fields["duration_ms"]) / 1000})
    return rounds, batches


def pct(values: list, q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def breakdown(url: str, log: str, send: dict, decode_us_per_event: float | None) -> dict:
    """Where an event's time goes, from the record timestamp `send` set to
    the start of the transaction that stored it, per event:

      to_fetch   record timestamp -> start of the fetch round that brought
                 it: send's linger and produce round trip, then waiting for
                 the next round to be sent
      fetch      that round: the broker's fetch wait, the transfer and the
                 decode of every partition in it
      queue      round done -> transaction start (recorded_at): waiting for
                 the partition's worker (the previous batch's commit) and
                 BEGIN
    and, beside the latency, commit (transaction start -> committed, per
    event's batch), send's own send->ack percentiles and an estimate of
    the decode (the broker-free bench's decode cost per event times the
    batch's rows). Log times have 1 ms resolution (elapsed_ms, duration_ms),
    record timestamps too."""
    rounds, batches = parse_consume_log(log)
    rows = bench_consume.psql(url, "-c", (
        "SELECT kafka_partition, kafka_offset, extract(epoch FROM kafka_timestamp), "
        "extract(epoch FROM recorded_at) FROM order_events "
        "WHERE recorded_at > (SELECT min(recorded_at) FROM order_events)")).split()
    per_partition = {}
    for b in batches:
        per_partition.setdefault(b["partition"], []).append(b)
    for bs in per_partition.values():
        bs.sort(key=lambda b: b["first"])
    starts = sorted(rounds)
    round_starts = [r[0] for r in starts]
    comp = {"to_fetch": [], "fetch": [], "queue": [], "total": [], "commit": [], "decode": [],
            "asked_wait": []}
    unmatched = 0
    for line in rows:
        p, off, ts, rec = line.split("|")
        p, off, ts, rec = int(p), int(off), float(ts), float(rec)
        bs = per_partition.get(p, [])
        i = bisect.bisect_right([b["first"] for b in bs], off) - 1
        if i < 0 or bs[i]["last"] < off:
            unmatched += 1
            continue
        b = bs[i]
        # The round that brought the batch: started when the batch's
        # fetch did (duration_ms counts from the round's start), ended
        # before its transaction began.
        j = bisect.bisect_left(round_starts, b["start"])
        candidates = [starts[k] for k in (j - 2, j - 1, j, j + 1) if 0 <= k < len(starts)
                      and starts[k][1] <= rec + 0.002]
        if not candidates:
            unmatched += 1
            continue
        start, end, wait = min(candidates, key=lambda r: abs(r[0] - b["start"]))
        comp["asked_wait"].append(wait)
        comp["to_fetch"].append((start - ts) * 1000)
        comp["fetch"].append((end - start) * 1000)
        comp["queue"].append((rec - end) * 1000)
        comp["total"].append((rec - ts) * 1000)
        comp["commit"].append((b["end"] - rec) * 1000)
        if decode_us_per_event:
            comp["decode"].append(b["rows"] * decode_us_per_event / 1000)
    out = {k: {"p50": round(pct(v, 0.5), 2), "p99": round(pct(v, 0.99), 2)}
           for k, v in comp.items() if v}
    # The slowest 1 %: what their time was spent on, on average.
    p99 = pct(comp["total"], 0.99)
    tail = [i for i, t in enumerate(comp["total"]) if t >= p99]
    out["tail_mean_ms"] = {k: round(statistics.mean(comp[k][i] for i in tail), 2)
                           for k in ("to_fetch", "fetch", "queue", "total") if tail}
    out["send_ack"] = {"p50": send.get("latency_p50_ms"), "p99": send.get("latency_p99_ms")}
    out["events"] = len(comp["total"])
    out["unmatched"] = unmatched
    out["batches"] = len(batches)
    out["rows_per_batch"] = {"p50": pct([b["rows"] for b in batches], 0.5),
                             "p99": pct([b["rows"] for b in batches], 0.99)}
    out["rounds"] = len(rounds)
    return out


def latency(binary, broker, lines, rate, seconds, extra=(), decode_us=None, workdir=None):
    """p50/p99 ms from send's record timestamp to the committing
    transaction, the CPU shares meanwhile and the breakdown."""
    topic = f"bench-latency-{int(time.time())}-{len(extra)}"
    name, url = bench_consume.fresh_db("latency")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "DATABASE_URL": url,
           "FOODPIPE_METRICS_ADDR": "off"}
    count = rate * seconds
    consumer = None
    log = os.path.join(workdir or tempfile.gettempdir(),
                       f"latency-{broker.engine}-{len(extra)}.log")
    try:
        # The topic first (one event), then a member that owns every partition.
        first = b"\t".join(lines[0]) + b"\n"
        subprocess.run([binary, "send", "--topic", topic, "--quiet"], input=first, env=env,
                       check=True)
        with open(log, "wb") as err:
            consumer = subprocess.Popen([binary, "consume", "--topic", topic, *extra],
                                        env={**env, "RUST_LOG": DEBUG_LOG},
                                        stdout=subprocess.DEVNULL, stderr=err)
        wait_for(url, "SELECT count(*) FROM consumer_offsets WHERE owner IS NOT NULL", 3, 60)
        wait_for(url, "SELECT count(*) FROM order_events", 1, 60)
        sender = subprocess.Popen([binary, "send", "--topic", topic, "--quiet", "--json"],
                                  env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

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
            summary = sender.stdout.read()
            if sender.wait() != 0:
                raise SystemExit("send failed")
            wait_for(url, "SELECT count(*) FROM order_events", count + 1, 120)
            return json.loads(summary)

        send, share = broker.measure(paced)
        p50, p99 = (float(x) for x in bench_consume.psql(url, "-c", (
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
            "(ORDER BY extract(epoch FROM recorded_at - kafka_timestamp) * 1000) "
            # Not the first event, committed alone before the paced run.
            "FROM order_events WHERE recorded_at > (SELECT min(recorded_at) FROM order_events)"
        )).strip().strip("{}").split(","))
        consumer.terminate()
        consumer.wait()
        consumer = None
        parts = breakdown(url, log, send, decode_us)
        return p50, p99, share, parts
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


def breakdown_text(name: str, b: dict) -> str:
    def pp(k):
        v = b.get(k)
        return f"{v['p50']:.1f} / {v['p99']:.1f}" if v else "-"
    tail = b.get("tail_mean_ms", {})
    send = b["send_ack"]
    return (f"`{name}` breakdown (p50 / p99 ms over {b['events']:,} events, "
            f"{b['batches']:,} batches of {b['rows_per_batch']['p50']:.0f} rows (p99 "
            f"{b['rows_per_batch']['p99']:.0f}), {b['rounds']:,} fetch rounds with records): "
            f"record timestamp -> fetch round sent {pp('to_fetch')} (of which send->ack "
            f"{send['p50']:.1f} / {send['p99']:.1f}, linger included); fetch round (broker wait, "
            f"transfer, decode) {pp('fetch')}; round done -> transaction start (waiting for "
            f"the worker) {pp('queue')}; sum {pp('total')}. The slowest 1 % spent on average "
            f"{tail.get('to_fetch', 0):.1f} ms before the round, {tail.get('fetch', 0):.1f} ms "
            f"in it and {tail.get('queue', 0):.1f} ms waiting for the worker. The rounds asked the "
            f"broker to wait up to {pp('asked_wait')} ms. Not in the latency: "
            f"the commit itself {pp('commit')}; the decode of a batch (estimated from the "
            f"broker-free decode rate) {pp('decode')}.")


# --- report -----------------------------------------------------------------

def markdown(rows, meta) -> str:
    out = [
        f"Measured {meta['date']} on {meta['machine']}: one `make bench` run "
        f"({meta['minutes']:.1f} min), fresh private Tansu 0.6.0 brokers "
        f"({', '.join(meta['engines'])}), PostgreSQL on 127.0.0.1, librdkafka "
        f"{meta['librdkafka']} (confluent-kafka), {meta['events']:,} generated events.",
        "",
        "| name | foodpipe | reference | unit | ratio | goal | met | broker CPU (foodpipe / "
        "reference) | foodpipe side: client CPU, machine busy | bound by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["broker_cpu_share"]
        broker = " / ".join(f"{v:.0%}" for v in b.values()) if b else "-"
        fp = r["cpu"].get("foodpipe", {})
        side = (f"{fp['client']:.0%}, {fp['machine']:.0%}" if "client" in fp else "-")
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        goal = r["goal"] + ("" if r["goal_on"] == "ratio" else f" {r['unit']}")
        met = {True: "yes", False: "no", None: "-"}[r["met"]]
        out.append(f"| `{r['name']}` | {fmt(r['foodpipe'])} | {fmt(r['reference'])} "
                   f"({r['reference_is']}) | {r['unit']} | {ratio} | {goal} | {met} | {broker} "
                   f"| {side} | {r['bound_by']} |")
    out += ["", f"CPU: the broker's is Tansu's CPU time over the measured wall time (100 % = "
            f"one core; broker-bound from {BROKER_BOUND:.0%}, on either side); the client's is "
            f"foodpipe's processes (100 % = one core); machine busy is all {os.cpu_count()} "
            f"cores (machine-bound from {MACHINE_BOUND:.0%}). Rows without `_memory` ran "
            "against Tansu's sqlite store, `_memory` ones against its memory:// store."]
    out += [f"\n{n}" for n in meta["notes"]]
    return "\n".join(out) + "\n"


def fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def quiesce_postgres(limit: float = 120.0) -> None:
    """A checkpoint, then until no autovacuum worker runs (at most
    `limit` seconds): the writes of earlier rows finished before a row
    that measures latency. CHECKPOINT needs a superuser or
    pg_checkpoint; without, only the autovacuum wait."""
    try:
        bench_consume.psql(bench_consume.ADMIN_URL, "-c", "CHECKPOINT")
    except subprocess.CalledProcessError:
        print("  (no CHECKPOINT: the bench's role may not; waiting for autovacuum only)",
              flush=True)
    deadline = time.time() + limit
    while time.time() < deadline:
        busy = bench_consume.psql(bench_consume.ADMIN_URL, "-c", (
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"))
        if int(busy.strip() or 0) == 0:
            return
        time.sleep(1)


def kafka_rows(binary, engine, args, path, lines, notes, workdir, state):
    """Every Kafka row against a fresh Tansu on `engine`; appends to rows."""
    suffix = "" if engine == "sqlite" else f"_{engine}"
    broker = Broker(engine)
    rows = []
    # bench_consume's helpers run foodpipe with the inherited environment.
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    try:
        stamp = int(time.time())
        print(f"== [{engine}] produce, no codec ({args.events:,} events, broker "
              f"{broker.bootstrap})", flush=True)
        rates, produce_cpu, share, topic = produce_rows(binary, broker, path, lines, "none", 2,
                                                        stamp)
        rows.append(row(f"produce_vs_librdkafka{suffix}", engine, rates["foodpipe"],
                        rates["librdkafka"], "events/s", "librdkafka", ">= 1.0",
                        {"foodpipe": share["foodpipe"], "reference": share["librdkafka"]}))
        print(f"== [{engine}] produce, lz4", flush=True)
        rates, _, share, _ = produce_rows(binary, broker, path, lines, "lz4", 2, stamp)
        rows.append(row(f"produce_lz4_vs_librdkafka{suffix}", engine, rates["foodpipe"],
                        rates["librdkafka"], "events/s", "librdkafka", ">= 1.0",
                        {"foodpipe": share["foodpipe"], "reference": share["librdkafka"]}))

        if engine == "memory" and args.capture:
            print(f"== [{engine}] capture the fetch answers of {topic}", flush=True)
            capture = os.path.join(workdir, "capture.bin")
            got = bench_capture.capture(broker.bootstrap, topic, capture, 3,
                                          bench_capture.DEFAULT_MAX_BYTES)
            print(f"  {got['answers']} answers, {got['bytes']:,} bytes", flush=True)
            rows += broker_free_rows(capture, args.events, notes, state)

        print(f"== [{engine}] drain {topic}", flush=True)
        rates, drain_cpu, share = drain(binary, broker, topic, args.events)
        rows.append(row(f"drain_vs_librdkafka{suffix}", engine, rates["foodpipe"],
                        rates["librdkafka"], "events/s", "librdkafka",
                        ">= 1.0",
                        {"foodpipe": share["foodpipe"], "reference": share["librdkafka"]},
                        tail_records=rates["tailed"]))
        if rates["tailed"] != args.events:
            notes.append(f"`drain_vs_librdkafka{suffix}`: `tail` printed {rates['tailed']:,} of "
                         f"{args.events:,} records (it stops at the log end ListOffsets "
                         "answers); its rate is of those.")
        rows.append(row(f"drain_all_partitions_vs_librdkafka{suffix}", engine, rates["all"],
                        rates["librdkafka"], "events/s", "librdkafka",
                        ">= 1.2" if engine == "memory" else ">= 1.0",
                        {"foodpipe": share["all"], "reference": share["librdkafka"]}))

        print(f"== [{engine}] fold into PostgreSQL vs psql \\copy", flush=True)
        shares = []

        def during(fn):
            result, s = broker.measure(fn)
            shares.append(s)
            return result

        # Both engines alike: consume until its stored offsets reach N
        # (memory:// answers ListOffsets short, so --until-caught-up stops
        # early there; see bench_consume.consume_to).
        fold = bench_consume.fold_vs_copy(binary, topic, args.events, during, poll=True)
        rows.append(row(f"fold_vs_copy{suffix}", engine, fold["foodpipe"], fold["copy"],
                        "rows/s", "psql \\copy", ">= 1.0" if engine == "memory" else ">= 0.5",
                        {"foodpipe": shares[0]}))

        per_million = 1e6 / args.events
        fp = (produce_cpu["foodpipe"] + drain_cpu["foodpipe"]) * per_million
        rd = (produce_cpu["librdkafka"] + drain_cpu["librdkafka"]) * per_million
        rows.append(row(f"cpu_per_event_vs_librdkafka{suffix}", engine, fp, rd,
                        "CPU s per 1M events", "librdkafka", "<= 0.6", {},
                        lower_is_better=True))

        print(f"== [{engine}] latency at {LATENCY_RATE:,} events/s", flush=True)
        # Not the consumer's latency on the heels of the rows above: a
        # broker of its own (the one above holds their topics) and
        # PostgreSQL done with their writes (checkpoint, autovacuum).
        broker.stop()
        broker = Broker(engine)
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        quiesce_postgres()
        p50, p99, share, parts = latency(binary, broker, lines, LATENCY_RATE, LATENCY_SECONDS,
                                         decode_us=state.get("decode_us"), workdir=workdir)
        print(f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        name = f"latency_p99_ms{suffix}"
        rows.append(row(name, engine, p99, 20.0, "ms", "goal", "< 20", {"foodpipe": share},
                        lower_is_better=True, goal_on="value", p50=round(p50, 2),
                        breakdown=parts))
        notes.append(breakdown_text(name, parts))
        # The same with a short fetch wait.
        t50, t99, _, _ = latency(binary, broker, lines, LATENCY_RATE, LATENCY_SECONDS,
                                 ["--fetch-max-wait", "20ms"], workdir=workdir)
        print(f"  --fetch-max-wait 20ms: p50 {t50:.1f} ms, p99 {t99:.1f} ms", flush=True)
        notes.append(f"`{name}` is with default flags (p50 {p50:.0f} ms); with "
                     f"`consume --fetch-max-wait 20ms`: p50 {t50:.0f} ms, p99 {t99:.0f} ms. "
                     "Committed = the start of the transaction that stored the event "
                     "(`recorded_at`), from the record timestamp `send` set.")

        if engine == "sqlite" and args.backlog:
            print("== [sqlite] peak RSS with a 100k and a 1M backlog", flush=True)
            peaks = bench_consume.memory(binary, [100_000, args.backlog], 3)
            rows.append(row("rss_1m_backlog_mib", engine, peaks[args.backlog] / 1024,
                            peaks[100_000] / 1024, "MiB", "100k backlog", "< 100",
                            lower_is_better=True, goal_on="value"))

            print("== [sqlite] rebalance, 400 partitions, three members", flush=True)
            done, share = broker.measure(lambda: bench_consume.rebalance(binary, [400], 20_000))
            rows.append(row("rebalance_400_partitions_s", engine, done[400], 5.0, "s", "goal",
                            "< 5", {"foodpipe": share}, lower_is_better=True, goal_on="value"))
        print(f"  Tansu ({engine}) peak RSS {broker.peak_rss_mib():,.0f} MiB", flush=True)
    finally:
        broker.stop()
    return rows


def broker_free_rows(capture, events, notes, state):
    """fold_broker_free_vs_copy from the capture, then sink_vs_copy."""
    print("== broker-free fold: the captured answers -> decode -> apply_batch", flush=True)
    bf = broker_free(capture)
    state["decode_us"] = 1e6 / bf["decode"]
    print(f"  fold {bf['fold']:,.0f} rows/s, psql \\copy {bf['copy']:,.0f} rows/s, decode alone "
          f"{bf['decode']:,.0f} events/s", flush=True)
    notes.append(f"`fold_broker_free_vs_copy`: {bf['what']}; the decode alone "
                 f"(one thread) runs at {bf['decode']:,.0f} events/s.")
    print("== sink alone vs psql \\copy (cargo bench --bench sink)", flush=True)
    sink, copy = sink_only(events)
    return [row("fold_broker_free_vs_copy", None, bf["fold"], bf["copy"], "rows/s",
                "psql \\copy", ">= 1.3", decode_events_per_s=round(bf["decode"])),
            row("sink_vs_copy", None, sink, copy, "rows/s", "psql \\copy", ">= 0.9")]


def growth_rows(binary, events):
    broker = Broker("memory")
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    try:
        topic = f"bench-growth-{events}-{int(time.time())}"
        print(f"== [memory] growth: produce a {events:,}-event backlog", flush=True)
        started = time.perf_counter()
        bench_consume.produce(binary, topic, events, 3)
        produced = time.perf_counter() - started
        print(f"  produced in {produced:.0f} s; folding", flush=True)
        g, share = broker.measure(lambda: bench_consume.growth(binary, events, topic))
        g["produce_secs"] = produced
        print(f"  folded in {g['fold_secs']:.0f} s: first {g['segment']:,} {g['first']:,.0f} "
              f"events/s, last {g['last']:,.0f} events/s, peak RSS {g['peak_kib'] / 1024:.1f} MiB, "
              f"broker {share['broker']:.0%}, Tansu peak RSS {broker.peak_rss_mib():,.0f} MiB",
              flush=True)
    finally:
        broker.stop()
    seg = f"{g['segment'] // 1000:,}k" if g["segment"] < 1_000_000 else "million"
    return [
        row("backlog_last_vs_first_million", "memory", g["last"], g["first"], "events/s",
            f"first {seg} of {events:,}", ">= 0.9", {"foodpipe": share},
            produce_secs=round(produced, 1), fold_secs=round(g["fold_secs"], 1),
            backlog=events),
        row("backlog_peak_rss_mib", "memory", g["peak_kib"] / 1024, 100.0, "MiB", "goal",
            "< 100", lower_is_better=True, goal_on="value", backlog=events),
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--backlog", type=int, default=1_000_000,
                        help="the rss_1m_backlog_mib row's backlog (0: skip it and rebalance)")
    parser.add_argument("--growth", type=int, default=0,
                        help="events of the growth row's backlog (0: skip)")
    parser.add_argument("--engines", default="sqlite,memory")
    parser.add_argument("--no-capture", dest="capture", action="store_false",
                        help="skip the broker-free fold (and the sink row)")
    parser.add_argument("--out", default="target/bench")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    binary = os.path.abspath(args.binary)
    began = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="bench-work-")
    rows, notes, state = [], [], {}
    timings = {}
    try:
        path, lines = bench_produce.generate_events(binary, args.events)
        # Memory first: its capture feeds the broker-free row, whose decode
        # rate the latency breakdowns use.
        for engine in sorted(engines, key=lambda e: e != "memory"):
            t = time.perf_counter()
            rows += kafka_rows(binary, engine, args, path, lines, notes, workdir, state)
            timings[engine] = time.perf_counter() - t
        if args.growth:
            t = time.perf_counter()
            rows += growth_rows(binary, args.growth)
            timings["growth"] = time.perf_counter() - t
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    import confluent_kafka
    notes.append("Minutes per part: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in
                                                  timings.items()) + ".")
    meta = {
        "date": os.environ.get("BENCH_DATE", datetime.date.today().isoformat()),
        "machine": os.environ.get("BENCH_MACHINE", f"{os.cpu_count()} cores"),
        "minutes": (time.perf_counter() - began) / 60,
        "librdkafka": confluent_kafka.libversion()[0],
        "events": args.events,
        "engines": engines,
        "notes": notes,
    }
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
