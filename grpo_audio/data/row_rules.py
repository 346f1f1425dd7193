"""Rules a parsed row must meet beyond its format's own fields; shared by training, evaluation, the synthetic held-out
set, ``load_manifest`` and ``grpo-audio data check``.

* A gold answer. A row without one is a bad row (``missing_answer``) unless ``data.allow_unlabeled`` is set; then
  only rewards that do not need the answer score it (the accuracy reward returns None, "not applicable").
* Extra keys. A key that the row's format does not read and the harness does not name (``CATEGORY_KEYS``) is kept as
  row metadata: rewards of one's own may read it. One that closely resembles an answer key (``answr``, ``Answer``;
  difflib ratio >= 0.8 after case folding) while the row has no gold answer is a bad row (``misspelled_key``), also
  with ``allow_unlabeled``: a typo must not turn a labelled row into an unlabelled one. Other look-alikes
  (``categroy``) leave the row correct, so they are warnings (training) and notes (``data check``), not errors:
  benchmark files carry extra fields of their own (MMSU's ``sub-sub-category``), and refusing those would refuse the
  benchmark.

The known keys of each format mirror what ``grpo_audio.data.formats`` reads.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from typing import NamedTuple

from grpo_audio.data.formats import CATEGORY_KEYS
from grpo_audio.data.rows import AudioQuestion, RowProblem, SourceRow

MMSU_CHOICE_KEYS = tuple(f"choice_{c}" for c in "abcd")  # and choice_e.. when a row has more options
# The keys each format reads (the ``hf`` audio column is data.audio_column, added by ``known_keys``).
FORMAT_KEYS = {
    "jsonl": ("id", "audio", "question", "choices", "answer"),
    "hf": ("id", "question", "choices", "answer"),
    "mmau": ("id", "audio_id", "audio_path", "question", "choices", "answer"),
    "mmar": ("id", "audio_id", "audio_path", "question", "choices", "answer"),
    "mmsu": ("id", "audio_path", "audio", "audio_id", "question", "choices", *MMSU_CHOICE_KEYS, "answer_gt", "answer"),
    "avqa": ("id", "video_name", "audio", "audio_path", "question_text", "multi_choice", "answer"),
}
# Metadata fields the benchmarks document besides their slice fields (MMAU's test-mini JSON, github.com/Sakshi113/MMAU;
# MMSU's dataset card, huggingface.co/datasets/ddwang2000/MMSU): known, not extra, so that a benchmark file raises no
# look-alike warning (MMSU's sub-sub-category resembles sub-category).
DOCUMENTED_KEYS = {
    "mmau": ("dataset", "split"),
    "mmsu": ("sub-sub-category", "linguistics_sub_discipline"),
}
ANSWER_KEYS = ("answer", "answer_gt")
# Metadata the harness itself adds (AVQA's original wording, a truncated clip's original file, an evaluation row
# kept with its answer outside the choices).
HARNESS_KEYS = ("question_original", "audio_original", "answer_outside_choices")
ROW_REASONS = ("missing_answer", "misspelled_key")
SIMILARITY = 0.8
SHOWN = 3  # bad rows named in an error message


class BadRow(NamedTuple):
    """A row left out of the data and why; ``row`` is None when it could not even be parsed."""

    problem: RowProblem
    row: AudioQuestion | None


def known_keys(fmt: str, audio_column: str = "audio") -> tuple[str, ...]:
    """Keys of format ``fmt`` (``synthetic`` rows are ``jsonl``) that are not extra: read by the format or named by
    the harness."""
    fmt = "jsonl" if fmt == "synthetic" else fmt
    column = (audio_column,) if fmt in ("hf", "mmsu") else ()  # MMSU's release is a dataset with an audio column
    return FORMAT_KEYS[fmt] + column + DOCUMENTED_KEYS.get(fmt, ()) + CATEGORY_KEYS + HARNESS_KEYS


def closest_key(key: str, known: tuple[str, ...]) -> str | None:
    """The known key ``key`` most resembles (case-insensitive), or None."""
    folded = {k.casefold(): k for k in known}
    match = difflib.get_close_matches(key.casefold(), list(folded), n=1, cutoff=SIMILARITY)
    return folded[match[0]] if match else None


def extra_keys(row: AudioQuestion, known: tuple[str, ...]) -> list[str]:
    return [k for k in row.metadata if k not in known]


def row_problem(row: AudioQuestion, where: str, known: tuple[str, ...], allow_unlabeled: bool) -> RowProblem | None:
    """The rule ``row`` breaks (see the module docstring), or None."""
    if row.answer is not None:
        return None
    for key in extra_keys(row, known):
        close = closest_key(key, known)
        if close in ANSWER_KEYS:
            detail = f"unknown key {key!r} (did you mean {close!r}?) and no gold answer: the answer is misspelled"
            return RowProblem(where, "misspelled_key", f"{where}: row {row.id!r}: {detail}", row.id)
    if allow_unlabeled:
        return None
    return RowProblem(where, "missing_answer", f"{where}: row {row.id!r}: no gold answer", row.id)


def _position(where: str) -> int:
    """The line (JSONL) or index (JSON array) in ``where``, to merge problems into file order."""
    found = re.search(r"(?::(\d+)|\[(\d+)\])$", where)
    return int(found.group(1) or found.group(2)) if found else 0


def apply_row_rules(
    rows: list[SourceRow], parse_problems: list[RowProblem], data
) -> tuple[list[SourceRow], list[BadRow]]:
    """``split_by_rules`` with the recipe's data section ``data`` (its source, allow_unlabeled and audio_column)."""
    return split_by_rules(rows, parse_problems, data.source, data.allow_unlabeled, data.audio_column)


