#!/usr/bin/env python3
"""Checks that every relative link in README.md, ARCHITECTURE.md and
docs/*.md points at a file that exists, and its #anchor (if any) at a
heading of that file (`make readme-check`, part of `make test`).

    python3 scripts/doc_links.py [FILE.md ...]

Anchors are made from headings as GitHub makes them: lower case, every
character but letters, digits, spaces, `-` and `_` dropped, spaces turned
into `-`, and `-1`, `-2` ... after a repeated one. Links and headings inside
fenced code blocks do not count; http(s) and mailto links are not fetched.
Exit 0 when every link resolves; 1 with each broken one listed otherwise.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path):
    seen = {}
    out = set()
    for _, line in prose_lines(path.read_text()):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def main():
    files = [Path(f).resolve() for f in sys.argv[1:]] or [
        ROOT / "README.md",
        ROOT / "ARCHITECTURE.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]
    broken = []
    count = 0
    cache = {}
    for doc in files:
        # The prose as one text (code blocks blanked, line numbers kept), so
        # that a link whose text wraps onto the next line is seen; inline
        # code spans are not links.
        lines = doc.read_text().splitlines()
        prose = [""] * len(lines)
        for n, line in prose_lines("\n".join(lines)):
            prose[n - 1] = re.sub(r"`[^`\n]*`", lambda c: " " * len(c.group(0)), line)
        text = "\n".join(prose)
        for m in LINK.finditer(text):
            n = text.count("\n", 0, m.start(1)) + 1
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            count += 1
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(ROOT)}:{n}: {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
                continue
            if anchor:
                if dest.suffix != ".md" or dest.is_dir():
                    broken.append(f"{where}: an anchor into a file that is not markdown")
                    continue
                if dest not in cache:
                    cache[dest] = anchors(dest)
                if anchor not in cache[dest]:
                    broken.append(f"{where}: no heading makes #{anchor}")
    for b in broken:
        print(f"doc-links: BROKEN {b}", file=sys.stderr)
    if broken:
        print(f"doc-links: {len(broken)} of {count} relative links broken", file=sys.stderr)
        sys.exit(1)
    print(f"doc-links: all {count} relative links in {len(files)} files resolve")


if __name__ == "__main__":
    main()
