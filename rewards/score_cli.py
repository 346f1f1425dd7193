"""``score``: debug a reward before spending GPU hours. Scores a JSONL of (completion, sample) rows with a rubric.

Usage (also ``python -m rewards score ...`` and ``grpo-audio rewards score ...``)::

    score --rewards RECIPE_OR_RUBRIC.yaml --input rows.jsonl [--group-size G] [--output scores.jsonl]
          [--step S --total-steps T] [--max-length N]
    list                                  # the registered rewards and combiners

``--rewards``: a YAML file with a ``rewards:`` section (a full recipe works; other sections are ignored) or whose
top level is that section (``{combiner, combiner_options, terms}``, or a bare list of terms).

``--input``: one JSON object per line with ``completion`` (a string) and either ``sample`` (an object) or the
sample's fields at the top level (everything except ``completion``, ``length`` and ``finish_reason``). Blank lines
are skipped. A bad line is an error naming its line number. With ``--group-size G`` the rows are read as consecutive
groups of G completions of the same prompt (as the trainer scores them), so the row count must be a multiple of G.

Completion lengths, for the rewards that read them from the context (``overlong``, a user's length budget): a row's
``length`` (its token count, an integer >= 0) and ``finish_reason`` (``"stop"`` or ``"length"``), at the top level,
fill ``RewardContext.lengths`` / ``finish_reasons``; ``rollouts.jsonl`` records carry both, so a run's rollouts can
be re-scored as they are. Either field is given on every row or on none. ``--max-length N`` is the run's length
limit (``RewardContext.max_length``). Without lengths the context has none, and a reward that needs them stops with
an error rather than score 0.

Prints one line per term: weight used, mean, std (population), count of None (not applicable or failed), min, max
over the non-None values, then R_total, each failed term's count and first reason, the unscored rows, the
combiner's batch scalars and the judge counters. ``--output`` writes per-row scores as JSONL (``line``, ``id``,
``terms``, ``weighted``, ``total``, ``extra``, ``failed``: reasons per failed term, ``unscored``: why the row has no
total, or null).

Exit status: 0 on success, 1 when a reward fails (its traceback and the error on stderr; a judge that gave no verdict
under ``on_failure: error`` is an expected failure: the error line alone), 2 on a usage or input error (message on
stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rewards.combiners import COMBINERS
from rewards.judge.scorers import JudgeError
from rewards.registry import (
    FINISH_REASONS,
    RewardContext,
    RewardError,
    RewardOutputError,
    get_reward,
    registered_names,
)
from rewards.rubric import RewardBreakdown, Rubric, rubric_from_config

SCORE_DESCRIPTION = """Score completions with a recipe's rewards, as the trainer would, before spending GPU hours.

Input: JSONL, one row per completion: {"completion": "...", "sample": {...}} or the sample's fields at the top level
(answer, choices, question, id, ...); rollouts.jsonl from a run works as it is (its length and finish_reason feed the
rewards that read lengths). With --group-size G, consecutive rows are the G completions of one prompt, and each
row's advantage is printed as the trainer computes it from R_total.

Prints a table per term (weight, mean, std, none, min, max) and R_total, then one line per row (completion excerpt,
every term, R_total, advantage). --output writes every row's scores as JSONL.

Example:
  grpo-audio rewards score --rewards configs/learn_pitch.yaml --input runs/learn_pitch/rollouts.jsonl --group-size 4
"""


class InputError(ValueError):
    """A problem with the command's inputs; reported as ``error: ...`` with exit status 2."""


def load_rewards_section(path: Path) -> Any:
    import yaml  # a dependency of the package; imported here so `import rewards` does not need it

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read YAML ({exc})") from exc
    if isinstance(document, Mapping) and "rewards" in document:
        return document["rewards"]
    if isinstance(document, list) or (isinstance(document, Mapping) and "terms" in document):
        return document
    raise InputError(f"{path}: no 'rewards:' section (and the file is not a rewards section itself)")


COMPLETION_FIELDS = ("length", "finish_reason")  # a completion's own properties, not its sample's


