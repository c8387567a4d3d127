#!/usr/bin/env python3
"""Captures a topic's Fetch answers from a broker, byte for byte, for the
broker-free fold bench (`benches/sink.rs` with BENCH_CAPTURE).

Usage: bench_capture.py BOOTSTRAP TOPIC OUT_FILE [--partitions P] [--max-bytes B]

Sends the very Fetch request rskafka sends (v4, read_committed, min_bytes
1), one partition at a time from offset 0, with B bytes per partition
(default 512 KiB, `consume`'s --fetch-max-bytes), and writes every answer's
partition fields and raw `records` bytes to OUT_FILE until the high
watermark is reached. Nothing is decoded here beyond the batch headers'
offsets (to know where to fetch next); the bench decodes the bytes with
rskafka's `decode_record_batches` and `kafka::read_committed`, as
`consume` does.

File: b"FPCAP1", then per answer (big-endian): partition i32, fetch_offset
i64, high_watermark i64, last_stable_offset i64, aborted count i32 and
(producer_id i64, first_offset i64) each, records length i32, records.
Standard library only.
"""

import argparse
import socket
import struct
import sys

FETCH, FETCH_VERSION = 1, 4
MAGIC = b"FPCAP1"
# `consume`'s default --fetch-max-bytes: the answers it would fold.
DEFAULT_MAX_BYTES = 512 * 1024


class Connection:
    def __init__(self, bootstrap: str) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.correlation = 0

    def request(self, api_key: int, version: int, body: bytes) -> bytes:
        self.correlation += 1
        client = b"foodpipe-capture"
        header = struct.pack(">hhih", api_key, version, self.correlation, len(client)) + client
        msg = header + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self.read(4))[0]
        data = self.read(size)
        if struct.unpack(">i", data[:4])[0] != self.correlation:
            raise SystemExit("correlation id mismatch")
        return data[4:]

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise SystemExit("broker closed the connection")
            out += chunk
        return bytes(out)


def fetch(conn: Connection, topic: str, partition: int, offset: int, max_bytes: int):
    t = topic.encode()
    body = struct.pack(">iiiib", -1, 500, 1, max_bytes, 1)  # replica, wait, min, max, committed
    body += struct.pack(">i", 1) + struct.pack(">h", len(t)) + t
    body += struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes)
    r = conn.request(FETCH, FETCH_VERSION, body)
    pos = 4  # throttle_time_ms
    (topics,) = struct.unpack_from(">i", r, pos)
    pos += 4
    assert topics == 1, topics
    (n,) = struct.unpack_from(">h", r, pos)
    pos += 2 + n
    (parts,) = struct.unpack_from(">i", r, pos)
    pos += 4
    assert parts == 1, parts
    p, error, hw, lso = struct.unpack_from(">ihqq", r, pos)
    pos += 4 + 2 + 8 + 8
    if error:
        raise SystemExit(f"fetch {topic}/{partition}@{offset}: error code {error}")
    (n_aborted,) = struct.unpack_from(">i", r, pos)
    pos += 4
    aborted = []
    for _ in range(max(n_aborted, 0)):
        aborted.append(struct.unpack_from(">qq", r, pos))
        pos += 16
    (length,) = struct.unpack_from(">i", r, pos)
    pos += 4
    records = r[pos:pos + length] if length > 0 else b""
    return p, hw, lso, aborted, records


def next_offset(records: bytes, offset: int) -> int:
    """Past the last whole batch of `records` (a cut-off last batch is left
    for the next fetch, as clients do)."""
    pos = 0
    while pos + 12 <= len(records):
        base, length = struct.unpack_from(">qi", records, pos)
        if pos + 12 + length > len(records):
            break
        (delta,) = struct.unpack_from(">i", records, pos + 23)
        offset = max(offset, base + delta + 1)
        pos += 12 + length
    return offset


def capture(bootstrap: str, topic: str, out: str, partitions: int, max_bytes: int) -> dict:
    conn = Connection(bootstrap)
    answers = 0
    size = 0
    with open(out, "wb") as f:
        f.write(MAGIC)
        for partition in range(partitions):
            offset = 0
            while True:
                p, hw, lso, aborted, records = fetch(conn, topic, partition, offset, max_bytes)
                nxt = next_offset(records, offset)
                if nxt <= offset:
                    if offset >= hw:
                        break
                    raise SystemExit(f"{topic}/{partition}@{offset}: no whole batch below "
                                     f"high watermark {hw} (raise --max-bytes?)")
                f.write(struct.pack(">iqqqi", p, offset, hw, lso, len(aborted)))
                for producer, first in aborted:
                    f.write(struct.pack(">qq", producer, first))
                f.write(struct.pack(">i", len(records)))
                f.write(records)
                answers += 1
                size += len(records)
                offset = nxt
    return {"answers": answers, "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("out")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    args = parser.parse_args()
    result = capture(args.bootstrap, args.topic, args.out, args.partitions, args.max_bytes)
    print(f"{result['answers']} fetch answers, {result['bytes']:,} bytes of record batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
