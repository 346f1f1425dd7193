"""Dataset formats read into the one row shape, ``AudioQuestion(id, audio, question, choices, answer, metadata)``.

``data.source`` names the format. Audio paths that are not absolute are resolved against ``root`` (default: the
directory holding the data file). Fields a format does not consume are kept in ``metadata`` (rewards and the
per-category evaluation tables read them).

* ``jsonl``: one object per line, ``{"id", "audio", "question", "choices", "answer", ...}`` (see
  ``grpo_audio.data.manifest``): ``answer`` is the text of a choice, its 0-based index, or null (no gold answer).
* ``mmau`` / ``mmar``: the benchmark's JSON array of ``{"id", "audio_id", "question", "choices", "answer",
  "dataset", "task", "split", "category", "sub-category", "difficulty"}`` (MMAR: ``modality``, ``category``,
  ``sub-category``, ...). The audio path is ``audio_id`` (MMAR files name it ``audio_path``; both are accepted),
  relative to ``root``. ``answer`` is the text of one choice and is required.
* ``mmsu``: the official release, a Hugging Face dataset (parquet/arrow files, a directory of them, or a
  ``save_to_disk`` directory) with the columns ``id, audio, question, choice_a, choice_b, choice_c, choice_d,
  answer_gt, task_name, category, sub-category, sub-sub-category, linguistics_sub_discipline``, where ``audio`` (the
  ``audio_column``) is an Audio feature read as under ``hf``; or a JSON array / JSONL export of the same rows with
  ``audio_path`` (or ``audio`` / ``audio_id``) in place of the audio column. A ``choices`` list may stand in for
  ``choice_a``.. (and ``choice_e``.. are read when present). Two-option items leave ``choice_c``/``choice_d`` empty
  (``""`` or null): trailing empty options are not choices, as in the official code; an empty option followed by a
  non-empty one is a bad row. The answer is the text of a choice, an option letter ("B") that is not itself a
  choice text, or a 0-based index. ``task_name``, ``category``, ``sub-category`` and the rest stay as metadata.
  Audio paths: the exports write ``/audio/<id>.wav``, relative to the dataset root despite the leading slash (the
  official code strips it and joins the root). So with ``root`` (``data.root``) set, an MMSU path starting with
  ``/`` is relative to it; without ``root`` it is absolute, and when that file is missing while the same path under
  the data file's directory exists, the file is refused with a message asking for ``data.root``.
* ``avqa``: the AVQA JSON array of ``{"id", "video_name", "question_text", "multi_choice", "answer", ...}`` with
  ``answer`` a 0-based index into ``multi_choice`` (mapped to the option text). The audio is
  ``<root>/<video_name>.wav`` (the audio track extracted from the VGGSound video), or the row's ``audio`` /
  ``audio_path`` field when it has one.
  With ``replace_video`` (recipe ``data.avqa_replace_video``, default on) the word "video" becomes "audio" in the
  question, as R1-AQA and its peers do, since the model hears the clip and never sees the video; the case is kept
  (Video -> Audio, videos -> audios) and the original question is kept as ``metadata["question_original"]``.
* ``hf``: a Hugging Face dataset on disk: a ``save_to_disk`` directory (``load_from_disk``), or local
  parquet/json/jsonl/csv/arrow files (``load_dataset`` on the file or directory). Columns ``question``,
  ``choices``, ``answer`` (as in ``jsonl``), ``id`` (optional: the row index when absent) and the audio column
  (``audio_column``, default ``audio``). The audio column is read without decoding (``Audio(decode=False)``: decoding
  would need torchcodec): an entry with a file ``path`` and no ``bytes`` is used in place; embedded ``bytes`` are
  written once to ``cache_dir/<sha256>.<ext>`` (under the run directory); a decoded ``{"array", "sampling_rate"}``
  entry is written there as a 32-bit float WAV; a plain string is a path.

Slice fields (``CATEGORY_KEYS``: task, category, sub-category, difficulty, modality, task_name, question_type) are
normalised in the metadata: some MMAU rows carry ``"category": ["Sound"]``; a one-element list becomes its string, a
longer list its elements joined with ", " (an item of several categories is its own slice, named after all of
them), an empty list drops the field. Per-category tables and ``data check`` then see one value per category.

Ids: ``jsonl`` rows must carry one. In the benchmark formats and ``hf`` a row without an ``id`` gets its 0-based
position in the file as id (stable for a given file; the evaluation records the file's sha256).

Row problems (malformed JSON line, missing or mistyped field, empty choices, answer not among the choices,
duplicate id) are never dropped silently: with ``problems=None`` the first one raises ``DataError`` naming the file,
the line (JSONL) or array index (JSON), and the field; a list gets all of them (``grpo-audio data check``, and the
recipe's ``data.on_bad_row`` in ``grpo_audio.data.sources``). An
answer matches a choice exactly or, failing that, after case folding and whitespace collapsing (then the choice's
own text becomes the answer). Evaluation is the exception for a text answer outside the choices (the older
``MMAR-meta.json`` has 5 such rows, which the official evaluation scores, as wrong answers): with
``answers_outside_choices="keep"`` (what ``grpo-audio eval`` passes) the
row is kept with its answer text as given and ``metadata["answer_outside_choices"] = True``. Audio files are not
opened here: ``grpo_audio.data.sources`` decodes every clip and applies the recipe's policy for bad, short and long
clips.

Files are read into raw records by ``grpo_audio.data.records`` (which also guesses a file's format); Hugging Face
datasets are opened, and their inline audio cached, by ``grpo_audio.data.hf``. This module turns records into rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo_audio.data.hf import HF_SUFFIXES, MMSU_COLUMNS, AudioEntryError, cache_audio_entry, open_audio_dataset
from grpo_audio.data.records import read_records
from grpo_audio.data.rows import AudioQuestion, DataError, RejectedRowError, RowProblem, RowReporter, SourceRow
from grpo_audio.paths import tried

FORMATS = ("jsonl", "mmau", "mmar", "mmsu", "avqa", "hf")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Metadata fields that name a slice of a benchmark (MMAU: task, category, sub-category, difficulty; MMAR: modality;
# MMSU: task_name; AVQA: question_type): data check counts rows per value, eval reports accuracy per value.
CATEGORY_KEYS = ("task", "category", "sub-category", "difficulty", "modality", "task_name", "question_type")
ANSWER_POLICIES = ("error", "keep")
OUTSIDE_FLAG = "answer_outside_choices"  # metadata key of a kept row whose answer is not among its choices


# --- one row -----------------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _row_id(obj: dict, index: int, where: str, report: RowReporter, required: bool) -> str:
    if "id" not in obj or obj["id"] is None:
        if required:
            report(where, "missing_field", "missing field 'id'")
        return str(index)
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        report(where, "bad_field", f"field 'id' must be a non-empty string or an integer, got {value!r}")
    return str(value)


def _question(obj: dict, key: str, where: str, rid: str, report: RowReporter) -> str:
    if key not in obj:
        report(where, "missing_field", f"missing field {key!r}", rid)
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        report(where, "bad_field", f"field {key!r} must be a non-empty string", rid)
    return value


def _choices(value: Any, key: str, where: str, rid: str, report: RowReporter) -> list[str]:
    if value is None or (isinstance(value, list) and not value):
        report(where, "empty_choices", f"field {key!r} is empty; a question needs at least 2 choices", rid)
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        report(where, "bad_field", f"field {key!r} must be a list of at least 2 strings, got {value!r}", rid)
    return list(value)


def _answer(
    value: Any, choices: list[str], where: str, rid: str, report: RowReporter, letters: bool, outside: str = "error"
) -> str | None:
    """The gold answer as the text of a choice: text (exact, else case/space-insensitive), 0-based index, or (with
    ``letters``) an option letter that is not itself a choice. A text matching none is a problem, or with
    ``outside="keep"`` returned as given (evaluation scores it)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(choices):
            report(where, "answer_not_in_choices", f"answer index {value} is outside the {len(choices)} choices", rid)
        return choices[value]
    if not isinstance(value, str):
        report(where, "bad_field", f"answer must be a choice text or a choice index, got {value!r}", rid)
    if value in choices:
        return value
    matches = [c for c in choices if _norm(c) == _norm(value)]
    if len(matches) == 1:
        return matches[0]
    letter = value.strip().strip("().").upper()
    if letters and len(letter) == 1 and letter in _LETTERS[: len(choices)]:
        return choices[_LETTERS.index(letter)]
    if outside == "keep" and value.strip():
        return value
    report(where, "answer_not_in_choices", f"answer {value!r} is not one of the choices {choices}", rid)
    return None  # unreachable: report() raises