@dataclass
class InputRows:
    """The rows of an input file: line numbers, completions, samples and, where every row gives them, the
    completions' lengths in tokens and finish reasons (None otherwise)."""

    lines: list[int] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    lengths: list[int] | None = None
    finish_reasons: list[str] | None = None


def _completion_fields(row: dict[str, Any], where: str) -> tuple[int | None, str | None]:
    length, reason = row.get("length"), row.get("finish_reason")
    if "length" in row and (isinstance(length, bool) or not isinstance(length, int) or length < 0):
        raise InputError(f"{where}: 'length' must be a token count (an integer >= 0), got {length!r}")
    if "finish_reason" in row and reason not in FINISH_REASONS:
        raise InputError(f"{where}: 'finish_reason' must be one of {FINISH_REASONS}, got {reason!r}")
    return length, reason


def _all_or_none(path: Path, name: str, lines: list[int], values: list[Any]) -> list[Any] | None:
    missing = [line for line, value in zip(lines, values, strict=True) if value is None]
    if len(missing) == len(values):
        return None
    if missing:
        raise InputError(f"{path}:{missing[0]}: no {name!r} while other rows have one; give it on every row or none")
    return values


def read_rows(path: Path) -> InputRows:
    """The rows of a JSONL file; raises InputError naming the bad line."""
    rows = InputRows()
    lengths: list[int | None] = []
    reasons: list[str | None] = []
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc})") from exc
    with handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if "completion" not in row:
                raise InputError(f"{where}: missing 'completion'")
            if not isinstance(row["completion"], str):
                raise InputError(f"{where}: 'completion' must be a string, got {type(row['completion']).__name__}")
            length, reason = _completion_fields(row, where)
            if "sample" in row:
                sample = row["sample"]
                if not isinstance(sample, dict):
                    raise InputError(f"{where}: 'sample' must be an object, got {type(sample).__name__}")
                extra = sorted(set(row) - {"completion", "sample", *COMPLETION_FIELDS})
                if extra:
                    raise InputError(f"{where}: fields {extra} next to 'sample'; put them inside 'sample'")
            else:
                sample = {k: v for k, v in row.items() if k not in ("completion", *COMPLETION_FIELDS)}
            rows.lines.append(number)
            rows.completions.append(row["completion"])
            rows.samples.append(sample)
            lengths.append(length)
            reasons.append(reason)
    if not rows.completions:
        raise InputError(f"{path}: no rows")
    rows.lengths = _all_or_none(path, "length", rows.lines, lengths)
    rows.finish_reasons = _all_or_none(path, "finish_reason", rows.lines, reasons)
    return rows


def summarise(values: Sequence[float | None]) -> dict[str, float]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": math.nan, "std": math.nan, "none": len(values), "min": math.nan, "max": math.nan}
    mean = sum(present) / len(present)
    std = math.sqrt(sum((v - mean) ** 2 for v in present) / len(present))
    return {"mean": mean, "std": std, "none": len(values) - len(present), "min": min(present), "max": max(present)}


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _stats_row(name: str, weight: str, values: Sequence[float | None]) -> tuple[str, ...]:
    s = summarise(values)
    return (name, weight, _fmt(s["mean"]), _fmt(s["std"]), str(s["none"]), _fmt(s["min"]), _fmt(s["max"]))


