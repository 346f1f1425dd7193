"""``grpo-audio report RUN_DIR [--compare OTHER_RUN] [--steps 1,8]``: plots and one self-contained HTML page.

Reads ``metrics.jsonl`` and ``rollouts.jsonl`` of a run directory and writes into ``RUN_DIR/report/``:
one PNG per panel (R_total, each reward term, accuracy, KL, entropy, completion length, think length), an
``overview.png`` grid, ``index.html`` embedding the plots (base64) and sample rollouts at chosen steps, and
``rollouts.html``, the rollout browser (see ``grpo_audio.evaluation.browser``), linked from ``index.html``.
With ``--compare``, a second run is overlaid on every panel.

When the run logged rewards per row category (``rewards_by_category/<category>/<term>/mean``, see
``grpo_audio.train.reward_bridge``), one more panel per term, R_total first, draws one line per category
(``<term>_by_category.png``, and a "Rewards per category" section of ``index.html``); a compared run's categories
are dashed, in the same colours.

Think length is the number of whitespace-separated words inside the completion's ``<think>...</think>``
(0 when absent), averaged per step over the rollouts of that step.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import re
from functools import partial
from pathlib import Path

from grpo_audio.console import say
from grpo_audio.evaluation.browser import write_browser
from grpo_audio.files import JsonlError, read_jsonl

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_BY_CATEGORY = re.compile(r"rewards_by_category/(?P<category>[^/]+)/(?P<term>.+)/mean")


class ReportError(ValueError):
    pass


def read_log(path: Path) -> list[dict]:
    """The records of a run's JSONL log (``metrics.jsonl``, ``rollouts.jsonl``); [] when the run has none."""
    if not path.is_file():
        return []
    try:
        return [record for _, record in read_jsonl(path)]
    except JsonlError as exc:
        raise ReportError(str(exc)) from None


def think_words(text: str) -> int:
    match = _THINK.search(text)
    return len(match.group(1).split()) if match else 0


def series(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Metric name -> (steps, values) for every numeric metric logged per training step, plus think length; the
    held-out evaluations' records (``eval/...``, also at step 0 and after the last step) count too."""
    logged = read_log(run_dir / "metrics.jsonl")
    if not any("reward" in m for m in logged):
        raise ReportError(f"{run_dir}: metrics.jsonl has no training steps; is this a grpo-audio run directory?")
    metrics = [m for m in logged if "reward" in m or any(k.startswith("eval/") for k in m)]
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in metrics:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                steps, values = out.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(float(value))
    by_step: dict[int, list[int]] = {}
    for rollout in read_log(run_dir / "rollouts.jsonl"):
        by_step.setdefault(rollout["step"], []).append(think_words(rollout["completion"]))
    if by_step:
        steps = sorted(by_step)
        out["think_length_words"] = (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps])
    return out


