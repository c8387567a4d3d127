#!/usr/bin/env python3
"""Produces one record per hex-encoded key with librdkafka's murmur2 partitioner.

Usage: librdkafka_produce.py BOOTSTRAP TOPIC < keys.hex

Each stdin line is a key in hex (so keys may hold any bytes). librdkafka
(confluent-kafka) picks each record's partition with `partitioner=murmur2`,
which it documents as Java-compatible; the value is the key again. Prints
`HEXKEY<TAB>PARTITION` per delivered record and exits non-zero if any
delivery failed. foodpipe's tests read the topic back to compare.
"""

import sys

from confluent_kafka import KafkaException, Producer


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    bootstrap, topic = sys.argv[1], sys.argv[2]
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2",
            "linger.ms": 5,
            "acks": "all",
        }
    )
    failures = []

    def delivered(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            print(f"{msg.key().hex()}\t{msg.partition()}")

    for line in sys.stdin:
        key = bytes.fromhex(line.strip())
        while True:
            try:
                producer.produce(topic, value=key, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(30)
    if remaining or failures:
        print(f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as e:
        print(f"librdkafka: {e}", file=sys.stderr)
        sys.exit(1)