def print_table(breakdown: RewardBreakdown, rubric: Rubric, group_size: int, out: TextIO) -> None:
    rows = [("term", "weight", "mean", "std", "none", "min", "max")]
    for key, values in breakdown.terms.items():
        rows.append(_stats_row(key, _fmt(breakdown.weights.get(key, math.nan)), values))
    rows.append(_stats_row("R_total", "", breakdown.total))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            print("  ".join("-" * w for w in widths), file=out)
        cells = (c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        print("  ".join(cells), file=out)
    n = len(breakdown.total)
    print(f"rows: {n}  group size: {group_size}  combiner: {rubric.combiner_name}", file=out)
    if group_size > 1:
        flat = 0
        for i in range(0, n, group_size):
            group = breakdown.total[i : i + group_size]
            present = [v for v in group if v is not None]
            flat += len(set(present)) <= 1
        print(f"groups with zero reward variance: {flat}/{n // group_size}", file=out)
    for key, reasons in breakdown.failed.items():
        failures = [r for r in reasons if r is not None]
        if failures:
            print(f"{key} failed on {len(failures)} rows (first: {failures[0]})", file=out)
    if breakdown.unscored_count():
        print(f"unscored rows (a weighted term failed; no R_total): {breakdown.unscored_count()}/{n}", file=out)
    for name, value in breakdown.scalars.items():
        print(f"{name}: {value:.4f}", file=out)
    for name, value in rubric.metrics().items():
        print(f"{name}: {value:g}", file=out)


ADVANTAGE_EPS = 1e-4  # TRL's: A = (r - mean) / (std + 1e-4)


def group_advantages(totals: Sequence[float | None], group_size: int, scale: str = "group") -> list[float]:
    """The advantages the trainer computes from R_total (TRL 1.16's ``sum_then_normalize``), per row.

    ``A_i = (r_i - mean_g) / (std_g + 1e-4)`` with mean and sample std (ddof 1) over the scored rows of row i's group
    of ``group_size`` (``scale="group"``, TRL's default), over the whole batch (``"batch"``), or ``r_i - mean_g``
    (``"none"``, Dr. GRPO). An unscored row (None) gets 0, and so does every row of a group with fewer than two
    scored rows (TRL's std is NaN there).
    """
    if scale not in ("group", "batch", "none"):
        raise InputError(f"--scale-rewards must be group, batch or none, got {scale!r}")

    def mean_std(values: list[float]) -> tuple[float, float]:
        if not values:
            return math.nan, math.nan
        mean = sum(values) / len(values)
        if len(values) < 2:
            return mean, math.nan
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    batch_std = mean_std([t for t in totals if t is not None])[1]
    out: list[float] = []
    for start in range(0, len(totals), group_size):
        group = totals[start : start + group_size]
        mean, std = mean_std([t for t in group if t is not None])
        if scale == "batch":
            std = batch_std
        for t in group:
            value = math.nan if t is None else t - mean
            if scale != "none":
                value = value / (std + ADVANTAGE_EPS)
            out.append(0.0 if math.isnan(value) else value)
    return out


def excerpt(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_rows(
    completions: Sequence[str],
    samples: Sequence[Mapping[str, Any]],
    breakdown: RewardBreakdown,
    advantages: list[float] | None,
    show: int,
    out: TextIO,
) -> None:
    """One line per row, the first ``show`` rows: id, completion excerpt, every term, R_total (and the advantage)."""
    if show == 0:
        return
    header = ["row", "id", "completion", *breakdown.terms, "R_total", *(["advantage"] if advantages else [])]
    table = [header]
    for j in range(len(completions) if show < 0 else min(show, len(completions))):
        row_id = samples[j].get("id", samples[j].get("prompt_id", ""))  # rollouts.jsonl names it prompt_id
        cells = [str(j), str(row_id), excerpt(completions[j], 48)]
        cells += ["-" if v[j] is None else f"{v[j]:.4g}" for v in breakdown.terms.values()]
        cells.append("-" if breakdown.total[j] is None else f"{breakdown.total[j]:.4g}")
        if advantages:
            cells.append(f"{advantages[j]:+.3f}")
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(file=out)
    for row in table:
        print(
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))),
            file=out,
        )
    hidden = len(completions) - (len(table) - 1)
    if hidden > 0:
        print(f"... {hidden} more rows (--show N or --show -1 prints them; --output writes them all)", file=out)


