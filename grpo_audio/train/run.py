"""``grpo-audio train``: one run, as the phases ``train`` calls in order.

    recipe.yaml -> typed Recipe
      -> run directory (record, provenance; resume point)            open_run
      -> dataset rows (audio path, question, choices, answer)        load_training_rows
      -> rewards (registry) -> R_total = combine(w_i, r_i)           build_rewards
      -> model (tiny in process, or a Covo-Audio checkpoint)        build_model
      -> prompts (prompts/) + audio features (encoder + adapter)     build_prompts
      -> cold start, held-out score and weights of the start         prepare_starting_point
      -> rollout engine + TRL GRPO trainer                           grpo_audio.train.build.make_trainer
      -> train (rollouts, rewards, group advantages, update)         AudioGRPOTrainer.train
      -> final model, held-out score, run record                     save_final_model, finish_run

Under ``accelerate launch`` every process runs every phase. The phases that write to the run directory or ask an
outside service run on process 0 alone, inside ``share_from_main``: the other processes receive process 0's
result (or its error), so they build the same model and dataset from the rows it loaded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

import rewards
from grpo_audio.audio.featurizer import AudioFeaturizer
from grpo_audio.audio.io import AudioLoadError
from grpo_audio.data.dataset import build_dataset
from grpo_audio.data.manifest import AudioQuestion, DataError
from grpo_audio.data.prompting import PromptTemplate, load_template
from grpo_audio.data.sources import SkipReport, load_heldout_rows, load_rows_for_recipe
from grpo_audio.data.vocabulary import vocabulary_texts
from grpo_audio.distributed import broadcast_parameters, check_sharding_backend, rank, share_from_main
from grpo_audio.evaluation.during_training import HeldOutEvaluator, load_eval_sets
from grpo_audio.evaluation.heldout import heldout_rows, heldout_summary, measure_heldout
from grpo_audio.evaluation.report import ReportError, render
from grpo_audio.files import write_jsonl
from grpo_audio.model.build import apply_freezing, build_tokenizer_and_model, load_pretrained, model_holding
from grpo_audio.model.checkpoint_load import check_covo_checkpoint, check_resume_weights
from grpo_audio.model.checkpoint_save import save_checkpoint
from grpo_audio.model.family import family_for, family_of_model
from grpo_audio.model.training_settings import settings_files
from grpo_audio.recipe import Recipe, RecipeError, recipe_to_dict
from grpo_audio.recipe.rubric import recipe_rubric
from grpo_audio.train.build import TRAINER_DEFAULTS, grpo_config, make_trainer
from grpo_audio.train.coldstart import run_coldstart
from grpo_audio.train.preemption import PreemptedError
from grpo_audio.train.run_dir import (
    MARKER,
    CheckpointWriteError,
    RunDir,
    checkpoints,
    end_run_record,
    finish_run_record,
    open_run_dir,
    save_model_atomic,
    start_run_record,
    truncate_logs_after,
    write_json_atomic,
    write_provenance,
)
from rewards.judge.cache import restore_judge_caches


@dataclass
class OpenedRun:
    """The run directory as process 0 opened it, and its ``run.json`` status record (updated as the run goes)."""

    run: RunDir
    status: dict


@dataclass
class TrainingRows:
    """The rows process 0 loaded (after the audio policy), its report, and the provenance it recorded."""

    rows: list[AudioQuestion]
    report: SkipReport
    provenance: dict


@dataclass
class TrainingSetup:
    """Everything ``train`` needs after the trainer is built (tests and benches build up to here)."""

    run_dir: Path
    trainer: object
    tokenizer: object
    model: object
    dataset: object
    template: PromptTemplate
    featurizer: AudioFeaturizer
    status: dict
    data: TrainingRows
    resume_checkpoint: Path | None = None
    heldout: list[dict] | None = None

    @property
    def rows(self) -> list[AudioQuestion]:
        return self.data.rows


def train(recipe: Recipe, extra_callbacks=()) -> Path:
    """Run ``recipe`` from start (or its resume point) to the final model; returns the run directory.

    A run that ends early, from the moment its run directory is open, says so in ``run.json``: ``failed`` with the
    error, or ``stopped`` (Ctrl-C, or SIGTERM/SIGUSR1 after a checkpoint: ``PreemptedError``, see
    ``grpo_audio.train.preemption``); never ``running`` (``end_run_record``).
    """
    opened: list[OpenedRun] = []  # filled by build_training once this run owns its run directory
    try:
        setup = build_training(recipe, extra_callbacks, opened)
        announce(recipe, setup)
        trainer = setup.trainer
        trainer.train(resume_from_checkpoint=str(setup.resume_checkpoint) if setup.resume_checkpoint else None)
        preemption = getattr(trainer, "preemption", None)
        if preemption is not None and preemption.signum is not None:  # checkpointed and stopped: no final model
            found = checkpoints(setup.run_dir / "trainer")
            raise PreemptedError(preemption.signum, preemption.step, str(found[-1]) if found else None)
        model = trained_model(recipe, setup)  # a collective when the weights are sharded: every process calls it
        if trainer.accelerator.is_main_process:
            target = setup.run_dir / "final_model"
            save_final_model(model, setup.tokenizer, target, recipe.run.final_model_format, settings_files(recipe))
            finish_run(recipe, setup, model)
    except BaseException as error:
        if opened and rank() == 0:
            record_early_end(opened[0], error)
        raise
    return setup.run_dir


def record_early_end(opened: OpenedRun, error: BaseException) -> None:
    """Process 0, a run that ended early: a fresh run stopped by a problem with its inputs (recipe, data, audio)
    before any checkpoint leaves no run directory, since nothing in it is worth keeping and the corrected command
    should find the place free; any other early end is recorded in ``run.json`` (``end_run_record``)."""
    run = opened.run
    if (
        isinstance(error, (RecipeError, DataError, AudioLoadError))
        and run.resume_checkpoint is None
        and not checkpoints(run.path / "trainer")
    ):
        shutil.rmtree(run.path, ignore_errors=True)
        print(f"grpo-audio: removed {run.path}: the run stopped on its input before training", flush=True)
        return
    end_run_record(run.path, opened.status, error)


def build_training(recipe: Recipe, extra_callbacks=(), opened_runs: list | None = None) -> TrainingSetup:
    """The phases up to a ready trainer (see the module docstring). ``opened_runs``, when given, receives the
    ``OpenedRun`` as soon as the run directory is open (``train`` records an early end in it)."""
    check_sharding_backend(torch.cuda.is_available())
    args = grpo_config(recipe, Path(recipe.run.output_dir))
    args.device  # noqa: B018  (starts the process group under accelerate launch, before any file is written)
    if recipe.model.source == "pretrained":
        # files, config, safetensors headers, names and shapes (no tensor data): a bad checkpoint is refused before
        # the run directory is written, so a corrected rerun needs no run.overwrite
        if family_for(recipe.model).name == "covo_audio":  # the other families' loaders check as they load
            share_from_main(lambda: check_covo_checkpoint(recipe.model.path))
    judge_caches = judge_cache_files(recipe)
    opened = share_from_main(lambda: open_run(recipe, judge_caches))
    if opened_runs is not None:
        opened_runs.append(opened)
    run_dir = opened.run.path
    template = load_template(recipe.prompt.template)
    data = share_from_main(lambda: load_training_rows(recipe, opened.run, template))
    rubric = build_rewards(recipe)
    tokenizer, model = build_model(recipe, data.rows, template)
    family = family_for(recipe.model)
    dataset = build_dataset(data.rows, tokenizer, template, data.report.clip_lengths, family)
    featurizer = audio_featurizer(recipe)
    fresh = opened.run.resume_checkpoint is None

    def starting_point():
        (run_dir / "prompt.txt").write_text(f"# template {template.ident}\n{dataset[0]['prompt']}\n", "utf-8")
        split = load_heldout_rows(recipe, run_dir)
        heldout = heldout_rows(split, tokenizer, template, family)
        if fresh:
            prepare_starting_point(
                recipe, run_dir, model, tokenizer, dataset, featurizer, heldout, opened.status, args.device
            )
        return split, heldout

    heldout_split, heldout = share_from_main(starting_point)
    evaluator = build_evaluator(recipe, run_dir, tokenizer, featurizer, heldout_split)
    if fresh and recipe.coldstart.steps > 0:
        broadcast_parameters(model)  # the cold start ran on process 0 only
    if not fresh and recipe.coldstart.steps > 0 and needs_frozen_reference(recipe):
        # The trainer copies the model it is given as the KL reference; a resumed run did not redo the cold start,
        # so its starting point is the one initial_model/ holds (the policy's weights come from the checkpoint).
        load_starting_point(model, run_dir / "initial_model")
    trainer = make_trainer(
        recipe,
        args,
        model,
        tokenizer,
        dataset,
        featurizer,
        rubric,
        run_dir,
        judge_caches,
        extra_callbacks,
        run_record={"provenance": data.provenance, "recipe": recipe_to_dict(recipe)},
        evaluator=evaluator,
    )
    if evaluator is not None and weights_are_sharded(trainer):
        raise RecipeError(
            "eval.sets: evaluation during training decodes on process 0 with the whole model, which sharded weights "
            "(FSDP, ZeRO-3) do not give it; drop eval.sets and evaluate the checkpoints with grpo-audio eval"
        )
    return TrainingSetup(
        run_dir,
        trainer,
        tokenizer,
        model,
        dataset,
        template,
        featurizer,
        opened.status,
        data,
        opened.run.resume_checkpoint,
        heldout,
    )


def judge_cache_files(recipe: Recipe) -> list[Path]:
    """The verdict cache files of the recipe's LLM-judge terms (copied into checkpoints, restored on resume)."""
    return [Path(t.options["cache_path"]) for t in recipe.rewards.terms if t.options.get("cache_path")]


