"""Atomic, deterministic file writing: a crash never leaves a complete-looking output."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success. A failed
    write (disk full, file size limit, unwritable folder, a folder in its place) raises
    ``OSError`` naming ``path``, never the temporary file; the temporary file is removed and an
    earlier ``path`` is left as it was."""
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not str(err.strerror or "").startswith(f"cannot write {target}:"):
            reason = _blocked(target) or err.strerror or str(err)  # say which output failed, once
            raise OSError(err.errno, f"cannot write {target}: {reason}; nothing written under that name") from err
        raise


def _blocked(target: Path) -> str | None:
    """What stands in the way of writing the file ``target``: a folder of that name, or a file
    where one of its folders should be (None: something else)."""
    if target.is_dir():
        return "it is a folder"
    for parent in target.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, not a folder"
    return None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_open(path) as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps_json(data: Any) -> bytes:
    """``data`` as UTF-8 JSON bytes, formatted stably (orjson: indent 2, keys in insertion order,
    shortest round-trip floats, a final newline): the same data always gives the same bytes.
    NaN and infinities are refused with ``ValueError`` (orjson alone would write ``null``)."""
    text = orjson.dumps(data, option=JSON_OPTIONS)
    if b"null" in text:  # rare in detfold's outputs: only then look for a non-finite number
        where = _non_finite(data, "$")
        if where is not None:
            raise ValueError(f"cannot write JSON: {where} is not a finite number")
    return text


def _non_finite(data: Any, where: str) -> str | None:
    """Where in ``data`` (``where`` its name) the first NaN or infinity is; None when nowhere."""
    if isinstance(data, dict | list | tuple):
        items = data.items() if isinstance(data, dict) else enumerate(data)
        found = (_non_finite(value, f"{where}[{key!r}]") for key, value in items)
        return next((hit for hit in found if hit is not None), None)
    if isinstance(data, float):
        return None if math.isfinite(data) else f"{where} = {data}"
    import numpy as np

    if isinstance(data, np.ndarray) and data.dtype.kind == "f" and not np.isfinite(data).all():
        return f"{where} (an array) = {data[~np.isfinite(data)][0]}"
    return None


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON atomically (:func:`dumps_json`: byte-for-byte reproducible; the
    last line is the closing bracket alone, which :func:`looks_complete` checks)."""
    write_bytes(path, dumps_json(data))


def read_input(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a user's file; ``OSError`` naming it when it is missing, a folder or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: is a folder, expected a file") from None
    except OSError as err:
        raise OSError(err.errno, f"{path}: cannot read it ({err.strerror or err})") from None


def decode_text(raw: bytes, path: str | os.PathLike[str]) -> str:
    """``raw`` as UTF-8 text (a byte-order mark dropped); ``ValueError`` naming the file and the
    byte offset of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        utf16 = " (it is UTF-16)" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
        raise ValueError(
            f"{path}: not UTF-8 text{utf16} ({err.reason} at byte {err.start}: "
            f"{raw[err.start : err.start + 1]!r}); save it as UTF-8"
        ) from None


