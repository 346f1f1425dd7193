"""Harness overhead: ``AudioGRPOTrainer`` vs TRL's plain ``GRPOTrainer``, same text-only model, config and data.

    python bench/bench_overhead.py [--prompts 8] [--G 4] [--max-new-tokens 32] [--steps 8] [--rounds 3]

The harness's trainer is the one ``grpo-audio train`` builds (``grpo_audio.train.build.make_trainer``, from the
recipe's defaults at the sizes given). Both trainers get a copy of the same tiny Covo-Audio model (built in process
as the harness builds it, seed 0), the same ``GRPOConfig`` (CPU, fp32, beta 0, no gradient checkpointing, one
generation per optimizer step), the same prompts, the same reward function (the recipe's rubric, accuracy + format,
through the TRL reward bridge for plain TRL) and the same sampling vocabulary (plain TRL gets the speech tokens and
audio markers as ``suppress_tokens``; the harness engine masks them itself). The prompts carry no audio
placeholders, so the model computes the same thing under both trainers; what differs is the harness around it: the
audio features of each row's clip (computed once, then cached, and ignored by a prompt without placeholders),
rollouts through the harness's HF engine from prompt embeddings, the audio-aware log-prob passes, the step-time
split, ``rollouts.jsonl`` and ``metrics.jsonl``.

Timing: a callback times each optimizer step (``on_step_begin`` to ``on_step_end``). Each round builds both
trainers afresh and trains each for ``--steps`` steps, the order alternating between rounds so that background
load falls on both alike; the first ``--warmup`` steps of every run (one-off kernel and allocator warm-up) are
dropped. Reported: median wall and CPU seconds per step over all rounds (CPU = this process's CPU time, all
threads: on a shared machine it is far less disturbed by other jobs than wall time; run with OMP_NUM_THREADS=1
there, so that no thread spins waiting for a core), the mean completion length (the sampled lengths differ
between the two, and step time grows with them), and the harness/plain ratios.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from common import StepTimer, synthetic_rows_and_model  # bench/ is the script's directory
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS
from grpo_audio.recipe import load_recipe
from grpo_audio.recipe.rubric import recipe_rubric
from grpo_audio.train.build import make_trainer
from grpo_audio.train.reward_bridge import make_trl_reward


def bench_recipe(args):
    """The recipe defaults (tiny model, accuracy + format rubric, HF engine) at the bench's sizes: what the harness
    arm's trainer is built from, and the model both arms start from."""
    return load_recipe(
        None,
        [
            f"model.tiny.hidden_size={args.hidden_size}",
            f"model.tiny.num_layers={args.num_layers}",
            f"rollout.num_generations={args.G}",
            f"rollout.max_completion_length={args.max_new_tokens}",
            "rollout.temperature=1.0",
        ],
    )


def build(recipe, prompts: int, workdir: Path):
    rows, template, tokenizer, model = synthetic_rows_and_model(recipe, prompts, workdir)
    records = []
    for r in rows:  # text only: no audio block in the prompt; the row still names its clip (the harness needs one)
        messages = [
            {"role": "system", "content": template.system},
            {"role": "user", "content": template.user_text(r.question, r.choices)},
        ]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        records.append(
            {
                "prompt": prompt,
                "audio": r.audio,
                "id": r.id,
                "question": r.question,
                "choices": r.choices,
                "answer": r.answer,
            }
        )
    return tokenizer, model, Dataset.from_list(records)


def config(args, out: Path, **extra) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.G,
        num_generations=args.G,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        learning_rate=1e-4,
        beta=0.0,
        logging_steps=1,
        report_to="none",
        gradient_checkpointing=False,
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
        **extra,
    )


def run_plain(args, recipe, model, tokenizer, dataset, out: Path) -> tuple[list[float], float]:
    timer = StepTimer()
    # The same text-only vocabulary as the harness engine: no speech tokens, no audio markers (a sampled
    # <|cAUDIO|> would ask the model for audio that does not exist)
    banned = list(range(model.config.audio_token_index, model.config.llm_config.vocab_size))
    banned += tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[make_trl_reward(recipe_rubric(recipe), args.G)],
        train_dataset=dataset,
        args=config(args, out, generation_kwargs={"suppress_tokens": banned}),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    return timer, mean_length(trainer)


def run_harness(args, recipe, model, tokenizer, dataset, out: Path) -> tuple[list[float], float]:
    """The trainer ``grpo-audio train`` builds (``make_trainer``: the recipe's engine, sampling distribution,
    ``rollouts.jsonl`` and ``metrics.jsonl``), with the plain arm's ``GRPOConfig``."""
    timer = StepTimer()
    out.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(
        recipe,
        config(args, out),
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        featurizer=AudioFeaturizer(reuse_embeddings=True),
        rubric=recipe_rubric(recipe),
        run_dir=out,
        extra_callbacks=[timer],
    )
    trainer.train()
    return timer, mean_length(trainer)


def mean_length(trainer) -> float:
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    return sum(lengths) / max(1, len(lengths))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--G", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run left out")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    names = ["plain TRL GRPOTrainer", "AudioGRPOTrainer (harness)"]
    wall, cpu, lengths = ({name: [] for name in names} for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        recipe = bench_recipe(args)
        tokenizer, model, dataset = build(recipe, args.prompts, workdir)
        runners = list(zip(names, (run_plain, run_harness), strict=True))
        for round_index in range(args.rounds):
            order = runners if round_index % 2 == 0 else runners[::-1]
            for name, runner in order:
                out = workdir / f"{round_index}-{name[:5]}"
                timer, length = runner(args, recipe, copy.deepcopy(model), tokenizer, dataset, out)
                wall[name] += timer.seconds[args.warmup :]
                cpu[name] += timer.cpu_seconds[args.warmup :]
                lengths[name].append(length)
                print(
                    f"round {round_index + 1}/{args.rounds} {name}: median {statistics.median(wall[name]):.3f} "
                    f"s/step wall, {statistics.median(cpu[name]):.3f} s/step CPU",
                    flush=True,
                )
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}, no GPU"
        if not torch.cuda.is_available()
        else f"machine: {torch.cuda.get_device_name()}"
    )
    print(
        f"model: tiny Covo-Audio, hidden {args.hidden_size}, {args.num_layers} layers; {args.prompts} prompts x "
        f"G={args.G}, up to {args.max_new_tokens} new tokens; {args.rounds} rounds x {args.steps} steps (first "
        f"{args.warmup} of each run dropped)"
    )
    print()
    print("| trainer | median wall s/step | median CPU s/step | mean completion length | steps timed |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in names:
        print(
            f"| {name} | {statistics.median(wall[name]):.3f} | {statistics.median(cpu[name]):.3f} | "
            f"{sum(lengths[name]) / len(lengths[name]):.1f} | {len(wall[name])} |"
        )
    ratio = [statistics.median(v[names[1]]) / statistics.median(v[names[0]]) for v in (wall, cpu)]
    print(f"\nratio harness / plain: {ratio[0]:.3f} wall, {ratio[1]:.3f} CPU")


if __name__ == "__main__":
    main()