def _audio_path(
    value: Any, key: str, base: Path, where: str, rid: str, report: RowReporter, slash_is_root: bool = False
) -> str:
    """``value`` resolved against ``base`` unless absolute; with ``slash_is_root`` (MMSU with ``data.root`` set) a
    leading ``/`` is relative to ``base`` too."""
    if not isinstance(value, str) or not value.strip():
        report(where, "bad_field", f"field {key!r} must be a non-empty audio path, got {value!r}", rid)
    if slash_is_root and value.startswith("/"):
        value = value.lstrip("/")
    path = Path(value)
    return str(path if path.is_absolute() else base / path)


def _first_key(obj: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in obj), None)


def slice_value(value: Any) -> Any:
    """A slice field's value as one string: ``["Sound"]`` -> ``"Sound"``, ``["Sound", "Music"]`` ->
    ``"Sound, Music"``, ``[]`` -> None (the field is dropped); anything else unchanged."""
    if not isinstance(value, (list, tuple)):
        return value
    return ", ".join(str(v) for v in value) if value else None


def _metadata(obj: dict, used: set[str]) -> dict[str, Any]:
    """The fields a format does not consume; slice fields normalised with ``slice_value``."""
    metadata = {}
    for key, value in obj.items():
        if key in used:
            continue
        if key in CATEGORY_KEYS:
            value = slice_value(value)
            if value is None:
                continue
        metadata[key] = value
    return metadata


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _mmsu_choices(obj: dict, where: str, rid: str, report: RowReporter) -> tuple[list[str], list[str]]:
    """MMSU's options and the keys they came from: ``choices``, else ``choice_a``, ``choice_b``, ... while present.
    Trailing empty options ("" or null: a two-option item's C and D) are not choices; an empty one before a
    non-empty one is a problem (the letters would shift)."""
    if "choices" in obj:
        keys = ["choices"]
        values = obj["choices"] if isinstance(obj["choices"], list) else None
        if values is None:
            return _choices(obj["choices"], "choices", where, rid, report), keys
        names = [f"choices[{i}]" for i in range(len(values))]
    else:
        keys = []
        for letter in _LETTERS.lower():
            if f"choice_{letter}" not in obj:
                break
            keys.append(f"choice_{letter}")
        if not keys:
            report(where, "empty_choices", "no choices: neither 'choice_a'.. nor 'choices'", rid)
        values, names = [obj[k] for k in keys], keys
    count = len(values)
    while count and _blank(values[count - 1]):
        count -= 1
    gap = next((name for name, v in zip(names[:count], values[:count], strict=True) if _blank(v)), None)
    if gap is not None:
        report(where, "bad_field", f"option {gap!r} is empty but a later option is not", rid)
    return _choices(values[:count], keys[0] if keys == ["choices"] else "choice_a..", where, rid, report), keys


