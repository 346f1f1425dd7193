"""Dynamic sampling on a run where most groups saturate: what each step teaches, and what the refill rounds cost.

    python bench/bench_dynamic_sampling.py [--out runs/bench_ds] [--steps 12] [--rounds 3] [--reuse-model DIR]
                                           [--set KEY=VALUE ...]

First it trains ``configs/learn_pitch.yaml`` (seed 0) to the end, where the model answers almost every held-out
question right, so most groups of G completions are all right: zero reward variance, advantage 0, no gradient.
From that trained model (``model.source: pretrained``, the run's ``final_model/``; no cold start, beta 0 since a
pretrained model's KL reference needs LoRA) it then trains ``--steps`` more steps twice, same seed and data, once as
is and once with ``rollout.dynamic_sampling`` (``--rounds`` extra rounds at most), and reports per arm, the first
step left out of the timings (one-off warm-up):

* the share of loss-bearing completions with a non-zero advantage (``advantage/nonzero_frac``), and of generated
  groups with zero reward variance;
* completions generated per step, rounds per step, and groups the step had to fill with zero-variance groups;
* the median wall seconds per step and its split (rollouts, scoring, log-prob passes, update), and the ratio of the
  dynamic-sampling step to the plain one;
* completions with a non-zero advantage in the loss (the batch less the fillers), per step and per second of
  training: the useful work per unit of time.

Each arm runs in this process, one after the other, on the same machine; compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import add_recipe_overrides  # noqa: E402  (bench/ is the script's directory)

from grpo_audio.recipe import load_recipe  # noqa: E402
from grpo_audio.train.run import train  # noqa: E402

RECIPE = ROOT / "configs" / "learn_pitch.yaml"
SPLIT = ("time/rollout_s", "time/scoring_s", "time/logprob_s", "time/update_s")


def saturated_model(out: Path, settings: list[str]) -> Path:
    """learn_pitch trained to the end (seed 0): the starting point where most groups are all right."""
    run_dir = out / "learned"
    if not (run_dir / "final_model").is_dir():
        overrides = [*settings, f"run.output_dir={run_dir}", "run.overwrite=true", "eval.sets=[]"]
        train(load_recipe(str(RECIPE), overrides))
    return run_dir / "final_model"


def arm(out: Path, model_dir: Path, name: str, steps: int, settings: list[str], extra: list[str]) -> list[dict]:
    run_dir = out / name
    overrides = [
        *settings,
        f"run.output_dir={run_dir}",
        "run.overwrite=true",
        "model.source=pretrained",
        f"model.path={model_dir}",
        "coldstart.steps=0",
        "trainer.beta=0.0",
        f"trainer.max_steps={steps}",
        f"trainer.save_steps={steps}",
        "eval.sets=[]",
        *extra,
    ]
    train(load_recipe(str(RECIPE), overrides))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "reward" in r]


def summary(rows: list[dict], group_size: int, batch: int) -> dict:
    """One arm's per-step means (medians for times); ``batch``: the completions of a step without refill rounds."""
    timed = rows[1:]  # the first step carries one-off warm-up
    step_s = statistics.median(r["step_time"] for r in timed)
    return {
        "nonzero_advantage_frac": statistics.mean(r["advantage/nonzero_frac"] for r in rows),
        "zero_variance_frac_generated": statistics.mean(
            r.get("dynamic_sampling/zero_std_frac_generated", r["frac_reward_zero_std"]) for r in rows
        ),
        "rounds": statistics.mean(r.get("dynamic_sampling/rounds", 1.0) for r in rows),
        "filler_groups": statistics.mean(r.get("dynamic_sampling/filler_groups", 0.0) for r in rows),
        "median_step_s": step_s,
        **{key: statistics.median(r.get(key, 0.0) for r in timed) for key in SPLIT},
        "completions_per_step": statistics.mean(
            r["dynamic_sampling/groups_generated"] * group_size if "dynamic_sampling/groups_generated" in r else batch
            for r in rows
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_ds")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3, help="rollout.dynamic_sampling.max_extra_rounds")
    parser.add_argument("--reuse-model", default=None, help="a trained final_model/ instead of training learn_pitch")
    add_recipe_overrides(parser, " for every run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.reuse_model).resolve() if args.reuse_model else saturated_model(out, args.settings)
    recipe = load_recipe(str(RECIPE), args.settings)
    group_size = recipe.rollout.num_generations
    batch = int(recipe.trainer["per_device_train_batch_size"])
    plain = summary(arm(out, model_dir, "plain", args.steps, args.settings, []), group_size, batch)
    dynamic_extra = [
        "rollout.dynamic_sampling.enabled=true",
        f"rollout.dynamic_sampling.max_extra_rounds={args.rounds}",
    ]
    dynamic = summary(arm(out, model_dir, "dynamic", args.steps, args.settings, dynamic_extra), group_size, batch)
    results = {"plain": plain, "dynamic sampling": dynamic}
    for r in results.values():
        # completions in the loss (the batch less dynamic sampling's fillers) with a non-zero advantage
        in_loss = batch - r["filler_groups"] * group_size
        r["teaching_completions_per_step"] = in_loss * r["nonzero_advantage_frac"]
        r["teaching_completions_per_s"] = r["teaching_completions_per_step"] / r["median_step_s"]
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"\nlearn_pitch's trained model, {args.steps} more steps per arm, {batch} completions per step in the loss")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, no GPU\n")
    print(
        "| arm | non-zero advantage share | zero-variance groups generated | completions generated / step | rounds | "
        "filler groups | median s/step | rollout s | scoring s | log-prob s | update s | "
        "teaching completions / step | "
        "teaching completions / s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(
            f"| {name} | {r['nonzero_advantage_frac']:.2f} | {r['zero_variance_frac_generated']:.2f} | "
            f"{r['completions_per_step']:.0f} | {r['rounds']:.2f} | {r['filler_groups']:.2f} | "
            f"{r['median_step_s']:.2f} | "
            + " | ".join(f"{r[key]:.2f}" for key in SPLIT)
            + f" | {r['teaching_completions_per_step']:.1f} | {r['teaching_completions_per_s']:.1f} |"
        )
    print(f"\nstep time, dynamic / plain: {dynamic['median_step_s'] / plain['median_step_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
