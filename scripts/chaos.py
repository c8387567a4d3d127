#!/usr/bin/env python3
"""`make chaos`: a fault storm on three private Tansu brokers (one cluster:
one store) and the local PostgreSQL,
then an independent check that the database is the fold of the topic.

Usage: chaos.py FOODPIPE_BINARY [--seed S] [--faults N] [--rate R]

The seed (random unless given) is printed first; the same seed gives the
same schedule of faults (kinds, targets, pauses). While `foodpipe produce`
streams at R events/s into topic chaos-S (6 partitions) and three default
`foodpipe consume` members fold it into a fresh database chaos_S, the
schedule applies N faults one after another, each of these kinds:

  member_kill     SIGKILL of a member, restarted at once
  member_zombie   SIGSTOP of a member past its session timeout, then SIGCONT
  pg_terminate    pg_terminate_backend of every backend of chaos_S
  pg_restart      `pg_ctlcluster 15 main restart` (the machine's SHARED
                  server: exactly once per run), waiting until it answers
  broker_kill     SIGKILL of one of the three brokers, restarted on the same
                  port and store 2 s later (the others go on)
  rebuild         `foodpipe rebuild` under load; it must succeed
  reset_refused   `group reset --to-earliest --execute` while members are
                  live: it must fail and no stored offset may move back
  poison          1-3 records that are no event, sent with `foodpipe send`
  keyless         a few orders' events sent without a key (`foodpipe send`
                  places them round-robin, so each order's events are spread
                  over the partitions and met out of order)
  rebuild_paused  `foodpipe rebuild` SIGSTOPped in its swap, while it waits
                  for the live view's lock (a reader holds it, then goes),
                  for twice the session timeout, then SIGCONT: the members'
                  stored offsets must advance while it is stopped; it may
                  then end 0 or 1, never hang
  dry_run_join    `foodpipe rebuild --dry-run` with a member killed and
                  restarted (joining again) while it runs; it must succeed
                  (exit 0, or 1 naming keys that differ: a verification)
  broker_cut      a member's packets to every broker dropped for 20 s (past
                  --broker-timeout, 15 s), then let through: it is cut off
                  and its partitions move to the others, then come back
  pg_cut          a member's packets to PostgreSQL dropped for 15 s (past
                  the session timeout): the others expire it and take its
                  partitions; healed, it rejoins

The two cuts drop packets with an iptables owner rule on a group id of
the member's own (each member runs under `setpriv --regid`), on the
broker's port or 5432 on loopback only; the rules go when the fault ends
or the run stops.

Then the producer is interrupted (its JSON summary gives the acknowledged
count), the members catch up to the log end and are stopped with SIGTERM,
and the topic is read back with librdkafka (confluent-kafka) and folded
independently, by the rules of tests/it/harness.rs
assert_db_is_fold_of_topic:

  lost        acknowledged events (regenerated with `foodpipe generate`
              from the producer's seed) or events in the topic missing from
              order_events
  duplicated  order_events rows beyond one per event_id, and rows not at
              their event's first copy in the topic
  stalled     partitions whose stored offset is not the log end

The view must give every order the status of its last event, and
dead_letters must hold exactly the poison injected. The keyless orders
cannot be folded by offset (their events sit in several partitions), so
they are checked by what holds for them: each of their events is in
history or in dead letters, exactly once; each order's view row is the
furthest step of its history; and their dead letters are counted apart
from the poison. Exits 1 otherwise.
The topic, the database and the brokers stay up afterwards (their pids are
in target/chaos/tansu.pid, which `make down` reads); the last line is:

  chaos: seed S, N faults (K kinds), lost 0, duplicated 0, stalled 0; topic T, database D, bootstrap B
"""

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

# No __pycache__ beside the scripts in the work tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_consume  # noqa: E402
import bench_produce  # noqa: E402
from bench_consume import psql  # noqa: E402

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

