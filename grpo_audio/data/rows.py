"""The row every data source becomes and the ways a row can be bad: shared by every reader of ``grpo_audio.data``.

``AudioQuestion`` is the one row shape (``id, audio, question, choices, answer, metadata``); ``SourceRow`` pairs it
with where it came from. ``DataError`` is the error bad input raises. A row that cannot be used is a ``RowProblem``,
reported through a ``RowReporter``: with no problem list the first problem raises ``DataError``, with a list every
problem is collected and its row left out (``grpo-audio data check``, ``data.on_bad_row``).

This module imports nothing else of ``grpo_audio.data``, so that every other module of the package can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class SourceRow:
    """A parsed row and where it came from (``file:line`` for JSONL, ``file[index]`` for a JSON array)."""

    row: AudioQuestion
    where: str


@dataclass(frozen=True)
class RowProblem:
    """A row that cannot be used. ``kind``: bad_json, not_object, missing_field, bad_field, empty_choices,
    answer_not_in_choices, duplicate_id (and the rule kinds of ``row_rules``). ``message`` is complete (starts with
    ``where``)."""

    where: str
    kind: str
    message: str
    row_id: str | None = None


class RejectedRowError(Exception):
    """The current row was reported as a problem and is left out (raised by ``RowReporter``, caught per row)."""


class RowReporter:
    """Reports a row problem: raises ``DataError`` when ``problems`` is None, else appends a ``RowProblem`` to it
    and raises ``RejectedRowError`` so that the caller moves on to the next row."""

    def __init__(self, problems: list[RowProblem] | None) -> None:
        self.problems = problems

    def __call__(self, where: str, kind: str, detail: str, row_id: str | None = None) -> None:
        message = f"{where}: {detail}" if row_id is None else f"{where}: row {row_id!r}: {detail}"
        if self.problems is None:
            raise DataError(message)
        self.problems.append(RowProblem(where, kind, message, row_id))
        raise RejectedRowError
