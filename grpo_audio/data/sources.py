"""The recipe's data section -> usable rows, with every clip decoded once up front and the audio policy applied.

``load_rows_for_recipe(recipe, run_dir)`` reads ``data.source`` (``grpo_audio.data.formats``; ``synthetic`` writes
its WAV set into ``<run_dir>/data`` first), then decodes every clip in file order (full decode at the file's own
rate with ``load_audio``: this proves the file decodes, finds NaN/inf samples and streams cut short, and gives the
exact duration without resampling) and applies the policy:

* a bad clip (missing, not a file, empty, unreadable, truncated, no samples, NaN/inf): ``data.on_bad_audio``
  ``error`` raises ``DataError`` naming the data row and the audio file; ``skip`` leaves the row out;
* shorter than ``data.min_duration_s``: ``data.short_clips`` (error | skip);
* longer than ``data.max_duration_s``: ``data.long_clips`` (error | skip | truncate). ``truncate`` writes the first
  ``max_duration_s`` seconds, decoded at 24 kHz, as a 32-bit float WAV under ``<run_dir>/data/truncated/`` (the
  model's loader reads it back unchanged, no second resampling) and points the row there, keeping the original
  path as ``metadata["audio_original"]``.

Before any clip is decoded, the rows themselves are checked: a row its format cannot read (see ``formats``: bad
JSON, a missing or mistyped field, an answer not among the choices, a duplicate id) or that breaks a rule of
``row_rules`` (no gold answer without ``data.allow_unlabeled``, an answer key that looks misspelled) is a bad row.
``data.on_bad_row`` ``error`` raises one ``DataError`` naming the first few (file:line and reason) and how many there
are; ``skip`` leaves them out like skipped clips, under their problem kind as reason. Every row is parsed, so bad
rows are counted over the whole file, also past ``data.max_samples``. An extra key that resembles a known one
(``categroy``) is a warning.

Nothing is dropped without a trace: every skip is counted per reason, logged (a warning, and one JSON line in
``<run_dir>/skipped.jsonl``, which is always written and empty when nothing was skipped), and summed up in the
returned ``SkipReport``; truncations are listed in ``<run_dir>/truncated.jsonl``. ``data.max_samples`` keeps the
first that many *usable* rows (decoding stops there).

``load_heldout_rows(recipe, run_dir)`` does the same for the synthetic held-out split (its own clips, logs and
counts under ``<run_dir>/data/heldout/``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import soundfile as sf

from grpo_audio.audio.covo import SAMPLE_RATE
from grpo_audio.audio.io import AudioLoadError, audio_info, load_audio
from grpo_audio.audio.resample import DEFAULT_RESAMPLER
from grpo_audio.data.formats import read_rows
from grpo_audio.data.row_rules import (
    ROW_REASONS,
    BadRow,
    apply_row_rules,
    bad_rows_message,
    lookalike_keys,
    training_hint,
)
from grpo_audio.data.rows import AudioQuestion, DataError, RowProblem, SourceRow
from grpo_audio.data.synthetic import write_synthetic_set
from grpo_audio.files import write_jsonl

logger = logging.getLogger("grpo_audio.data")

# Reason codes, in the order summaries list them (row problems first: a row kind of rows.RowProblem, or one of
# row_rules.ROW_REASONS).
PARSE_REASONS = ("bad_json", "not_object", "missing_field", "bad_field", "empty_choices", "answer_not_in_choices",
                 "duplicate_id")  # fmt: skip
BAD_AUDIO_REASONS = ("missing_file", "not_a_file", "empty_file", "unreadable", "truncated", "no_samples", "non_finite")
LENGTH_REASONS = ("too_short", "too_long")
_LOGGED_SKIPS = 20  # individual warnings; the rest are only in skipped.jsonl and the summary
HELDOUT_SEED_OFFSET = 1_000_003  # added to run.seed: the held-out split's clips come from their own random stream
HELDOUT_ID_PREFIX = "heldout-"  # held-out row ids never equal a training row's (both count from 0 per task)


@dataclass(frozen=True)
class ClipInfo:
    """A clip that decoded: its length and what the header says."""

    duration_s: float
    frames: int  # decoded samples at the file's own rate
    sample_rate: int
    channels: int
    format: str
    subtype: str


def probe_clip(path: str) -> ClipInfo:
    """Decode ``path`` completely at its own rate (no resampling) and return its facts; ``AudioLoadError`` if bad."""
    info = audio_info(path)
    wave = load_audio(path, info.sample_rate)
    frames = wave.shape[0]
    return ClipInfo(frames / info.sample_rate, frames, info.sample_rate, info.channels, info.format, info.subtype)


def bad_audio_reason(error: AudioLoadError) -> str:
    """The reason code of an ``AudioLoadError`` (one of ``BAD_AUDIO_REASONS``)."""
    text = error.reason
    if text.startswith("file does not exist"):
        return "missing_file"
    if text.startswith("not a regular file"):
        return "not_a_file"
    if text.startswith("file is empty"):
        return "empty_file"
    if text.startswith("truncated"):
        return "truncated"
    if text.startswith("contains no audio samples"):
        return "no_samples"
    if "NaN" in text and "infinite" in text:
        return "non_finite"
    return "unreadable"


def probe_all(paths, workers: int | None = None) -> dict[str, ClipInfo | AudioLoadError]:
    """``probe_clip`` on every distinct path (threads: libsndfile and numpy release the GIL while decoding)."""
    unique = list(dict.fromkeys(paths))
    workers = workers or min(8, os.cpu_count() or 1)

    def one(path: str) -> ClipInfo | AudioLoadError:
        try:
            return probe_clip(path)
        except AudioLoadError as exc:
            return exc

    if workers <= 1 or len(unique) <= 1:
        return {p: one(p) for p in unique}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(one, unique), strict=True))


@dataclass(frozen=True)
class AudioPolicy:
    """What to do with bad, short and long clips (the recipe's ``data`` fields of the same names)."""

    on_bad_audio: str = "error"
    min_duration_s: float = 0.01
    short_clips: str = "error"
    max_duration_s: float | None = None
    long_clips: str = "error"
    resampler: str = DEFAULT_RESAMPLER  # for the 24 kHz copies of truncated clips, as the features resample

    @classmethod
    def from_data_section(cls, data) -> AudioPolicy:
        return cls(
            data.on_bad_audio, data.min_duration_s, data.short_clips, data.max_duration_s, data.long_clips,
            data.resampler,
        )  # fmt: skip

    def length_verdict(self, duration_s: float) -> tuple[str, str, str] | None:
        """None when the length is fine, else (reason, action, detail) with action error | skip | truncate."""
        if duration_s < self.min_duration_s:
            return "too_short", self.short_clips, f"{duration_s:.4f} s is shorter than data.min_duration_s="
        if self.max_duration_s is not None and duration_s > self.max_duration_s:
            return "too_long", self.long_clips, f"{duration_s:.2f} s is longer than data.max_duration_s="
        return None

    def describe(self) -> str:
        longest = "none" if self.max_duration_s is None else f"{self.max_duration_s:g} s ({self.long_clips})"
        return (
            f"bad audio: {self.on_bad_audio}; shortest {self.min_duration_s:g} s ({self.short_clips}); "
            f"longest {longest}"
        )


@dataclass
class SkipRecord:
    """One row left out: which, where it was read, its audio file, the reason code and the message. A bad row that
    could not be parsed has neither id nor audio ("") and no ``row``."""

    row_id: str
    where: str
    audio: str
    reason: str
    message: str
    row: AudioQuestion | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"id": self.row_id, "where": self.where, "audio": self.audio, "reason": self.reason,
                "message": self.message}  # fmt: skip