PARTITIONS = 6
MEMBERS = 3
# Brokers over one sqlite store: Tansu's brokers keep no state of their
# own, so they are one cluster; the members get all three as bootstrap list.
BROKERS = 3
GROUP = "order-processors"
# consume's default --session-timeout; a zombie sleeps past it.
SESSION_TIMEOUT_S = 10
ZOMBIE_S = SESSION_TIMEOUT_S + 3
STATUS_AFTER = {
    "OrderCreated": "pending",
    "OrderPaid": "paid",
    "OrderShipped": "shipped",
    "OrderDelivered": "delivered",
    "OrderCancelled": "cancelled",
}
# Kinds every run includes, and the weights of the rest of the schedule.
# pg_restart restarts the machine's shared PostgreSQL: once per run, never
# drawn again.
WEIGHTS = {
    "member_kill": 3,
    "member_zombie": 2,
    "pg_terminate": 3,
    "broker_kill": 2,
    "rebuild": 1,
    "reset_refused": 2,
    "poison": 3,
    "keyless": 2,
    "rebuild_paused": 1,
    "dry_run_join": 1,
    "broker_cut": 2,
    "pg_cut": 2,
}
# Each member runs under its own group id, for the cuts' iptables rules.
MEMBER_GID_BASE = 47000
BROKER_CUT_S = 20
PG_CUT_S = 15
# The lifecycle step of each event type, for the keyless orders' check.
RANK = {"OrderCreated": 0, "OrderPaid": 1, "OrderShipped": 2, "OrderDelivered": 3,
        "OrderCancelled": 3}
KINDS = [*WEIGHTS, "pg_restart"]
PID_FILE = "target/chaos/tansu.pid"


def schedule(rng: random.Random, faults: int) -> list:
    """(kind, member, pause before it in seconds) for each fault."""
    kinds = list(KINDS)
    while len(kinds) < faults:
        kinds.append(rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0])
    rng.shuffle(kinds)
    return [(k, rng.randrange(MEMBERS), round(rng.uniform(1.0, 4.0), 1)) for k in kinds]


def stop_previous_broker() -> None:
    """A run's brokers stay up for checking; the next run stops them first."""
    try:
        with open(PID_FILE) as f:
            pids = [int(line) for line in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "tansu":
                    continue
        except OSError:
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.2)
    print(f"stopped the previous chaos broker (pid {pid})", flush=True)