_VIDEO = re.compile(r"\b(video|Video|VIDEO)(s?)\b")
_VIDEO_TO_AUDIO = {"video": "audio", "Video": "Audio", "VIDEO": "AUDIO"}


def replace_video_wording(text: str) -> str:
    """'video' -> 'audio' as a whole word, keeping the case: "What is in the video?" -> "What is in the audio?"."""
    return _VIDEO.sub(lambda m: _VIDEO_TO_AUDIO[m.group(1)] + m.group(2), text)


@dataclass(frozen=True)
class _Options:
    """How ``_convert`` reads rows. ``audio(value, key, where, rid)`` turns an audio field into a file path (a JSON
    path, or a Hugging Face Audio entry); ``audio_keys``: where MMSU rows may hold the audio, first found wins;
    ``answers_outside_choices``: "error" or "keep" (see ``_answer``); ``audio_column``: the ``hf`` audio column."""

    audio: Callable[[Any, str, str, str], str]
    audio_keys: tuple[str, ...] = ("audio_path", "audio", "audio_id")
    answers_outside_choices: str = "error"
    replace_video: bool = True
    audio_column: str = "audio"


def _convert(fmt: str, obj: dict, index: int, where: str, report: RowReporter, options: _Options) -> AudioQuestion:
    """One record of format ``fmt`` -> AudioQuestion (``report`` raises for a problem)."""
    rid = _row_id(obj, index, where, report, required=fmt == "jsonl")
    outside = options.answers_outside_choices
    if fmt == "jsonl":
        question = _question(obj, "question", where, rid, report)
        if "audio" not in obj:
            report(where, "missing_field", "missing field 'audio'", rid)
        if "choices" not in obj:
            report(where, "missing_field", "missing field 'choices'", rid)
        choices = _choices(obj["choices"], "choices", where, rid, report)
        answer = _answer(obj.get("answer"), choices, where, rid, report, letters=False, outside=outside)
        audio = options.audio(obj["audio"], "audio", where, rid)
        used = {"id", "audio", "question", "choices", "answer"}
    elif fmt == "hf":
        question = _question(obj, "question", where, rid, report)
        if "choices" not in obj:
            hint = " (the columns are MMSU's: use data.source=mmsu)" if set(MMSU_COLUMNS) & set(obj) else ""
            report(where, "missing_field", f"missing column 'choices'{hint}", rid)
        choices = _choices(obj["choices"], "choices", where, rid, report)
        answer = _answer(obj.get("answer"), choices, where, rid, report, letters=False, outside=outside)
        audio = options.audio(obj[options.audio_column], options.audio_column, where, rid)
        used = {"id", "question", "choices", "answer", options.audio_column}
    elif fmt in ("mmau", "mmar"):
        question = _question(obj, "question", where, rid, report)
        audio_key = _first_key(obj, ("audio_id", "audio_path"))
        if audio_key is None:
            report(where, "missing_field", "missing field 'audio_id' (or 'audio_path')", rid)
        for key in ("choices", "answer"):
            if key not in obj or obj[key] is None:
                report(where, "missing_field", f"missing field {key!r}", rid)
        choices = _choices(obj["choices"], "choices", where, rid, report)
        answer = _answer(obj["answer"], choices, where, rid, report, letters=False, outside=outside)
        audio = options.audio(obj[audio_key], audio_key, where, rid)
        used = {"id", audio_key, "question", "choices", "answer"}
    elif fmt == "mmsu":
        question = _question(obj, "question", where, rid, report)
        audio_key = _first_key(obj, options.audio_keys)
        if audio_key is None:
            others = ", ".join(repr(k) for k in options.audio_keys[1:])
            report(where, "missing_field", f"missing field {options.audio_keys[0]!r} (or {others})", rid)
        choices, choice_keys = _mmsu_choices(obj, where, rid, report)
        answer_key = _first_key(obj, ("answer_gt", "answer"))
        if answer_key is None or obj[answer_key] is None:
            report(where, "missing_field", "missing field 'answer_gt' (or 'answer')", rid)
        answer = _answer(obj[answer_key], choices, where, rid, report, letters=True, outside=outside)
        audio = options.audio(obj[audio_key], audio_key, where, rid)
        used = {"id", audio_key, "question", answer_key, *choice_keys}
    elif fmt == "avqa":
        return _convert_avqa(obj, rid, where, report, options)
    else:
        raise ValueError(f"unknown data format {fmt!r}; choose one of {FORMATS}")
    metadata = _metadata(obj, used)
    if answer is not None and answer not in choices:  # kept for evaluation (answers_outside_choices="keep")
        metadata[OUTSIDE_FLAG] = True
    return AudioQuestion(rid, audio, question, choices, answer, metadata)


