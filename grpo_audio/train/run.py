"""``grpo-audio train``: one run, as the phases ``build_training`` and then ``train`` call them, in this order.

    recipe.yaml -> typed Recipe
      -> GRPOConfig (starts the process group under accelerate launch)            training_arguments
      -> a pretrained checkpoint's files and shapes, before anything is written   check_model_source    (0)
      -> run directory (record, provenance; resume point)                         open_run              (0)
      -> dataset rows (audio path, question, choices, answer)                     load_training_rows    (0)
      -> rewards (registry) -> R_total = combine(w_i, r_i), judges asked once     build_rewards
      -> model (tiny in process, or a pretrained checkpoint), freezing            build_model
      -> prompts in the family's layout (the training dataset)                    build_dataset
      -> prompt.txt: the first prompt, exactly as the model sees it               write_prompt_record   (0)
      -> synthetic held-out split (RUN/data/heldout/)                             prepare_heldout_split (0)
      -> starting point: cold start, initial_model/; resumed: the KL reference    prepare_starting_point
      -> eval sets read and rendered, as the held-out evaluator                   build_evaluator
      -> rollout engine + TRL GRPO trainer                                        make_trainer
      -> eval sets refused when the weights are sharded                           refuse_sharded_evaluation
      -> what is about to train, printed                                          announce
      -> train (rollouts, rewards, group advantages, update; evaluations)         AudioGRPOTrainer.train
      -> stop here when a signal asked for it (checkpoint written)                stop_if_preempted
      -> the trained model, whole (gathered when sharded, LoRA merged)            trained_model
      -> final_model/                                                             save_final_model      (0)
      -> run record closed (data counts, eval summary), report/                   finish_run            (0)

Under ``accelerate launch`` every process runs every phase. The phases marked (0) write to the run directory or
ask an outside service: they run on process 0 alone (inside ``share_from_main``, or for the last two behind
``is_main_process``); the other processes receive process 0's result (or its error), so they build the same model
and dataset from the rows it loaded. Within the other phases, the same holds for what they write: the judges'
probe, the cold start and the starting point's weights (sent to the others by ``broadcast_parameters``), and the
eval sets' files.

Held-out numbers come from the ``eval`` section alone (``grpo_audio.evaluation.during_training``): evaluated before
the first step and at the end, they are printed and kept in run.json's ``eval`` (first, last, best).
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
from grpo_audio.console import say
from grpo_audio.data.dataset import build_dataset
from grpo_audio.data.prompting import PromptTemplate, load_template
from grpo_audio.data.rows import AudioQuestion, DataError
from grpo_audio.data.sources import SkipReport, load_heldout_rows, load_rows_for_recipe
from grpo_audio.data.vocabulary import vocabulary_texts
from grpo_audio.distributed import broadcast_parameters, check_sharding_backend, rank, share_from_main
from grpo_audio.evaluation.during_training import HeldOutEvaluator, load_eval_sets
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
    CheckpointWriteError,
    RunDir,
    checkpoints,
    end_run_record,
    finish_run_record,
    open_run_dir,
    save_model_atomic,
    start_run_record,
    truncate_logs_after,
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
        resume = str(setup.resume_checkpoint) if setup.resume_checkpoint else None
        setup.trainer.train(resume_from_checkpoint=resume)
        stop_if_preempted(setup)
        model = trained_model(recipe, setup)  # a collective when the weights are sharded: every process calls it
        if setup.trainer.accelerator.is_main_process:
            save_final_model(
                model,
                setup.tokenizer,
                setup.run_dir / "final_model",
                fmt=recipe.run.final_model_format,
                extra_files=settings_files(recipe),
            )
            finish_run(recipe, setup)
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
        say(f"removed {run.path}: the run stopped on its input before training")
        return
    end_run_record(run.path, opened.status, error)


def build_training(recipe: Recipe, extra_callbacks=(), opened_runs: list | None = None) -> TrainingSetup:
    """The phases up to a ready trainer, in the module docstring's order. ``opened_runs``, when given, receives the
    ``OpenedRun`` as soon as the run directory is open (``train`` records an early end in it)."""
    args = training_arguments(recipe)
    check_model_source(recipe)
    judge_caches = judge_cache_files(recipe)
    opened = share_from_main(lambda: open_run(recipe, judge_caches))
    if opened_runs is not None:
        opened_runs.append(opened)
    run_dir = opened.run.path
    template = load_template(recipe.prompt.template)
    data = share_from_main(lambda: load_training_rows(recipe, opened.run, template))
    rubric = build_rewards(recipe)
    tokenizer, model = build_model(recipe, data.rows, template)
    dataset = build_dataset(data.rows, tokenizer, template, data.report.clip_lengths, family_for(recipe.model))
    featurizer = audio_featurizer(recipe)
    share_from_main(lambda: write_prompt_record(run_dir, template, dataset))
    heldout_split = share_from_main(lambda: prepare_heldout_split(recipe, run_dir))
    prepare_starting_point(
        recipe,
        run_dir,
        model,
        tokenizer=tokenizer,
        dataset=dataset,
        featurizer=featurizer,
        fresh=opened.run.resume_checkpoint is None,
        device=args.device,
    )
    evaluator = build_evaluator(
        recipe, run_dir, tokenizer=tokenizer, featurizer=featurizer, heldout_split=heldout_split
    )
    trainer = make_trainer(
        recipe,
        args,
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        featurizer=featurizer,
        rubric=rubric,
        run_dir=run_dir,
        judge_caches=judge_caches,
        extra_callbacks=extra_callbacks,
        run_record={"provenance": data.provenance, "recipe": recipe_to_dict(recipe)},
        evaluator=evaluator,
    )
    refuse_sharded_evaluation(trainer, evaluator)
    return TrainingSetup(
        run_dir=run_dir,
        trainer=trainer,
        tokenizer=tokenizer,
        model=model,
        dataset=dataset,
        template=template,
        featurizer=featurizer,
        status=opened.status,
        data=data,
        resume_checkpoint=opened.run.resume_checkpoint,
    )


def training_arguments(recipe: Recipe):
    """The run's ``GRPOConfig`` (``grpo_config``), after checking that sharded weights have their backend. Reading
    ``args.device`` starts the process group under ``accelerate launch``, before any file is written."""
    check_sharding_backend(torch.cuda.is_available())
    args = grpo_config(recipe, Path(recipe.run.output_dir))
    args.device  # noqa: B018
    return args


def check_model_source(recipe: Recipe) -> None:
    """A pretrained Covo-Audio checkpoint's files, config, safetensors headers, names and shapes (no tensor data),
    on process 0: a bad checkpoint is refused before the run directory is written, so a corrected rerun needs no
    run.overwrite. The other families' loaders check as they load."""
    if recipe.model.source == "pretrained" and family_for(recipe.model).name == "covo_audio":
        share_from_main(lambda: check_covo_checkpoint(recipe.model.path))


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


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a trainer checkpoint was written at (its ``trainer_state.json``)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])