def open_run(recipe: Recipe, judge_caches: list[Path]) -> OpenedRun:
    """Process 0: open (or resume) the run directory and start its record. A resume drops the log lines written
    after its checkpoint and restores the judge caches the crash lost (before any judge reads its cache)."""
    run = open_run_dir(recipe)
    if run.resume_checkpoint is not None:
        check_resume_weights(run.resume_checkpoint)  # before the record is touched: the run stays as it was
    status = start_run_record(run, recipe)
    if run.resume_checkpoint is not None:
        truncate_logs_after(run.path, checkpoint_step(run.resume_checkpoint))
        restore_judge_caches(judge_caches, run.resume_checkpoint)
    return OpenedRun(run, status)


def load_training_rows(recipe: Recipe, run: RunDir, template: PromptTemplate) -> TrainingRows:
    """Process 0: the recipe's rows through the row rules and the audio policy (writing synthetic clips and
    ``skipped.jsonl``), and the provenance record of data, clips and template."""
    rows, report = load_rows_for_recipe(recipe, run.path)
    print(f"grpo-audio: {report.summary()}", flush=True)
    provenance = write_provenance(run, recipe, report.data_file, [r.audio for r in rows], template)
    return TrainingRows(rows, report, provenance)


def build_rewards(recipe: Recipe) -> rewards.Rubric:
    """The rubric, with every LLM judge asked once now (process 0; the others learn whether it answered): an
    unreachable judge stops the run before the model build and cold start, not with every row unscored at step 1.
    Built after ``open_run``, which restores the judge caches a resume needs."""
    rubric = recipe_rubric(recipe)
    share_from_main(lambda: probe_rewards(rubric))
    return rubric


