#!/usr/bin/env python3
"""Reads a whole topic with librdkafka and prints how fast: the reference a
consumer's fetch path is measured against.

Usage: librdkafka_drain.py BOOTSTRAP TOPIC

Assigns every partition from its earliest offset (no consumer group, no
commits, isolation.level=read_committed like foodpipe), polls until every
partition reached the log end it had at start, and prints one JSON line:
{"records": N, "seconds": S, "partitions": P}.
"""

import json
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    bootstrap, topic = sys.argv[1], sys.argv[2]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "foodpipe-bench-drain",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 16 * 1024 * 1024,
            "max.partition.fetch.bytes": 1024 * 1024,
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    ends = {}
    for p in partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends[p] = high
    started = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    position = {p: 0 for p in partitions}
    records = 0
    while any(position[p] < ends[p] for p in partitions):
        for msg in consumer.consume(num_messages=10_000, timeout=1.0):
            if msg.error():
                continue
            records += 1
            position[msg.partition()] = max(position[msg.partition()], msg.offset() + 1)
    seconds = time.perf_counter() - started
    consumer.close()
    print(json.dumps({"records": records, "seconds": seconds, "partitions": len(partitions)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