def load_training_rows(recipe: Recipe, run: RunDir, template: PromptTemplate) -> TrainingRows:
    """Process 0: the recipe's rows through the row rules and the audio policy (writing synthetic clips and
    ``skipped.jsonl``), and the provenance record of data, clips and template."""
    rows, report = load_rows_for_recipe(recipe, run.path)
    say(report.summary())
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
        say(f"reward {key!r}: {outcome}")


def build_model(recipe: Recipe, rows: list[AudioQuestion], template: PromptTemplate):
    """``(tokenizer, model)`` of the recipe, with the encoder and adapter frozen or not as it says."""
    tokenizer, model = build_tokenizer_and_model(recipe.model, recipe.run.seed, vocabulary_texts(rows, template))
    apply_freezing(model, recipe.model)
    return tokenizer, model


def write_prompt_record(run_dir: Path, template: PromptTemplate, dataset) -> None:
    """Process 0: ``prompt.txt``, the template's ident and the first training prompt as the model sees it."""
    (run_dir / "prompt.txt").write_text(f"# template {template.ident}\n{dataset[0]['prompt']}\n", "utf-8")


def prepare_heldout_split(recipe: Recipe, run_dir: Path) -> tuple[list[AudioQuestion], SkipReport]:
    """Process 0: the synthetic held-out split, ``data.synthetic.heldout_questions`` new clips of the training tasks
    in ``RUN/data/heldout/`` (``load_heldout_rows``; no rows without one). It is the rows of every eval set with
    source 'synthetic', and the benchmark ``grpo-audio eval`` scores by default; a split no eval set scores is
    said to be unscored during training, with the recipe line that would score it."""
    split = load_heldout_rows(recipe, run_dir)
    count = recipe.data.synthetic.heldout_questions
    if count > 0 and not any(s.source == "synthetic" for s in recipe.eval.sets):
        say(
            f"held-out split: {count} questions in {run_dir / 'data' / 'heldout'}, not scored during training (add "
            "eval.sets: [{name: heldout, source: synthetic}] to score it); grpo-audio eval scores it by default"
        )
    return split


