#!/usr/bin/env python3
"""foodpipe's producer against librdkafka's, on the same broker, same events.

Usage: bench_produce.py FOODPIPE_BINARY [--events N] [--rounds R]
                        [--compression none,lz4,zstd] [--fresh-tansu]

1. `foodpipe generate` writes N order events (`KEY<TAB>JSON`) to a file.
2. Each round, in alternating order, the same lines are produced to a fresh
   3-partition topic by
     - foodpipe: `foodpipe send --input FILE --json` (rate from its own
       summary: first record handed over to last acknowledgement), and
     - librdkafka (confluent-kafka): lines loaded into memory first, then
       timed from the first produce() to the end of flush().
   Both use linger 5 ms, batch size 1,000,000 bytes, acks=all, the same
   compression (each codec of --compression in turn: foodpipe's pure-Rust
   codecs against librdkafka's C ones), Java-compatible murmur2
   partitioning.
3. Prints each round and, per codec, the median rates with the ratio
   foodpipe/librdkafka.

With --fresh-tansu the script starts its own Tansu (`tansu` on PATH) on a
free port with an empty sqlite store and stops it at the end: Tansu's
sqlite store slows as it grows, so a shared broker that has served a day of
tests measures its own age more than the producers.

The librdkafka side excludes reading the file, foodpipe's side includes it
(it streams the file while producing), which favours librdkafka slightly.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

LINGER_MS = 5
BATCH_BYTES = 1_000_000
PARTITIONS = 3
# Tansu's storage URL per engine. A relative sqlite path: Tansu 0.6.0
# doubles an absolute one.
STORAGE = {"sqlite": "sqlite://tansu.db", "memory": "memory://tansu/"}


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(30)


def start_tansu(workdir: str, port: int = 0, detached: bool = False, engine: str = "sqlite"):
    """A Tansu of our own on `port` (0: a free one) with its sqlite store in
    `workdir` (reused if there), or with engine="memory" its memory://
    store (Tansu's `dynostore` feature; the process's memory, gone when it
    stops); returns (process, bootstrap). A detached broker has its own
    session, so it outlives the script and its terminal."""
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(workdir, "tansu.log"), "ab")
    proc = subprocess.Popen(
        ["tansu", "broker", "--storage-engine", STORAGE[engine],
         "--listener-url", url, "--advertised-listener-url", url],
        cwd=workdir, stdout=log, stderr=log, start_new_session=detached)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(0.5)
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"tansu did not listen on {port} within 30 s")


def run_foodpipe(binary: str, bootstrap: str, topic: str, path: str, codec: str) -> dict:
    out = subprocess.run(
        [binary, "send", "--topic", topic, "--partitions", str(PARTITIONS),
         "--input", path, "--linger-ms", str(LINGER_MS),
         "--batch-max-bytes", str(BATCH_BYTES), "--compression", codec, "--json"],
        check=True, capture_output=True, text=True,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
    )
    s = json.loads(out.stdout)
    return {"events": s["events"], "secs": s["elapsed_secs"], "bytes": s["bytes"]}


def run_librdkafka(bootstrap: str, topic: str, lines: list, codec: str) -> dict:
    create_topic(bootstrap, topic)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2",
        "linger.ms": LINGER_MS,
        "batch.size": BATCH_BYTES,
        "acks": "all",
        "compression.type": codec,
    })
    delivered = [0, 0]

    def on_delivery(err, msg):
        if err is None:
            delivered[0] += 1
            delivered[1] += len(msg.key() or b"") + len(msg.value() or b"")

    started = time.perf_counter()
    for key, value in lines:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(120)
    secs = time.perf_counter() - started
    return {"events": delivered[0], "secs": secs, "bytes": delivered[1]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compression", default="none",
                        help="comma list of codecs: none, gzip, snappy, lz4, zstd")
    parser.add_argument("--fresh-tansu", action="store_true",
                        help="run against a Tansu of our own with an empty store")
    args = parser.parse_args()
    codecs = [c.strip() for c in args.compression.split(",") if c.strip()]
    binary = os.path.abspath(args.binary)

    broker = None
    workdir = None
    if args.fresh_tansu:
        workdir = tempfile.mkdtemp(prefix="bench-tansu-")
        broker, bootstrap = start_tansu(workdir)
    else:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    try:
        return bench(binary, bootstrap, args.events, args.rounds, codecs)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def generate_events(binary: str, events: int) -> tuple:
    """`foodpipe generate` of N events to .stack/bench/events.tsv; returns
    the path and the (key, value) pairs, loaded for librdkafka."""
    os.makedirs(".stack/bench", exist_ok=True)
    path = ".stack/bench/events.tsv"
    with open(path, "wb") as f:
        subprocess.run([binary, "generate", "--count", str(events), "--seed", "7"],
                       stdout=f, check=True)
    lines = []
    with open(path, "rb") as f:
        for line in f:
            key, _, value = line.rstrip(b"\n").partition(b"\t")
            lines.append((key, value))
    return path, lines


def bench(binary: str, bootstrap: str, events: int, rounds: int, codecs: list) -> int:
    path, lines = generate_events(binary, events)
    size = os.path.getsize(path)
    print(f"{len(lines)} events, {size / 1e6:.1f} MB of key+value lines "
          f"(~{size // len(lines)} bytes each), {PARTITIONS} partitions, "
          f"broker {bootstrap}")

    medians = {}
    stamp = int(time.time())
    for codec in codecs:
        rates = {"foodpipe": [], "librdkafka": []}
        for r in range(rounds):
            order = ["foodpipe", "librdkafka"] if r % 2 == 0 else ["librdkafka", "foodpipe"]
            for who in order:
                topic = f"bench-produce-{stamp}-{codec}-{r}-{who}"
                if who == "foodpipe":
                    res = run_foodpipe(binary, bootstrap, topic, path, codec)
                else:
                    res = run_librdkafka(bootstrap, topic, lines, codec)
                if res["events"] != len(lines):
                    print(f"{who} delivered {res['events']} of {len(lines)}", file=sys.stderr)
                    return 1
                rate = res["events"] / res["secs"]
                rates[who].append(rate)
                print(f"{codec:<6} round {r + 1} {who:<10} {rate:>10,.0f} events/s "
                      f"{res['bytes'] / 1e6 / res['secs']:>7.1f} MB/s")
        medians[codec] = (statistics.median(rates["foodpipe"]),
                          statistics.median(rates["librdkafka"]))

    version = __import__('confluent_kafka').libversion()[0]
    print()
    print(f"| codec | foodpipe (rskafka) events/s | librdkafka {version} events/s | ratio |")
    print("|---|---|---|---|")
    for codec, (fp, rd) in medians.items():
        print(f"| {codec} | {fp:,.0f} | {rd:,.0f} | {fp / rd:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