def _convert_avqa(obj: dict, rid: str, where: str, report: RowReporter, options: _Options) -> AudioQuestion:
    """One AVQA record: answer index -> option text, ``<root>/<video_name>.wav``, optional video -> audio wording."""
    question = _question(obj, "question_text", where, rid, report)
    if "multi_choice" not in obj:
        report(where, "missing_field", "missing field 'multi_choice'", rid)
    choices = _choices(obj["multi_choice"], "multi_choice", where, rid, report)
    value = obj.get("answer")
    if not isinstance(value, int) or isinstance(value, bool):
        report(where, "bad_field", f"field 'answer' must be a 0-based index into multi_choice, got {value!r}", rid)
    answer = _answer(value, choices, where, rid, report, letters=False)
    audio_key = _first_key(obj, ("audio", "audio_path"))
    if audio_key is not None:
        audio = options.audio(obj[audio_key], audio_key, where, rid)
    elif isinstance(obj.get("video_name"), str) and obj["video_name"].strip():
        audio = options.audio(f"{obj['video_name']}.wav", "video_name", where, rid)
    else:
        report(where, "missing_field", "missing field 'video_name' (or 'audio')", rid)
    metadata = _metadata(obj, {"id", "question_text", "multi_choice", "answer", audio_key or ""})
    if options.replace_video:
        replaced = replace_video_wording(question)
        if replaced != question:
            metadata["question_original"] = question
            question = replaced
    return AudioQuestion(rid, audio, question, choices, answer, metadata)