def probe_rewards(rubric: rewards.Rubric) -> None:
    """One made-up request to each LLM judge before training (``Rubric.probe``); raises ``RewardProbeError``."""
    for key, outcome in rubric.probe().items():
        print(f"grpo-audio: reward {key!r}: {outcome}", flush=True)


def build_model(recipe: Recipe, rows: list[AudioQuestion], template: PromptTemplate):
    """``(tokenizer, model)`` of the recipe, with the encoder and adapter frozen or not as it says."""
    tokenizer, model = build_tokenizer_and_model(recipe.model, recipe.run.seed, vocabulary_texts(rows, template))
    apply_freezing(model, recipe.model)
    return tokenizer, model


def build_evaluator(
    recipe: Recipe, run_dir: Path, tokenizer, featurizer: AudioFeaturizer, heldout_split
) -> HeldOutEvaluator | None:
    """The recipe's eval sets read and rendered (process 0, files under ``RUN/eval_sets/``; every process gets them),
    as the evaluator the trainer runs during training; None without eval sets."""
    if not recipe.eval.sets:
        return None
    sets = share_from_main(lambda: load_eval_sets(recipe, run_dir, tokenizer, featurizer, heldout_split))
    return HeldOutEvaluator(recipe, sets, tokenizer, featurizer, run_dir)


