"""Preemption: SIGTERM or SIGUSR1 ends the run after the optimizer step in flight, with a complete checkpoint.

A cluster ends a job at its time limit, or when it preempts it, with SIGTERM (SLURM sends SIGUSR1 ahead of that
when the job asks with ``--signal``). Without a handler the process dies and every step since the last periodic
checkpoint is lost. Here the handler only records the signal; at the end of the step in flight
(``on_step_end``) every process learns whether any process received one (a max all-reduce, so all ranks stop at
the same step), and then the trainer writes a checkpoint through its usual atomic path and stops. ``train`` records
``stopped`` in ``run.json`` with the signal and the step, and the CLI exits with ``128 + signal number`` (143 for
SIGTERM, 138 for SIGUSR1), the status a shell gives a command ended by that signal; running the same command
resumes from that checkpoint.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist
from transformers import TrainerCallback

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptedError(Exception):
    """The run stopped on a preemption signal after a complete checkpoint (see the module docstring)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"stopped by {name} after step {step}{where}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class PreemptionCallback(TrainerCallback):
    """Records SIGTERM/SIGUSR1 while training runs, and turns one into checkpoint-and-stop at the next step end.

    ``device``: where the all-reduce's flag lives (the accelerator's device: NCCL needs CUDA tensors, gloo CPU).
    After training, ``signum`` is the signal that stopped the run (None if none did) and ``step`` its last step.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self.received: int | None = None
        self.signum: int | None = None
        self.step: int | None = None
        self._previous: dict[int, object] = {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([self.received or 0], dtype=torch.int64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # a signal on any process stops every process here
        if flag.item():
            self.signum, self.step = int(flag.item()), state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