class Storm:
    def __init__(self, binary: str, seed: int, rate: int, bootstrap: str = None) -> None:
        """A new run (fresh store, broker and database), or with `bootstrap`
        the run of this seed that is still up, to check it again."""
        self.binary = binary
        self.seed = seed
        self.rate = rate
        self.topic = f"chaos-{seed}"
        self.database = f"chaos_{seed}"
        self.dir = os.path.abspath(f"target/chaos/seed-{seed}")
        self.failures = []
        self.poison = 0
        # event_id -> (order_id, event_type) of every event sent without a key.
        self.keyless = {}
        self.producer_seed = seed
        self.restarter = None
        self.restart_finished = 0.0
        self.restarted = False
        self.members = [None] * MEMBERS
        self.started = time.monotonic()
        self.url = bench_consume.with_db(bench_consume.ADMIN_URL, self.database)
        if bootstrap is None:
            shutil.rmtree(self.dir, ignore_errors=True)
            os.makedirs(self.dir)
            self.brokers, self.ports = [], []
            for _ in range(BROKERS):
                broker, port = self.start_broker(0)
                self.brokers.append(broker)
                self.ports.append(port)
            bootstrap = ",".join(f"127.0.0.1:{p}" for p in self.ports)
            self.save_pid()
            psql(bench_consume.ADMIN_URL, "-c", f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            psql(bench_consume.ADMIN_URL, "-c", f"CREATE DATABASE {self.database}")
        self.bootstrap = bootstrap
        self.env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
                    "DATABASE_URL": self.url, "FOODPIPE_TOPIC": self.topic}
        self.env.pop("FOODPIPE_METRICS_ADDR", None)

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", flush=True)

    def save_pid(self) -> None:
        with open(PID_FILE, "w") as f:
            f.write("".join(f"{b.pid}\n" for b in self.brokers))

    def start_broker(self, port: int):
        """One broker over the run's store, answering metadata; a start the
        store's write lock killed (Tansu 0.6.0 unwraps "database is locked"
        while registering) is tried again."""
        for _ in range(5):
            proc, address = bench_produce.start_tansu(self.dir, port=port, detached=True)
            port = int(address.rsplit(":", 1)[1])
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                ping = subprocess.run([self.binary, "cluster", "--bootstrap-servers", address,
                                       "--kafka-timeout-secs", "2"], capture_output=True)
                if ping.returncode == 0 and proc.poll() is None:
                    return proc, port
                time.sleep(0.3)
            proc.kill()
            proc.wait()
        raise SystemExit(f"tansu on port {port} did not answer after 5 starts")

    def fail(self, message: str) -> None:
        self.failures.append(message)
        self.log(f"FAILED: {message}")

    def run(self, *args: str, timeout: float = 300, stdin: bytes = None):
        return subprocess.run([self.binary, *args], env=self.env, input=stdin,
                              capture_output=True, timeout=timeout)

    def sql(self, query: str) -> str:
        return psql(self.url, "-c", query)

    # The workload.

    def start_producer(self) -> None:
        self.producer = subprocess.Popen(
            [self.binary, "produce", "--duration", "1h", "--rate", str(self.rate),
             "--seed", str(self.producer_seed), "--partitions", str(PARTITIONS), "--json"],
            env=self.env, stdout=subprocess.PIPE,
            stderr=open(os.path.join(self.dir, "produce.log"), "ab"))

    def start_member(self, i: int) -> None:
        log = open(os.path.join(self.dir, f"member-{i}.log"), "ab")
        self.members[i] = subprocess.Popen(
            ["setpriv", "--regid", str(MEMBER_GID_BASE + i), "--clear-groups", "--",
             self.binary, "consume"], env=self.env, stdout=log, stderr=log)

    def iptables(self, op: str, i: int, port: int) -> None:
        subprocess.run(["iptables", op, "OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port),
                        "-m", "owner", "--gid-owner", str(MEMBER_GID_BASE + i), "-j", "DROP"],
                       check=True)

    def cut(self, i: int, ports: list, seconds: int) -> None:
        for port in ports:
            self.iptables("-I", i, port)
        try:
            time.sleep(seconds)
        finally:
            for port in ports:
                self.iptables("-D", i, port)

    def clear_cuts(self) -> None:
        """Removes any cut rule a stopped run left behind."""
        for i in range(MEMBERS):
            for port in (*self.ports, 5432):
                rule = ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "-m", "owner",
                        "--gid-owner", str(MEMBER_GID_BASE + i), "-j", "DROP"]
                while subprocess.run(["iptables", "-D", *rule], stderr=subprocess.DEVNULL).returncode == 0:
                    pass

    def broker_cut(self, i: int) -> str:
        self.cut(i, self.ports, BROKER_CUT_S)
        return f"member {i} (pid {self.members[i].pid}) cut off from the brokers for {BROKER_CUT_S} s"

    def pg_cut(self, i: int) -> str:
        self.cut(i, [5432], PG_CUT_S)
        return f"member {i} (pid {self.members[i].pid}) cut off from PostgreSQL for {PG_CUT_S} s"

    def check_members(self) -> None:
        for i, m in enumerate(self.members):
            if m.poll() is not None:
                self.fail(f"member {i} (pid {m.pid}) exited by itself with status {m.returncode}")
                self.start_member(i)

    def offsets(self) -> dict:
        if not bench_consume.tables_exist(self.url):
            return {}
        rows = self.sql(f"SELECT partition, next_offset FROM consumer_offsets "
                        f"WHERE group_id = '{GROUP}' AND topic = '{self.topic}'")
        return {int(p): int(o) for p, o in (r.split("|") for r in rows.split())}

    def wait_for(self, what: str, ready, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if ready():
                    return True
            except Exception:  # not up yet: the broker, the topic or the tables
                pass
            time.sleep(0.2)
        self.fail(f"{what}: not within {limit:.0f} s")
        return False

    # The faults: each returns one line saying what it did.

    def member_kill(self, i: int) -> str:
        old = self.members[i]
        old.kill()
        old.wait()
        self.start_member(i)
        return f"member {i} (pid {old.pid}) killed, restarted as pid {self.members[i].pid}"

    def member_zombie(self, i: int) -> str:
        m = self.members[i]
        m.send_signal(signal.SIGSTOP)
        time.sleep(ZOMBIE_S)
        m.send_signal(signal.SIGCONT)
        return f"member {i} (pid {m.pid}) stopped {ZOMBIE_S} s, past its session timeout, then continued"

    def pg_terminate(self, _: int) -> str:
        out = psql(bench_consume.ADMIN_URL, "-c",
                   "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                   f"WHERE datname = '{self.database}' AND pid <> pg_backend_pid()")
        return f"{out.strip()} backends of {self.database} terminated"

    def pg_restart(self, _: int) -> str:
        """Asks for the restart and goes on: on these machines pg_ctlcluster
        waits while another user's test suite holds the shared server, so
        the restart lands whenever it is allowed, amid later faults."""
        self.restart_log = os.path.join(self.dir, "pg_restart.log")
        log = open(self.restart_log, "ab")
        # No pipes: the restarted server inherits them and would hold them open.
        self.restarter = subprocess.Popen(
            ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.restart_asked = time.monotonic()
        threading.Thread(target=self.await_restart, daemon=True).start()
        return f"PostgreSQL restart requested (pg_ctlcluster pid {self.restarter.pid})"

    def restart_overlaps(self, since: float) -> bool:
        """Whether the requested server restart may have happened after `since`."""
        if self.restarter is None:
            return False
        return self.restarter.poll() is None or self.restart_finished >= since

    def await_restart(self) -> None:
        code = self.restarter.wait()
        self.restart_finished = time.monotonic()
        if code != 0:
            if self.restarter.returncode == -signal.SIGTERM:
                return  # finish_restart gave up on it while it waited
            self.fail(f"pg_ctlcluster restart exited {self.restarter.returncode}")
            return
        done = time.monotonic()
        if self.wait_for("PostgreSQL answers after its restart",
                         lambda: self.sql("SELECT 1").strip() == "1", 60):
            self.restarted = True
            self.log(f"PostgreSQL restarted {done - self.restart_asked:.1f} s after the request, "
                     f"answering after {time.monotonic() - done:.1f} s more")

    def finish_restart(self, limit: float) -> bool:
        """Whether the requested restart happened. A `pg_ctlcluster` that
        has not finished after `limit`, or failed, is reported and the
        restart left out of the count (the last line then shows it)."""
        if self.restarter is None:
            return False
        try:
            code = self.restarter.wait(limit)
        except subprocess.TimeoutExpired:
            self.restarter.terminate()
            code = self.restarter.wait()
        if code != 0:
            with open(self.restart_log, "rb") as f:
                last = (f.read().strip().splitlines() or [b""])[-1].decode(errors="replace")
            self.log(f"PostgreSQL restart NOT applied: pg_ctlcluster exited {code}: {last}")
            return False
        deadline = time.monotonic() + 70
        while not self.restarted and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.restarted

    def broker_kill(self, i: int) -> str:
        b = i % BROKERS
        old = self.brokers[b].pid
        self.brokers[b].kill()
        self.brokers[b].wait()
        down = 2.0
        time.sleep(down)
        self.brokers[b], _ = self.start_broker(self.ports[b])
        self.save_pid()
        return (f"broker {b} of {BROKERS} (port {self.ports[b]}, pid {old}) killed, down {down:.0f} s, "
                f"restarted as pid {self.brokers[b].pid}")

    def rebuild(self, _: int) -> str:
        started = time.monotonic()
        out = self.run("rebuild")
        if out.returncode != 0 and self.restart_overlaps(started):
            # A server restart under a rebuild ends it with an error; the
            # rebuild run again must succeed.
            self.log(f"rebuild met the PostgreSQL restart (exit {out.returncode}); again")
            self.wait_for("PostgreSQL answers again",
                          lambda: self.sql("SELECT 1").strip() == "1", 90)
            out = self.run("rebuild")
        if out.returncode != 0:
            self.fail(f"rebuild exited {out.returncode}: {out.stderr.decode()[-500:]}")
        return f"rebuild under load: exit {out.returncode} after {time.monotonic() - started:.1f} s"

    def reset_refused(self, _: int) -> str:
        before = self.offsets()
        out = self.run("group", "reset", "--to-earliest", "--execute")
        after = self.offsets()
        moved_back = [p for p, o in before.items() if after.get(p, -1) < o]
        if out.returncode == 0:
            self.fail("group reset --execute with live members was not refused")
        if moved_back:
            self.fail(f"group reset moved stored offsets back on partitions {moved_back}")
        reason = out.stderr.decode().strip().splitlines()[-1:] or [""]
        return f"group reset refused (exit {out.returncode}): {reason[0][:120]}"

    def poison_records(self, rng: random.Random) -> bytes:
        variants = [
            b'{"not":"an order"}',
            b"this is not JSON",
            json.dumps({"event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        "schema_version": 1, "order_id": str(uuid.UUID(int=rng.getrandbits(128),
                                                                       version=4)),
                        "customer_id": "CUST-0001", "occurred_at": "2026-01-01T00:00:00Z",
                        "event_type": "OrderTeleported", "payload": {}}).encode(),
        ]
        lines = [b"CUST-%04d\t" % rng.randrange(1, 500) + rng.choice(variants)
                 for _ in range(rng.randint(1, 3))]
        return b"\n".join(lines) + b"\n"

    def poison_fault(self, rng: random.Random) -> str:
        out = self.run("send", "--json", stdin=self.poison_records(rng))
        if out.returncode != 0:
            self.fail(f"send of poison exited {out.returncode}: {out.stderr.decode()[-300:]}")
            return "poison not sent"
        summary = json.loads(out.stdout)
        self.poison += summary["events"]
        return f"{summary['events']} poison records sent ({self.poison} so far)"

    def keyless_fault(self, rng: random.Random) -> str:
        seed = rng.randrange(1_000_000, 2_000_000)
        generated = self.run("generate", "--count", str(rng.randint(10, 40)), "--seed", str(seed))
        values = [line.split(b"\t", 1)[1] for line in generated.stdout.splitlines()]
        out = self.run("send", "--json", stdin=b"\n".join(values) + b"\n")
        if out.returncode != 0:
            self.fail(f"keyless send exited {out.returncode}: {out.stderr.decode()[-300:]}")
            return "keyless events not sent"
        for value in values:
            event = json.loads(value)
            self.keyless[event["event_id"]] = (event["order_id"], event["event_type"])
        orders = len({o for o, _ in self.keyless.values()})
        return f"{len(values)} events sent without a key ({len(self.keyless)} so far, {orders} orders)"

    def rebuild_paused(self, _: int) -> str:
        """A reader holds the live view, so the swap must wait for its lock:
        the rebuild is stopped right then, the reader goes, and the swap
        takes the locks and can do nothing more. The server must end its
        transaction (a session timeout idle), so that the members go on."""
        holder = subprocess.Popen(
            ["psql", self.url, "-c", "BEGIN; SELECT count(*) FROM orders; SELECT pg_sleep(600); COMMIT;"],
            env={**os.environ, "PGAPPNAME": "chaos-holder"},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        rebuild = subprocess.Popen([self.binary, "rebuild"], env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        caught = False
        while rebuild.poll() is None and time.monotonic() - started < 300:
            waiting = self.sql(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'orders' AND l.mode = 'AccessExclusiveLock' AND NOT l.granted"
            ).strip()
            if waiting != "0":
                rebuild.send_signal(signal.SIGSTOP)
                caught = True
                break
            time.sleep(0.05)
        self.sql("SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
                 "WHERE application_name = 'chaos-holder'")
        holder.wait(60)
        if not caught:
            _, err = rebuild.communicate(timeout=300)
            self.fail(f"a rebuild (exit {rebuild.returncode}) never waited for the live view's "
                      f"lock while it was held")
            return "rebuild not caught in its swap"
        before = self.offsets()
        # Past the session timeout twice: the server ends the swap's
        # transaction, the rebuild's fence lapses, the members take again.
        pause = 2 * SESSION_TIMEOUT_S + 5
        time.sleep(pause)
        after = self.offsets()
        if sum(after.values()) <= sum(before.values()):
            self.fail(f"stored offsets did not advance while a rebuild was stopped in its swap: "
                      f"{before} then {after}")
        rebuild.send_signal(signal.SIGCONT)
        try:
            _, err = rebuild.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            rebuild.kill()
            self.fail("a rebuild continued after its pause did not end within 300 s")
            return "rebuild paused, then hung"
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
        if rebuild.returncode not in (0, 1) or (rebuild.returncode == 1 and "error" not in last):
            self.fail(f"a paused rebuild ended {rebuild.returncode}: {last[:200]}")
        return (f"rebuild stopped {pause} s in its swap, offsets advanced by "
                f"{sum(after.values()) - sum(before.values())} meanwhile; it then exited "
                f"{rebuild.returncode}: {last[:120]}")

    def dry_run_join(self, i: int) -> str:
        started = time.monotonic()
        dry = subprocess.Popen([self.binary, "rebuild", "--dry-run"], env=self.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        joined = self.member_kill(i)
        try:
            _, err = dry.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            dry.kill()
            self.fail("rebuild --dry-run did not end within 300 s")
            return "dry run hung"
        # Exit 1 naming differing keys is a verification's result, not a
        # failure: keyless orders met out of order fold differently in a
        # replay, whose batches are cut elsewhere.
        differs = dry.returncode == 1 and b"differ between the live projections" in err
        if dry.returncode != 0 and not differs and not self.restart_overlaps(started):
            self.fail(f"rebuild --dry-run with a member joining exited {dry.returncode}: "
                      f"{err.decode(errors='replace')[-300:]}")
        return f"{joined} while rebuild --dry-run ran; it exited {dry.returncode}"

    # The end: stop, catch up, check.

    def stop_producer(self) -> dict:
        self.producer.send_signal(signal.SIGINT)
        out, _ = self.producer.communicate(timeout=120)
        if self.producer.returncode != 0:
            self.fail(f"produce exited {self.producer.returncode}")
        summary = json.loads(out)
        self.log(f"producer stopped: {summary['events']} events acknowledged, "
                 f"{summary['failed']} failed")
        if summary["failed"]:
            self.fail(f"the producer reported {summary['failed']} events lost: {summary['last_error']}")
        return summary

    def watermarks(self) -> dict:
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "foodpipe-chaos-check"})
        try:
            md = c.list_topics(self.topic, timeout=30)
            return {p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)[1]
                    for p in sorted(md.topics[self.topic].partitions)}
        finally:
            c.close()

    def read_topic(self, ends: dict) -> list:
        """Every record up to `ends` as (partition, offset, value bytes)."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "foodpipe-chaos-check",
                      "enable.auto.commit": False, "isolation.level": "read_committed"})
        c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
        position = {p: 0 for p in ends}
        records = []
        deadline = time.monotonic() + 300
        while any(position[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise SystemExit(f"librdkafka did not reach the log end: {position} of {ends}")
            for msg in c.consume(num_messages=10_000, timeout=1.0):
                if msg.error() or msg.offset() >= ends[msg.partition()]:
                    continue
                records.append((msg.partition(), msg.offset(), msg.value()))
                position[msg.partition()] = max(position[msg.partition()], msg.offset() + 1)
        c.close()
        return records

    def check(self, acknowledged_count: int) -> tuple:
        """(lost, duplicated, stalled), recording every other mismatch."""
        ends = self.watermarks()
        stored = self.offsets()
        stalled = sorted(p for p in ends if stored.get(p) != ends[p])
        if stalled:
            self.log(f"stalled partitions: {[(p, stored.get(p), ends[p]) for p in stalled]}")

        first_copy, last_of_order, poison_in_topic = {}, {}, 0
        for partition, offset, value in self.read_topic(ends):
            try:
                event = json.loads(value)
                valid = isinstance(event, dict) and event.get("event_type") in STATUS_AFTER
            except (ValueError, TypeError):
                valid = False
            if not valid:
                poison_in_topic += 1
                continue
            if event["event_id"] in self.keyless:
                continue
            first_copy.setdefault(event["event_id"], (partition, offset))
            last = last_of_order.get(event["order_id"])
            if last is None or offset >= last[0]:
                last_of_order[event["order_id"]] = (offset, STATUS_AFTER[event["event_type"]],
                                                    event["event_id"])

        history = collections.defaultdict(list)
        for row in self.sql("SELECT event_id, kafka_partition, kafka_offset FROM order_events "
                            f"WHERE kafka_topic = '{self.topic}'").split():
            event_id, partition, offset = row.split("|")
            history[event_id].append((int(partition), int(offset)))
        generated = subprocess.run(
            [self.binary, "generate", "--count", str(acknowledged_count),
             "--seed", str(self.producer_seed)], check=True, capture_output=True).stdout
        acknowledged = {json.loads(line.split(b"\t", 1)[1])["event_id"]
                        for line in generated.splitlines()}
        keyless_history = {i: history.pop(i) for i in list(history) if i in self.keyless}
        missing = (acknowledged | set(first_copy)) - set(history)
        duplicated = sum(len(at) - 1 for at in history.values())
        misplaced = [i for i, at in history.items() if i in first_copy and at[0] != first_copy[i]]
        extra = [i for i in history if i not in first_copy]
        if misplaced:
            self.fail(f"{len(misplaced)} history rows not from their event's first copy")
        if extra:
            self.fail(f"{len(extra)} history rows of events not in the topic")
        not_in_topic = acknowledged - set(first_copy)
        if not_in_topic:
            self.fail(f"{len(not_in_topic)} acknowledged events are not in the topic")

        view = {}
        for row in self.sql("SELECT order_id, status, last_event_id FROM orders").split():
            order, status, last = row.split("|")
            view[order] = (status, last)
        keyless_orders = {o for o, _ in self.keyless.values()}
        keyed_view = {o: v for o, v in view.items() if o not in keyless_orders}
        wrong = [o for o, (_, status, last) in last_of_order.items() if view.get(o) != (status, last)]
        if wrong or len(keyed_view) != len(last_of_order):
            self.fail(f"view: {len(wrong)} orders differ from the fold, {len(keyed_view)} rows for "
                      f"{len(last_of_order)} orders")

        self.check_projections()
        keyless_dead = self.check_keyless(keyless_history, view)
        dead = int(self.sql(f"SELECT count(*) FROM dead_letters WHERE topic = '{self.topic}'"))
        if not (dead - keyless_dead == self.poison == poison_in_topic):
            self.fail(f"dead letters {dead} ({keyless_dead} of keyless events), poison injected "
                      f"{self.poison}, poison records in the topic {poison_in_topic}")
        self.log(f"fold of {sum(ends.values())} records: {len(first_copy)} events "
                 f"({len(acknowledged)} acknowledged), {len(last_of_order)} orders, "
                 f"{dead} dead letters for {self.poison} poison")
        return len(missing), duplicated, len(stalled)


    def check_projections(self) -> None:
        """The built-in projections equal what history (checked against the
        topic above) says, summed here with plain SQL: every batch committed
        them with its history rows, through every fault."""
        created = ("JOIN order_events c ON c.order_id = e.order_id "
                   "AND c.event_type = 'OrderCreated'")
        total = "(c.payload->'payload'->>'total_cents')::int8"
        expected = self.sql(
            "SELECT c.payload->'payload'->>'restaurant_id', (c.occurred_at AT TIME ZONE 'UTC')::date, "
            "count(*) FILTER (WHERE e.event_type = 'OrderCreated'), "
            "count(*) FILTER (WHERE e.event_type = 'OrderDelivered'), "
            f"coalesce(sum({total}) FILTER (WHERE e.event_type = 'OrderDelivered'), 0), "
            "count(*) FILTER (WHERE e.event_type = 'OrderCancelled') "
            f"FROM order_events e {created} GROUP BY 1, 2 ORDER BY 1, 2")
        got = self.sql("SELECT restaurant_id, day, orders, delivered, revenue_cents, cancellations "
                       "FROM restaurant_daily ORDER BY 1, 2")
        if expected != got:
            self.fail("restaurant_daily is not the sum of history")
        expected = self.sql(
            "SELECT e.customer_id, count(*) FILTER (WHERE e.event_type = 'OrderCreated'), "
            "count(*) FILTER (WHERE e.event_type = 'OrderDelivered'), "
            "count(*) FILTER (WHERE e.event_type = 'OrderCancelled'), "
            f"coalesce(sum({total}) FILTER (WHERE e.event_type = 'OrderDelivered'), 0) "
            f"FROM order_events e {created} GROUP BY 1 ORDER BY 1")
        got = self.sql("SELECT customer_id, orders, delivered, cancelled, spend_cents "
                       "FROM customer_stats ORDER BY 1")
        if expected != got:
            self.fail("customer_stats is not the sum of history")
        self.log("projections: restaurant_daily and customer_stats agree with history")

    def check_keyless(self, history: dict, view: dict) -> int:
        """The keyless orders: every event applied or dead-lettered exactly
        once, each view row the furthest step of its order's history.
        Returns how many of their events are dead letters."""
        if not self.keyless:
            return 0
        dead = set(self.sql("SELECT event_id FROM dead_letters WHERE event_id IS NOT NULL "
                            f"AND topic = '{self.topic}'").split()) & set(self.keyless)
        both = dead & set(history)
        neither = set(self.keyless) - dead - set(history)
        if both:
            self.fail(f"{len(both)} keyless events are both in history and in dead letters")
        if neither:
            self.fail(f"{len(neither)} keyless events are neither in history nor in dead letters")
        furthest = {}
        for event_id in history:
            order, event_type = self.keyless[event_id]
            step = (RANK[event_type], event_id)
            if order not in furthest or step[0] > furthest[order][0]:
                furthest[order] = (step[0], STATUS_AFTER[event_type], event_id)
        wrong = [o for o, (_, status, last) in furthest.items() if view.get(o) != (status, last)]
        if wrong:
            self.fail(f"{len(wrong)} keyless orders' view rows are not the end of their history")
        self.log(f"keyless: {len(self.keyless)} events of {len(furthest)} orders, "
                 f"{len(history)} applied, {len(dead)} dead letters")
        return len(dead)


def main() -> int:
    parser = argparse.ArgumentParser(description="a fault storm, then a fold check")
    parser.add_argument("binary")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the schedule (default: random, printed first)")
    parser.add_argument("--faults", type=int, default=40)
    parser.add_argument("--rate", type=int, default=200, help="events/s of the producer")
    parser.add_argument("--recheck", action="store_true",
                        help="only check again the run of --seed, still up, against its topic")
    args = parser.parse_args()
    if args.recheck:
        if args.seed is None:
            parser.error("--recheck needs the --seed of the run to check (its first line)")
        return recheck(os.path.abspath(args.binary), args.seed)
    if args.faults < len(KINDS):
        parser.error(f"--faults {args.faults}: give at least {len(KINDS)}, one fault of each kind")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    print(f"chaos: seed {seed}", flush=True)
    rng = random.Random(seed)
    plan = schedule(rng, args.faults)

    os.makedirs("target/chaos", exist_ok=True)
    stop_previous_broker()
    storm = Storm(os.path.abspath(args.binary), seed, args.rate)
    storm.log(f"brokers {storm.bootstrap} (pids {[b.pid for b in storm.brokers]}), topic {storm.topic}, "
              f"database {storm.database}, {len(plan)} faults")
    try:
        return storm_and_check(storm, plan, rng)
    finally:
        # On any way out the workload stops; the broker stays up.
        if storm.restarter is not None and storm.restarter.poll() is None:
            storm.finish_restart(0.1)  # stops it only while it still waits
        for p in [getattr(storm, "producer", None), *storm.members]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        storm.clear_cuts()


def storm_and_check(storm: Storm, plan: list, rng: random.Random) -> int:
    storm.start_producer()
    storm.wait_for("the producer creates the topic",
                   lambda: storm.watermarks() and sum(storm.watermarks().values()) > 0, 60)
    for i in range(MEMBERS):
        storm.start_member(i)
    storm.wait_for("three members own every partition",
                   lambda: storm.sql("SELECT count(DISTINCT owner), count(owner) FROM consumer_offsets")
                   .strip() == f"{MEMBERS}|{PARTITIONS}" if bench_consume.tables_exist(storm.url)
                   else False, 120)

    applied = collections.Counter()
    for n, (kind, member, pause) in enumerate(plan, 1):
        time.sleep(pause)
        storm.check_members()
        if kind == "poison":
            fault = lambda: storm.poison_fault(rng)  # noqa: E731
        elif kind == "keyless":
            fault = lambda: storm.keyless_fault(rng)  # noqa: E731
        else:
            fault = lambda: getattr(storm, kind)(member)  # noqa: E731
        try:
            what = fault()
        except subprocess.CalledProcessError:
            # The driver's own psql met the PostgreSQL restart that landed
            # meanwhile: once it answers, the fault runs again.
            storm.wait_for("PostgreSQL answers again",
                           lambda: storm.sql("SELECT 1").strip() == "1", 90)
            what = fault()
        applied[kind] += 1
        storm.log(f"fault {n}/{len(plan)} {kind}: {what}")

    if "pg_restart" in applied and not storm.finish_restart(120):
        del applied["pg_restart"]
    summary = storm.stop_producer()
    storm.check_members()
    ends = storm.watermarks()
    storm.wait_for("members catch up to the log end", lambda: storm.offsets() == ends, 300)
    for i, m in enumerate(storm.members):
        m.send_signal(signal.SIGTERM)
    for i, m in enumerate(storm.members):
        try:
            if m.wait(60) != 0:
                storm.fail(f"member {i} exited {m.returncode} on SIGTERM")
        except subprocess.TimeoutExpired:
            storm.fail(f"member {i} did not stop within 60 s of SIGTERM")
            m.kill()
    for i in range(MEMBERS):
        with open(os.path.join(storm.dir, f"member-{i}.log"), "rb") as f:
            if b"panicked" in f.read():
                storm.fail(f"member {i} panicked (see {storm.dir}/member-{i}.log)")

    with open(os.path.join(storm.dir, "run.json"), "w") as f:
        json.dump({"bootstrap": storm.bootstrap, "acknowledged": summary["events"],
                   "poison": storm.poison, "keyless": storm.keyless,
                   "faults": sum(applied.values()),
                   "kinds": len(applied)}, f)
    return verdict(storm, summary["events"], sum(applied.values()), len(applied))


def recheck(binary: str, seed: int) -> int:
    """The checks of a run again, from what it saved: the broker and the
    database must still be up."""
    try:
        with open(f"target/chaos/seed-{seed}/run.json") as f:
            run = json.load(f)
    except OSError:
        print(f"chaos: no finished run of seed {seed} in target/chaos/seed-{seed}: "
              f"run make chaos CHAOS_SEED={seed} first", file=sys.stderr)
        return 2
    storm = Storm(binary, seed, 0, bootstrap=run["bootstrap"])
    storm.poison = run["poison"]
    storm.keyless = {k: tuple(v) for k, v in run.get("keyless", {}).items()}
    return verdict(storm, run["acknowledged"], run["faults"], run["kinds"])


def verdict(storm: Storm, acknowledged: int, faults: int, kinds: int) -> int:
    lost, duplicated, stalled = storm.check(acknowledged)
    for f in storm.failures:
        print(f"chaos: FAILED: {f}", flush=True)
    print(f"chaos: seed {storm.seed}, {faults} faults ({kinds} kinds), "
          f"lost {lost}, duplicated {duplicated}, stalled {stalled}; topic {storm.topic}, "
          f"database {storm.database}, bootstrap {storm.bootstrap}", flush=True)
    return 1 if storm.failures or lost or duplicated or stalled else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        # Not the command line: it may hold the database URL's password.
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        print(f"chaos: error: {os.path.basename(str(e.cmd[0]))} exited {e.returncode}: "
              f"{err.strip()[-300:]}", file=sys.stderr)
        sys.exit(1)