@dataclass
class TruncationRecord:
    row_id: str
    where: str
    audio: str  # the original file
    clip: str  # the truncated copy the row now uses
    duration_s: float
    kept_s: float

    def to_json(self) -> dict:
        return {"id": self.row_id, "where": self.where, "audio": self.audio, "clip": self.clip,
                "duration_s": round(self.duration_s, 4), "kept_s": self.kept_s}  # fmt: skip


@dataclass
class SkipReport:
    """What the row checks and the audio policy did. ``data_file``: the file or directory the rows were read from
    (the synthetic set's manifest), for provenance. ``examined``: bad rows plus rows whose audio was looked at;
    ``kept``: rows returned; ``skipped``: bad rows (``data.on_bad_row=skip``) and skipped clips. ``label`` starts
    the summary line: "data" (training or evaluation rows) or "held-out"."""

    data_file: Path | None = None
    label: str = "data"
    examined: int = 0
    kept: int = 0
    skipped: list[SkipRecord] = field(default_factory=list)
    truncated: list[TruncationRecord] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict, repr=False)  # row id -> seconds, kept rows
    # row id -> (frames, sample rate) of the kept rows' clips, read here: the dataset counts each clip's
    # placeholders from them (the model family's front end) without decoding it again
    clip_lengths: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    log_path: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Skips per reason code."""
        counts = Counter(s.reason for s in self.skipped)
        order = PARSE_REASONS + ROW_REASONS + BAD_AUDIO_REASONS + LENGTH_REASONS
        return {r: counts[r] for r in sorted(counts, key=lambda r: order.index(r) if r in order else len(order))}

    def summary(self) -> str:
        """One line, e.g. ``data: 98 of 100 rows kept; skipped 2 (missing_file 1, non_finite 1); ...``."""
        line = f"{self.label}: {self.kept} of {self.examined} rows kept"
        if self.skipped:
            reasons = ", ".join(f"{r} {n}" for r, n in self.counts.items())
            line += f"; skipped {len(self.skipped)} ({reasons})"
        else:
            line += "; none skipped"
        if self.truncated:
            line += f"; truncated {len(self.truncated)} long clip(s)"
        if self.log_path is not None and self.skipped:
            line += f"; details in {self.log_path}"
        return line


def _truncated_copy(path: str, seconds: float, directory: Path, resampler: str) -> tuple[str, int]:
    """The clip cut to ``seconds``, written as 24 kHz float WAV; returns its path and its length in samples."""
    wave = load_audio(path, SAMPLE_RATE, resampler)[: int(round(seconds * SAMPLE_RATE))]
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{Path(path).resolve()}|{seconds}".encode()).hexdigest()[:24]
    target = directory / f"{digest}.wav"
    tmp = directory / f"{digest}.tmp.wav"
    sf.write(str(tmp), wave, SAMPLE_RATE, subtype="FLOAT")
    os.replace(tmp, target)
    return str(target), wave.shape[0]


def apply_audio_policy(
    rows: list[SourceRow],
    policy: AudioPolicy,
    truncate_dir: Path | None = None,
    max_rows: int | None = None,
    workers: int | None = None,
    audio_base: str = "",
) -> tuple[list[AudioQuestion], SkipReport]:
    """Decode every row's clip (in chunks, in file order, stopping after ``max_rows`` usable rows) and apply
    ``policy``. Raises ``DataError`` naming the row and file for a clip the policy does not allow; for a missing
    one it names ``audio_base`` too (what relative audio paths were read against, e.g. ``data.root /abs/dir``)."""
    if policy.long_clips == "truncate" and truncate_dir is None:
        raise ValueError("long_clips='truncate' needs a directory for the truncated copies")
    report = SkipReport()
    kept: list[AudioQuestion] = []
    chunk = 64 if max_rows is None else max(16, 2 * max_rows)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        clips = probe_all([r.row.audio for r in part], workers)
        for item in part:
            if max_rows is not None and len(kept) >= max_rows:
                return kept, report
            row, where = item.row, item.where
            report.examined += 1
            clip = clips[row.audio]
            if isinstance(clip, AudioLoadError):
                if policy.on_bad_audio == "error":
                    missing = audio_base and bad_audio_reason(clip) == "missing_file"
                    base = f"; relative audio paths are read from {audio_base}" if missing else ""
                    raise DataError(
                        f"{where}: row {row.id!r}: {clip}{base} (data.on_bad_audio=skip leaves such rows out; "
                        "grpo-audio data check lists every problem)"
                    )
                report.skipped.append(SkipRecord(row.id, where, row.audio, bad_audio_reason(clip), str(clip), row))
                continue
            verdict = policy.length_verdict(clip.duration_s)
            if verdict is not None:
                reason, action, detail = verdict
                limit = policy.min_duration_s if reason == "too_short" else policy.max_duration_s
                message = f"audio file '{row.audio}': {detail}{limit:g}"
                if action == "error":
                    knob = "short_clips" if reason == "too_short" else "long_clips"
                    raise DataError(f"{where}: row {row.id!r}: {message} (see data.{knob})")
                if action == "skip":
                    report.skipped.append(SkipRecord(row.id, where, row.audio, reason, message, row))
                    continue
                copy, n_24k = _truncated_copy(row.audio, limit, truncate_dir, policy.resampler)
                report.clip_lengths[row.id] = (n_24k, SAMPLE_RATE)
                report.truncated.append(TruncationRecord(row.id, where, row.audio, copy, clip.duration_s, limit))
                row = replace(row, audio=copy, metadata={**row.metadata, "audio_original": row.audio})
                report.durations[row.id] = limit
            else:
                report.durations[row.id] = clip.duration_s
                report.clip_lengths[row.id] = (clip.frames, clip.sample_rate)
            kept.append(row)
            report.kept = len(kept)
    return kept, report


def write_policy_logs(report: SkipReport, run_dir: Path, truncation_enabled: bool) -> None:
    """``skipped.jsonl`` (always) and ``truncated.jsonl`` (when truncation is enabled) in ``run_dir``; one warning
    per skip (the first few) and the summary line."""
    run_dir.mkdir(parents=True, exist_ok=True)
    report.log_path = run_dir / "skipped.jsonl"
    write_jsonl(report.log_path, (record.to_json() for record in report.skipped))
    if truncation_enabled:
        write_jsonl(run_dir / "truncated.jsonl", (record.to_json() for record in report.truncated))
    for record in report.skipped[:_LOGGED_SKIPS]:
        row = f"row {record.row_id!r}: " if record.row_id else ""  # a row that could not be parsed has no id
        logger.warning("skipped %s: %s%s [%s]", record.where, row, record.message, record.reason)
    if len(report.skipped) > _LOGGED_SKIPS:
        logger.warning("... and %d more skipped rows (see %s)", len(report.skipped) - _LOGGED_SKIPS, report.log_path)
    if report.skipped or report.truncated:
        logger.warning(report.summary())


def read_source_rows(
    data, run_dir: Path, seed: int, problems=None, answers_outside_choices: str = "error"
) -> tuple[list[SourceRow], Path]:
    """The rows of a recipe's ``data`` section (no audio decoded yet) and the file they came from.

    ``answers_outside_choices``: "error" (training: such a row is a bad row) or "keep" (evaluation scores it)."""
    if data.source == "synthetic":
        spec = data.synthetic
        manifest = write_synthetic_set(run_dir / "data", spec.num_questions, list(spec.tasks), seed)
        return read_rows("jsonl", manifest, problems=problems), manifest
    rows = read_rows(
        data.source,
        data.path,
        root=data.root,
        avqa_replace_video=data.avqa_replace_video,
        split=data.split,
        audio_column=data.audio_column,
        cache_dir=run_dir / "data" / "hf_audio",
        problems=problems,
        answers_outside_choices=answers_outside_choices,
    )
    return rows, Path(data.path)


def load_rows_for_recipe(
    recipe, run_dir: str | Path, answers_outside_choices: str = "error"
) -> tuple[list[AudioQuestion], SkipReport]:
    """The recipe's usable rows (``data.max_samples`` of them at most) and what the row checks and the audio policy
    did. ``answers_outside_choices="keep"`` (evaluation) keeps rows whose answer is not among their choices.

    Writes ``<run_dir>/skipped.jsonl`` (and ``truncated.jsonl`` with ``data.long_clips=truncate``); synthetic clips
    go to ``<run_dir>/data/``, Hugging Face audio held as bytes to ``<run_dir>/data/hf_audio/``, truncated clips to
    ``<run_dir>/data/truncated/``. Raises ``DataError`` for bad rows (``data.on_bad_row=error``), a clip the policy
    does not allow, or when no row is left.
    """
    run_dir = Path(run_dir)
    data = recipe.data
    parse_problems: list[RowProblem] = []
    source_rows, data_file = read_source_rows(
        data, run_dir, recipe.run.seed, problems=parse_problems, answers_outside_choices=answers_outside_choices
    )
    return usable_rows(
        source_rows, parse_problems, data, data_file, run_dir, run_dir / "data" / "truncated", data.max_samples
    )


def load_heldout_rows(recipe, run_dir: str | Path) -> tuple[list[AudioQuestion], SkipReport]:
    """The synthetic held-out split and what the row checks and the audio policy did to it; ``([], SkipReport())``
    unless ``data.source`` is ``synthetic`` with ``data.synthetic.heldout_questions > 0``.

    Writes ``heldout_questions`` new clips of the training tasks into ``<run_dir>/data/heldout/`` (seed
    ``run.seed + HELDOUT_SEED_OFFSET``, a stream the training split does not use) and reads them like training rows:
    the same row reader and rules, the same audio policy (``data.on_bad_row``, ``on_bad_audio``, the length limits;
    all rows, ``data.max_samples`` does not apply). Its skips and truncations are logged and counted apart from the
    training rows': ``<run_dir>/data/heldout/skipped.jsonl`` (and ``truncated.jsonl``, truncated clips under
    ``truncated/`` there), summary lines starting "held-out:". ``report.clip_lengths`` saves ``build_dataset`` a
    second decode. Raises ``DataError`` like ``load_rows_for_recipe``.
    """
    data = recipe.data
    spec = data.synthetic
    if data.source != "synthetic" or spec.heldout_questions <= 0:
        return [], SkipReport(label="held-out")
    directory = Path(run_dir) / "data" / "heldout"
    seed = recipe.run.seed + HELDOUT_SEED_OFFSET
    manifest = write_synthetic_set(
        directory, spec.heldout_questions, list(spec.tasks), seed, id_prefix=HELDOUT_ID_PREFIX
    )
    parse_problems: list[RowProblem] = []
    source_rows = read_rows("jsonl", manifest, problems=parse_problems)
    return usable_rows(
        source_rows, parse_problems, data, manifest, directory, directory / "truncated", None, label="held-out"
    )


def audio_base(data, data_file: Path) -> str:
    """What a data file's relative audio paths are read against (``formats.read_rows``), for messages: ``data.root
    /abs/dir`` or ``the data file's directory /abs/dir``; empty for a dataset directory (its own rules)."""
    root = getattr(data, "root", None)
    if root is not None:
        return f"data.root {Path(root).resolve()}"
    return f"the data file's directory {Path(data_file).resolve().parent}" if Path(data_file).is_file() else ""


