"""``grpo-audio train``: recipe -> data, prompt, model, rewards, rollout engine, trainer -> run directory.

recipe.yaml -> typed Recipe -> dataset rows (audio path, question, choices, answer)
  -> prompt (prompts/) -> audio features (encoder + adapter, reused when frozen)
  -> rollout engine (HF generate, or vLLM serving the Qwen2 backbone, from prompt embeddings): G completions
  -> rewards (registry) -> R_total = combine(w_i, r_i) -> group advantages (TRL)
  -> TRL GRPO update (audio in every log-prob pass) -> run directory (record, metrics, final model)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback

import rewards
from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.data.dataset import build_dataset
from grpo_audio.data.manifest import AudioQuestion, load_manifest
from grpo_audio.data.prompting import PromptTemplate, load_template
from grpo_audio.data.sources import load_rows_for_recipe
from grpo_audio.data.synthetic import QUESTIONS, write_synthetic_set
from grpo_audio.distributed import broadcast_parameters, check_sharding_backend, share_from_main
from grpo_audio.evaluation.heldout import heldout_accuracy
from grpo_audio.model.checkpoint import check_covo_checkpoint, load_covo_checkpoint, save_covo_checkpoint
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS, IM_END, check_covo_tokens
from grpo_audio.recipe import Recipe, recipe_to_dict
from grpo_audio.rollout.factory import build_rollout_engine, sampling_distribution
from grpo_audio.train.callbacks import MetricsFileCallback, ProgressLineCallback, RunRecordToTrackers
from grpo_audio.train.coldstart import run_coldstart
from grpo_audio.train.reward_bridge import make_trl_reward
from grpo_audio.train.run_dir import (
    MARKER,
    finish_run_record,
    open_run_dir,
    save_model_atomic,
    start_run_record,
    truncate_logs_after,
    write_json_atomic,
    write_provenance,
)

HELDOUT_SEED_OFFSET = 1_000_003  # the held-out split's clips come from their own random stream

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


@dataclass
class TrainingSetup:
    run_dir: Path
    trainer: object
    tokenizer: object
    model: object
    dataset: object
    template: PromptTemplate
    featurizer: AudioFeaturizer
    resume_checkpoint: Path | None = None
    heldout: list[dict] | None = None
    rows: list[AudioQuestion] | None = None


def build_tokenizer_and_model(recipe: Recipe, rows: list[AudioQuestion], template: PromptTemplate):
    if recipe.model.source == "tiny":
        from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus

        texts = [template.system, template.user] + [r.question for r in rows] + [c for r in rows for c in r.choices]
        texts += [q for q, _ in QUESTIONS.values()]
        tokenizer = build_tiny_tokenizer(tiny_tokenizer_corpus(texts), recipe.model.tiny.text_vocab_size)
        model = build_tiny_model(recipe.model.tiny, tokenizer, recipe.run.seed)
    else:
        tokenizer, model = load_pretrained(Path(recipe.model.path))
    check_covo_tokens(tokenizer, recipe.model.path or "tiny tokenizer")
    # a2t rollouts end at <|endoftext|>; <|im_end|> closes a chat turn: both stop a text-only rollout
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def load_pretrained(directory: Path):
    """``(tokenizer, model)`` from a Covo-Audio checkpoint directory, released layout (``llm.*`` names) or a
    ``save_pretrained`` directory of ours: the checked loader decides which, and a bad directory is an error."""
    model, tokenizer = load_covo_checkpoint(directory)
    return tokenizer, model


def save_final_model(model, tokenizer, target: Path, fmt: str) -> None:
    if fmt == "covo":
        save_covo_checkpoint(model, tokenizer, target)
    else:
        save_model_atomic(model, tokenizer, target)


def apply_freezing(model, recipe: Recipe) -> None:
    core = model.model
    core.encoder.requires_grad_(not recipe.model.freeze_encoder)
    core.audio_adapter.requires_grad_(not recipe.model.freeze_adapter)


def lora_config(recipe: Recipe):
    if recipe.model.lora is None:
        return None
    from peft import LoraConfig

    spec = recipe.model.lora
    modules_to_save = [
        name
        for name, frozen in (("audio_adapter", recipe.model.freeze_adapter), ("encoder", recipe.model.freeze_encoder))
        if not frozen
    ]
    # Adapters only inside the Qwen2 backbone: never on the encoder or the LM head (TRL's fused head needs it plain)
    pattern = r".*language_model\..*\.(" + "|".join(spec.target_modules) + r")$"
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=pattern,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def grpo_config(recipe: Recipe, run_dir: Path):
    from trl import GRPOConfig

    on_cpu = not torch.cuda.is_available()
    fields = {
        **TRAINER_DEFAULTS,
        "use_cpu": on_cpu,
        "bf16": (not on_cpu) and torch.cuda.is_bf16_supported(),
        **recipe.trainer,
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
        with self.path.open("a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, default=float) + "\n")


@dataclass
class PreparedRun:
    """What process 0 decided and prepared before any model exists; every process receives a copy."""

    run: object  # RunDir
    status: dict
    rows: list[AudioQuestion]
    data_report: object  # DataReport
    provenance: dict


def prepare_run(recipe: Recipe, judge_caches: list[Path]) -> PreparedRun:
    """Process 0 only: open (or resume) the run directory, record the run, and load the data (writing synthetic
    clips and ``skipped.jsonl``)."""
    from grpo_audio.train.trainer import restore_judge_caches

    run = open_run_dir(recipe)
    status = start_run_record(run, recipe)
    if run.resume_checkpoint is not None:
        truncate_logs_after(run.path, checkpoint_step(run.resume_checkpoint))
        # before the rubric is built: the judges read their caches when they start
        restore_judge_caches(judge_caches, run.resume_checkpoint)
    template = load_template(recipe.prompt.template)
    rows, data_report = load_rows_for_recipe(recipe, run.path)
    print(f"grpo-audio: {data_report.summary()}", flush=True)
    provenance = write_provenance(run, recipe, data_report.data_file, [r.audio for r in rows], template)
    return PreparedRun(run, status, rows, data_report, provenance)


def build_training(recipe: Recipe, extra_callbacks=()) -> TrainingSetup:
    """Everything up to a ready trainer. Under ``accelerate launch`` every process runs this: process 0 alone
    writes to the run directory (see ``grpo_audio.distributed``), the others build the same model and dataset from
    the rows it loaded."""
    check_sharding_backend(torch.cuda.is_available())
    args = grpo_config(recipe, Path(recipe.run.output_dir))
    args.device  # noqa: B018  (starts the process group under accelerate launch, before any file is written)
    if recipe.model.source == "pretrained":
        # files, config, safetensors headers, names and shapes (no tensor data): a bad checkpoint is refused before
        # the run directory is written, so a corrected rerun needs no run.overwrite
        share_from_main(lambda: check_covo_checkpoint(recipe.model.path))
    judge_caches = [Path(t.options["cache_path"]) for t in recipe.rewards.terms if t.options.get("cache_path")]
    prepared = share_from_main(lambda: prepare_run(recipe, judge_caches))
    run, status, rows, data_report = prepared.run, prepared.status, prepared.rows, prepared.data_report
    run_dir = run.path
    # Built after prepare_run (a resume restores the judge caches first) and before anything costly: an unreachable
    # judge stops the run now, not after the model build and cold start, nor with every row unscored at step 1.
    rubric = recipe_rubric(recipe)
    share_from_main(lambda: probe_rewards(rubric))  # process 0 asks; the others learn only whether it worked
    template = load_template(recipe.prompt.template)
    tokenizer, model = build_tokenizer_and_model(recipe, rows, template)
    apply_freezing(model, recipe)
    dataset = build_dataset(rows, tokenizer, template, data_report.placeholders)
    featurizer = AudioFeaturizer(
        reuse_embeddings=recipe.model.freeze_encoder and recipe.model.freeze_adapter,
        ablation=recipe.model.audio_ablation,
        resampler=recipe.data.resampler,
    )

    def starting_point() -> list[dict]:
        (run_dir / "prompt.txt").write_text(f"# template {template.ident}\n{dataset[0]['prompt']}\n", "utf-8")
        heldout = heldout_rows(recipe, run_dir, tokenizer, template)
        if run.resume_checkpoint is None:
            prepare_starting_point(
                recipe, run_dir, model, tokenizer, dataset, featurizer, heldout, status, args.device
            )
        return heldout

    heldout = share_from_main(starting_point)
    if run.resume_checkpoint is None and recipe.coldstart.steps > 0:
        broadcast_parameters(model)  # the cold start ran on process 0 only
    if recipe.model.source == "tiny":
        # TRL rebuilds the reference model (beta > 0 without LoRA) from the policy's directory: the starting point
        model.config._name_or_path = str(run_dir / "initial_model")

    trainer = make_trainer(
        recipe, args, model, tokenizer, dataset, featurizer, rubric, run_dir, judge_caches, extra_callbacks
    )
    record = {"provenance": prepared.provenance, "recipe": recipe_to_dict(recipe)}
    trainer.add_callback(RunRecordToTrackers(record, lambda: trainer.callback_handler.callbacks))
    # The progress line replaces transformers' dump of every log dict (metrics.jsonl keeps all of it)
    trainer.remove_callback(PrinterCallback)
    trainer.run_status = status
    trainer.data_report = data_report
    return TrainingSetup(
        run_dir, trainer, tokenizer, model, dataset, template, featurizer, run.resume_checkpoint, heldout, rows
    )


def recipe_rubric(recipe: Recipe) -> rewards.Rubric:
    """The recipe's reward terms, weights and combiner as one ``rewards.Rubric`` (judges start here)."""
    return rewards.Rubric(
        [rewards.TermSpec(t.name, t.weight, t.options, t.label) for t in recipe.rewards.terms],
        recipe.rewards.combiner,
        recipe.rewards.combiner_options,
        recipe.rewards.max_unscored_fraction,
    )


