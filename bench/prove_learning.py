"""Proof of learning: held-out accuracy before and after GRPO over several seeds, and the silence control.

    python bench/prove_learning.py [--recipe configs/learn_pitch.yaml] [--seeds 0 1 2] [--silence-seeds 0]
                                   [--out runs/proof] [--set key=value ...]

Runs ``grpo-audio train`` once per seed (cold start, then GRPO; each run in a subprocess of its own, one after
the other) and once per ``--silence-seeds`` seed with ``model.audio_ablation=silence`` (every clip replaced by
silence of the same length: same prompts, no content), then prints one table from the runs' ``run.json``:

* greedy: held-out accuracy of greedy answers before GRPO (after the cold start) and after it;
* sampled: the expected held-out accuracy of the policy (k samples per question at temperature 1), the number to
  compare with chance (a model at chance can score far from chance greedily; see ``grpo_audio.evaluation.heldout``);
* wall time of the whole run (data, cold start, held-out scoring, GRPO, final save).

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


def heldout(run_dir: Path) -> tuple[dict, dict]:
    """Held-out scores before and after GRPO: the synthetic split's (``heldout_before``/``heldout_after``), else the
    recipe's first ``eval`` set's, evaluated before the first step and at the end (greedy accuracy; sampled
    accuracy with ``eval.samples`` > 0; "format" = the share of answers the rule could parse)."""
    status = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if "heldout_before" in status and "heldout_after" in status:
        return status["heldout_before"], status["heldout_after"]
    evaluation = status.get("eval") or {}
    first, last = evaluation.get("first"), evaluation.get("last")
    if first and last and first["step"] == 0 and last["step"] > 0:
        return _eval_scores(first["metrics"]), _eval_scores(last["metrics"])
    raise RuntimeError(
        f"{run_dir / 'run.json'} holds no held-out accuracy before and after training: the proof needs a recipe "
        "with a synthetic held-out split (data.synthetic.heldout_questions > 0) or an eval set evaluated before "
        "training and at the end (eval.sets, with eval.before_training and eval.at_end true)"
    )


def _eval_scores(metrics: dict) -> dict:
    """The first eval set's numbers in the held-out record's keys (accuracy, sampled_accuracy, format)."""
    name = next(key.split("/")[1] for key in metrics if key.startswith("eval/") and key.endswith("/accuracy"))
    scores = {"accuracy": metrics[f"eval/{name}/accuracy"], "format": 1.0 - metrics[f"eval/{name}/unparsed"]}
    if f"eval/{name}/sampled_accuracy" in metrics:
        scores["sampled_accuracy"] = metrics[f"eval/{name}/sampled_accuracy"]
    return scores


def run_all(
    recipe: str, seeds: list[int], silence_seeds: list[int], out: Path, overrides: list[str], reuse: bool = False
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    plan = [(seed, "audio") for seed in seeds] + [(seed, "silence") for seed in silence_seeds]
    results = []
    for seed, audio in plan:
        name = f"seed{seed}" if audio == "audio" else f"silence-seed{seed}"
        extra = [f"run.seed={seed}"] + (["model.audio_ablation=silence"] if audio == "silence" else [])
        saved = out / f"{name}.result.json"
        if reuse and saved.is_file():
            results.append(json.loads(saved.read_text(encoding="utf-8")))
            print(f"{name}: reusing {saved}", flush=True)
            continue
        print(f"{name}: training ({out / name})", flush=True)
        seconds = train(recipe, out / name, overrides + extra, out / f"{name}.log")
        before, after = heldout(out / name)
        results.append(
            {"run": name, "seed": seed, "audio": audio, "before": before, "after": after, "seconds": seconds}
        )
        saved.write_text(json.dumps(results[-1], indent=1), encoding="utf-8")
        print(
            f"{name}: sampled accuracy {before.get('sampled_accuracy', float('nan')):.3f} -> "
            f"{after.get('sampled_accuracy', float('nan')):.3f}, greedy {before['accuracy']:.3f} -> "
            f"{after['accuracy']:.3f}, {seconds:.0f} s",
            flush=True,
        )
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| seed | audio | greedy before | greedy after | sampled before | sampled after | format after | wall s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['seed']} | {r['audio']} | {b['accuracy']:.3f} | {a['accuracy']:.3f} | "
            f"{b.get('sampled_accuracy', float('nan')):.3f} | {a.get('sampled_accuracy', float('nan')):.3f} | "
            f"{a.get('sampled_format', a['format']):.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "learn_pitch.yaml"))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--silence-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", default="runs/proof", help="directory of the run directories")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-report", action="store_true", help="skip the plot")
    parser.add_argument(
        "--reuse", action="store_true", help="take a run's result from <out>/<run>.result.json when it exists"
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    try:
        results = run_all(args.recipe, args.seeds, args.silence_seeds, out, args.overrides, args.reuse)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    n = results[0]["before"]["n"]
    print()
    print(
        f"recipe {args.recipe} {' '.join(args.overrides)}; held-out n={n} questions, sampled accuracy over "
        f"{results[0]['before'].get('samples_per_question', '?')} samples each at temperature 1"
    )
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, no GPU")
    print()
    print(table(results))
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