def audio_featurizer(recipe: Recipe) -> AudioFeaturizer:
    """Clip -> audio embeddings, reused across the passes of a batch when encoder and adapter are frozen."""
    return AudioFeaturizer(
        reuse_embeddings=recipe.model.freeze_encoder and recipe.model.freeze_adapter,
        ablation=recipe.model.audio_ablation,
        resampler=recipe.data.resampler,
        front_end=family_for(recipe.model).front_end,
    )


def needs_frozen_reference(recipe: Recipe) -> bool:
    """Whether the trainer keeps a frozen copy of the starting point as the KL reference: beta > 0 without LoRA."""
    return float(recipe.trainer.get("beta", TRAINER_DEFAULTS["beta"])) != 0.0 and recipe.model.lora is None


def load_starting_point(model, directory: Path) -> None:
    """Put the weights of the starting point saved in ``directory`` (``initial_model/``) into ``model``."""
    _, saved = load_pretrained(directory)
    model.load_state_dict(saved.state_dict(), strict=True)


def prepare_starting_point(
    recipe, run_dir, model, tokenizer, dataset, featurizer, heldout, status, device: torch.device | None = None
) -> None:
    """Fresh runs only: the cold start (if any), the held-out score of the GRPO starting point, and its weights.

    The starting point's weights go to ``initial_model/`` (with the training settings, as ``final_model/``): always
    for a tiny model (a resumed run after a cold start reads its KL reference from them), and for a pretrained model
    after a cold start, whose GRPO starting point exists nowhere else (there, a full copy of the model on disk, in
    the family's own layout with any LoRA merged; a pretrained run without a cold start starts from ``model.path``
    itself).

    The cold start and the held-out score run on ``device`` (the trainer's, ``GRPOConfig.device``): the model is
    built or loaded on the host and the Trainer moves it only later, so without this a GPU run would do its cold
    start and held-out scoring on the CPU.
    """
    if device is not None and (recipe.coldstart.steps > 0 or heldout):
        model.to(device)
    if recipe.coldstart.steps > 0:
        history = run_coldstart(model, tokenizer, list(dataset), featurizer, recipe.coldstart, recipe.run.seed)
        write_jsonl(run_dir / "coldstart.jsonl", history)
    before = measure_heldout(recipe, model, tokenizer, heldout, featurizer)
    if before is not None:
        status["heldout_before"] = before
        write_json_atomic(run_dir / MARKER, status)
        print(f"grpo-audio: held-out accuracy before GRPO {heldout_summary(before)}", flush=True)
    if recipe.model.source == "tiny":
        # The initial weights (after the cold start): the run can be reproduced from them
        save_model_atomic(model, tokenizer, run_dir / "initial_model", settings_files(recipe))
    elif recipe.coldstart.steps > 0:
        # merges LoRA on copies of each layer: the model about to train keeps its adapters
        save_checkpoint(model, tokenizer, run_dir / "initial_model", extra_files=settings_files(recipe))


