"""The run's trainer: ``GRPOConfig`` from the recipe and an ``AudioGRPOTrainer`` wired to the rollout engine, the
rubric, the sampling distribution and the run directory's logs.

``grpo_audio.train.run`` calls these once the run directory, data and model are ready; ``bench/gpu_check.py``
builds its 7B-shaped trainers through ``make_trainer`` too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PrinterCallback

import rewards
from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.files import append_jsonl
from grpo_audio.model.build import lora_config
from grpo_audio.recipe import Recipe
from grpo_audio.recipe.schema import TRAINER_HARNESS_FIELDS
from grpo_audio.rollout.factory import build_rollout_engine, sampling_distribution
from grpo_audio.train.callbacks import MetricsFileCallback, ProgressLineCallback
from grpo_audio.train.preemption import PreemptionCallback

# Our defaults for TRL fields, chosen for a harness run (the recipe's trainer section overrides them).
TRAINER_DEFAULTS = {
    "logging_steps": 1,
    "report_to": "none",
    "save_strategy": "steps",  # crash-safe checkpoints (see AudioGRPOTrainer._save_checkpoint)
    "save_steps": 100,
    "save_total_limit": 2,
    "remove_unused_columns": False,  # rewards need answer/choices/metadata columns
    "gradient_checkpointing": False,
    "disable_tqdm": True,  # the progress line replaces the per-step dict dump
    "beta": 0.0,
    # every trainable parameter takes part in each forward: DDP need not search the graph for unused ones
    "ddp_find_unused_parameters": False,
}


def grpo_config(recipe: Recipe, run_dir: Path):
    """TRL's ``GRPOConfig``: ``TRAINER_DEFAULTS``, then the recipe's ``trainer`` section, then the fields the recipe
    owns elsewhere (seed, G, sampling settings, output directory ``run_dir/trainer``). bf16 on a GPU that has it."""
    from trl import GRPOConfig

    on_cpu = not torch.cuda.is_available()
    fields = {
        **TRAINER_DEFAULTS,
        "use_cpu": on_cpu,
        "bf16": (not on_cpu) and torch.cuda.is_bf16_supported(),
        **{k: v for k, v in recipe.trainer.items() if k not in TRAINER_HARNESS_FIELDS},
        "output_dir": str(run_dir / "trainer"),
        "seed": recipe.run.seed,
        "num_generations": recipe.rollout.num_generations,
        "temperature": recipe.rollout.temperature,
        "top_p": recipe.rollout.top_p,
        "top_k": recipe.rollout.top_k,
        "max_completion_length": recipe.rollout.max_completion_length,
    }
    return GRPOConfig(**fields)


class RolloutLogWriter:
    """Appends one JSON line per completion to ``rollouts.jsonl`` (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, records: list[dict]) -> None:
        append_jsonl(self.path, records, default=float)


def make_trainer(
    recipe: Recipe,
    args,
    *,
    model,
    tokenizer,
    dataset,
    featurizer: AudioFeaturizer,
    rubric: rewards.Rubric,
    run_dir: Path,
    judge_caches: list[Path] = (),
    extra_callbacks=(),
    run_record: dict | None = None,
    evaluator=None,
):
    """The recipe's ``AudioGRPOTrainer`` for a built model and dataset, with ``args`` (``grpo_config``): rollout
    engine, rubric, LoRA wrapping, sampling distribution, ``rollouts.jsonl`` and ``metrics.jsonl`` in ``run_dir``,
    the progress line instead of transformers' printed log dicts, the judges' cache files (``judge_caches``, copied
    into checkpoints), ``run_record`` for the trackers, and the held-out ``evaluator``
    (``grpo_audio.evaluation.during_training.HeldOutEvaluator``) run as the recipe's ``eval`` section says."""
    from grpo_audio.train.trainer import AudioGRPOTrainer

    trainer = AudioGRPOTrainer(
        model=model,
        rubric=rubric,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.model),
        rollout_engine=build_rollout_engine(recipe, model, tokenizer, run_dir),
        featurizer=featurizer,
        sampling=sampling_distribution(recipe, model, tokenizer),
        rollout_log=RolloutLogWriter(run_dir / "rollouts.jsonl"),
        adapter_learning_rate=recipe.model.adapter_learning_rate,
        judge_cache_files=judge_caches,
        run_record=run_record,
        evaluator=evaluator,
        eval_spec=recipe.eval,
        dynamic_sampling=recipe.rollout.dynamic_sampling,
        max_tokens_per_microbatch=recipe.trainer.get("max_tokens_per_microbatch"),
        padding_free=bool(recipe.trainer.get("padding_free", False)),
        overlap=recipe.rollout.overlap,
        callbacks=[
            MetricsFileCallback(run_dir / "metrics.jsonl"),
            ProgressLineCallback([s.key for s in rubric.specs]),
            *extra_callbacks,
        ],
    )
    # transformers adds a printer of every log dict when tqdm is off; metrics.jsonl keeps all of it
    trainer.remove_callback(PrinterCallback)
    # SIGTERM/SIGUSR1 (a cluster's time limit or preemption): checkpoint after the step in flight, then stop
    trainer.preemption = PreemptionCallback(trainer.accelerator.device)
    trainer.add_callback(trainer.preemption)
    return trainer
