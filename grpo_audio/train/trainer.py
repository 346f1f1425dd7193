"""``AudioGRPOTrainer``: TRL's GRPOTrainer with audio in generation and in every log-prob pass.

Stock TRL has no audio path: a model given placeholder tokens but no audio trains without error while never
hearing anything. This subclass overrides ten methods of TRL 1.16 (pinned exactly) and transformers' Trainer;
``tests/test_trl_seam.py`` checks each one's signature against the base method and that the base class still calls
it, and every TRL attribute the class reads or sets (``use_vllm``, ``beta``, ``ref_model``, ``_metrics``, ...) against
TRL's own trainer. From TRL's ``GRPOTrainer``:

* ``_generate_and_score_completions``: computes the batch's ``AudioRows`` once (from the rows' ``audio`` paths),
  keeps them for the calls below, and returns them in the output dict so TRL shuffles and splits them with the
  other per-row tensors; zeroes the completion mask of unscored rows (a reward term of non-zero weight failed:
  ``rewards.RewardFailure``), so they add no loss, no KL and no tokens to the loss's denominator;
* ``_generate_single_turn``: rollouts through the recipe's engine from audio-merged prompt embeddings;
* ``_get_per_token_logps_and_entropies``: passes each chunk's audio to the forward and scores the completion tokens
  under the distribution the rollouts were sampled from (``sampling``: text-only mask, temperature, top-k, top-p;
  ``grpo_audio.model.sampling``), not the full-vocabulary one TRL's fused head would use; serves the old-policy,
  reference and policy passes alike, so the importance ratios, the entropies (logged, and used by
  ``top_entropy_quantile``) and the gradient are those of the sampled policy, and banned ids get no gradient;
  chunks of rows, or rows packed by token count (``trainer.max_tokens_per_microbatch``: ``token_budget``);
* ``_compute_loss``: makes the micro-batch's audio (from its inputs) current for the policy pass;
* ``_calculate_rewards`` (several processes only): scores the global batch once, on process 0, so group-level
  rewards see whole groups and an LLM judge is asked once per completion (see the method);
* ``training_step``: the step-time split (below).

From transformers' ``Trainer``:

* ``create_optimizer``: the audio adapter's parameters in groups of their own learning rate, when set;
* ``get_batch_samples``: with ``rollout.overlap``, also reads the next optimizer step's batches, whose rollouts are
  sampled during this step's update (``grpo_audio.rollout.overlap``);
* ``_get_output_dir`` and ``_save_checkpoint``: crash-safe checkpoints (below), with the judge caches inside.

Dynamic sampling's rounds (the batch chosen before TRL's path, then replayed through it) are the mixin
``grpo_audio.train.dynamic_rounds.DynamicRounds``; ``_generate_single_turn`` and ``_calculate_rewards`` hand back its
chosen batch instead of sampling and scoring again.

Audio is handed to the log-prob method through ``self._current_audio`` because TRL's callers do not forward
unknown keyword arguments; the method checks that the audio rows match the token rows and fails otherwise.

Also here: ``text_only/outside_mass``, per step, the mean over the sampled completion positions of the probability
the policy (unmasked, at the sampling temperature) puts on the ids text-only rollouts never sample: how large an
intervention text-only decoding is for this model. The step-time split logged with TRL's metrics
(``time/audio_features_s``, ``time/rollout_s``, ``time/scoring_s``, ``time/logprob_s`` for the old/reference passes,
``time/update_s`` for the policy forward, backward and optimizer), one ``rollouts.jsonl`` record per completion, and
crash-safe checkpoints: each checkpoint is written under ``<output_dir>/.staging/`` and renamed into place only when
complete, so a crash mid-write leaves the previous checkpoint as the last complete one. With several processes,
process 0 alone writes ``rollouts.jsonl`` (every process's records, gathered; each carries its ``rank``) and renames
checkpoints, after every process has written its share (its RNG state).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import gather, gather_object
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.trainer_utils import rotate_checkpoints
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model

from grpo_audio.audio.featurizer import AUDIO_KEYS, AudioFeaturizer, AudioRows
from grpo_audio.distributed import fail_together, root_parameters_unsharded, share_from_main
from grpo_audio.model.sampling import NEG, SamplingDistribution
from grpo_audio.rollout.base import RolloutEngine, RolloutResult
from grpo_audio.rollout.overlap import RolloutPrefetcher
from grpo_audio.train.callbacks import PeriodicEvaluation, RunRecordToTrackers
from grpo_audio.train.dynamic_rounds import DynamicRounds, Replay
from grpo_audio.train.reward_bridge import make_trl_reward
from grpo_audio.train.run_dir import CheckpointWriteError, replace_dir_atomic
from grpo_audio.train.scoring_ahead import ScoredAhead, ahead_scorer, background_tokenizer
from grpo_audio.train.scoring_stop import RandomState, ScoringStoppedError
from grpo_audio.train.token_budget import (
    Chunk,
    fixed_chunks,
    pack_rows,
    pack_tokens,
    score_in_chunks,
    unpack_tokens,
)
from rewards import Rubric, UnscoredRowsError
from rewards.judge.cache import save_judge_caches

STAGING = ".staging"
# Loss types that average per sequence: the mean over a micro-batch's rows counts rows without loss tokens, so
# _compute_loss rescales them to the number of loss-bearing rows (see there)
PER_SEQUENCE_LOSSES = ("grpo", "sapo", "dr_grpo", "luspo")


class AudioGRPOTrainer(DynamicRounds, GRPOTrainer):
    """TRL's ``GRPOTrainer`` with audio (see the module docstring). Everything it needs comes at construction:

    ``rubric`` (R_total and its terms; the trainer wraps it as TRL's one reward function and keeps each batch's
    per-term breakdown in ``last_breakdown``), ``rollout_engine``, ``featurizer``, ``sampling`` (the distribution the
    engine samples from), ``rollout_log`` (called with each batch's ``rollouts.jsonl`` records on process 0),
    ``adapter_learning_rate``, ``judge_cache_files`` (copied into each checkpoint), ``run_record`` (provenance +
    recipe, sent to TensorBoard/W&B when they are enabled) and ``evaluator`` with ``eval_spec`` (held-out sets scored
    during training: ``PeriodicEvaluation``, kept as ``periodic_eval``). The other arguments are GRPOTrainer's, but
    ``reward_funcs``, which the rubric replaces.
    """

    def __init__(
        self,
        *args,
        rubric: Rubric,
        rollout_engine: RolloutEngine,
        featurizer: AudioFeaturizer,
        sampling: SamplingDistribution,
        rollout_log: Callable[[list[dict]], None] | None = None,
        adapter_learning_rate: float | None = None,
        judge_cache_files: list[Path] = (),
        run_record: dict | None = None,
        evaluator: Callable | None = None,
        eval_spec=None,
        dynamic_sampling=None,
        max_tokens_per_microbatch: int | None = None,
        padding_free: bool = False,
        overlap: bool = False,
        **kwargs,
    ) -> None:
        if "reward_funcs" in kwargs or len(args) > 1:
            raise TypeError("AudioGRPOTrainer builds its reward function from rubric=; pass no reward_funcs")
        grpo_args = kwargs["args"]
        kwargs["reward_funcs"] = [
            make_trl_reward(
                rubric,
                grpo_args.num_generations,
                self._keep_breakdown,
                max_length=grpo_args.max_completion_length,
                # TRL sets eos_token_ids in super().__init__, below: read when rewards are scored
                stop_token_ids=lambda: [*self.eos_token_ids, self._tokenizer.pad_token_id],
                check_unscored=False,  # _calculate_rewards checks, on every process (scoring_stop)
                prescored=self._breakdown_scored_ahead,
            )
        ]
        self.rubric = rubric
        self._checkpointed_step: int | None = None  # the step of the last checkpoint this process wrote
        self.adapter_learning_rate = adapter_learning_rate
        self.judge_cache_files = [Path(p) for p in judge_cache_files]
        self.rollout_engine = rollout_engine
        self.featurizer = featurizer
        self.sampling = sampling
        # trainer.max_tokens_per_microbatch: the log-prob and loss passes' chunks packed by tokens (token_budget)
        self.max_tokens_per_microbatch = max_tokens_per_microbatch
        self.padding_free = padding_free  # trainer.padding_free: each chunk's rows in one token row (token_budget)
        self._padding = [0, 0, 0]  # this step's passes: token positions, positions covered, chunks
        # rollout.overlap: the next step's rollouts sampled during this step's update (grpo_audio.rollout.overlap)
        self.prefetcher = RolloutPrefetcher(rollout_engine) if overlap else None
        self._lookahead: list = []  # the next optimizer step's batches, read ahead for the prefetch
        self._lookahead_source = None  # the epoch iterator they came from
        self._scored_ahead: ScoredAhead | None = None  # this step's rewards, scored with its prefetch
        self._background_tokenizer = None  # the prefetch thread's own tokenizer (scoring_ahead)
        self._policy_pass = False
        self.rollout_log = rollout_log
        self._current_audio: AudioRows | None = None
        self.last_rollout: RolloutResult | None = None
        self.last_breakdown = None  # the rubric's per-term scores of the last batch (_keep_breakdown)
        self._timings: dict[str, float] = {}
        self._staging_save = False
        # rollout.dynamic_sampling when enabled (grpo_audio.rollout.dynamic_sampling), else None
        self.dynamic_sampling = dynamic_sampling if dynamic_sampling is not None and dynamic_sampling.enabled else None
        self._replay: Replay | None = None
        self._global_breakdown = None  # the last _calculate_rewards' breakdown of the global batch
        self._row_index_by_id: dict | None = None
        # The KL reference is scored under the text-only mask and the temperature but without a top-k/top-p cut of
        # its own: a token sampled inside the policy's nucleus but outside the reference's would get log-prob NEG
        # there, and the KL estimator exp(ref - pol) - (ref - pol) - 1 would be about 1e9 (TRL and verl score the
        # reference on the full distribution too). Without truncation the two distributions are the same.
        self.reference_sampling = dataclasses.replace(sampling, top_k=0, top_p=1.0)
        reference = None
        if grpo_args.beta != 0.0 and kwargs.get("peft_config") is None:
            # Full fine-tuning with a KL term: the reference is a frozen copy of the starting point, made here. TRL
            # would load one from the policy's config name (transformers' Auto classes), which neither a released
            # Covo-Audio directory nor our Qwen2-Audio subclass loads as; so TRL builds none (beta 0 while it is
            # constructed) and gets this copy, prepared as it prepares its own (below).
            reference = copy.deepcopy(kwargs["model"]).eval().requires_grad_(False)
            beta, grpo_args.beta = grpo_args.beta, 0.0
        try:
            super().__init__(*args, **kwargs)
        finally:
            if reference is not None:
                grpo_args.beta = beta
        if reference is not None:
            self.beta = beta
            self.ref_model = self._prepare_reference(reference)
        if self.loss_type in PER_SEQUENCE_LOSSES and self._entropy_bonus_enabled:
            raise ValueError(
                f"trainer.entropy_coef with loss_type {self.loss_type!r}: the harness rescales per-sequence losses so "
                "that rows outside the loss do not shrink the step, which would scale TRL's entropy bonus too; use "
                "loss_type 'dapo' or 'bnpo' with an entropy bonus"
            )
        if sampling.temperature != self.temperature:
            raise ValueError(
                f"the log-prob passes' temperature {sampling.temperature} differs from GRPOConfig.temperature "
                f"{self.temperature}: both come from rollout.temperature"
            )
        if getattr(rollout_engine, "returns_logprobs", False):
            # TRL's importance-sampling correction (vllm_importance_sampling_* in GRPOConfig) and its drift metrics
            # (sampling/sampling_logp_difference) are gated on use_vllm. Our engines are not TRL's (args.use_vllm
            # stays False, so TRL builds no engine of its own), but an engine that returns its sampled tokens'
            # log-probs (vLLM always; HF with rollout.engine_logprobs) is another computation of the policy, so the
            # correction applies just the same: it compares the trainer's log-probs with those the engine returned.
            self.use_vllm = True
        if run_record is not None:
            self.add_callback(RunRecordToTrackers(run_record, self.callback_handler))
        self.periodic_eval = None
        if evaluator is not None:
            self.periodic_eval = PeriodicEvaluation(evaluator, eval_spec, self._record_metrics, self.log)
            self.add_callback(self.periodic_eval)

    def _prepare_reference(self, reference):
        """The KL reference as TRL prepares its own: dropout off when the policy's is, then DeepSpeed, FSDP or
        accelerate's evaluation-mode placement."""
        if self.args.disable_dropout:
            disable_dropout_in_model(reference)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(reference, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(reference, self.accelerator)
        return self.accelerator.prepare_model(reference, evaluation_mode=True)

    def _record_metrics(self, metrics: dict[str, float]) -> None:
        """Values logged with the current step's TRL metrics (averaged like them over the logging interval)."""
        for key, value in metrics.items():
            self._metrics["train"][key].append(value)

    def _keep_breakdown(self, breakdown, samples: list[dict], seconds: float) -> None:
        """The reward function's report of each scored batch: its per-term breakdown and the time it took."""
        self.last_breakdown = breakdown
        self.record_time("scoring_s", seconds)

    def record_time(self, name: str, seconds: float) -> None:
        self._timings[name] = self._timings.get(name, 0.0) + seconds

    def _generate_and_score_completions(self, inputs):
        """TRL's generate-and-score step with audio, in named steps:

        1. ``_refuse_rows_without_audio``: every row must name its clip;
        2. evaluation: ``_score_batch`` on the batch as given;
        3. training: ``_training_batch`` (dynamic sampling's rounds choose the batch when enabled, then
           ``_score_batch``), inside ``_checkpoint_if_scoring_stops``: if too many completions are unscored, the
           run stops after a checkpoint of the last finished step.

        ``_score_batch`` runs TRL's own method with the rows' audio, masks the rows outside the loss, records the
        step-time split and logs the rollouts.
        """
        self._refuse_rows_without_audio(inputs)
        if not self.model.training:
            return self._score_batch(inputs)
        with self._checkpoint_if_scoring_stops():
            return self._training_batch(inputs)

    @staticmethod
    def _refuse_rows_without_audio(inputs: list[dict]) -> None:
        """``ValueError`` naming the batch rows with no ``audio`` path: without one the model would hear nothing."""
        missing = [i for i, row in enumerate(inputs) if not row.get("audio")]
        if missing:
            raise ValueError(f"batch rows {missing} have no 'audio' path; every training row needs a clip")

    @contextlib.contextmanager
    def _checkpoint_if_scoring_stops(self):
        """Turns ``UnscoredRowsError`` (raised alike on every process: ``_calculate_rewards``) into
        ``ScoringStoppedError``, after a checkpoint of the last finished step (``_checkpoint_before_stopping``). The
        generators' state and the token count are captured on entry, before the step draws or counts anything."""
        random_state, tokens_seen = RandomState.capture(), self.state.num_input_tokens_seen
        try:
            yield
        except UnscoredRowsError as error:
            raise self._checkpoint_before_stopping(error, random_state, tokens_seen) from error

    def _checkpoint_before_stopping(
        self, error: UnscoredRowsError, random_state: RandomState, tokens_seen: int
    ) -> ScoringStoppedError:
        """Too many unscored completions: a checkpoint of the last finished step, then the error to stop with
        (``grpo_audio.train.scoring_stop``). No gradient has been taken yet, so the model, optimizer and scheduler
        are that step's; the generators and the token count go back to where the step began."""
        step = self.state.global_step
        if step == 0:
            return ScoringStoppedError(error, 0, None)
        random_state.restore()
        self.state.num_input_tokens_seen = tokens_seen
        if self._checkpointed_step != step:
            self._save_checkpoint(self.model_wrapped, None)
        return ScoringStoppedError(error, step, str(Path(self._get_output_dir(None)) / f"checkpoint-{step}"))

    def _training_batch(self, inputs):
        """A training step's batch: ``_score_batch``, after dynamic sampling's rounds chose the batch when it is on
        (their time counts in ``time/`` as generation: ``generate_and_score_s``)."""
        if self.dynamic_sampling is None:
            return self._score_batch(inputs)
        start = time.perf_counter()
        batch = self._sample_informative_batch(inputs)
        sampling_s = time.perf_counter() - start
        try:
            output = self._score_batch(batch)
        finally:
            self._replay = None
        self.record_time("generate_and_score_s", sampling_s)
        return output

    def _audio_rows(self, inputs) -> AudioRows:
        paths = [row["audio"] for row in inputs]
        if self.prefetcher is not None and self.model.training:
            prefetched = self.prefetcher.audio_for(paths)  # computed a step ahead for these rows' rollouts
            if prefetched is not None:
                return prefetched
        start = time.perf_counter()
        model = self.accelerator.unwrap_model(self.model)
        with root_parameters_unsharded(model):
            audio = self.featurizer.rows(paths, model, self.accelerator.device)
        self.record_time("audio_features_s", time.perf_counter() - start)
        return audio

    def _score_batch(self, inputs):
        """TRL's generate-and-score path for ``inputs`` (rollouts replayed when dynamic sampling chose them): the
        batch generated and scored with its audio, the rows outside the loss masked (both timed), the rollouts
        logged."""
        with self._timing_generation():
            output = self._generate_and_score_with_audio(inputs)
            self._mask_rows_outside_the_loss(output, len(inputs))
        self._log_rollouts(inputs, output)
        return output

    @contextlib.contextmanager
    def _timing_generation(self):
        """Records the block's wall time as ``generate_and_score_s`` and, as ``logprob_s``, the part of it that the
        timed parts inside it do not account for: ``logprob_s = elapsed - delta(audio_features_s + rollout_s +
        scoring_s)``, seconds, the delta taken over the block (dynamic sampling's rounds came before it). That part
        is TRL's old-policy and reference log-prob passes. Nothing is recorded when the block raises."""
        start = time.perf_counter()
        before = self._timed_parts_s()
        yield
        elapsed = time.perf_counter() - start
        self.record_time("generate_and_score_s", elapsed)
        self.record_time("logprob_s", elapsed - (self._timed_parts_s() - before))

    def _timed_parts_s(self) -> float:
        """The step's seconds so far in audio features, rollouts and scoring."""
        return sum(self._timings.get(k, 0.0) for k in ("audio_features_s", "rollout_s", "scoring_s"))

    def _generate_and_score_with_audio(self, inputs) -> dict:
        """TRL's own ``_generate_and_score_completions`` with the rows' audio current (for the rollouts and the
        log-prob passes), the audio added to its output so that TRL shuffles and splits it with the other per-row
        tensors. A breakdown scored ahead (``rollout.overlap``) is spent either way: R_total took it, or the rows
        were scored now."""
        self._current_audio = self._audio_rows(inputs)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            audio, self._current_audio = self._current_audio, None
            self._scored_ahead = None
        output.update(audio.as_dict())
        return output

    def _mask_rows_outside_the_loss(self, output: dict, rows: int) -> None:
        """Zero the completion mask of the rows that must not train, and count what is left (collectives: every
        process runs this alike).

        An unscored row (a weighted reward term failed) has R_total None, so TRL already gives it advantage 0; a
        dynamic-sampling filler has advantage 0 too. Zeroing their completion mask also keeps them out of the KL term,
        the entropy and the token count the loss is divided by (``num_items_in_batch``). ``num_loss_rows`` counts the
        global batch's rows that keep a loss token, for the per-sequence losses (``_compute_loss``); the share of
        those with a non-zero advantage is logged as ``advantage/nonzero_frac``.
        """
        breakdown = self.last_breakdown  # this process's rows (the reward bridge, or _calculate_rewards)
        excluded = [False] * rows
        if breakdown is not None and len(breakdown.unscored) == rows:
            excluded = [reason is not None for reason in breakdown.unscored]
        if self._replay is not None:
            excluded = [a or b for a, b in zip(excluded, self._replay.fillers, strict=True)]
        mask = output["completion_mask"]
        keep = torch.tensor([not e for e in excluded], device=mask.device)
        mask = output["completion_mask"] = mask * keep.unsqueeze(1).to(mask.dtype)
        loss_mask = mask * output["tool_mask"] if "tool_mask" in output else mask
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        bearing = loss_mask.sum(dim=1) > 0
        teaching = bearing & (output["advantages"] != 0)
        counts = torch.stack([bearing.sum(), teaching.sum()]).unsqueeze(0)
        totals = self.accelerator.gather(counts).sum(dim=0)
        output["num_loss_rows"] = totals[0].float()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["advantage/nonzero_frac"].append((totals[1] / totals[0].clamp(min=1)).item())

    def _log_rollouts(self, inputs, output) -> None:
        """``rollouts.jsonl`` (``rollout_log``): this batch's records, every process's gathered (a collective: every
        process runs this alike), written by process 0."""
        if self.rollout_log is None:
            return
        records = self._rollout_records(inputs, output)
        if self.accelerator.num_processes > 1:
            records = gather_object(records)
        if self.accelerator.is_main_process:
            self.rollout_log(records)

    def _rollout_records(self, inputs, output) -> list[dict]:
        """One record per completion of this (local) batch, in batch order (before TRL shuffles it)."""
        replay = self._replay
        records = self._records(
            inputs,
            self.last_rollout,
            self.last_breakdown,
            output["advantages"].tolist(),
            self.accelerator.process_index,
        )
        for i, record in enumerate(records):
            record["round"] = replay.rounds[i] if replay else 0
            # a filler group (dynamic sampling ran out of rounds) is in the batch but outside the loss
            record["dropped"] = (
                "zero reward variance (filled the step, outside the loss)" if replay and replay.fillers[i] else None
            )
        return records

    def _records(self, inputs, result: RolloutResult, breakdown, advantages: list, rank: int) -> list[dict]:
        texts = self.processing_class.batch_decode(result.completion_ids, skip_special_tokens=True)
        records = []
        for i, row in enumerate(inputs):
            records.append(
                {
                    "step": self.state.global_step + 1,
                    "prompt_id": row.get("id"),
                    "audio": row.get("audio"),
                    "question": row.get("question"),
                    "choices": row.get("choices"),
                    "answer": row.get("answer"),
                    "completion": texts[i],
                    "rewards": {name: values[i] for name, values in breakdown.terms.items()} if breakdown else {},
                    "R_total": breakdown.total[i] if breakdown else None,
                    # why R_total is None here: "term: reason" of each weighted term that failed (None when scored)
                    "unscored": breakdown.unscored[i] if breakdown and breakdown.unscored else None,
                    "failed": {k: v[i] for k, v in breakdown.failed.items() if v[i] is not None} if breakdown else {},
                    "advantage": advantages[i],
                    "length": len(result.completion_ids[i]),
                    "finish_reason": result.finish_reasons[i],
                    "rank": rank,
                }
            )
        return records

    def training_step(self, model, inputs, num_items_in_batch):
        start = time.perf_counter()
        self._timings = {}
        self._padding = [0, 0, 0]
        output = super().training_step(model, inputs, num_items_in_batch)
        elapsed = time.perf_counter() - start
        timings, self._timings = self._timings, {}
        generation = timings.pop("generate_and_score_s", 0.0)
        metrics = self._metrics["train"]
        for name in ("audio_features_s", "rollout_s", "scoring_s", "logprob_s"):
            if name in timings:
                metrics[f"time/{name}"].append(timings[name])
        metrics["time/update_s"].append(elapsed - generation)
        tokens, covered, chunks = self._padding
        self._padding = [0, 0, 0]
        if covered:  # this micro-step's passes (the generation batch's old/reference passes on its first)
            metrics["microbatch/padding_frac"].append(1.0 - tokens / covered)
            metrics["microbatch/chunks"].append(float(chunks))
        return output

    def create_optimizer(self, model=None):
        """TRL/transformers' optimizer, with the audio adapter's parameters in groups of their own learning rate
        when ``model.adapter_learning_rate`` is set (the schedule scales every group's rate alike)."""
        optimizer = super().create_optimizer(model)
        if self.adapter_learning_rate is None:
            return optimizer
        named = (model or self.model).named_parameters()
        adapter = {id(p) for name, p in named if ".audio_adapter." in f".{name}"}
        groups = []
        for group in optimizer.param_groups:
            rest = [p for p in group["params"] if id(p) not in adapter]
            ours = [p for p in group["params"] if id(p) in adapter]
            if rest:
                groups.append({**group, "params": rest})
            if ours:
                groups.append({**group, "params": ours, "lr": self.adapter_learning_rate})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def _get_output_dir(self, trial):
        output_dir = super()._get_output_dir(trial)
        return str(Path(output_dir) / STAGING) if self._staging_save else output_dir

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint into ``.staging/`` and rename it into place once complete."""
        final_root = Path(super()._get_output_dir(trial))
        staging_root = final_root / STAGING
        if self.args.should_save and staging_root.exists():
            shutil.rmtree(staging_root)  # leftovers of a crashed save
        self.accelerator.wait_for_everyone()
        self._staging_save = True
        name = f"checkpoint-{self.state.global_step}"

        def write_parts():
            try:
                super(AudioGRPOTrainer, self)._save_checkpoint(model, trial)
            except OSError as exc:  # a full disk or a failing write: the previous checkpoint is untouched
                raise CheckpointWriteError("checkpoint", staging_root / name, exc) from exc
            finally:
                self._staging_save = False

        def publish():
            if not self.args.should_save:
                return
            if self.prefetcher is not None:
                self.prefetcher.wait()  # its scoring may be appending to a judge cache copied below
            try:
                save_judge_caches(self.judge_cache_files, staging_root / name)
                replace_dir_atomic(staging_root / name, final_root / name)
            except OSError as exc:
                raise CheckpointWriteError("checkpoint", final_root / name, exc) from exc
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=str(final_root),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )

        # a failed write on any process stops every process here, not at the next collective
        fail_together(write_parts)  # afterwards every process's files (rng_state_<rank>.pth) are in place
        fail_together(publish)
        self._checkpointed_step = self.state.global_step

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Rewards of the global batch, one row per completion of every process, in TRL's global order.

        TRL calls each reward function on the process's own slice. With several processes that cuts a prompt's
        G completions apart whenever the per-process batch is not a multiple of G, so a group-level reward (or a
        combiner using batch statistics) would score half groups, and every process would query an LLM judge.
        Here the slices are gathered (rank order is TRL's global order: groups are whole and contiguous), process
        0 calls the reward functions once on the whole batch, and each process keeps the rows of its own slice;
        the result is then gathered as TRL does. Only plain (synchronous, non-model) reward functions take this
        path, which is what the harness builds. One process: TRL's own method, unchanged.
        """
        if self._replay is not None:  # dynamic sampling scored these rows already
            self.last_breakdown = self._replay.breakdown
            return self._replay.rewards.to(self.accelerator.device)
        if self.accelerator.num_processes == 1:
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self._check_unscored(self.last_breakdown)
            return rewards
        sizes = gather_object([len(prompts)])
        start = sum(sizes[: self.accelerator.process_index])
        batch = gather_object(list(zip(inputs, prompts, completions, completion_ids_list, strict=True)))

        def score_everything():
            all_inputs, all_prompts, all_completions, all_ids = (list(column) for column in zip(*batch, strict=True))
            keys = [key for key in all_inputs[0] if key not in ("prompt", "completion", "completion_ids")]
            kwargs = {key: [row[key] for row in all_inputs] for key in keys}
            # log_metric values are flushed by TRL as a mean over processes weighted by count: process 0's alone
            kwargs.update(trainer_state=self.state, log_metric=self._log_metric)
            columns = []
            for func, name in zip(self.reward_funcs, self.reward_func_names, strict=True):
                if isinstance(func, torch.nn.Module) or inspect.iscoroutinefunction(func):
                    raise ValueError(f"reward {name!r}: several processes need plain (synchronous) reward functions")
                values = func(prompts=all_prompts, completions=all_completions, completion_ids=all_ids, **kwargs)
                if len(values) != len(all_prompts):
                    raise ValueError(
                        f"reward function {name!r} returned {len(values)} rewards for {len(all_prompts)} completions"
                    )
                columns.append([float("nan") if v is None else float(v) for v in values])
            return columns, self.last_breakdown

        columns, breakdown = share_from_main(score_everything)
        self._check_unscored(breakdown)
        self._global_breakdown = breakdown
        self.last_breakdown = None if breakdown is None else breakdown.rows(start, start + len(prompts))
        local = torch.tensor(
            [[column[i] for column in columns] for i in range(start, start + len(prompts))],
            dtype=torch.float32,
            device=self.accelerator.device,
        )
        return gather(local)

    def _check_unscored(self, breakdown) -> None:
        """``UnscoredRowsError`` when more of the global batch is unscored than the recipe allows. Every process
        holds the global batch's breakdown, so every process raises alike and all stop at the same step."""
        if breakdown is not None:
            self.rubric.check_unscored(breakdown)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None:
            raise ValueError("this trainer takes audio, not images")
        if self._replay is not None:  # dynamic sampling chose these rollouts already
            self.last_rollout = self._replay.result
            return self._replay.result.completion_ids, self._replay.result.logprobs
        audio = self._require_audio(len(prompt_ids))
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
        ):
            # A PEFT wrapper forwards prompt_embeddings/config to the base model and keeps its adapters active
            start = time.perf_counter()
            ids = [list(p) for p in prompt_ids]
            overlapped = self.prefetcher is not None and self.model.training
            result = self.prefetcher.take(ids, audio) if overlapped else None  # sampled a step ahead
            if self.prefetcher is not None:
                # the server's weights change below only once it is idle: every process's prefetch has finished
                self.prefetcher.wait()
                if self.accelerator.num_processes > 1:
                    self.accelerator.wait_for_everyone()
            self._sync_rollout_weights(unwrapped)
            if result is None:
                position = getattr(self.rollout_engine, "set_batch_position", None)
                if position is not None:  # per-row random streams keyed by the rows' place in the global batch
                    position(self.state.global_step, self.accelerator.process_index * len(prompt_ids))
                with root_parameters_unsharded(unwrapped):
                    result = self.rollout_engine.generate(unwrapped, ids, audio)
                staleness = 0.0
            else:
                staleness = 1.0
                self._metrics["train"]["rollout/prefetch_wait_s"].append(self.prefetcher.last_wait_s)
                self._metrics["train"]["rollout/prefetch_sample_s"].append(self.prefetcher.last_sample_s)
                self._scored_ahead = self.prefetcher.last_scored  # R_total takes it (_breakdown_scored_ahead)
                if self._scored_ahead is not None:
                    self._metrics["train"]["rollout/prefetch_score_s"].append(self._scored_ahead.seconds)
            if overlapped:
                self._metrics["train"]["rollout/staleness"].append(staleness)
                self._prefetch_next_rollouts(unwrapped)
            self.record_time("rollout_s", time.perf_counter() - start)  # weight sync included
        self.last_rollout = result
        return result.completion_ids, result.logprobs

    def _sync_rollout_weights(self, unwrapped) -> None:
        """Bring an engine holding its own copy of the weights (vLLM) up to this optimizer step; log the cost."""
        sync_weights = getattr(self.rollout_engine, "sync_weights", None)
        start = time.perf_counter()
        if sync_weights is not None and sync_weights(unwrapped, self.state.global_step):
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["time/weight_sync_s"].append(time.perf_counter() - start)
            moved = getattr(getattr(self.rollout_engine, "backend", None), "last_sync_bytes", None)
            if moved is not None:  # what the sync moved: tensor bytes sent, or files written (disk)
                self._metrics[mode]["weight_sync/bytes"].append(float(moved))

    def _prefetch_next_rollouts(self, unwrapped) -> None:
        """``rollout.overlap``: start sampling the next optimizer step's rollouts (its rows read one step ahead by
        ``get_batch_samples``) with the weights the server now holds, and with one process score them there too
        (``grpo_audio.train.scoring_ahead``); none at an epoch's or the run's end."""
        if not self._lookahead or self.state.global_step + 1 >= self.state.max_steps:
            return  # an epoch's or the run's last step: no step takes these rollouts
        rows = self._lookahead[0]  # the next step's generation batch (every micro-batch of a step carries it)
        prompt_ids = [list(p) for p in self._tokenize_prompts([row["prompt"] for row in rows])[0]]
        audio = self._audio_rows(rows)  # the next step takes these over (RolloutPrefetcher.audio_for)
        step = self.state.global_step + 1  # the step that takes these rollouts sees this global_step
        score = None
        if self.accelerator.num_processes == 1:  # several: scored on process 0 for the global batch, in the step
            if self._background_tokenizer is None:
                self._background_tokenizer = background_tokenizer(self.processing_class)
            score = ahead_scorer(
                self.rubric,
                self._background_tokenizer,
                rows,
                step=step,
                total_steps=self.state.max_steps,
                group_size=self.args.num_generations,
                max_length=self.args.max_completion_length,
                stop_token_ids=[*self.eos_token_ids, self._tokenizer.pad_token_id],
            )
        with root_parameters_unsharded(unwrapped):
            first_row = self.accelerator.process_index * len(prompt_ids)
            paths = [row["audio"] for row in rows]
            self.prefetcher.start(unwrapped, prompt_ids, paths, audio, step, first_row, score=score)

    def _breakdown_scored_ahead(self, texts, samples, context):
        """``R_total``'s lookup: this step's breakdown when its batch was scored with the prefetch, with exactly these
        arguments (``grpo_audio.train.scoring_ahead``), else None (it scores now). Logs ``rewards/scored_ahead``."""
        ahead, self._scored_ahead = self._scored_ahead, None
        hit = ahead is not None and ahead.answers(texts, samples, context)
        if self.prefetcher is not None and self.model.training and self.accelerator.num_processes == 1:
            self._metrics["train"]["rewards/scored_ahead"].append(float(hit))
        return ahead.breakdown if hit else None

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """transformers' batches of this optimizer step; with ``rollout.overlap`` the next step's are read too and
        kept (``self._lookahead``) for the rollouts sampled a step ahead. The data order is unchanged."""
        if self.prefetcher is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        held = self._lookahead if self._lookahead_source is epoch_iterator else []
        batches, ahead = held[:num_batches], held[num_batches:]
        for target in (batches, ahead):
            while len(target) < num_batches:
                try:
                    target.append(next(epoch_iterator))
                except StopIteration:
                    break
        self._lookahead, self._lookahead_source = ahead, epoch_iterator
        return batches, self._get_num_items_in_batch(batches, device)

    def _compute_loss(self, model, inputs):
        """TRL's loss with the micro-batch's audio; per-sequence losses averaged over loss-bearing rows only.

        TRL's ``grpo``/``sapo`` loss is ``(1/B) sum_i l_i`` over the B rows of a micro-batch (``dr_grpo`` and
        ``luspo`` also divide by B), so a row kept out of the loss (unscored, or a dynamic-sampling filler: zero
        mask, ``l_i = 0``) still counts in B and shrinks the step. Rescaled by ``B * processes *
        steps_per_generation / N``, with N the loss-bearing rows of the global generation batch
        (``num_loss_rows``), the step is ``(1/N) sum`` over those rows: the same gradient as the batch without the
        masked rows, and TRL's loss unchanged when every row bears loss.
        """
        self._current_audio = AudioRows.from_inputs(inputs)
        self._policy_pass = True
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._current_audio = None
            self._policy_pass = False
        if self.loss_type in PER_SEQUENCE_LOSSES and self.model.training and "num_loss_rows" in inputs:
            rows = inputs["completion_ids"].size(0) * self.accelerator.num_processes * self.args.steps_per_generation
            loss = loss * (rows / inputs["num_loss_rows"].clamp(min=1.0))
        if torch.is_grad_enabled() and not loss.requires_grad:
            # Every row of this micro-batch is outside the loss (dynamic sampling found no informative group, or
            # all are unscored): no completion position was scored, so the loss is a constant 0. A zero that
            # touches every trainable parameter gives them all a zero gradient, as DDP's reducer expects of each
            # process, instead of a backward error.
            loss = loss + 0.0 * sum(p.sum() for p in model.parameters() if p.requires_grad)
        return loss

    def _count_padding(self, attention_mask: torch.Tensor, chunks: list[Chunk]) -> None:
        """Add a pass's tokens, covered positions and chunk count to the step's tally (``training_step`` logs it)."""
        self._padding[0] += int(attention_mask.sum())
        self._padding[1] += sum(c.positions for c in chunks)
        self._padding[2] += len(chunks)

    def _log_share(self, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Append the mean of ``values`` over the scored positions of every process to the step's metric ``name``.

        ``text_only/outside_mass``: the mass the model puts on ids the sampler never draws. ``sampling/
        outside_support_frac``: the share of sampled tokens the policy pass scores outside its top-k/top-p (log-prob
        NEG): 0 when trainer and engine agree; a token the engine kept near the nucleus edge (another top-p kernel,
        bf16 logits) but the trainer cuts has an importance ratio of 0 and drops out of the loss.
        """
        totals = torch.stack([(values * mask).sum(), mask.sum()]).float().unsqueeze(0)
        totals = self.accelerator.gather(totals).sum(dim=0)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][name].append((totals[0] / totals[1].clamp(min=1)).item())

    def _is_reference_pass(self, model) -> bool:
        """Whether TRL is scoring the KL reference: its own reference model, or (LoRA) the policy with its adapters
        switched off, or with the initial adapter ``ref`` active (TRL's ``use_adapter``)."""
        if self.ref_model is not None:
            return model is self.ref_model
        for module in self.accelerator.unwrap_model(model).modules():
            if isinstance(module, BaseTunerLayer):
                return bool(module.disable_adapters) or "ref" in module.active_adapters
        return False

    def _require_audio(self, rows: int) -> AudioRows:
        audio = self._current_audio
        if audio is None or len(audio) != rows:
            got = "none" if audio is None else f"{len(audio)} rows"
            raise RuntimeError(f"audio for {rows} token rows expected, {got} available: the audio path is broken")
        return audio

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_kwargs,
    ):
        """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, with each row's audio, under
        the sampling distribution (``self.sampling``; see the module docstring).

        Same contract as TRL's method; image arguments must be absent. Chunks of ``batch_size`` rows bound the
        activation memory, or with ``trainer.max_tokens_per_microbatch`` chunks packed by token count with their
        padding cut (``grpo_audio.train.token_budget``); each chunk carries its own rows of audio. The policy pass
        (from ``_compute_loss``) also logs ``text_only/outside_mass``; every pass adds to ``microbatch/*``.
        """
        images = {k: v for k, v in multimodal_kwargs.items() if v is not None and k not in AUDIO_KEYS}
        if images:
            raise ValueError(f"unexpected image inputs {sorted(images)} for an audio model")
        audio = self._require_audio(input_ids.size(0))
        sampling = self.reference_sampling if self._is_reference_pass(model) else self.sampling
        rows, width = input_ids.shape
        if self.max_tokens_per_microbatch is not None:
            chunks = pack_rows(
                attention_mask, width - logits_to_keep, self.max_tokens_per_microbatch, self.padding_free
            )
        else:
            chunks = fixed_chunks(rows, width, batch_size or rows, attention_mask if self.padding_free else None)
        self._count_padding(attention_mask, chunks)
        # logged once per micro-batch, from the policy pass (the old/reference passes skip them): the outside mass,
        # and the share of sampled tokens this pass scores outside its distribution's support (log-prob NEG)
        log_outside = self._policy_pass and self.sampling.restricts_vocabulary
        policy = self._policy_pass
        all_aux = []

        def score(chunk: Chunk, keep: int) -> list[torch.Tensor | None]:
            index = chunk.index.to(input_ids.device)
            ids = input_ids[index, chunk.start : chunk.end]
            mask = attention_mask[index, chunk.start : chunk.end]
            # Score only completion tokens: TRL's fused head projects just the positions with a label
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-keep] = -100
            model_inputs = {"input_ids": ids, "attention_mask": mask, **audio.select(chunk.index)}
            if self.padding_free:  # the rows end to end in one token row, positions restarting per row
                flat_ids, labels, positions, lengths = pack_tokens(ids, mask, labels)
                model_inputs.update(input_ids=flat_ids, attention_mask=None, position_ids=positions)
                model_inputs["packed_lengths"] = lengths

            def on_grid(values: torch.Tensor | None) -> torch.Tensor | None:
                if values is None or not self.padding_free:
                    return values
                return unpack_tokens(values, mask)

            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            with self.accelerator.autocast():
                outputs = model(
                    **model_inputs,
                    logprob_labels=labels,
                    sampling=sampling,
                    logprob_entropy=compute_entropy,
                    logprob_outside_mass=log_outside,
                )
            if compute_aux_loss:
                all_aux.append(outputs.aux_loss)
            return [
                on_grid(outputs.log_probs)[:, -keep:],
                on_grid(outputs.entropy)[:, -keep:] if compute_entropy else None,
                on_grid(outputs.outside_mass)[:, -keep:] if log_outside else None,
                on_grid(outputs.label_mask.float())[:, -keep:] if policy else None,
            ]

        logps, entropies, outside, scored = score_in_chunks(score, chunks, rows, width, logits_to_keep)
        if log_outside:
            self._log_share("text_only/outside_mass", outside.detach(), scored)
        if policy:
            self._log_share("sampling/outside_support_frac", (logps.detach() <= NEG / 2).float(), scored)
        aux = torch.stack(all_aux).mean() if compute_aux_loss else None
        return logps, entropies, aux
