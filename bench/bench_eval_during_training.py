"""What a held-out evaluation during training costs next to a training step (the recipe's ``eval`` section).

    python bench/bench_eval_during_training.py [--questions 100] [--batch-size 32] [--steps 4] [--set KEY=VALUE ...]

Trains the tiny model of ``configs/learn_pitch.yaml`` (cold start off, so it starts at once) for ``--steps`` steps
with a synthetic held-out set of ``--questions`` clips evaluated every 2 steps, greedy, and prints, from the run's
metrics.jsonl: the mean wall seconds of one evaluation (``time/eval_s``), of one training step (the step's
``time/*`` split without the evaluation) and their ratio. Both are measured in the same process, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import add_recipe_overrides  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
STEP_PARTS = ("time/audio_features_s", "time/rollout_s", "time/scoring_s", "time/logprob_s", "time/update_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    add_recipe_overrides(parser)
    args = parser.parse_args()

    from grpo_audio.recipe import load_recipe
    from grpo_audio.train.run import train

    out = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    recipe = load_recipe(
        str(ROOT / "configs" / "learn_pitch.yaml"),
        [
            *args.settings,
            f"run.output_dir={out / 'run'}",
            "coldstart.steps=0",
            f"data.synthetic.heldout_questions={args.questions}",
            f"trainer.max_steps={args.steps}",
            "eval.sets=[{name: heldout, source: synthetic}]",
            "eval.every_steps=2",
            "eval.before_training=false",
            "eval.samples=0",  # greedy only: learn_pitch also samples each question
            f"eval.batch_size={args.batch_size}",
        ],
    )
    run = train(recipe)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m["time/eval_s"] for m in logged if "time/eval_s" in m]
    steps = [sum(m.get(k, 0.0) for k in STEP_PARTS) for m in logged if "reward" in m]
    eval_s, step_s = statistics.mean(evals), statistics.mean(steps)
    per_step = "completions per step: " + str(recipe.trainer["per_device_train_batch_size"])
    print(f"held-out evaluation of {args.questions} questions (greedy, batch {args.batch_size}): {eval_s:.2f} s")
    print(f"training step ({per_step}): {step_s:.2f} s")
    print(f"evaluation / step: {eval_s / step_s:.2f}; every 2 steps that adds {eval_s / step_s / 2:.0%} to training")


if __name__ == "__main__":
    main()
