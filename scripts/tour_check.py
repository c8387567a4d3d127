#!/usr/bin/env python3
"""Runs every ```console block of docs/tour.md (or of README.md) and
compares the output, so the documents never rot (`make tour-check` and
`make readme-check`, both part of `make test`).

    python3 scripts/tour_check.py [--bin PATH/TO/foodpipe] [--doc docs/tour.md]
    python3 scripts/tour_check.py --doc README.md --names readme

```sh blocks (and blocks without a language) are shown, never run.

A console block holds commands, each on a line starting with `$ ` (a line
ending in a backslash continues on the next line), and after each command
the output a reader should see. All commands of the file run in order in
ONE bash process from the repository's root, as a reader types them into
one terminal: `export`, `cd`, `&` and `$!` carry over from one command to
the next. stdout and stderr are compared together, line by line, trailing
blanks ignored and runs of blanks (spaces, tabs) compared as one. In the
expected output:

- `...` alone on a line matches any number of lines (none included);
- `...` inside a line matches any text within that line (times, member
  ids, offsets that vary).

Every command must exit 0 (a block that shows a failure ends its command
with `; echo "exit $?"`) and finish within --timeout seconds.

The given foodpipe binary's directory comes first on PATH, FOODPIPE_* are
unset and NO_COLOR=1. The broker (KAFKA_BOOTSTRAP_SERVERS, default
127.0.0.1:9092) and PostgreSQL (127.0.0.1:5432) of `make up` must answer:
when either does not, this fails at once, saying which, whether in CI or
not. It never skips.

Exit 0 when every command matched; 1 with the first mismatch shown
(expected, then what came) otherwise. The tour starts with fresh names of
its own (docs/tour.md says how), so it can run again and again; before it
starts, this drops the PostgreSQL schemas of tour runs more than an hour
old (`tour_<unix time>...`), as the tour's "Cleaning up" tells a reader
to. Their topics stay: Tansu 0.6.0 deletes every topic of the cluster
when asked to delete one.

--names PREFIX is for a document whose commands use foodpipe's defaults
(README.md): the commands run with FOODPIPE_TOPIC, FOODPIPE_SCHEMA and
FOODPIPE_GROUP set to fresh names of their own (PREFIX-orders-<unix time>,
PREFIX_<unix time>, PREFIX-group-<unix time>), so the check never touches
the data of `make demo`, and in what they print those names are written
back as the defaults a reader sees (`food-orders`, `public`,
`order-processors`) before comparing. Schemas `PREFIX_<unix time>` more
than an hour old are dropped first, as the tour's are.
"""

import argparse
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ELLIPSIS = "..."


# Per step: [first line index, index after the command, index after its
# expected output]; for --record.
spans = []


def parse(doc):
    """[(line number, command, [expected lines])] of every console block."""
    steps = []
    spans.clear()
    in_block = False
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not in_block:
            if stripped.startswith("```console"):
                in_block = True
            i += 1
            continue
        if stripped.startswith("```"):
            in_block = False
            i += 1
            continue
        if line.startswith("$ "):
            lineno = i + 1
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command + "\n" + lines[i]
            steps.append((lineno, command, []))
            spans.append([lineno - 1, i + 1, i + 1])
        elif steps and in_block:
            steps[-1][2].append(line.rstrip())
            spans[-1][2] = i + 1
        else:
            raise SystemExit(f"tour-check: docs line {i + 1}: output before any command in a console block")
        i += 1
    if in_block:
        raise SystemExit("tour-check: a console block is not closed")
    return steps


def squeeze(line):
    """Runs of blanks (spaces, tabs) compare as one: column widths and tabs
    may differ from a copy in a document."""
    return re.sub(r"[ \t]+", " ", line.strip())


