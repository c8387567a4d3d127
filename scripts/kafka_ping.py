#!/usr/bin/env python3
"""Asks a Kafka broker for cluster metadata, with nothing but the standard library.

Usage: kafka_ping.py HOST:PORT[,HOST:PORT...] [--timeout SECONDS]

Sends a Metadata v0 request (all topics) to each bootstrap entry in turn and
exits 0 as soon as one answers with a well-formed response that lists at
least one broker; prints that broker list. Exits 1 if none does. This is
what "the broker answers metadata" means in `make up`: an open port alone
is not enough, a broker still loading its storage accepts connections
before it can answer.

References: Kafka protocol guide, "Metadata API (Key: 3)", request and
response v0, and "Common Request and Response Structure".
"""

import socket
import struct
import sys

API_METADATA = 3
CORRELATION_ID = 0x0F00D


def request() -> bytes:
    client_id = b"foodpipe-ping"
    header = struct.pack(">hhih", API_METADATA, 0, CORRELATION_ID, len(client_id)) + client_id
    body = struct.pack(">i", 0)  # v0: an empty topic array means all topics
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data += chunk
    return data


def ping(address: str, timeout: float) -> list[str]:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(request())
        (size,) = struct.unpack(">i", read_exact(sock, 4))
        response = read_exact(sock, size)
    (correlation,) = struct.unpack_from(">i", response, 0)
    if correlation != CORRELATION_ID:
        raise ValueError(f"unexpected correlation id {correlation}")
    (count,) = struct.unpack_from(">i", response, 4)
    offset, brokers = 8, []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", response, offset)
        offset += 6
        broker_host = response[offset : offset + host_len].decode()
        offset += host_len
        (broker_port,) = struct.unpack_from(">i", response, offset)
        offset += 4
        brokers.append(f"{node_id}@{broker_host}:{broker_port}")
    if not brokers:
        raise ValueError("metadata lists no brokers")
    return brokers


def main() -> int:
    args = sys.argv[1:]
    timeout = 2.0
    if "--timeout" in args:
        i = args.index("--timeout")
        timeout = float(args[i + 1])
        del args[i : i + 2]
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    errors = []
    for address in [a.strip() for a in args[0].split(",") if a.strip()]:
        try:
            brokers = ping(address, timeout)
            print(f"{address} answered metadata; brokers: {', '.join(brokers)}")
            return 0
        except (OSError, ValueError, struct.error) as e:
            errors.append(f"{address}: {e}")
    print("no bootstrap server answered metadata: " + "; ".join(errors), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
