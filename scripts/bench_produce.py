#!/usr/bin/env python3
"""foodpipe's producer against librdkafka's, on the same broker, same events.

Usage: bench_produce.py FOODPIPE_BINARY [--events N] [--rounds R]

1. `foodpipe generate` writes N order events (`KEY<TAB>JSON`) to a file.
2. Each round, in alternating order, the same lines are produced to a fresh
   3-partition topic by
     - foodpipe: `foodpipe send --input FILE --json` (rate from its own
       summary: first record handed over to last acknowledgement), and
     - librdkafka (confluent-kafka): lines loaded into memory first, then
       timed from the first produce() to the end of flush().
   Both use linger 5 ms, batch size 1,000,000 bytes, acks=all, no
   compression, Java-compatible murmur2 partitioning.
3. Prints each round and the median rates with the ratio foodpipe/librdkafka.

The librdkafka side excludes reading the file, foodpipe's side includes it
(it streams the file while producing), which favours librdkafka slightly.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

LINGER_MS = 5
BATCH_BYTES = 1_000_000
PARTITIONS = 3


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(30)


def run_foodpipe(binary: str, bootstrap: str, topic: str, path: str) -> dict:
    out = subprocess.run(
        [binary, "send", "--topic", topic, "--partitions", str(PARTITIONS),
         "--input", path, "--linger-ms", str(LINGER_MS),
         "--batch-max-bytes", str(BATCH_BYTES), "--json"],
        check=True, capture_output=True, text=True,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
    )
    s = json.loads(out.stdout)
    return {"events": s["events"], "secs": s["elapsed_secs"], "bytes": s["bytes"]}


def run_librdkafka(bootstrap: str, topic: str, lines: list) -> dict:
    create_topic(bootstrap, topic)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2",
        "linger.ms": LINGER_MS,
        "batch.size": BATCH_BYTES,
        "acks": "all",
        "compression.type": "none",
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
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")

    os.makedirs(".stack/bench", exist_ok=True)
    path = ".stack/bench/events.tsv"
    with open(path, "wb") as f:
        subprocess.run([args.binary, "generate", "--count", str(args.events), "--seed", "7"],
                       stdout=f, check=True)
    lines = []
    with open(path, "rb") as f:
        for line in f:
            key, _, value = line.rstrip(b"\n").partition(b"\t")
            lines.append((key, value))
    size = os.path.getsize(path)
    print(f"{len(lines)} events, {size / 1e6:.1f} MB of key+value lines "
          f"(~{size // len(lines)} bytes each), {PARTITIONS} partitions, "
          f"broker {bootstrap}")

    rates = {"foodpipe": [], "librdkafka": []}
    stamp = int(time.time())
    for r in range(args.rounds):
        order = ["foodpipe", "librdkafka"] if r % 2 == 0 else ["librdkafka", "foodpipe"]
        for who in order:
            topic = f"bench-produce-{stamp}-{r}-{who}"
            if who == "foodpipe":
                res = run_foodpipe(args.binary, bootstrap, topic, path)
            else:
                res = run_librdkafka(bootstrap, topic, lines)
            if res["events"] != len(lines):
                print(f"{who} delivered {res['events']} of {len(lines)}", file=sys.stderr)
                return 1
            rate = res["events"] / res["secs"]
            rates[who].append(rate)
            print(f"round {r + 1} {who:<10} {rate:>10,.0f} events/s "
                  f"{res['bytes'] / 1e6 / res['secs']:>7.1f} MB/s")

    fp = statistics.median(rates["foodpipe"])
    rd = statistics.median(rates["librdkafka"])
    print()
    print("| producer | events/s (median) | ratio |")
    print("|---|---|---|")
    print(f"| foodpipe (rskafka) | {fp:,.0f} | {fp / rd:.2f}x |")
    print(f"| librdkafka {__import__('confluent_kafka').libversion()[0]} | {rd:,.0f} | 1.00x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
