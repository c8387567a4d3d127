#!/usr/bin/env python3
"""Prints a consumer group's committed offsets as the broker has them, read
by an independent Kafka client: the tests' check of foodpipe's offset
mirror.

Usage: committed_offsets.py confluent|kafka-python BOOTSTRAP GROUP TOPIC PARTITIONS

confluent: librdkafka's Consumer.committed() (what librdkafka-based tools
see); kafka-python: KafkaAdminClient.list_consumer_group_offsets() (what
kafka-consumer-groups-style admin tools see). Prints one JSON object
{"partition": offset, ...}; partitions with no committed offset are left
out.
"""

import json
import sys


def with_confluent(bootstrap, group, topic, partitions):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=15
        )
    finally:
        consumer.close()
    return {str(tp.partition): tp.offset for tp in found if tp.offset >= 0}


def with_kafka_python(bootstrap, group, topic, partitions):
    from kafka import KafkaAdminClient, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found = admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(partitions)]
        )
    finally:
        admin.close()
    return {str(tp.partition): meta.offset for tp, meta in found.items() if meta.offset >= 0}


def main() -> int:
    if len(sys.argv) != 6:
        print(__doc__.strip().splitlines()[4], file=sys.stderr)
        return 2
    client, bootstrap, group, topic, partitions = sys.argv[1:]
    read = {"confluent": with_confluent, "kafka-python": with_kafka_python}[client]
    print(json.dumps(read(bootstrap, group, topic, int(partitions))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
