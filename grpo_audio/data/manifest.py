"""``load_manifest``: a JSONL manifest's rows (``AudioQuestion`` of ``grpo_audio.data.rows``) without decoding
their audio.

Manifest row fields (format ``jsonl`` of ``grpo_audio.data.formats``): ``id`` (str or int, unique), ``audio`` (path,
relative to the manifest's directory unless absolute), ``question`` (str), ``choices`` (list of >= 2 str),
``answer`` (the text of one choice, or its 0-based index), and any other fields, kept as metadata and passed to the
reward functions.
"""

from __future__ import annotations

from pathlib import Path

from grpo_audio.data.formats import read_rows
from grpo_audio.data.row_rules import bad_rows_message, split_by_rules
from grpo_audio.data.rows import AudioQuestion, DataError, RowProblem


def load_manifest(path: str | Path, allow_unlabeled: bool = False) -> list[AudioQuestion]:
    """The rows of the JSONL manifest ``path`` (a synthetic set, or any ``jsonl`` file), each audio file checked to
    exist but not decoded (``grpo_audio.data.sources`` applies the audio policy; this is for tools and tests).

    Rows go through the same reader as ``data.source: jsonl`` (``formats.read_rows``) and the same rules
    (``row_rules``: a gold answer unless ``allow_unlabeled``, no misspelled answer key). Every bad row is collected:
    one ``DataError`` names the first few (manifest, line and what is wrong) and how many there are.
    """
    manifest = Path(path)
    problems: list[RowProblem] = []
    with_audio = []
    for item in read_rows("jsonl", manifest, problems=problems):
        if Path(item.row.audio).is_file():
            with_audio.append(item)
        else:
            base = manifest.resolve().parent  # what formats.read_rows read a relative audio path against
            message = (
                f"{item.where}: row {item.row.id!r}: audio file not found: {item.row.audio} "
                f"(relative audio paths are read from the manifest's directory {base})"
            )
            problems.append(RowProblem(item.where, "missing_file", message, item.row.id))
    rows, bad = split_by_rules(with_audio, problems, "jsonl", allow_unlabeled)
    if bad:
        raise DataError(
            bad_rows_message(manifest, [b.problem for b in bad], "grpo-audio data check lists every problem")
        )
    if not rows:
        raise DataError(f"{manifest}: no rows")
    return [item.row for item in rows]