def split_by_rules(
    rows: list[SourceRow],
    parse_problems: list[RowProblem],
    fmt: str,
    allow_unlabeled: bool,
    audio_column: str = "audio",
) -> tuple[list[SourceRow], list[BadRow]]:
    """Split parsed ``rows`` of format ``fmt`` into those that meet the rules and the bad ones; ``parse_problems``
    (rows the format could not read) join the bad rows, all in file order."""
    known = known_keys(fmt, audio_column)
    kept, bad = [], [BadRow(p, None) for p in parse_problems]
    for item in rows:
        problem = row_problem(item.row, item.where, known, allow_unlabeled)
        if problem is None:
            kept.append(item)
        else:
            bad.append(BadRow(problem, item.row))
    bad.sort(key=lambda b: _position(b.problem.where))  # stable: rows of a dict-shaped JSON keep their order
    return kept, bad


def lookalike_keys(rows: list[SourceRow], data) -> dict[str, tuple[int, str | None]]:
    """Every extra key of ``rows`` -> (rows holding it, the known key it resembles or None)."""
    known = known_keys(data.source, data.audio_column)
    counts = Counter(k for item in rows for k in extra_keys(item.row, known))
    return {key: (n, closest_key(key, known)) for key, n in sorted(counts.items())}


def training_hint(problems: list[RowProblem]) -> str:
    """What a recipe can do about ``problems`` (for the end of a training error)."""
    hints = ["data.on_bad_row=skip leaves bad rows out"]
    if any(p.kind == "missing_answer" for p in problems):
        hints.append("data.allow_unlabeled=true trains on rows without an answer, with the rewards that need none")
    return "; ".join([*hints, "grpo-audio data check lists every problem"])


def bad_rows_message(source, problems: list[RowProblem], hint: str) -> str:
    """One line naming the first few bad rows (file:line and reason) and how many there are."""
    if len(problems) == 1:
        return f"{problems[0].message} ({hint})"
    shown = "; ".join(p.message for p in problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return f"{source}: {len(problems)} bad rows: {shown}{more} ({hint})"