def read_text(path: str | os.PathLike[str]) -> str:
    """A user's text file (CSV, a list of names) as UTF-8: errors name the file (:func:`read_input`,
    :func:`decode_text`)."""
    return decode_text(read_input(path), path)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; raise ``ValueError`` naming the file and position when it is not JSON.
    A file orjson refuses is read by Python's ``json``, for its error message and its leniency
    (a NaN in a user's file is then refused by name by the checks that follow)."""
    raw = read_input(path)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    text = decode_text(raw, path)
    if not text.strip():
        raise ValueError(f"{path}: empty file, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        stripped = text.rstrip()
        looks_like_json = stripped.startswith(("{", "["))
        truncated = looks_like_json and (err.pos >= len(stripped) or not stripped.endswith(("}", "]")))
        what = "truncated JSON (the file ends early)" if truncated else "not valid JSON"
        raise ValueError(f"{path}: {what}: {err.msg} at line {err.lineno} column {err.colno}") from None


def read_product(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file that an earlier job of this workflow wrote. When it is corrupt (cut
    short, not JSON), it is not trusted: it is deleted, so that the next ``snakemake`` run
    redoes the job that wrote it, and ``ValueError`` says so."""
    try:
        return read_json(path)
    except ValueError as err:
        Path(path).unlink(missing_ok=True)
        raise ValueError(f"{err}; deleted it: run snakemake again to redo the job that wrote it") from None


def looks_complete(path: str | os.PathLike[str]) -> bool:
    """Whether a file detfold wrote is whole, from its first and last bytes: a ``.json`` of
    :func:`write_json` ends with the bracket it opens with alone on the last line (nested ones
    are indented); a ``.pth`` is a complete zip archive (torch.save's). Other files: True."""
    import zipfile

    path = Path(path)
    if path.suffix == ".pth":
        return zipfile.is_zipfile(path)
    if path.suffix != ".json":
        return True
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(1)
        handle.seek(max(0, size - 64))
        tail = handle.read()
    closer = {b"[": b"]", b"{": b"}"}.get(head)
    if closer is None or not tail.endswith(b"\n"):
        return False
    last_line = tail[:-1].rsplit(b"\n", 1)[-1]
    return last_line == closer or last_line == head + closer  # "]" / "}", or an empty "[]" / "{}"


def incomplete_products(results: str | os.PathLike[str] = "results") -> list[Path]:
    """The JSON files and fold checkpoints under ``results`` (mmengine's work dirs aside) that
    :func:`looks_complete` rejects (a crash of an older version, a bad copy), sorted. Reads only."""
    root = Path(results)
    if not root.is_dir():
        return []
    candidates = [p for p in root.rglob("*.json") if "work" not in p.relative_to(root).parts]
    candidates += list(root.glob("train/*/fold*/model.pth"))
    return [path for path in sorted(candidates) if path.is_file() and not looks_complete(path)]


def mark_outdated(path: str | os.PathLike[str]) -> None:
    """Date ``path`` 1970 so that Snakemake redoes its job and everything downstream (it does not
    rerun a deleted intermediate file whose consumers are up to date)."""
    os.utime(path, (0, 0))


def files_by_model(models: Sequence[str], files: Sequence[str]) -> dict[str, list[str]]:
    """Split expand()'s model-major file list (each model's K fold files together) by model."""
    if not models or len(files) % len(models):
        raise ValueError(f"{len(files)} files cannot be split evenly over models {list(models)}")
    k = len(files) // len(models)
    return {m: list(files[i * k : (i + 1) * k]) for i, m in enumerate(models)}


def _yaml_error(err: Any) -> str:
    """PyYAML's error as 'line L, column C: what is wrong (while ...)'."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(err, "context", None)
    hint = "; YAML indents with spaces, never tabs" if "\\t" in problem else ""
    return f"{where}{problem}" + (f" ({context})" if context else "") + hint


def _duplicate_keys(node: Any, source: str, parents: list[Any]) -> Iterator[str]:
    """A key given twice in one mapping, anywhere under ``node`` (YAML keeps the last silently)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else repr(key)
            line = key.start_mark.line + 1
            if key.tag != "tag:yaml.org,2002:merge" and (key.tag, name) in seen:
                dotted = ".".join(map(str, [*parents, name]))
                yield (
                    f"{source}: key {dotted!r} is given twice (line {seen[(key.tag, name)]} and line {line}): "
                    "the last one would silently win; keep one"
                )
            seen.setdefault((key.tag, name), line)
            yield from _duplicate_keys(value, source, [*parents, name])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, source, [*parents, i])


def parse_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    """YAML text (safe: plain data only) and its problems, each naming ``source``: not YAML
    (with the line, column and what is wrong; the data is then None), or a key given twice in
    one mapping (with both lines: YAML itself would keep the last one without a word)."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return None, [f"{source}: not valid YAML: {_yaml_error(err)}"]
    return data, list(_duplicate_keys(root, source, []))
