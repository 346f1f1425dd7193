"""The trainer's side of dynamic sampling: rounds of rollouts and rewards, the batch chosen from them, and its replay.

``grpo_audio.rollout.dynamic_sampling`` decides (which groups carry signal, which fill, which rows refill); this
module runs the rounds on the trainer. ``DynamicRounds`` is mixed into ``AudioGRPOTrainer`` and uses its engine path
(``_audio_rows``, TRL's ``_tokenize_prompts``, ``_generate_single_turn``, ``_calculate_rewards``) and its record
writer (``_records``); ``tests/test_trl_seam.py`` checks every TRL attribute it reads or sets as it checks the
trainer's own. A step with dynamic sampling on:

1. ``_sample_informative_batch`` samples round 0 on the step's rows and refill rounds of fresh prompts until the
   global generation batch holds its informative groups (or ``max_extra_rounds`` run out);
2. it keeps the chosen batch as a ``Replay`` (``self._replay``), which the trainer's ``_generate_single_turn`` and
   ``_calculate_rewards`` hand back to TRL instead of sampling and scoring again;
3. ``_report_dynamic_sampling`` logs the ``dynamic_sampling/*`` metrics and the dropped groups' records.
"""

from __future__ import annotations

import dataclasses

import torch
from accelerate.utils import gather_object

from grpo_audio.console import say
from grpo_audio.rollout.base import RolloutResult
from grpo_audio.rollout.dynamic_sampling import SURPLUS, Selection, classify_groups, refill_indices, select_groups
from rewards import RewardBreakdown


@dataclasses.dataclass
class Replay:
    """A step's batch chosen by dynamic sampling, handed to TRL's generate-and-score path instead of new rollouts.

    ``result``: this process's rows' rollouts; ``rewards``: the global (rows, 1) reward tensor TRL's
    ``_calculate_rewards`` would return; ``breakdown``: this process's rows' reward breakdown; ``fillers``: per local
    row, True when its group is a filler (no variance; kept out of the loss); ``rounds``: per local row, the round it
    was sampled in.
    """

    result: RolloutResult
    rewards: torch.Tensor
    breakdown: object
    fillers: list[bool]
    rounds: list[int]


@dataclasses.dataclass
class Candidates:
    """Dynamic sampling's candidate completions, in global row order (round by round), one entry per completion in
    each list: its dataset row, token ids, sampling log-probs (None where the engine returned none), finish reason and
    the round it was sampled in; ``rewards``: their (rows, 1) R_total tensor; ``breakdown``: the rubric's scores."""

    rows: list[dict]
    completion_ids: list[list[int]]
    logprobs: list[list[float] | None]
    finish_reasons: list[str]
    rounds: list[int]
    rewards: torch.Tensor
    breakdown: RewardBreakdown

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        """The candidates of several rounds, one after another."""
        return Candidates(
            rows=[row for part in parts for row in part.rows],
            completion_ids=[ids for part in parts for ids in part.completion_ids],
            logprobs=[lp for part in parts for lp in part.logprobs],
            finish_reasons=[reason for part in parts for reason in part.finish_reasons],
            rounds=[r for part in parts for r in part.rounds],
            rewards=torch.cat([part.rewards for part in parts]),
            breakdown=RewardBreakdown.concat([part.breakdown for part in parts]),
        )

    def rollouts(self, rows: list[int]) -> RolloutResult:
        """The rollouts of ``rows``, in that order; with their sampling log-probs only when every one has them."""
        logprobs = [self.logprobs[j] for j in rows]
        return RolloutResult(
            completion_ids=[self.completion_ids[j] for j in rows],
            finish_reasons=[self.finish_reasons[j] for j in rows],
            logprobs=None if any(lp is None for lp in logprobs) else logprobs,
        )


def group_rows(groups: list[int], group_size: int) -> list[int]:
    """The global rows of ``groups``, in order: group g holds rows g*G to g*G + G - 1 (G = ``group_size``)."""
    return [g * group_size + k for g in groups for k in range(group_size)]