def line_matches(expected, actual):
    expected, actual = squeeze(expected), squeeze(actual)
    if ELLIPSIS not in expected:
        return expected == actual
    pattern = ".*".join(re.escape(part) for part in expected.split(ELLIPSIS))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def output_matches(expected, actual):
    """Whether actual lines match expected lines (with `...` wildcards)."""
    memo = {}

    def go(e, a):
        key = (e, a)
        if key in memo:
            return memo[key]
        if e == len(expected):
            result = a == len(actual)
        elif expected[e].strip() == ELLIPSIS:
            result = any(go(e + 1, k) for k in range(a, len(actual) + 1))
        else:
            result = a < len(actual) and line_matches(expected[e], actual[a]) and go(e + 1, a + 1)
        memo[key] = result
        return result

    return go(0, 0)


def trim(lines):
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


class Shell:
    """One bash process; commands written to its stdin, output read back up
    to a marker line that carries the exit status."""

    def __init__(self, env):
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.n = 0

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, command, timeout):
        self.n += 1
        marker = f"__tour_check_done_{self.n}_"
        # The command on its own lines (so a here-document or a trailing
        # comment works), stdin from /dev/null so nothing reads the script.
        self.proc.stdin.write(f"{{\n{command}\n}} </dev/null\necho; echo \"{marker}$?\"\n")
        self.proc.stdin.flush()
        out = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, out
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None, out
            if line is None:
                return "bash exited", out
            if line.startswith(marker):
                # The `echo` before the marker ends a last line without a
                # newline; drop the blank line it adds otherwise.
                if out and out[-1] == "\n":
                    out.pop()
                elif out:
                    out[-1] = out[-1].rstrip("\n")
                return int(line[len(marker):].strip()), [x.rstrip("\n") for x in out]
            out.append(line)

    def close(self):
        # The tour's own background members are in this session's process
        # group: end them with the shell.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def preflight(env):
    """The stack of `make up` must answer; never skip."""
    problems = []
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    ping = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "kafka_ping.py"), bootstrap, "--timeout", "3"],
        capture_output=True,
        text=True,
    )
    if ping.returncode != 0:
        problems.append(f"no Kafka broker answers at {bootstrap} ({(ping.stdout + ping.stderr).strip()[-200:]})")
    if shutil.which("pg_isready"):
        pg = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True, text=True)
        if pg.returncode != 0:
            problems.append("PostgreSQL does not answer on 127.0.0.1:5432")
    else:
        import socket

        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
        except OSError as e:
            problems.append(f"PostgreSQL does not answer on 127.0.0.1:5432 ({e})")
    if problems:
        where = " (CI)" if os.environ.get("CI") else ""
        for p in problems:
            print(f"tour-check: FAIL{where}: {p}; run `make up` first", file=sys.stderr)
        sys.exit(1)


def psql_admin(sql):
    """As stack-up.sh does: trust on 127.0.0.1 as postgres, else peer auth."""
    for cmd in (
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "food_orders", "-v", "ON_ERROR_STOP=1", "-tAqc", sql],
        ["runuser", "-u", "postgres", "--", "psql", "-d", "food_orders", "-v", "ON_ERROR_STOP=1", "-tAqc", sql],
    ):
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if run.returncode == 0:
            return run.stdout
    return None