def _collect(fmt: str, records, report: RowReporter, options: _Options) -> list[SourceRow]:
    rows: list[SourceRow] = []
    seen: dict[str, str] = {}
    for index, (where, obj) in enumerate(records):
        try:
            if not isinstance(obj, dict):
                report(where, "not_object", f"expected a JSON object, got {type(obj).__name__}")
            row = _convert(fmt, obj, index, where, report, options)
            if row.id in seen:
                report(where, "duplicate_id", f"duplicate id {row.id!r} (first at {seen[row.id]})", row.id)
        except RejectedRowError:
            continue
        seen[row.id] = where
        rows.append(SourceRow(row, where))
    return rows


def _check_mmsu_root(rows: list[SourceRow], data_dir: Path) -> None:
    """Without ``data.root``, refuse an MMSU file whose first ``/audio/...``-style path is missing as an absolute
    path but exists under the data file's directory: the paths are root-relative (module docstring)."""
    first = next((item for item in rows if Path(item.row.audio).is_absolute()), None)
    if first is None or Path(first.row.audio).exists():
        return
    relative = data_dir / first.row.audio.lstrip("/")
    if relative.exists():
        raise DataError(
            f"{first.where}: row {first.row.id!r}: audio path {first.row.audio!r} does not exist; MMSU writes paths "
            f"relative to the dataset root despite the leading '/' ({relative} exists): set data.root (--root) to "
            f"{data_dir}"
        )


# --- Hugging Face datasets (opening them and their audio cache: grpo_audio.data.hf) ----------------------------


def _dataset_audio(
    value: Any, base: Path, cache_dir: Path, where: str, rid: str, report: RowReporter, slash_is_root: bool = False
) -> str:
    """A real file path for one entry of a dataset's audio column: a path string or an entry's ``path`` resolved
    like a JSON audio field; embedded bytes or a decoded array written into ``cache_dir`` first."""
    if isinstance(value, str):
        return _audio_path(value, "audio", base, where, rid, report, slash_is_root)
    if not isinstance(value, dict):
        report(where, "bad_field", f"audio column holds {type(value).__name__}, not an audio entry", rid)
    try:
        cached = cache_audio_entry(value, cache_dir)
    except AudioEntryError as exc:
        report(where, "bad_field", str(exc), rid)
    if cached is not None:
        return cached
    if value.get("path"):
        return _audio_path(value["path"], "audio.path", base, where, rid, report, slash_is_root)
    report(where, "missing_field", "the audio entry has neither bytes, an array nor a path", rid)
    return ""  # unreachable: report() raises


def _read_hf(
    fmt: str, path: Path, split, audio_column: str, cache_dir: Path, root, report: RowReporter, outside: str
) -> list[SourceRow]:
    """Rows of a Hugging Face dataset in format ``hf`` (question/choices/answer columns) or ``mmsu`` (MMSU's)."""
    ds = open_audio_dataset(
        path, split, audio_column, cache_dir, path_columns=("audio_path",) if fmt == "mmsu" else ()
    )
    base = Path(root).resolve() if root is not None else (path if path.is_dir() else path.parent).resolve()
    slash_is_root = fmt == "mmsu" and root is not None

    def audio(value: Any, key: str, where: str, rid: str) -> str:
        return _dataset_audio(value, base, cache_dir, where, rid, report, slash_is_root)

    options = _Options(
        audio,
        audio_keys=tuple(dict.fromkeys((audio_column, "audio_path", "audio", "audio_id"))),
        answers_outside_choices=outside,
        audio_column=audio_column,
    )
    rows = _collect(fmt, ((f"{path}[{i}]", obj) for i, obj in enumerate(ds)), report, options)
    if not rows and report.problems is None:
        raise DataError(f"{path}: no rows")
    return rows


