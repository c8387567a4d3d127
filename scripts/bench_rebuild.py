#!/usr/bin/env python3
"""`foodpipe rebuild` (bulk fill) against the live fold, on the same topic.

Usage: bench_rebuild.py FOODPIPE_BINARY [--events N] [--partitions P]
                        [--engine sqlite|memory]

1. Starts a Tansu of its own (`tansu` on PATH) on a free port with a fresh
   store (sqlite by default; `memory` needs Tansu built with `dynostore`),
   and produces N generated events (seed 11) to a fresh topic of P
   partitions.
2. Live fold: `foodpipe consume --until-caught-up` into a fresh database,
   wall time of the whole process.
3. Rebuild: `foodpipe rebuild` of that database (the live group caught
   up, so phase 2 has nothing to catch up): wall time of the whole process,
   fill, indexes, projections, comparison and swap included, and its peak
   RSS. Its log lines are timed as they come, for where the time goes.
4. Prints events/s of each and the ratio rebuild / live fold (goal >= 3,
   issue 22). Standard library only.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_consume import ADMIN_URL, psql, vm_hwm_kib  # noqa: E402
from bench_produce import STORAGE, start_tansu  # noqa: E402


def timed(cmd: list, env: dict) -> dict:
    """Runs `cmd`; wall seconds, peak RSS (KiB) and its stderr lines, each
    with the second it came at."""
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    lines = []

    def read():
        for line in child.stderr:
            lines.append((time.perf_counter() - started, line.rstrip()))

    reader = threading.Thread(target=read)
    reader.start()
    out = []
    threading.Thread(target=lambda: out.append(child.stdout.read())).start()
    peak = 0
    while child.poll() is None:
        peak = max(peak, vm_hwm_kib(child.pid))
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    reader.join()
    if child.returncode != 0:
        sys.stderr.write("\n".join(l for _, l in lines) + "\n")
        raise SystemExit(f"{cmd[1]} failed with status {child.returncode}")
    return {"secs": seconds, "peak_kib": peak, "lines": lines}


MILESTONES = [
    ("bulk fill of the shadow", "fill starts"),
    ("indexed and analyzed", "a table indexed"),
    ("bulk fill done", "fill done (rows, keys, indexes)"),
    ("projection filled and attached", "a projection filled from history"),
    ("comparing the shadow", "compare and swap start"),
    ("compared every table", "comparison done"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--engine", choices=sorted(STORAGE), default="sqlite")
    args = ap.parse_args()

    name = f"fp_bench_rebuild_{int(time.time())}"
    url = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    topic = f"bench-rebuild-{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        broker, bootstrap = start_tansu(tmp, engine=args.engine)
        psql(ADMIN_URL, "-c", f"CREATE DATABASE {name}")
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": url,
               "FOODPIPE_METRICS_ADDR": "off"}
        env.pop("RUST_LOG", None)
        try:
            print(f"producing {args.events:,} events to {topic} ({args.partitions} partitions, "
                  f"Tansu {args.engine})", file=sys.stderr)
            subprocess.run([args.binary, "produce", "--topic", topic, "--count",
                            str(args.events), "--partitions", str(args.partitions),
                            "--seed", "11", "--quiet"], env=env, check=True)
            live = timed([args.binary, "consume", "--until-caught-up", "--topic", topic,
                          "--json"], env)
            rows = int(psql(url, "-c", "SELECT count(*) FROM order_events"))
            rebuild = timed([args.binary, "rebuild", "--topic", topic, "--json"], env)
            after = int(psql(url, "-c", "SELECT count(*) FROM order_events"))
        finally:
            broker.terminate()
            broker.wait()
            psql(ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert rows == after, f"history had {rows} rows before the rebuild and {after} after"
    bulk = any("bulk fill done" in l for _, l in rebuild["lines"])
    live_rate = rows / live["secs"]
    rebuild_rate = rows / rebuild["secs"]
    print(f"{rows:,} events in history, {args.partitions} partitions, Tansu {args.engine}, "
          f"{os.cpu_count()} cores")
    print()
    print("| run | seconds | events/s | peak RSS | ratio |")
    print("|---|---|---|---|---|")
    print(f"| live fold (`consume --until-caught-up`) | {live['secs']:.1f} | {live_rate:,.0f} | "
          f"{live['peak_kib'] / 1024:.0f} MiB | 1.00x |")
    print(f"| `rebuild` ({'bulk fill' if bulk else 'consumer path'}) | {rebuild['secs']:.1f} | "
          f"{rebuild_rate:,.0f} | {rebuild['peak_kib'] / 1024:.0f} MiB | "
          f"{rebuild_rate / live_rate:.2f}x |")
    print()
    print("rebuild timeline (seconds since start):")
    for at, line in rebuild["lines"]:
        for needle, what in MILESTONES:
            if needle in line:
                fields = " ".join(f"{k}={v}" for k, v in re.findall(r'(\w+)=("[^"]*"|[\w.]+)', line)
                                  if k not in ("schema",))
                print(f"  {at:7.1f}  {what}  {fields}")
    print(f"  {rebuild['secs']:7.1f}  exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