def _is_eval_accuracy(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[0] == "eval" and parts[2] == "accuracy"


def panels(data: dict[str, tuple[list[int], list[float]]]) -> list[tuple[str, str]]:
    """(title, metric key) for each panel, in display order, for the metrics this run has."""
    wanted = [("R_total", "reward")]
    means = [k for k in data if k.startswith("rewards/") and k.endswith("/mean")]
    terms = sorted(k[len("rewards/") : -len("/mean")] for k in means)
    wanted += [(f"reward term: {t}", f"rewards/{t}/mean") for t in terms if t != "R_total"]
    # one panel per held-out set (eval/<name>/accuracy; per-category curves stay in metrics.jsonl)
    wanted += [(f"held-out {k.split('/')[1]}: accuracy", k) for k in sorted(data) if _is_eval_accuracy(k)]
    wanted += [
        ("zero-variance groups", "frac_reward_zero_std"),
        ("KL to reference", "kl"),
        ("entropy", "entropy"),
        ("completion length (tokens)", "completions/mean_length"),
        ("think length (words)", "think_length_words"),
    ]
    return [(title, key) for title, key in wanted if key in data]


def category_panels(data: dict[str, tuple[list[int], list[float]]]) -> list[tuple[str, dict[str, str]]]:
    """(title, {category: metric key}) per reward term logged per category, R_total first, then the terms by name."""
    by_term: dict[str, dict[str, str]] = {}
    for key in data:
        match = _BY_CATEGORY.fullmatch(key)
        if match:
            by_term.setdefault(match["term"], {})[match["category"]] = key
    order = sorted(by_term, key=lambda term: (term != "R_total", term))
    return [(f"{term} by category", dict(sorted(by_term[term].items()))) for term in order]


def render(run_dir: Path, out_dir: Path, compare: Path | None = None, sample_steps: list[int] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(run_dir)
    other = series(compare) if compare else None
    out_dir.mkdir(parents=True, exist_ok=True)
    single = [
        (title, partial(_plot, title=title, key=key, data=data, other=other, run_dir=run_dir, compare=compare))
        for title, key in panels(data)
    ]
    by_category = [
        (title, partial(_plot_categories, title=title, keys=keys, data=data, other=other, compare=compare))
        for title, keys in category_panels(data)
    ]
    chosen = single + by_category
    images = []
    for title, draw in chosen:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        draw(ax)
        path = out_dir / (re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") + ".png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        images.append((title, path))
    cols = 3
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (_, draw) in zip(axes.flat, chosen, strict=False):
        draw(ax)
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "overview.png", dpi=90)
    plt.close(fig)
    page = out_dir / "index.html"
    rollouts = read_log(run_dir / "rollouts.jsonl")
    if rollouts:
        write_browser(run_dir, out_dir, rollouts, sample_steps)
    category_images = images[len(single) :]
    page.write_text(_html(run_dir, images[: len(single)], rollouts, sample_steps, compare, category_images), "utf-8")
    return page


def _plot(ax, title, key, data, other, run_dir, compare):
    from matplotlib.ticker import MaxNLocator

    steps, values = data[key]
    ax.plot(steps, values, marker="o", markersize=3, label=run_dir.name)
    if other and key in other:
        ax.plot(*other[key], marker="s", markersize=3, label=compare.name)
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _plot_categories(ax, title, keys, data, other, compare):
    """One line per category; the compared run's line of the same category dashed, in the same colour."""
    from matplotlib.ticker import MaxNLocator

    for category, key in keys.items():
        (line,) = ax.plot(*data[key], marker="o", markersize=3, label=category)
        if other and key in other:
            ax.plot(*other[key], linestyle="--", marker="s", markersize=3, color=line.get_color())
    legend = ax.legend(fontsize=7, title=f"dashed: {compare.name}" if other else None)
    legend.get_title().set_fontsize(7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _html(run_dir, images, rollouts, sample_steps, compare, category_images=()) -> str:
    steps = sorted({r["step"] for r in rollouts})
    chosen = sample_steps or ([steps[0], steps[-1]] if steps else [])
    parts = [
        "<!doctype html><meta charset='utf-8'><title>grpo-audio report</title>",
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:32%;margin:0.3%}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:12px}"
        "table{border-collapse:collapse}pre{white-space:pre-wrap;margin:0}</style>",
        f"<h1>Run {html.escape(str(run_dir))}</h1>",
    ]
    if compare:
        parts.append(f"<p>Compared with {html.escape(str(compare))}</p>")
    if rollouts:
        parts.append(
            "<p><a href='rollouts.html'>Rollout browser</a>: each group with its audio, question, gold answer, "
            "completions, reward terms and advantages, with filters.</p>"
        )
    parts += [_embedded_png(title, path) for title, path in images]
    if category_images:
        parts.append(
            "<h2>Rewards per category</h2><p>Each term's mean and R_total's mean over the rows of one category "
            "(the rows' task, question type or category) at each step.</p>"
        )
    parts += [_embedded_png(title, path) for title, path in category_images]
    for step in chosen:
        rows = [r for r in rollouts if r["step"] == step][:8]
        parts.append(
            f"<h2>Sample rollouts at step {step}</h2><table><tr><th>prompt id</th><th>completion</th>"
            "<th>rewards</th><th>R_total</th><th>advantage</th><th>finish</th></tr>"
        )
        for r in rows:
            terms = ", ".join(f"{k}={v}" for k, v in r["rewards"].items())
            parts.append(
                f"<tr><td>{html.escape(str(r['prompt_id']))}</td><td><pre>{html.escape(r['completion'])}</pre></td>"
                f"<td>{html.escape(terms)}</td><td>{r['R_total']}</td><td>{_advantage(r)}</td>"
                f"<td>{html.escape(str(r['finish_reason']))}</td></tr>"
            )
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="grpo-audio report", description="Plots and an HTML page for a run.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--compare", type=Path, help="a second run directory to overlay")
    parser.add_argument("--steps", help="comma-separated steps whose sample rollouts to show (default: first, last)")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    if steps:
        logged = logged_steps(args.run_dir)
        absent = [s for s in steps if s not in logged]
        if absent:
            span = f"steps {min(logged)}-{max(logged)}" if logged else "no rollouts"
            say(f"no rollouts at step(s) {', '.join(map(str, absent))} (the run logged {span})")
    page = render(args.run_dir, args.out or args.run_dir / "report", args.compare, steps)
    say(f"report written to {page}")
    return 0


def _advantage(record: dict) -> str:
    """The record's advantage, or why it has none (a group dynamic sampling dropped never trained)."""
    if record.get("advantage") is None:
        return html.escape(f"none: dropped ({record['dropped']})" if record.get("dropped") else "none")
    return f"{record['advantage']:.3f}"


def _embedded_png(title: str, path: Path) -> str:
    """An ``<img>`` carrying the PNG file itself (the page stays self-contained)."""
    encoded = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(title)}' src='data:image/png;base64,{encoded}'>"


def logged_steps(run_dir: Path) -> set[int]:
    """The steps ``rollouts.jsonl`` holds records of."""
    return {record["step"] for record in read_log(Path(run_dir) / "rollouts.jsonl")}
