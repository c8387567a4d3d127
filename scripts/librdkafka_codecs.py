#!/usr/bin/env python3
"""librdkafka (confluent-kafka) as the other side of foodpipe's codec tests.

Usage:
  librdkafka_codecs.py produce BOOTSTRAP TOPIC CODEC < lines
  librdkafka_codecs.py consume BOOTSTRAP TOPIC COUNT

produce: each stdin line is `KEY<TAB>VALUE` (as `foodpipe generate` prints);
librdkafka produces it with `compression.type=CODEC`, idempotence on,
`partitioner=murmur2` (the Java default) and three headers per record
(`source`, `codec`, `line`), so the batches it writes are idempotent,
compressed and carry headers. Exits non-zero if any delivery failed.

consume: reads every partition of TOPIC from the beginning with
`isolation.level=read_committed` until COUNT records arrived (or 60 s
passed) and prints one JSON object per record: partition, offset, key and
value in hex, headers as [key, hex value] pairs.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def produce(bootstrap: str, topic: str, codec: str) -> int:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2",
            "compression.type": codec,
            "enable.idempotence": True,
            "linger.ms": 20,
            "acks": "all",
        }
    )
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    for n, line in enumerate(sys.stdin):
        key, _, value = line.rstrip("\n").partition("\t")
        headers = [("source", b"librdkafka"), ("codec", codec.encode()), ("line", str(n).encode())]
        while True:
            try:
                producer.produce(
                    topic, key=key.encode(), value=value.encode(), headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        print(f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}", file=sys.stderr)
        return 1
    return 0


def consume(bootstrap: str, topic: str, count: int) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"codecs-{time.time_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen = 0
    deadline = time.time() + 60
    while seen < count and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            print(f"librdkafka: {msg.error()}", file=sys.stderr)
            continue
        print(
            json.dumps(
                {
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "key": (msg.key() or b"").hex() if msg.key() is not None else None,
                    "value": msg.value().hex() if msg.value() is not None else None,
                    "headers": [[k, (v or b"").hex()] for k, v in (msg.headers() or [])],
                }
            )
        )
        seen += 1
    consumer.close()
    if seen < count:
        print(f"only {seen} of {count} records within 60 s", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    if len(sys.argv) != 5 or sys.argv[1] not in ("produce", "consume"):
        print("\n".join(__doc__.strip().splitlines()[2:4]), file=sys.stderr)
        return 2
    mode, bootstrap, topic, arg = sys.argv[1:]
    if mode == "produce":
        return produce(bootstrap, topic, arg)
    return consume(bootstrap, topic, int(arg))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KafkaException as e:
        print(f"librdkafka: {e}", file=sys.stderr)
        sys.exit(1)