class DynamicRounds:
    """Dynamic sampling's rounds, mixed into ``AudioGRPOTrainer`` (see the module docstring). Its state lives on the
    trainer: ``dynamic_sampling`` (the recipe's settings, None when off), ``_replay`` (the chosen batch during its
    step), ``_global_breakdown`` (set by ``_calculate_rewards`` with several processes) and ``_row_index_by_id``
    (the dataset's row index by id, built on the first refill)."""

    def _sample_informative_batch(self, inputs: list[dict]) -> list[dict]:
        """Dynamic sampling (``grpo_audio.rollout.dynamic_sampling``): rounds of rollouts and rewards until the global
        generation batch holds its number of informative groups (or the rounds run out); returns this process's rows
        of the chosen batch and sets ``self._replay`` so that TRL's path scores them without sampling again.

        Every process sees every round's rows, rollouts and rewards (gathered), so all make the same choice, and the
        batch is the one a single process would choose: its global row ``j`` is on process ``j // len(inputs)``.
        """
        group_size, rank, local = self.num_generations, self.accelerator.process_index, len(inputs)
        target = local * self.accelerator.num_processes // group_size  # groups per generation batch, all processes
        rounds, reasons = self._sample_rounds(inputs, target)
        pool = Candidates.concat(rounds)
        selection = select_groups(reasons, target)
        chosen = group_rows(selection.batch, group_size)
        fillers = set(group_rows(selection.fillers, group_size))
        mine = chosen[rank * local : (rank + 1) * local]
        self._replay = Replay(
            result=pool.rollouts(mine),
            rewards=pool.rewards[chosen],
            breakdown=pool.breakdown.take(mine),
            fillers=[j in fillers for j in mine],
            rounds=[pool.rounds[j] for j in mine],
        )
        self._report_dynamic_sampling(selection, reasons, pool, len(rounds), target)
        return [pool.rows[j] for j in mine]

    def _sample_rounds(self, inputs: list[dict], target: int) -> tuple[list[Candidates], list[str | None]]:
        """Round 0 on ``inputs``, then refill rounds of fresh prompts (this process's share of each), until the
        rounds hold ``target`` informative groups or ``max_extra_rounds`` extra rounds have run. Returns each round's
        candidates and every candidate group's drop reason (None: informative), in sampling order."""
        rank, local, step = self.accelerator.process_index, len(inputs), self.state.global_step
        rounds, reasons, round_inputs = [], [], inputs
        seen = {row["id"] for row in inputs}
        for round_index in range(1 + self.dynamic_sampling.max_extra_rounds):
            if round_index > 0:
                round_inputs = self._refill_rows(target, step, round_index, seen)[rank * local : (rank + 1) * local]
            candidates = self._sample_round(round_inputs, round_index)
            seen.update(row["id"] for row in candidates.rows)
            rounds.append(candidates)
            reasons += classify_groups(candidates.rewards[:, 0].tolist(), self.num_generations)
            if sum(reason is None for reason in reasons) >= target:
                break
        return rounds, reasons

    def _report_dynamic_sampling(
        self, selection: Selection, reasons: list[str | None], pool: Candidates, rounds: int, target: int
    ) -> None:
        """This step's ``dynamic_sampling/*`` metrics: groups generated and kept, rounds, filler groups, and the share
        of generated groups dropped for want of signal (surplus groups not counted). On process 0, a notice when
        fillers complete the step, and the dropped groups' ``rollouts.jsonl`` records."""
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/groups_generated"].append(float(len(reasons)))
        metrics["dynamic_sampling/groups_kept"].append(float(len(selection.kept)))
        metrics["dynamic_sampling/rounds"].append(float(rounds))
        metrics["dynamic_sampling/filler_groups"].append(float(selection.short))
        metrics["dynamic_sampling/zero_std_frac_generated"].append(
            sum(reason is not None and reason != SURPLUS for reason in reasons) / len(reasons)
        )
        if not self.accelerator.is_main_process:
            return
        if selection.short:
            say(
                f"step {self.state.global_step + 1}: dynamic sampling found {len(selection.kept)} of {target} "
                f"informative groups in {rounds} round(s); {selection.short} group(s) without reward variance fill "
                "the step outside the loss"
            )
        if self.rollout_log is not None and selection.dropped:
            self.rollout_log(self._dropped_records(selection, pool))

    def _dropped_records(self, selection: Selection, pool: Candidates) -> list[dict]:
        """``rollouts.jsonl`` records of the groups dynamic sampling dropped (no advantage: they never trained)."""
        records = []
        for group, reason in sorted(selection.dropped.items()):
            rows = group_rows([group], self.num_generations)
            part = self._records(
                [pool.rows[j] for j in rows], pool.rollouts(rows), pool.breakdown.take(rows), [None] * len(rows), -1
            )
            for j, record in zip(rows, part, strict=True):
                record.update(round=pool.rounds[j], dropped=reason)
            records += part
        return records

    def _refill_rows(self, groups: int, step: int, round_index: int, seen: set) -> list[dict]:
        """The global rows of refill round ``round_index``: ``groups`` fresh prompts, each repeated G times."""
        dataset = self.train_dataset
        if self._row_index_by_id is None:
            self._row_index_by_id = {row_id: i for i, row_id in enumerate(dataset["id"])}
        exclude = {self._row_index_by_id[row_id] for row_id in seen if row_id in self._row_index_by_id}
        drawn = refill_indices(len(dataset), groups, self.args.seed, step, round_index, exclude)
        return [dataset[i] for i in drawn for _ in range(self.num_generations)]

    def _sample_round(self, inputs: list[dict], round_index: int) -> Candidates:
        """Rollouts and rewards of one round (no log-prob pass), gathered over processes in global row order."""
        self._current_audio = self._audio_rows(inputs)
        try:
            prompts = [row["prompt"] for row in inputs]
            prompt_ids, _, multimodal_fields = self._tokenize_prompts(prompts)
            self._generate_single_turn(prompt_ids, None, multimodal_fields, self.num_generations)
        finally:
            self._current_audio = None
        result = self.last_rollout
        completions = self.processing_class.batch_decode(result.completion_ids, skip_special_tokens=True)
        rewards = self._calculate_rewards(inputs, prompts, completions, result.completion_ids)
        breakdown = self._global_breakdown if self.accelerator.num_processes > 1 else self.last_breakdown
        logprobs = result.logprobs if result.logprobs is not None else [None] * len(inputs)
        local = [(row, ids, lp, reason) for row, ids, lp, reason in zip(
            inputs, result.completion_ids, logprobs, result.finish_reasons, strict=True
        )]  # fmt: skip
        rows = gather_object(local) if self.accelerator.num_processes > 1 else local
        return Candidates(
            rows=[r[0] for r in rows],
            completion_ids=[r[1] for r in rows],
            logprobs=[r[2] for r in rows],
            finish_reasons=[r[3] for r in rows],
            rounds=[round_index] * len(rows),
            rewards=rewards,
            breakdown=breakdown,
        )
