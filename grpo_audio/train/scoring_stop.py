"""A step whose batch has too many unscored completions stops the run after a checkpoint of the last finished step.

The usual cause is an LLM judge that went down mid-run. While it is down, each of its rows is unscored (no R_total,
no advantage, no loss) and counted with its reason; the run goes on as long as a batch's unscored share stays within
``rewards.max_unscored_fraction``, and scoring resumes by itself when the judge answers again (its client opens new
connections for every batch). Past that share the step cannot teach what the recipe asked for, so the run stops
before the step's update:

* the weights, optimizer and scheduler are those of the last finished step ``N`` (rollouts and rewards come before
  any gradient is taken: TRL generates at the start of an optimizer step);
* the random number generators and the token count are put back to their state when the step's rollouts began,
  which is their state at the end of step ``N``;
* a trainer checkpoint of step ``N`` is written through the usual atomic path, unless one was just written;
* the run stops with ``ScoringStoppedError``: the unscored counts, the first reason per term, and the checkpoint.

Running the same command once the judge answers again resumes at step ``N + 1`` with the same data and random
state: the resumed run is the run an uninterrupted one would have been (tested against a real judge process killed
and restarted, ``tests/test_judge_outage.py``). Every process decides alike: the unscored share is computed from the
global batch's breakdown, which every process holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from rewards import UnscoredRowsError


class ScoringStoppedError(UnscoredRowsError):
    """Too many completions of a step were unscored; the run stopped before that step's update (module docstring).
    ``step``: the last finished step; ``checkpoint``: the checkpoint holding it (None before the first step)."""

    def __init__(self, cause: UnscoredRowsError, step: int, checkpoint: str | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"the run stopped at step {step + 1}, before its update"
        if checkpoint is not None:
            where += f"; checkpoint {checkpoint} holds step {step}, and the same command resumes from it"
        super().__init__(f"{cause}; {where}")


@dataclass(frozen=True)
class RandomState:
    """Every generator a training step draws from: Python's, NumPy's, torch's CPU one and each CUDA device's."""

    python: object
    numpy: object
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @staticmethod
    def capture() -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return RandomState(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
