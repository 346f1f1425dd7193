"""Proof of learning: held-out accuracy before and after GRPO over several seeds, and the silence control.

    python bench/prove_learning.py [--recipe configs/learn_pitch.yaml] [--seeds 0 1 2] [--silence-seeds 0]
                                   [--out runs/proof] [--set key=value ...] [--arm LABEL:KEY=VALUE[;...]]
                                   [--threshold 0.8]

Runs ``grpo-audio train`` once per seed (cold start, then GRPO; each run in a subprocess of its own, one after
the other) and once per ``--silence-seeds`` seed with ``model.audio_ablation=silence`` (every clip replaced by
silence of the same length: same prompts, no content), then prints one table from the runs' ``run.json`` ``eval``
record: the recipe's first eval set, evaluated before the first step and at the end (``eval.before_training`` and
``eval.at_end``), with sampled answers (``eval.samples`` > 0):

* greedy: held-out accuracy of greedy answers before GRPO (after the cold start) and after it;
* sampled at T: the expected held-out accuracy of the policy (``eval.samples`` answers per question at the
  rollout temperature T, the one it trains at), the number to compare with chance (a model at chance can score
  far from chance greedily; see ``grpo_audio.evaluation.during_training``);
* unparsed: the share of greedy answers after GRPO that name no single choice;
* wall time of the whole run (data, cold start, evaluations, GRPO, final save);
* from the evaluations during training (``eval.every_steps``): the sampled accuracy's curve, and the optimizer steps
  and completions generated (dynamic sampling's dropped ones included) until it first reaches ``--threshold``
  (``learning_curve``). ``--arm`` runs every seed again with other overrides, and the median ratio of completions
  to the threshold is printed per arm.

It then writes the run report of the first seed with the first silence run overlaid
(``grpo-audio report <out>/seed<N> --compare <out>/silence-seed<N>``: ``<out>/seed<N>/report/``). ``--set``
overrides apply to every run (e.g. ``--set trainer.max_steps=40``). Each finished run's row is also saved as
``<out>/<run>.result.json``; ``--reuse`` takes those instead of training again (to finish an interrupted proof or
reprint its table). Exit status 1 when a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(recipe: str, run_dir: Path, overrides: list[str], log: Path) -> float:
    command = [
        sys.executable,
        "-m",
        "grpo_audio",
        "train",
        recipe,
        "--set",
        f"run.output_dir={run_dir}",
        "--set",
        "run.overwrite=true",
    ]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        code = subprocess.call(command, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise RuntimeError(f"training run {run_dir} failed (exit {code}); last lines of {log}:\n{tail}")
    return seconds


def heldout(run_dir: Path) -> dict:
    """The held-out scores of a run, from run.json's ``eval``: its first set's name and items, the sampling settings
    of its sampled accuracy, and ``before``/``after`` (``eval_scores``) at step 0 and at the end."""
    status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    evaluation = status.get("eval") or {}
    first, last = evaluation.get("first"), evaluation.get("last")
    if not (first and last and first["step"] == 0 and last["step"] > 0):
        raise RuntimeError(
            f"{run_dir / 'run.json'} holds no held-out accuracy before and after training: the proof needs an eval "
            "set evaluated before training and at the end (eval.sets, with eval.before_training and eval.at_end true)"
        )
    if evaluation.get("sampling") is None:
        raise RuntimeError(
            f"{run_dir / 'run.json'}: the eval sets were scored greedily only; the proof compares sampled accuracy "
            "with chance: set eval.samples > 0"
        )
    name, spec = next(iter(evaluation["sets"].items()))
    return {
        "set": name,
        "items": spec["items"],
        "sampling": evaluation["sampling"],
        "before": eval_scores(first["metrics"], name),
        "after": eval_scores(last["metrics"], name),
    }


def eval_scores(metrics: dict, name: str) -> dict:
    """Set ``name``'s greedy accuracy, sampled accuracy and unparsed share in one evaluation's metrics."""
    return {
        "accuracy": metrics[f"eval/{name}/accuracy"],
        "sampled_accuracy": metrics[f"eval/{name}/sampled_accuracy"],
        "unparsed": metrics[f"eval/{name}/unparsed"],
    }


def learning_curve(run_dir: Path, threshold: float) -> dict:
    """The first eval set's sampled accuracy (``eval.samples`` > 0: at the rollout temperature) over the run, against
    the completions generated so far (every completion is a line of ``rollouts.jsonl``, dynamic sampling's dropped
    ones included), and where it first reaches ``threshold``.

    Returns ``{"curve": [(step, completions, sampled accuracy)], "reached_step", "reached_completions"}`` (the
    last two None when the curve never reaches the threshold).
    """
    per_step: dict[int, int] = {}
    with (run_dir / "rollouts.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            step = json.loads(line)["step"]
            per_step[step] = per_step.get(step, 0) + 1
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        metrics = json.loads(line)
        key = next((k for k in metrics if k.startswith("eval/") and k.endswith("/sampled_accuracy")), None)
        if key is None:
            continue
        step = int(metrics.get("step", 0))
        curve.append((step, sum(n for s, n in per_step.items() if s <= step), float(metrics[key])))
    reached = next((point for point in curve if point[2] >= threshold), None)
    return {
        "curve": curve,
        "reached_step": reached[0] if reached else None,
        "reached_completions": reached[1] if reached else None,
    }


def run_all(
    recipe: str,
    seeds: list[int],
    silence_seeds: list[int],
    out: Path,
    overrides: list[str],
    reuse: bool = False,
    arms: dict[str, list[str]] | None = None,
    threshold: float = 0.8,
) -> list[dict]:
    """Every (arm, seed, audio) run. ``arms``: label -> overrides added to ``overrides`` (default: one arm, none)."""
    out.mkdir(parents=True, exist_ok=True)
    arms = arms or {"": []}
    plan = [(arm, seed, "audio") for arm in arms for seed in seeds]
    plan += [(arm, seed, "silence") for arm in arms for seed in silence_seeds]
    results = []
    for arm, seed, audio in plan:
        name = (f"{arm}-" if arm else "") + (f"seed{seed}" if audio == "audio" else f"silence-seed{seed}")
        extra = arms[arm] + [f"run.seed={seed}"] + (["model.audio_ablation=silence"] if audio == "silence" else [])
        saved = out / f"{name}.result.json"
        if reuse and saved.is_file():
            results.append(json.loads(saved.read_text(encoding="utf-8")))
            print(f"{name}: reusing {saved}", flush=True)
            continue
        print(f"{name}: training ({out / name})", flush=True)
        seconds = train(recipe, out / name, overrides + extra, out / f"{name}.log")
        scores = heldout(out / name)
        results.append(
            {
                "run": name,
                "arm": arm,
                "seed": seed,
                "audio": audio,
                **scores,
                "seconds": seconds,
                **learning_curve(out / name, threshold),
            }
        )
        saved.write_text(json.dumps(results[-1], indent=1), encoding="utf-8")
        before, after = scores["before"], scores["after"]
        print(
            f"{name}: sampled accuracy at T={scores['sampling']['temperature']:g} {before['sampled_accuracy']:.3f} "
            f"-> {after['sampled_accuracy']:.3f}, greedy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, "
            f"{seconds:.0f} s",
            flush=True,
        )
    return results


def sampled_header(results: list[dict]) -> str:
    """``sampled at T=0.7`` when every run sampled at one temperature; ``sampled at T`` (a column says which) else."""
    temperatures = {r["sampling"]["temperature"] for r in results}
    return f"sampled at T={temperatures.pop():g}" if len(temperatures) == 1 else "sampled at T"


def temperature_column(results: list[dict]) -> bool:
    """Whether the runs sampled at different temperatures (an ``--arm`` changed it): the tables then show each."""
    return len({r["sampling"]["temperature"] for r in results}) > 1


def curve_table(results: list[dict], threshold: float) -> str:
    """Per run: sampled accuracy at the rollout temperature (the eval section's) at the start and the end, and the
    optimizer steps and completions generated until it first reached ``threshold``."""
    sampled, per_run = sampled_header(results), temperature_column(results)
    lines = [
        f"| arm | seed | audio |{' T |' if per_run else ''} {sampled}, before | {sampled}, after | "
        f"steps to {threshold:g} | completions to {threshold:g} |",
        f"| --- | ---: | --- |{' ---: |' if per_run else ''} ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        curve = r.get("curve") or []
        first = f"{curve[0][2]:.3f}" if curve else "n/a"
        last = f"{curve[-1][2]:.3f}" if curve else "n/a"
        steps = "never" if r.get("reached_step") is None else str(r["reached_step"])
        completions = "never" if r.get("reached_completions") is None else f"{r['reached_completions']:,}"
        temperature = f" {r['sampling']['temperature']:g} |" if per_run else ""
        lines.append(
            f"| {r.get('arm') or 'plain'} | {r['seed']} | {r['audio']} |{temperature} {first} | {last} | {steps} | "
            f"{completions} |"
        )
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    """Per run: greedy and sampled held-out accuracy before and after GRPO, the unparsed share after, wall time."""
    sampled, per_run = sampled_header(results), temperature_column(results)
    lines = [
        f"| arm | seed | audio |{' T |' if per_run else ''} greedy before | greedy after | {sampled}, before | "
        f"{sampled}, after | unparsed after | wall s |",
        f"| --- | ---: | --- |{' ---: |' if per_run else ''} ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        b, a = r["before"], r["after"]
        temperature = f" {r['sampling']['temperature']:g} |" if per_run else ""
        lines.append(
            f"| {r.get('arm') or 'plain'} | {r['seed']} | {r['audio']} |{temperature} {b['accuracy']:.3f} | "
            f"{a['accuracy']:.3f} | {b['sampled_accuracy']:.3f} | {a['sampled_accuracy']:.3f} | "
            f"{a['unparsed']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def parse_arms(specs: list[str]) -> dict[str, list[str]]:
    """``--arm`` values -> {label: overrides}, the plain arm (no overrides) first."""
    arms: dict[str, list[str]] = {"": []}
    for spec in specs:
        label, sep, rest = spec.partition(":")
        if not sep or not label or label in arms:
            raise RuntimeError(f"--arm {spec!r}: expected LABEL:KEY=VALUE[;KEY=VALUE] with a new label")
        arms[label] = [item for item in rest.split(";") if item]
    return arms


def completions_ratio(results: list[dict], arm: str) -> float | None:
    """Median completions to the threshold of ``arm``'s audio runs over the plain arm's (None if either never)."""

    def median(label):
        values = sorted(
            r["reached_completions"]
            for r in results
            if r.get("arm", "") == label and r["audio"] == "audio" and r.get("reached_completions") is not None
        )
        return values[len(values) // 2] if values else None

    mine, plain = median(arm), median("")
    return None if mine is None or plain is None else mine / plain


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "learn_pitch.yaml"))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--silence-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", default="runs/proof", help="directory of the run directories")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--arm",
        dest="arms",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[;KEY=VALUE]",
        help="a second (third, ...) arm: every seed and silence seed again with these overrides, labelled LABEL "
        "(the first arm, 'plain', has none); e.g. --arm 'dynamic:rollout.dynamic_sampling.enabled=true'",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.8, help="the sampled accuracy whose first reach is reported"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the plot")
    parser.add_argument(
        "--reuse", action="store_true", help="take a run's result from <out>/<run>.result.json when it exists"
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    try:
        arms = parse_arms(args.arms)
        results = run_all(
            args.recipe, args.seeds, args.silence_seeds, out, args.overrides, args.reuse, arms, args.threshold
        )
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    first = results[0]
    print()
    print(
        f"recipe {' '.join([args.recipe, *args.overrides])}; eval set {first['set']!r}, n={first['items']} questions, "
        f"sampled accuracy over {first['sampling']['samples']} samples each at the rollout temperature"
    )
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, no GPU")
    print()
    print(table(results))
    if any(r.get("curve") for r in results):
        print()
        print(curve_table(results, args.threshold))
        for arm in list(arms)[1:]:
            ratio = completions_ratio(results, arm)
            if ratio is not None:
                print(
                    f"\ncompletions to {args.threshold:g}, arm {arm!r} / plain (median over seeds that reach it): "
                    f"{ratio:.2f}"
                )
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    audio = next((r for r in results if r["audio"] == "audio"), None)
    silence = next((r for r in results if r["audio"] == "silence"), None)
    if audio is not None and not args.no_report:
        command = [sys.executable, "-m", "grpo_audio", "report", str(out / audio["run"])]
        if silence is not None:
            command += ["--compare", str(out / silence["run"])]
        subprocess.check_call(command, cwd=ROOT, stdout=subprocess.DEVNULL)
        print(f"\nreport: {out / audio['run'] / 'report' / 'index.html'} (overview.png beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