def make_trainer(
    recipe: Recipe,
    args,
    model,
    tokenizer,
    dataset,
    featurizer: AudioFeaturizer,
    rubric: rewards.Rubric,
    run_dir: Path,
    judge_caches: list[Path] = (),
    extra_callbacks=(),
):
    """The recipe's ``AudioGRPOTrainer`` for a built model and dataset: rollout engine, reward bridge, LoRA wrapping,
    sampling distribution, ``rollouts.jsonl`` and ``metrics.jsonl`` in ``run_dir``. ``build_training`` calls it once
    the run directory, data and model are ready; ``bench/gpu_check.py`` builds its 7B-shaped trainers through it."""
    from grpo_audio.train.trainer import AudioGRPOTrainer

    engine = build_rollout_engine(recipe, model, tokenizer, run_dir)
    holder = {}

    def on_breakdown(breakdown, samples, seconds):
        trainer = holder["trainer"]
        trainer.last_breakdown = breakdown
        trainer.record_time("scoring_s", seconds)

    trainer = AudioGRPOTrainer(
        model=model,
        reward_funcs=[make_trl_reward(rubric, recipe.rollout.num_generations, on_breakdown)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(recipe),
        rollout_engine=engine,
        featurizer=featurizer,
        sampling=sampling_distribution(recipe, model, tokenizer),
        rollout_log=RolloutLogWriter(run_dir / "rollouts.jsonl"),
        adapter_learning_rate=recipe.model.adapter_learning_rate,
        judge_cache_files=judge_caches,
        callbacks=[
            MetricsFileCallback(run_dir / "metrics.jsonl"),
            ProgressLineCallback([s.key for s in rubric.specs]),
            *extra_callbacks,
        ],
    )
    holder["trainer"] = trainer
    return trainer


def probe_rewards(rubric: rewards.Rubric) -> None:
    """One made-up request to each LLM judge before training (``Rubric.probe``); raises ``RewardProbeError``."""
    for key, outcome in rubric.probe().items():
        print(f"grpo-audio: reward {key!r}: {outcome}", flush=True)


def heldout_rows(recipe: Recipe, run_dir: Path, tokenizer, template: PromptTemplate) -> list[dict]:
    """The synthetic held-out split (new clips of the same tasks, from a seed the training split does not use)."""
    spec = recipe.data.synthetic
    if recipe.data.source != "synthetic" or spec.heldout_questions <= 0:
        return []
    manifest = write_synthetic_set(
        run_dir / "data" / "heldout", spec.heldout_questions, list(spec.tasks), recipe.run.seed + HELDOUT_SEED_OFFSET
    )
    return list(build_dataset(load_manifest(manifest), tokenizer, template))


def accuracy_options(recipe: Recipe) -> dict:
    return next((dict(t.options) for t in recipe.rewards.terms if t.name == "accuracy"), {})


def measure_heldout(recipe: Recipe, model, tokenizer, rows: list[dict], featurizer: AudioFeaturizer) -> dict | None:
    if not rows:
        return None
    markers = tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    return heldout_accuracy(
        model, tokenizer, rows, featurizer, recipe.rollout.max_completion_length, markers, accuracy_options(recipe)
    )


def heldout_summary(score: dict) -> str:
    """One line of held-out scores: greedy accuracy, sampled accuracy when measured, greedy format, n."""
    sampled = f", {score['sampled_accuracy']:.3f} sampled" if "sampled_accuracy" in score else ""
    return f"{score['accuracy']:.3f} greedy{sampled} (format {score['format']:.3f}, n={score['n']})"


def prepare_starting_point(
    recipe, run_dir, model, tokenizer, dataset, featurizer, heldout, status, device: torch.device | None = None
) -> None:
    """Fresh runs only: the cold start (if any), the held-out score of the GRPO starting point, and its weights.

    Both run on ``device`` (the trainer's, ``GRPOConfig.device``): the model is built or loaded on the host and the
    Trainer moves it only later, so without this a GPU run would do its cold start and held-out scoring on the CPU.
    """
    if device is not None and (recipe.coldstart.steps > 0 or heldout):
        model.to(device)
    if recipe.coldstart.steps > 0:
        history = run_coldstart(model, tokenizer, list(dataset), featurizer, recipe.coldstart, recipe.run.seed)
        with (run_dir / "coldstart.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(h) + "\n" for h in history)
    before = measure_heldout(recipe, model, tokenizer, heldout, featurizer)
    if before is not None:
        status["heldout_before"] = before
        write_json_atomic(run_dir / MARKER, status)
        print(f"grpo-audio: held-out accuracy before GRPO {heldout_summary(before)}", flush=True)
    if recipe.model.source == "tiny":
        # The initial weights (after the cold start): the run can be reproduced from them
        save_model_atomic(model, tokenizer, run_dir / "initial_model")


def weights_are_sharded(trainer) -> bool:
    """FSDP, or DeepSpeed ZeRO-3: no process holds the whole model between forwards."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def trained_model(recipe: Recipe, setup: TrainingSetup):
    """The trained model, whole and unwrapped, on process 0 (LoRA merged); None on the other processes when sharded.

    Sharded runs (FSDP, ZeRO-3) gather the full state dict (a collective: every process calls this) and load it
    into a fresh, unsharded copy of the starting model built on process 0 (with the same LoRA wrapping, so the
    names match); ZeRO-3 needs ``zero3_save_16bit_model`` (set in configs/accelerate/zero3.yaml).
    """
    trainer = setup.trainer
    if weights_are_sharded(trainer):
        state = trainer.accelerator.get_state_dict(trainer.model)
        if not trainer.accelerator.is_main_process:
            return None
        model = unsharded_copy(recipe, setup.rows, setup.template, state)
    else:
        model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # LoRA: the final model carries the merged weights
        model = model.merge_and_unload()
    return model


def unsharded_copy(recipe: Recipe, rows: list[AudioQuestion], template: PromptTemplate, state: dict):
    """A fresh model of the recipe's architecture (and LoRA wrapping) holding ``state``; every key must match."""
    _, model = build_tokenizer_and_model(recipe, rows, template)
    config = lora_config(recipe)
    if config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, config)
    model.load_state_dict(state, strict=True)
    return model


def checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])