def drop_old_schemas(prefix):
    cutoff = int(time.time()) - 3600
    names = psql_admin(rf"SELECT nspname FROM pg_namespace WHERE nspname ~ '^{prefix}_[0-9]+'")
    if names is None:
        print(f"tour-check: could not list old {prefix} schemas (psql as postgres); leaving them")
        return
    old = [n for n in names.split() if int(re.match(rf"{prefix}_([0-9]+)", n).group(1)) < cutoff]
    for name in old:
        psql_admin(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    if old:
        print(f"tour-check: dropped {len(old)} schema(s) of earlier {prefix} runs")


def isolate(env, prefix):
    """Fresh names in env; returns [(name, default)] to write back into the
    output, longest name first."""
    now = int(time.time())
    names = {
        "FOODPIPE_TOPIC": (f"{prefix}-orders-{now}", "food-orders"),
        "FOODPIPE_GROUP": (f"{prefix}-group-{now}", "order-processors"),
        "FOODPIPE_SCHEMA": (f"{prefix}_{now}", "public"),
    }
    for var, (name, _) in names.items():
        env[var] = name
    return sorted(names.values(), key=lambda pair: -len(pair[0]))


def write_back(lines, substitutions):
    for name, default in substitutions:
        lines = [line.replace(name, default) for line in lines]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "foodpipe"), help="the foodpipe binary")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "tour.md"))
    ap.add_argument("--timeout", type=float, default=120, help="seconds one command may take")
    ap.add_argument(
        "--names",
        metavar="PREFIX",
        help="run with a topic, schema and group of fresh names of their own (PREFIX-...) and "
        "compare as if they were the defaults (for README.md)",
    )
    ap.add_argument(
        "--record",
        metavar="FILE",
        help="for writing the tour: compare nothing, go on after a mismatch, and write the doc "
        "with every command's actual output to FILE (then put back the `...` placeholders)",
    )
    args = ap.parse_args()

    binary = Path(args.bin).resolve()
    if binary.name != "foodpipe" or not os.access(binary, os.X_OK):
        sys.exit(f"tour-check: FAIL: {binary} is not an executable named foodpipe (build it first)")
    doc_text = Path(args.doc).read_text()
    steps = parse(doc_text)
    if not steps:
        sys.exit(f"tour-check: FAIL: no console block with a command in {args.doc}")

    env = {k: v for k, v in os.environ.items() if not k.startswith("FOODPIPE_")}
    env["PATH"] = f"{binary.parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env.pop("RUST_LOG", None)
    preflight(env)
    substitutions = []
    if args.names:
        if not re.fullmatch(r"[a-z][a-z0-9]*", args.names):
            sys.exit(f"tour-check: FAIL: --names {args.names!r} must be lowercase letters and digits")
        drop_old_schemas(args.names)
        substitutions = isolate(env, args.names)
    else:
        drop_old_schemas("tour")

    print(f"tour-check: {len(steps)} commands from {os.path.relpath(args.doc, ROOT)}, foodpipe = {binary}")
    started = time.monotonic()
    shell = Shell(env)
    failed = None
    outputs = []
    try:
        for lineno, command, expected in steps:
            t0 = time.monotonic()
            status, out = shell.run(command, args.timeout)
            out = write_back(out, substitutions)
            took = time.monotonic() - t0
            first = command.splitlines()[0]
            outputs.append(out)
            if args.record:
                mark = "ok" if status == 0 and output_matches(trim(expected), trim(out)) else f"DIFF (exit {status})"
                print(f"tour-check: {mark}  {took:5.1f}s  line {lineno}: $ {first}")
                if status is None:
                    break
                continue
            if status is None:
                failed = (lineno, command, f"did not finish within {args.timeout:.0f} s", expected, out)
                break
            if status != 0:
                failed = (lineno, command, f"exited {status}", expected, out)
                break
            if not output_matches(trim(expected), trim(out)):
                failed = (lineno, command, "printed something else", expected, out)
                break
            print(f"tour-check: ok  {took:5.1f}s  line {lineno}: $ {first}")
    finally:
        shell.close()
    total = time.monotonic() - started
    if args.record:
        lines = doc_text.splitlines()
        new = []
        at = 0
        for (start, after_command, after_output), out in zip(spans, outputs):
            new.extend(lines[at:after_command])
            new.extend(trim(out))
            at = after_output
        new.extend(lines[at:])
        Path(args.record).write_text("\n".join(new) + "\n")
        print(f"tour-check: wrote {args.record} in {total:.1f} s")
        return
    if failed:
        lineno, command, why, expected, out = failed
        print(f"tour-check: FAIL at {os.path.relpath(args.doc, ROOT)} line {lineno}: $ {command}\n  {why}", file=sys.stderr)
        print("--- expected", file=sys.stderr)
        print("\n".join(trim(expected)), file=sys.stderr)
        print("--- got", file=sys.stderr)
        print("\n".join(trim(out)), file=sys.stderr)
        print(f"tour-check: failed after {total:.1f} s", file=sys.stderr)
        sys.exit(1)
    print(f"tour-check: all {len(steps)} commands matched in {total:.1f} s")


if __name__ == "__main__":
    main()