def usable_rows(
    source_rows: list[SourceRow],
    parse_problems: list[RowProblem],
    data,
    data_file: Path,
    log_dir: Path,
    truncate_dir: Path,
    max_rows: int | None,
    label: str = "data",
) -> tuple[list[AudioQuestion], SkipReport]:
    """Parsed rows -> the usable ones: the row rules and ``data.on_bad_row``, then the audio policy of the recipe's
    data section ``data`` (first ``max_rows`` usable rows at most), skips logged in ``log_dir`` (see
    ``write_policy_logs``). ``parse_problems``: rows the reader could not parse. ``label`` starts the summary."""
    if not source_rows and not parse_problems:
        raise DataError(f"{data_file}: no rows")
    source_rows, bad_rows = apply_row_rules(source_rows, parse_problems, data)
    warn_lookalike_keys(source_rows, data)
    if bad_rows and data.on_bad_row == "error":
        problems = [b.problem for b in bad_rows]
        raise DataError(bad_rows_message(data_file, problems, training_hint(problems)))
    policy = AudioPolicy.from_data_section(data)
    rows, report = apply_audio_policy(
        source_rows, policy, truncate_dir=truncate_dir, max_rows=max_rows, audio_base=audio_base(data, data_file)
    )
    report.data_file = data_file
    report.label = label
    report.examined += len(bad_rows)
    report.skipped[:0] = [bad_row_skip(b) for b in bad_rows]  # one report, one skipped.jsonl, row problems first
    write_policy_logs(report, log_dir, truncation_enabled=policy.long_clips == "truncate")
    if not rows:
        raise DataError(f"{data_file}: no usable rows ({report.summary()})")
    return rows, report


def bad_row_skip(bad: BadRow) -> SkipRecord:
    """A skipped bad row as a skip record (reason: the problem kind; no audio when the row could not be parsed)."""
    problem, row = bad
    audio = row.audio if row is not None else ""
    detail = problem.message.removeprefix(f"{problem.where}: ")  # the record names where and which row itself
    if problem.row_id is not None:
        detail = detail.removeprefix(f"row {problem.row_id!r}: ")
    return SkipRecord(problem.row_id or "", problem.where, audio, problem.kind, detail, row)


def warn_lookalike_keys(rows: list[SourceRow], data) -> None:
    """One warning per extra key that resembles a known one (the misspelled answer keys are bad rows instead)."""
    for key, (count, close) in lookalike_keys(rows, data).items():
        if close is not None:
            logger.warning(
                "data: key %r in %d row(s) is not a field the harness reads (did you mean %r?); kept as row metadata",
                key, count, close,
            )  # fmt: skip
