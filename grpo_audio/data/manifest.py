"""JSONL manifests: one audio question per line, validated row by row.

Row fields: ``id`` (str, unique), ``audio`` (path, relative to the manifest's directory unless absolute),
``question`` (str), ``choices`` (list of >= 2 str), ``answer`` (the text of one choice, or its 0-based index),
and any other fields, kept as metadata (strings/numbers) and passed to the reward functions.
The rules of ``grpo_audio.data.row_rules`` apply too: a row without a gold answer is bad unless ``allow_unlabeled``,
and so is one whose answer key looks misspelled. Every bad row is collected: one ``DataError`` names the first few
(manifest, line and what is wrong) and how many there are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad dataset input; the message names the file, the row and what is wrong."""


@dataclass
class AudioQuestion:
    id: str
    audio: str  # absolute path
    question: str
    choices: list[str]
    answer: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def load_manifest(path: str | Path, allow_unlabeled: bool = False) -> list[AudioQuestion]:
    """The rows of a JSONL manifest, audio files checked to exist (the synthetic sets, held-out split included)."""
    from grpo_audio.data.formats import RowProblem  # imported here: formats imports this module
    from grpo_audio.data.row_rules import bad_rows_message, known_keys, row_problem

    manifest = Path(path)
    base = manifest.resolve().parent
    known = known_keys("jsonl")
    rows: list[AudioQuestion] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    with manifest.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{lineno}"
            try:
                row = _parse_line(line, where, base, seen)
            except DataError as exc:
                problems.append(RowProblem(where, "bad_row", str(exc)))
                continue
            problem = row_problem(row, where, known, allow_unlabeled)
            if problem is not None:
                problems.append(problem)
                continue
            seen[row.id] = lineno
            rows.append(row)
    if problems:
        raise DataError(bad_rows_message(manifest, problems, "grpo-audio data check lists every problem"))
    if not rows:
        raise DataError(f"{manifest}: no rows")
    return rows


def _parse_line(line: str, where: str, base: Path, seen: dict[str, int]) -> AudioQuestion:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    row = _parse_row(obj, where, base)
    if row.id in seen:
        raise DataError(f"{where}: duplicate id {row.id!r} (first on line {seen[row.id]})")
    return row


def _parse_row(obj: dict[str, Any], where: str, base: Path) -> AudioQuestion:
    for key in ("id", "audio", "question", "choices"):
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(obj["id"], (str, int)):
        raise DataError(f"{where}: field 'id' must be a string")
    if not isinstance(obj["question"], str) or not obj["question"].strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string")
    choices = obj["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: field 'choices' must be a list of at least 2 strings")
    answer = obj.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(choices):
            raise DataError(f"{where}: answer index {answer} is outside the {len(choices)} choices")
        answer = choices[answer]
    elif isinstance(answer, str):
        if answer not in choices:
            raise DataError(f"{where}: answer {answer!r} is not one of the choices {choices}")
    elif answer is not None:
        raise DataError(f"{where}: field 'answer' must be a choice text, a choice index or null")
    audio = Path(obj["audio"])
    audio = audio if audio.is_absolute() else base / audio
    if not audio.is_file():
        raise DataError(f"{where}: audio file not found: {audio}")
    metadata = {k: v for k, v in obj.items() if k not in ("id", "audio", "question", "choices", "answer")}
    return AudioQuestion(str(obj["id"]), str(audio), obj["question"], list(choices), answer, metadata)