def write_rows(
    path: Path,
    lines: list[int],
    samples: list[dict[str, Any]],
    breakdown: RewardBreakdown,
    advantages: list[float] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for j, line in enumerate(lines):
            record = {
                "line": line,
                "id": samples[j].get("id"),
                "terms": {k: v[j] for k, v in breakdown.terms.items()},
                "weighted": {k: v[j] for k, v in breakdown.weighted.items()},
                "total": breakdown.total[j],
                "extra": {k: v[j] for k, v in breakdown.extra.items()},
                "failed": {k: v[j] for k, v in breakdown.failed.items() if v[j] is not None},
                "unscored": breakdown.unscored[j],
            }
            if advantages is not None:
                record["advantage"] = advantages[j]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_score(args: argparse.Namespace, out: TextIO) -> int:
    if args.group_size < 1:
        raise InputError("--group-size must be >= 1")
    section = load_rewards_section(Path(args.rewards))
    try:
        rubric = rubric_from_config(section)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{args.rewards}: rewards: {exc}") from exc
    if args.max_length is not None and args.max_length < 1:
        raise InputError("--max-length must be >= 1")
    rows = read_rows(Path(args.input))
    if len(rows.completions) % args.group_size:
        raise InputError(
            f"{args.input}: {len(rows.completions)} rows is not a multiple of --group-size {args.group_size}"
        )
    context = RewardContext(
        step=args.step,
        total_steps=args.total_steps,
        group_size=args.group_size,
        lengths=rows.lengths,
        finish_reasons=rows.finish_reasons,
        max_length=args.max_length,
    )
    breakdown = rubric.score(rows.completions, rows.samples, context)
    advantages = None
    if args.group_size > 1:
        advantages = group_advantages(breakdown.total, args.group_size, args.scale_rewards)
    print_table(breakdown, rubric, args.group_size, out)
    print_rows(rows.completions, rows.samples, breakdown, advantages, args.show, out)
    if args.output:
        write_rows(Path(args.output), rows.lines, rows.samples, breakdown, advantages)
        print(f"per-row scores: {args.output}", file=out)
    return 0


def run_list(out: TextIO) -> int:
    for name in registered_names():
        reward = get_reward(name)
        doc = (sys.modules[reward.fn.__module__].__doc__ or "").strip().splitlines()
        kind = "batched" if reward.batched else "per-row"
        print(f"{name:<18} {kind:<8} {doc[0] if doc else ''}", file=out)
        print(f"{'':<18} options: {', '.join(reward.option_names()) or '-'}", file=out)
    print(f"combiners: {', '.join(COMBINERS)}", file=out)
    return 0


def build_parser(prog: str = "rewards") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Score completions with reward rubrics.")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser(
        "score",
        help="score a JSONL of (completion, sample) rows: a per-term table, one line per row, group advantages",
        description=SCORE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("--rewards", required=True, help="YAML recipe (its rewards: section) or rewards section")
    score.add_argument("--input", required=True, help="JSONL rows: {completion, sample} or {completion, **sample}")
    score.add_argument("--group-size", type=int, default=1, help="G: consecutive rows sharing a prompt (default 1)")
    score.add_argument("--output", help="write per-row scores to this JSONL file")
    score.add_argument("--step", type=int, default=0, help="optimizer step for schedules (audio_thinker's p)")
    score.add_argument("--total-steps", type=int, default=1, help="total steps for schedules (default 1)")
    score.add_argument(
        "--max-length", type=int, help="the run's completion length limit in tokens (rollout.max_completion_length)"
    )
    score.add_argument("--show", type=int, default=20, help="rows printed one per line (default 20; 0 none, -1 all)")
    score.add_argument(
        "--scale-rewards",
        default="group",
        help="advantages with --group-size: group (TRL's default), batch or none (as trainer.scale_rewards)",
    )
    sub.add_parser("list", help="list the registered rewards and combiners")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "rewards", out: TextIO | None = None) -> int:
    """Entry point; ``argv`` starts at the subcommand (``["score", "--rewards", ...]``). Returns the exit status."""
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv = ["score", *argv]  # `grpo-audio rewards score` may hand over the options only
    args = build_parser(prog).parse_args(argv)
    try:
        if args.command == "list":
            return run_list(out)
        return run_score(args, out)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RewardError, RewardOutputError) as exc:
        # A bug in a reward: its own traceback is what its author needs, then the one-line summary. A judge that gave
        # no verdict (on_failure: error) is an expected failure, not a bug: the line alone says what happened.
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, JudgeError):
            traceback.print_exception(type(cause), cause, cause.__traceback__)
        print(f"error: {exc}", file=sys.stderr)
        return 1
