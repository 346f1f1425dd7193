"""Small file helpers shared by the whole harness: JSON Lines and SHA-256 checksums. Standard library only.

JSON Lines (``.jsonl``): one JSON value per line, UTF-8. Readers skip blank lines and name a bad line by
``where = "<file>:<line>"`` (1-based line number, the file as the caller spelled it). Writers put one
``json.dumps(value, ensure_ascii=False)`` per line, each ending in ``\\n``.

Checksums: ``sha256_file`` is the hex SHA-256 of a file's bytes; for a directory (a saved dataset) it hashes, in
sorted order, each file's path relative to the directory, a NUL byte and the file's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20  # bytes read at a time while hashing: large clips and datasets never sit in memory whole


class JsonlError(ValueError):
    """A JSONL line that is not valid JSON. ``where``: ``file:line``; ``reason``: ``not valid JSON (<parser's
    complaint>)``; the message is ``<where>: <reason>``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def _parsed_lines(text: str, name: str) -> Iterator[tuple[str, str, Any]]:
    """``(where, line, value)`` for every non-blank line of ``text``; ``value`` is a ``JsonlError`` for a bad line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            yield where, line, json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, line, JsonlError(where, f"not valid JSON ({exc.msg})")


def parse_jsonl(text: str, name: str, bad_lines: list[JsonlError] | None = None) -> list[tuple[str, Any]]:
    """``(where, value)`` for every non-blank line of ``text`` (the contents of the file ``name``).

    A line that is not valid JSON raises ``JsonlError``; with a ``bad_lines`` list it is appended there instead and
    left out, so that a caller can collect every problem of a file in one pass.
    """
    records = []
    for where, _, value in _parsed_lines(text, name):
        if isinstance(value, JsonlError):
            if bad_lines is None:
                raise value
            bad_lines.append(value)
            continue
        records.append((where, value))
    return records


def read_jsonl(path: str | Path, bad_lines: list[JsonlError] | None = None) -> list[tuple[str, Any]]:
    """``(where, value)`` for every non-blank line of the UTF-8 file ``path``; bad lines as in ``parse_jsonl``.
    ``OSError`` / ``UnicodeDecodeError`` when the file cannot be read."""
    return parse_jsonl(Path(path).read_text(encoding="utf-8"), str(path), bad_lines)


def jsonl_line(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """One JSONL line for ``value``, newline included; ``default`` as in ``json.dumps`` (for numpy scalars...)."""
    return json.dumps(value, ensure_ascii=False, default=default) + "\n"


def write_jsonl(path: str | Path, values: Iterable[Any], default: Callable[[Any], Any] | None = None) -> None:
    """Write ``values`` to ``path``, one line each, replacing what the file held (an empty file for no values)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        fh.writelines(jsonl_line(v, default) for v in values)


def append_jsonl(path: str | Path, values: Iterable[Any], default: Callable[[Any], Any] | None = None) -> None:
    """Append ``values`` to ``path`` (created when missing), one line each."""
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.writelines(jsonl_line(v, default) for v in values)


def filter_jsonl(path: str | Path, keep: Callable[[Any], bool]) -> None:
    """Keep only the lines of ``path`` whose value passes ``keep``, each kept line's text unchanged (blank lines go).

    The file is rewritten through ``<name>.tmp`` and a rename, so a crash leaves either the old or the new file.
    Raises ``JsonlError`` for a line that is not valid JSON (the file is then left as it was).
    """
    path = Path(path)
    kept = []
    for _, line, value in _parsed_lines(path.read_text(encoding="utf-8"), str(path)):
        if isinstance(value, JsonlError):
            raise value
        if keep(value):
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def _hash_file_into(digest, path: Path) -> None:
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, or of a directory's files (see the module docstring for the layout)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file_into(digest, path)
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        _hash_file_into(digest, file)
    return digest.hexdigest()