# --- public loaders ----------------------------------------------------------------------------------------------


def read_rows(
    fmt: str,
    path: str | Path,
    *,
    root: str | Path | None = None,
    avqa_replace_video: bool = True,
    split: str | None = None,
    audio_column: str = "audio",
    cache_dir: str | Path | None = None,
    problems: list[RowProblem] | None = None,
    answers_outside_choices: str = "error",
) -> list[SourceRow]:
    """Rows of ``path`` in format ``fmt`` with their locations. See the module docstring for the formats.

    ``problems=None``: the first row problem raises ``DataError``; a list: problems are appended and those rows left
    out. ``cache_dir`` (format ``hf``, and ``mmsu`` read from a Hugging Face dataset) receives audio that the dataset
    holds as bytes or arrays. ``answers_outside_choices``: "error" (a text answer matching no choice is a row
    problem, training) or "keep" (evaluation: the official scripts score such rows).
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    outside = answers_outside_choices
    if outside not in ANSWER_POLICIES:
        raise ValueError(f"answers_outside_choices must be one of {ANSWER_POLICIES}, got {outside!r}")
    report = RowReporter(problems)
    path = Path(path)
    if fmt == "hf" or (fmt == "mmsu" and (path.is_dir() or path.suffix.lower() in HF_SUFFIXES)):
        if cache_dir is None:
            raise ValueError(f"the {fmt!r} format needs a cache_dir for a dataset's audio held as bytes or arrays")
        return _read_hf(fmt, path, split, audio_column, Path(cache_dir), root, report, outside)
    if not path.is_file():
        raise DataError(f"{path}: file not found{tried(path)}")
    base = Path(root).resolve() if root is not None else path.resolve().parent
    slash_is_root = fmt == "mmsu" and root is not None

    def audio(value: Any, key: str, where: str, rid: str) -> str:
        return _audio_path(value, key, base, where, rid, report, slash_is_root)

    options = _Options(audio, answers_outside_choices=outside, replace_video=avqa_replace_video)
    rows = _collect(fmt, read_records(path, report), report, options)
    if fmt == "mmsu" and root is None:
        _check_mmsu_root(rows, base)
    if not rows and problems is None:
        raise DataError(f"{path}: no rows")
    return rows


def load_jsonl(path, root=None, problems=None) -> list[AudioQuestion]:
    """JSONL manifest rows (audio relative to the manifest, or to ``root``)."""
    return [r.row for r in read_rows("jsonl", path, root=root, problems=problems)]


def load_mmau(path, root=None, problems=None) -> list[AudioQuestion]:
    """MMAU JSON rows (``audio_id`` relative to ``root``, default the JSON file's directory)."""
    return [r.row for r in read_rows("mmau", path, root=root, problems=problems)]


def load_mmar(path, root=None, problems=None) -> list[AudioQuestion]:
    """MMAR JSON rows (``audio_path`` or ``audio_id`` relative to ``root``)."""
    return [r.row for r in read_rows("mmar", path, root=root, problems=problems)]


def load_mmsu(path, root=None, problems=None, cache_dir=None, split=None) -> list[AudioQuestion]:
    """MMSU rows from its Hugging Face dataset (parquet/arrow/directory; embedded audio written under ``cache_dir``)
    or a JSON/JSONL export (``choice_a``..``choice_d`` or ``choices``; ``answer_gt`` text, letter or index)."""
    return [r.row for r in read_rows("mmsu", path, root=root, problems=problems, cache_dir=cache_dir, split=split)]


def load_avqa(path, root=None, replace_video=True, problems=None) -> list[AudioQuestion]:
    """AVQA JSON rows (``<root>/<video_name>.wav``; answer index -> option text; optional video -> audio)."""
    return [r.row for r in read_rows("avqa", path, root=root, avqa_replace_video=replace_video, problems=problems)]


def load_hf(path, cache_dir, split=None, audio_column="audio", root=None, problems=None) -> list[AudioQuestion]:
    """Rows of a Hugging Face dataset on disk; embedded audio is written under ``cache_dir``."""
    return [
        r.row
        for r in read_rows(
            "hf", path, split=split, audio_column=audio_column, cache_dir=cache_dir, root=root, problems=problems
        )
    ]