def audio_featurizer(recipe: Recipe) -> AudioFeaturizer:
    """Clip -> audio embeddings, reused across the passes of a batch when encoder and adapter are frozen."""
    return AudioFeaturizer(
        reuse_embeddings=recipe.model.freeze_encoder and recipe.model.freeze_adapter,
        ablation=recipe.model.audio_ablation,
        resampler=recipe.data.resampler,
        front_end=family_for(recipe.model).front_end,
    )


def prepare_starting_point(
    recipe: Recipe,
    run_dir: Path,
    model,
    *,
    tokenizer,
    dataset,
    featurizer: AudioFeaturizer,
    fresh: bool,
    device: torch.device | None = None,
) -> None:
    """The model GRPO starts from, on every process.

    A fresh run: process 0 runs the cold start (if any) and keeps the starting point's weights
    (``make_starting_point``); the other processes then receive its weights (``broadcast_parameters``). A resumed
    run after a cold start, whose trainer keeps a frozen KL reference: the trainer copies the model it is given as
    the reference, and the resume did not redo the cold start, so the model gets the weights ``initial_model/``
    holds (the policy's own weights come from the checkpoint).
    """
    cold_start = recipe.coldstart.steps > 0
    if fresh:
        share_from_main(lambda: make_starting_point(recipe, run_dir, model, tokenizer, dataset, featurizer, device))
        if cold_start:
            broadcast_parameters(model)  # the cold start ran on process 0 only
    elif cold_start and needs_frozen_reference(recipe):
        load_starting_point(model, run_dir / "initial_model")


def make_starting_point(
    recipe: Recipe, run_dir: Path, model, tokenizer, dataset, featurizer, device: torch.device | None = None
) -> None:
    """Process 0 of a fresh run: the cold start (if any; its losses in ``coldstart.jsonl``), then the starting
    point's weights in ``initial_model/`` (with the training settings, as ``final_model/``): always for a tiny model
    (a resumed run after a cold start reads its KL reference from them), and for a pretrained model after a cold
    start, whose GRPO starting point exists nowhere else (there, a full copy of the model on disk, in the family's
    own layout with any LoRA merged; a pretrained run without a cold start starts from ``model.path`` itself).

    The cold start runs on ``device`` (the trainer's, ``GRPOConfig.device``): the model is built or loaded on the
    host and the Trainer moves it only later, so without this a GPU run would do its cold start on the CPU.
    """
    if recipe.coldstart.steps > 0:
        if device is not None:
            model.to(device)
        history = run_coldstart(model, tokenizer, list(dataset), featurizer, recipe.coldstart, recipe.run.seed)
        write_jsonl(run_dir / "coldstart.jsonl", history)
    if recipe.model.source == "tiny":
        # The initial weights (after the cold start): the run can be reproduced from them
        save_model_atomic(model, tokenizer, run_dir / "initial_model", settings_files(recipe))
    elif recipe.coldstart.steps > 0:
        # merges LoRA on copies of each layer: the model about to train keeps its adapters
        save_checkpoint(model, tokenizer, run_dir / "initial_model", extra_files=settings_files(recipe))


def needs_frozen_reference(recipe: Recipe) -> bool:
    """Whether the trainer keeps a frozen copy of the starting point as the KL reference: beta > 0 without LoRA."""
    return float(recipe.trainer.get("beta", TRAINER_DEFAULTS["beta"])) != 0.0 and recipe.model.lora is None


