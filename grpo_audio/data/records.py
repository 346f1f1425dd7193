"""Data files -> raw records ``(where, object)``, the row problems found on the way, and the format guess.

A record is one JSON value of a data file, not yet checked, with ``where`` naming it: ``file:line`` (JSONL, 1-based
line), ``file[index]`` (JSON array, 0-based) or ``file['key']`` (a JSON object mapping ids to objects). Turning a
record into an ``AudioQuestion`` is ``grpo_audio.data.formats``'s job; both report problems through the
``RowReporter`` of ``grpo_audio.data.rows``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grpo_audio.data.hf import HF_SUFFIXES, MMSU_COLUMNS, hf_column_names
from grpo_audio.data.rows import DataError, RejectedRowError, RowReporter
from grpo_audio.files import JsonlError, parse_jsonl
from grpo_audio.paths import tried


def read_records(path: str | Path, report: RowReporter | None = None) -> list[tuple[str, Any]]:
    """``(where, object)`` for every record of a JSON array/object or JSONL file.

    ``.jsonl`` is read line by line (a malformed line is a ``bad_json`` row problem); ``.json`` is one document (an
    array of objects, or an object mapping ids to objects), falling back to JSONL when it holds several documents. A
    file that cannot be read or parsed at all raises ``DataError``.
    """
    report = report or RowReporter(None)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{file}: file not found{tried(file)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read ({exc})") from None
    if file.suffix.lower() != ".jsonl" and text.lstrip()[:1] in ("[", "{"):
        document = _json_document(file, text)
        if document is not None:
            return document
    bad_lines: list[JsonlError] = []
    records = parse_jsonl(text, str(file), bad_lines)
    for bad in bad_lines:
        try:
            report(bad.where, "bad_json", bad.reason)
        except RejectedRowError:
            continue
    return records


def _json_document(file: Path, text: str) -> list[tuple[str, Any]] | None:
    """The records of ``text`` read as one JSON document, or None when it should be read as JSONL instead (several
    documents, or one that is neither an array nor an id -> object mapping, in a file not named ``.json``)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        if file.suffix.lower() == ".json" and exc.msg != "Extra data":
            raise DataError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return None
    if isinstance(document, list):
        return [(f"{file}[{i}]", obj) for i, obj in enumerate(document)]
    if isinstance(document, dict) and document and all(isinstance(v, dict) for v in document.values()):
        return [(f"{file}[{key!r}]", {"id": key, **obj}) for key, obj in document.items()]
    if file.suffix.lower() == ".json":
        raise DataError(f"{file}: expected a JSON array of question objects, got {type(document).__name__}")
    return None


def detect_format(path: str | Path) -> str | None:
    """Guess the format of a data file or directory from its first record (a dataset: from its column names); None
    when it cannot tell."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in HF_SUFFIXES:
        return "mmsu" if set(MMSU_COLUMNS) & hf_column_names(p) else "hf"
    records = read_records(p, RowReporter([]))
    if not records:
        raise DataError(f"{p}: no rows")
    obj = next((o for _, o in records if isinstance(o, dict)), None)
    if obj is None:
        return None
    keys = set(obj)
    if {"question_text", "multi_choice"} <= keys:
        return "avqa"
    if "answer_gt" in keys or "choice_a" in keys:
        return "mmsu"
    if "audio_id" in keys or "audio_path" in keys:
        return "mmar" if "modality" in keys else "mmau"
    if "audio" in keys and "choices" in keys:
        return "jsonl"
    return None