def announce(recipe: Recipe, setup: TrainingSetup) -> None:
    """Process 0 prints what is about to train: questions, G, engine, run directory, fresh or resumed."""
    accelerator = setup.trainer.accelerator
    start = "a fresh run" if setup.resume_checkpoint is None else f"resuming from {setup.resume_checkpoint}"
    if accelerator.num_processes > 1:
        start += f", {accelerator.num_processes} processes"
    if accelerator.is_main_process:
        print(
            f"grpo-audio: {len(setup.dataset)} questions, G={recipe.rollout.num_generations}, "
            f"engine={recipe.rollout.engine}, run directory {setup.run_dir} ({start})",
            flush=True,
        )


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
        texts = vocabulary_texts(setup.rows, setup.template)
        model = model_holding(recipe.model, recipe.run.seed, texts, state)
    else:
        model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):  # LoRA: the final model carries the merged weights
        model = model.merge_and_unload()
    return model


def save_final_model(model, tokenizer, target: Path, fmt: str, extra_files: dict[str, str] | None = None) -> None:
    """``final_model/`` in the released Covo-Audio layout (``covo``) or transformers' ``save_pretrained`` layout,
    written aside and renamed into place; ``extra_files`` (the training settings, ``settings_files``) are written
    with it, inside the same atomic replacement."""
    try:
        if fmt == "covo" or family_of_model(model).name != "covo_audio":  # the family's own format
            save_checkpoint(model, tokenizer, target, extra_files=extra_files)
        else:
            save_model_atomic(model, tokenizer, target, extra_files)
    except OSError as exc:  # a full disk or a failing write: the checkpoints and any earlier final model stay
        raise CheckpointWriteError("final model", target, exc) from exc


def finish_run(recipe: Recipe, setup: TrainingSetup, model) -> None:
    """Process 0: the held-out score of the trained model, the run record closed with the data counts, and the run's
    report (``grpo-audio report``: curves, sample rollouts, the rollout browser) written to ``report/``."""
    after = measure_heldout(recipe, model, setup.tokenizer, setup.heldout, setup.featurizer)
    if after is not None:
        setup.status["heldout_after"] = after
        print(f"grpo-audio: held-out accuracy after GRPO {heldout_summary(after)}", flush=True)
    evaluation = setup.trainer.periodic_eval
    if evaluation is not None:
        setup.status["eval"] = evaluation_summary(recipe, setup.trainer, evaluation)
    report = setup.data.report
    finish_run_record(
        setup.run_dir,
        setup.status,
        global_step=setup.trainer.state.global_step,
        data={"rows": report.kept, "examined": report.examined, "skipped": report.counts},
    )
    print(f"grpo-audio: {report.summary()}", flush=True)
    print(f"grpo-audio: done; final model in {setup.run_dir / 'final_model'}", flush=True)
    try:
        page = render(setup.run_dir, setup.run_dir / "report")
    except ReportError as exc:  # the model and record are written: a report that cannot be drawn is only reported
        print(f"grpo-audio: no report written: {exc}", flush=True)
    else:
        print(f"grpo-audio: report (curves and rollout browser) in {page}", flush=True)


def evaluation_summary(recipe: Recipe, trainer, evaluation) -> dict:
    """run.json's ``eval``: the first and last evaluation of this process's lifetime and, with ``best_metric``, the
    best value and where its weights are (a trainer checkpoint, or ``final_model``)."""
    history = evaluation.history
    summary = {"first": history[0] if history else None, "last": history[-1] if history else None}
    metric = recipe.eval.best_metric
    if metric is not None and trainer.state.best_metric is not None:
        where = "final_model" if evaluation.final_is_best else trainer.state.best_model_checkpoint
        summary["best"] = {"metric": metric, "value": trainer.state.best_metric, "weights": where}
        print(f"grpo-audio: best {metric} {trainer.state.best_metric:.3f}: {where}", flush=True)
    return summary


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a trainer checkpoint was written at (its ``trainer_state.json``)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])
