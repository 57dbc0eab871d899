"""The user documentation stays true to the schema, short, free of development history, and its
links resolve. Fast: reads files only, runs no Snakemake."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIG_DOC = REPO / "config" / "README.md"
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
USER_DOCS = [README, CONFIG_DOC, *DOCS, REPO / "tests" / "bench" / "README.md"]
README_MAX_LINES = 250

#: a placeholder segment of a documented path (models.NAME.epochs, audit.checks.CHECK.action)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: `a.b[].c`: a dotted key path in backticks; `[]` marks the items of a list
KEY_PATH = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*(?:\[\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\])?)*)`")
HISTORY = [
    re.compile(r"\bsessions? \d+", re.IGNORECASE),
    re.compile(r"\b(?:this|that|earlier|later|previous|last|next) session\b", re.IGNORECASE),
    re.compile(r"\bissues? #?\d{1,3}\b", re.IGNORECASE),
    re.compile(r"\brounds? \d+", re.IGNORECASE),
    re.compile(r"\bcommit\s+[0-9a-f]{7,40}\b", re.IGNORECASE),
    re.compile(r"\b[0-9a-f]{40}\b"),
    re.compile(r"\b20\d\d-(?:0[1-9]|1[0-2])\b"),  # a date: 2026-11, 2026-11-30
    re.compile(r"\bprevious code\b", re.IGNORECASE),
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` (#/$defs/...) merged in (the node's own keys win)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def schema_keys(node: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every key path of the schema: named properties, the branches of oneOf / anyOf, a mapping's
    free-named entries (additionalProperties / patternProperties) as NAME, a list's items as []."""
    node = _resolve(node, schema)
    for branch in (*node.get("oneOf", ()), *node.get("anyOf", ())):
        yield from schema_keys(branch, schema, prefix)
    for name, child in (node.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        yield from schema_keys(child, schema, path)
    free = [node.get("additionalProperties"), *(node.get("patternProperties") or {}).values()]
    for child in free:
        if isinstance(child, dict) and prefix:
            yield f"{prefix}.NAME"
            yield from schema_keys(child, schema, f"{prefix}.NAME")
    items = node.get("items")
    if isinstance(items, dict) and prefix:
        yield from schema_keys(items, schema, f"{prefix}[]")


def _matches(documented: str, key: str) -> bool:
    """Whether a documented path names a schema key; an upper-case segment stands for any one."""
    doc, real = documented.split("."), key.split(".")
    return len(doc) == len(real) and all(
        d == r or PLACEHOLDER.match(d.removesuffix("[]")) or PLACEHOLDER.match(r.removesuffix("[]"))
        for d, r in zip(doc, real, strict=True)
    )


def first_column_paths(text: str) -> list[tuple[int, str]]:
    """(line number, key path) of every backticked key path in a table's first column."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("|") or re.match(r"^\|[\s:|-]+$", line):
            continue
        first = re.split(r"(?<!\\)\|", line)[1]
        out += [(n, path) for path in KEY_PATH.findall(first)]
    return out


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def keys(schema) -> list[str]:
    return list(dict.fromkeys(schema_keys(schema, schema)))


def test_schema_walk_sees_every_shape(keys):
    """The walk reaches nested objects, $ref'd checks, oneOf branches, per-model settings and
    list items (so the coverage test below means what it says)."""
    for key in (
        "folds.weights.size_buckets",
        "audit.checks.tiny.threshold",
        "ensemble.fold_fusion.method",
        "models.NAME.epochs",
        "ensemble.external[].id_source",
        "predict.tta.scales",
    ):
        assert key in keys, f"the schema walk misses {key}"


def test_config_readme_documents_every_schema_key(keys):
    documented = set(KEY_PATH.findall(CONFIG_DOC.read_text(encoding="utf-8")))
    missing = [k for k in keys if not any(_matches(d, k) for d in documented)]
    assert not missing, f"{CONFIG_DOC.relative_to(REPO)} does not document schema key(s) {missing}"


def test_config_readme_documents_only_schema_keys(schema, keys):
    top = set(schema["properties"])
    unknown = [
        f"{CONFIG_DOC.relative_to(REPO)}:{n}: `{path}`"
        for n, path in first_column_paths(CONFIG_DOC.read_text(encoding="utf-8"))
        if path.split(".")[0].removesuffix("[]") in top and not any(_matches(path, k) for k in keys)
    ]
    assert not unknown, f"documented key(s) not in the schema: {unknown}"


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}"


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_development_history(doc):
    hits = [
        f"{doc.relative_to(REPO)}:{n}: {m.group(0)!r}"
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1)
        for pattern in HISTORY
        for m in pattern.finditer(line)
    ]
    assert not hits, f"development history belongs in git log, not in user docs: {hits}"


def anchors(doc: Path) -> set[str]:
    """The heading anchors of a markdown page, as GitHub makes them."""
    text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    titles = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    """Every relative link names an existing file, and its #anchor a heading of that page."""
    broken = []
    for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # a web address
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{doc.relative_to(REPO)}:{n}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{doc.relative_to(REPO)}:{n}: {target} (no such heading)")
    assert not broken, f"broken link(s): {broken}"
