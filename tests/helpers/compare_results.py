"""Compare two detfold result folders file by file (bytes), for refactors that must keep outputs.

    python tests/helpers/compare_results.py OLD/results NEW/results [--rename OLD_PATH=NEW_PATH ...]

Compares every file under folds/, predict/, eval/, ensemble/, analysis/ and summary.json of the
old folder with the file of the same relative path (or its renamed path) in the new one, and
prints one line per file: same, differs (with the first differing line of a text file) or
missing. Exits 1 when any file differs or is missing on either side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMPARED = ("folds", "predict", "eval", "ensemble", "analysis", "summary.json")


def files_under(root: Path) -> list[str]:
    """Relative paths of the compared files under ``root``."""
    found = []
    for name in COMPARED:
        path = root / name
        if path.is_file():
            found.append(name)
        elif path.is_dir():
            found += [str(p.relative_to(root)) for p in sorted(path.rglob("*")) if p.is_file()]
    return found


def first_difference(a: bytes, b: bytes) -> str:
    """The first differing line of two texts, or the first differing byte offset of binaries."""
    try:
        lines_a, lines_b = a.decode().splitlines(), b.decode().splitlines()
    except UnicodeDecodeError:
        offset = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return f"bytes differ from offset {offset} ({len(a)} vs {len(b)} bytes)"
    for i, (x, y) in enumerate(zip(lines_a, lines_b, strict=False)):
        if x != y:
            return f"line {i + 1}: {x[:100]!r} vs {y[:100]!r}"
    return f"{len(lines_a)} vs {len(lines_b)} lines"


def compare(old: Path, new: Path, renames: dict[str, str]) -> list[tuple[str, str]]:
    """(path, verdict) for every compared file of either folder."""
    rows, seen_new = [], set()
    for rel in files_under(old):
        target = renames.get(rel, rel)
        seen_new.add(target)
        if not (new / target).is_file():
            rows.append((rel, f"missing in {new} as {target}"))
            continue
        a, b = (old / rel).read_bytes(), (new / target).read_bytes()
        label = rel if target == rel else f"{rel} -> {target}"
        rows.append((label, "same" if a == b else "differs: " + first_difference(a, b)))
    rows += [(rel, f"missing in {old}") for rel in files_under(new) if rel not in seen_new]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rename", action="append", default=[], metavar="OLD_PATH=NEW_PATH")
    args = parser.parse_args(argv)
    renames = dict(spec.split("=", 1) for spec in args.rename)
    rows = compare(args.old, args.new, renames)
    for rel, verdict in rows:
        print(f"{verdict.split(':')[0]:8} {rel}" + (f"  ({verdict.split(': ', 1)[1]})" if ": " in verdict else ""))
    bad = [r for r in rows if r[1] != "same"]
    print(f"{len(rows) - len(bad)} of {len(rows)} files byte-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
