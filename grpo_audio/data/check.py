"""``grpo-audio data check RECIPE_OR_DATA``: validate a dataset before training and print a summary.

The target is a recipe YAML (its ``data`` section, with ``--set`` overrides) or a data file / dataset directory
(format from ``--format`` or guessed from the first record; audio root from ``--root``). Every row is parsed
(fields present and typed, at least two choices, the answer among the choices, unique ids, a gold answer unless
``data.allow_unlabeled``, no misspelled answer key: ``grpo_audio.data.row_rules``) and every clip is decoded
completely (missing, empty, corrupt, truncated, NaN/inf), then checked against the recipe's length policy (the
defaults for a bare data file).

Printed: the row counts, the answers and choices per question, rows per task/category/... value, the extra keys
(kept as metadata, each with the known key it resembles), a text histogram of clip durations, the audio formats,
rates and channel counts, and each problem with its file/row, reason and what training would do with it (error or
skip, after ``data.on_bad_row`` / ``data.on_bad_audio``). Exit status: 0 clean, 1 problems found, 2 unusable input
(no such file, not JSON, unknown format, bad recipe, no rows at all).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from grpo_audio.audio.io import AudioLoadError
from grpo_audio.data.formats import CATEGORY_KEYS, FORMATS
from grpo_audio.data.records import detect_format
from grpo_audio.data.row_rules import apply_row_rules, lookalike_keys
from grpo_audio.data.rows import DataError, RowProblem
from grpo_audio.data.sources import AudioPolicy, ClipInfo, bad_audio_reason, probe_all, read_source_rows
from grpo_audio.paths import tried
from grpo_audio.recipe import RecipeError, load_recipe
from grpo_audio.recipe.schema import DataSection

HISTOGRAM_EDGES = [(0.0, "< 1 s"), (1.0, "1-5 s"), (5.0, "5-10 s"), (10.0, "10-30 s"), (30.0, "30-60 s"),
                   (60.0, "1-5 min"), (300.0, ">= 5 min")]  # fmt: skip
BAR_WIDTH = 40


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo-audio data check",
        description="Validate a dataset (every row and every audio file) and print a summary.",
    )
    parser.add_argument("target", help="a recipe YAML (its data section), or a data file (.jsonl/.json) or dataset")
    parser.add_argument("--format", choices=FORMATS, help="data file format (default: guessed from the file)")
    parser.add_argument("--root", help="directory relative audio paths are resolved against")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override (recipe targets only), e.g. --set data.max_duration_s=30")  # fmt: skip
    return parser


def _resolve(args) -> tuple[DataSection, AudioPolicy, int]:
    """The data section to check, its policy and the seed (synthetic data)."""
    target = Path(args.target)
    if target.suffix.lower() in (".yaml", ".yml"):
        overrides = list(args.overrides)
        if args.format:
            overrides.append(f"data.source={args.format}")
        if args.root:
            overrides.append(f"data.root={args.root}")
        recipe = load_recipe(target, overrides)
        return recipe.data, AudioPolicy.from_data_section(recipe.data), recipe.run.seed
    if args.overrides:
        raise RecipeError("--set applies to a recipe; the target is a data file")
    if not target.exists():
        raise DataError(f"{target}: file not found{tried(target)}")
    fmt = args.format or detect_format(target)
    if fmt is None:
        raise DataError(f"{target}: cannot tell the data format from its first record; pass --format")
    if args.root and not Path(args.root).is_dir():
        raise DataError(f"--root: directory not found: {args.root}{tried(args.root)}")
    return DataSection(source=fmt, path=str(target), root=args.root), AudioPolicy(), 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return int(exc.code or 0)
    problems: list[RowProblem] = []
    with tempfile.TemporaryDirectory(prefix="grpo-audio-check-") as work:
        try:
            data, policy, seed = _resolve(args)
            rows, data_file = read_source_rows(data, Path(work), seed, problems=problems)
        except (RecipeError, DataError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not rows and not problems:
            print(f"error: {data_file}: no rows", file=sys.stderr)
            return 2
        extras = lookalike_keys(rows, data)
        rows, bad_rows = apply_row_rules(rows, problems, data)
        clips = probe_all([r.row.audio for r in rows])
        return _report(data, data_file, policy, rows, [b.problem for b in bad_rows], clips, extras)


def _report(data, data_file, policy: AudioPolicy, rows, row_problems, clips, extras) -> int:
    bad_audio, length_problems, length_notes = [], [], []
    usable, decoded = [], []
    for item in rows:
        row, clip = item.row, clips[item.row.audio]
        if isinstance(clip, AudioLoadError):
            bad_audio.append((item, bad_audio_reason(clip), str(clip)))
            continue
        decoded.append(clip)
        verdict = policy.length_verdict(clip.duration_s)
        if verdict is None:
            usable.append(row)
            continue
        reason, action, detail = verdict
        limit = policy.min_duration_s if reason == "too_short" else policy.max_duration_s
        line = f"{item.where}: row {row.id!r}: audio file '{row.audio}': {detail}{limit:g}"
        if action == "error":
            length_problems.append((line, reason, "error"))
        else:
            length_notes.append((line, reason, action))
            if action == "truncate":
                usable.append(row)

    print(f"data check: {data_file} (format {data.source}" + (f", root {data.root}" if data.root else "") + ")")
    n_problem_rows = len(row_problems) + len(bad_audio) + len(length_problems)
    print(
        f"rows: {len(rows) + len(row_problems)} read, {len(usable)} usable, {n_problem_rows} with problems"
        + (f", {len(length_notes)} handled by the length policy" if length_notes else "")
    )
    if data.max_samples:
        print(f"data.max_samples={data.max_samples}: training uses the first {data.max_samples} usable rows")
    all_rows = [r.row for r in rows]
    no_answer = sum(r.answer is None for r in all_rows)
    if no_answer:  # only with data.allow_unlabeled; otherwise they are bad rows
        print(
            f"answers: {len(all_rows) - no_answer} with a gold answer, {no_answer} without (data.allow_unlabeled: "
            "the accuracy reward gives None on them)"
        )
    print("choices per question: " + _counts(Counter(len(r.choices) for r in all_rows)))
    for key in CATEGORY_KEYS:
        values = Counter(str(r.metadata[key]) for r in all_rows if key in r.metadata)
        if values:
            print(f"{key}: " + _counts(values))
    _print_extra_keys(extras)
    _print_durations(decoded)
    unlabeled = "allowed" if data.allow_unlabeled else "refused"
    print(f"policy: bad rows: {data.on_bad_row}; unlabeled rows: {unlabeled}; " + policy.describe())

    if row_problems or bad_audio or length_problems:
        print(f"problems ({n_problem_rows}):")
        row_outcome = "skipped (data.on_bad_row=skip)" if data.on_bad_row == "skip" else "an error in training"
        for p in row_problems:
            unless = " unless data.allow_unlabeled=true" if p.kind == "missing_answer" else ""
            print(f"  [{p.kind}] {p.message} -> {row_outcome}{unless}")
        outcome = "skipped (data.on_bad_audio=skip)" if policy.on_bad_audio == "skip" else "an error in training"
        for item, reason, message in bad_audio:
            print(f"  [{reason}] {item.where}: row {item.row.id!r}: {message} -> {outcome}")
        for line, reason, _ in length_problems:
            print(f"  [{reason}] {line} -> an error in training")
    if length_notes:
        print(f"length policy ({len(length_notes)}):")
        for line, reason, action in length_notes:
            print(f"  [{reason}] {line} -> {'skipped' if action == 'skip' else 'truncated'}")
    if n_problem_rows:
        print(f"result: {n_problem_rows} problem(s) found")
        return 1
    lookalikes = [key for key, (_, close) in extras.items() if close]
    note = f" (but see the extra keys that resemble known ones: {', '.join(lookalikes)})" if lookalikes else ""
    print(f"result: clean, {len(usable)} rows ready{note}")
    return 0


def _print_extra_keys(extras: dict[str, tuple[int, str | None]]) -> None:
    """Keys no format field or harness name matches: kept as metadata (a reward may read them), or a typo."""
    if not extras:
        return
    items = [
        f"{key!r} {n} row{'s' if n != 1 else ''}" + (f" (did you mean {close!r}?)" if close else "")
        for key, (n, close) in extras.items()
    ]
    print("extra keys (kept as row metadata, read by no harness code): " + ", ".join(items))


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _print_durations(clips: list[ClipInfo]) -> None:
    if not clips:
        print("duration: no clip decoded")
        return
    durations = [c.duration_s for c in clips]
    print(
        f"duration: {len(durations)} clips, min {min(durations):.3f} s, median {statistics.median(durations):.2f} s, "
        f"max {max(durations):.2f} s, total {sum(durations) / 3600:.3f} h"
    )
    bins = [0] * len(HISTOGRAM_EDGES)
    for d in durations:
        bins[max(i for i, (edge, _) in enumerate(HISTOGRAM_EDGES) if d >= edge)] += 1
    peak = max(bins)
    for (_, label), n in zip(HISTOGRAM_EDGES, bins, strict=True):
        bar = "#" * (round(BAR_WIDTH * n / peak) if n else 0)
        print(f"  {label:>9} | {n:6d} {bar}".rstrip())
    print("audio: " + _counts(Counter(f"{c.format}/{c.subtype}" for c in clips)))
    print("sample rates: " + _counts(Counter(f"{c.sample_rate} Hz" for c in clips)))
    print("channels: " + _counts(Counter(f"{c.channels} ch" for c in clips)))


if __name__ == "__main__":
    sys.exit(main())