def load_starting_point(model, directory: Path) -> None:
    """Put the weights of the starting point saved in ``directory`` (``initial_model/``) into ``model``."""
    _, saved = load_pretrained(directory)
    model.load_state_dict(saved.state_dict(), strict=True)


def build_evaluator(
    recipe: Recipe,
    run_dir: Path,
    *,
    tokenizer,
    featurizer: AudioFeaturizer,
    heldout_split: tuple[list[AudioQuestion], SkipReport],
) -> HeldOutEvaluator | None:
    """The recipe's eval sets read and rendered (process 0, files under ``RUN/eval_sets/``; every process gets them),
    as the evaluator the trainer runs during training; None without eval sets."""
    if not recipe.eval.sets:
        return None
    sets = share_from_main(lambda: load_eval_sets(recipe, run_dir, tokenizer, featurizer, heldout_split))
    return HeldOutEvaluator(recipe, sets, tokenizer, featurizer, run_dir)


def refuse_sharded_evaluation(trainer, evaluator: HeldOutEvaluator | None) -> None:
    """Evaluation during training decodes on process 0 with the whole model: refused when the weights are sharded."""
    if evaluator is not None and weights_are_sharded(trainer):
        raise RecipeError(
            "eval.sets: evaluation during training decodes on process 0 with the whole model, which sharded weights "
            "(FSDP, ZeRO-3) do not give it; drop eval.sets and evaluate the checkpoints with grpo-audio eval"
        )


def weights_are_sharded(trainer) -> bool:
    """FSDP, or DeepSpeed ZeRO-3: no process holds the whole model between forwards."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def announce(recipe: Recipe, setup: TrainingSetup) -> None:
    """Process 0 prints what is about to train: questions, G, engine, run directory, fresh or resumed."""
    accelerator = setup.trainer.accelerator
    start = "a fresh run" if setup.resume_checkpoint is None else f"resuming from {setup.resume_checkpoint}"
    if accelerator.num_processes > 1:
        start += f", {accelerator.num_processes} processes"
    if accelerator.is_main_process:
        say(
            f"{len(setup.dataset)} questions, G={recipe.rollout.num_generations}, engine={recipe.rollout.engine}, "
            f"run directory {setup.run_dir} ({start})"
        )


def stop_if_preempted(setup: TrainingSetup) -> None:
    """A run that a signal stopped after checkpointing (``PreemptionCallback``) ends here, with no final model:
    raises ``PreemptedError`` naming the last checkpoint."""
    preemption = getattr(setup.trainer, "preemption", None)
    if preemption is not None and preemption.signum is not None:
        found = checkpoints(setup.run_dir / "trainer")
        raise PreemptedError(preemption.signum, preemption.step, str(found[-1]) if found else None)


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


def finish_run(recipe: Recipe, setup: TrainingSetup) -> None:
    """Process 0: the run record closed with the evaluation summary and the data counts, and the run's report
    (``grpo-audio report``: curves, sample rollouts, the rollout browser) written to ``report/``."""
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
    say(report.summary())
    say(f"done; final model in {setup.run_dir / 'final_model'}")
    try:
        page = render(setup.run_dir, setup.run_dir / "report")
    except ReportError as exc:  # the model and record are written: a report that cannot be drawn is only reported
        say(f"no report written: {exc}")
    else:
        say(f"report (curves and rollout browser) in {page}")


def evaluation_summary(recipe: Recipe, trainer, evaluation) -> dict:
    """run.json's ``eval``: the sets (items, rule, template) and the sampling settings of ``sampled_accuracy``
    (``HeldOutEvaluator.record``; None when greedy only), the first and last evaluation of this process's lifetime
    (``{"step", "metrics"}``) and, with ``best_metric``, the best value and where its weights are (a trainer
    checkpoint, or ``final_model``)."""
    history = evaluation.history
    summary = {
        **evaluation.evaluator.record(),
        "first": history[0] if history else None,
        "last": history[-1] if history else None,
    }
    metric = recipe.eval.best_metric
    if metric is not None and trainer.state.best_metric is not None:
        where = "final_model" if evaluation.final_is_best else trainer.state.best_model_checkpoint
        summary["best"] = {"metric": metric, "value": trainer.state.best_metric, "weights": where}
        say(f"best {metric} {trainer.state.best_metric:.3f}: {where}")
    return summary