def train(recipe: Recipe, extra_callbacks=()) -> Path:
    setup = build_training(recipe, extra_callbacks)
    trainer = setup.trainer
    start = "a fresh run" if setup.resume_checkpoint is None else f"resuming from {setup.resume_checkpoint}"
    processes = trainer.accelerator.num_processes
    if processes > 1:
        start += f", {processes} processes"
    if trainer.accelerator.is_main_process:
        print(
            f"grpo-audio: {len(setup.dataset)} questions, G={recipe.rollout.num_generations}, "
            f"engine={recipe.rollout.engine}, run directory {setup.run_dir} ({start})",
            flush=True,
        )
    trainer.train(resume_from_checkpoint=str(setup.resume_checkpoint) if setup.resume_checkpoint else None)
    model = trained_model(recipe, setup)
    if trainer.accelerator.is_main_process:
        save_final_model(model, setup.tokenizer, setup.run_dir / "final_model", recipe.run.final_model_format)
        report = trainer.data_report
        after = measure_heldout(recipe, model, setup.tokenizer, setup.heldout, setup.featurizer)
        if after is not None:
            trainer.run_status["heldout_after"] = after
            print(f"grpo-audio: held-out accuracy after GRPO {heldout_summary(after)}", flush=True)
        finish_run_record(
            setup.run_dir,
            trainer.run_status,
            global_step=trainer.state.global_step,
            data={"rows": report.kept, "examined": report.examined, "skipped": report.counts},
        )
        print(f"grpo-audio: {report.summary()}", flush=True)
        print(f"grpo-audio: done; final model in {setup.run_dir / 'final_model'}", flush=True)
    return setup.run_dir
